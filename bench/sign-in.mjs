// One client's whole sign-in through the proxy at `origin`: registration, PKCE, the login
// and consent pages (filled by the e2e harness's browser), the code, the token.
import { createHash, randomBytes } from 'node:crypto';

const redirect = 'http://127.0.0.1:9/callback';

/** The access token. */
export async function signIn(origin, browser, password) {
  return (await signInClient(origin, browser, password)).access;
}

/**
 * The access token and the client it was issued to. With `idp` ({ origin, login }), the
 * person signs in at that OpenID provider instead of with the password.
 */
export async function signInClient(origin, browser, password, idp) {
  const reg = await (await fetch(`${origin}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'bench', redirect_uris: [redirect] }),
  })).json();
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const q = new URLSearchParams({
    response_type: 'code', client_id: reg.client_id, redirect_uri: redirect,
    code_challenge: challenge, code_challenge_method: 'S256', state: 's',
  });
  const back = new URL(await browser.authorize(`${origin}/authorize?${q}`, { password, idp }));
  const res = await fetch(`${origin}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code: back.searchParams.get('code'), redirect_uri: redirect,
      code_verifier: verifier, client_id: reg.client_id,
    }),
  });
  if (res.status !== 200) throw new Error(`token: ${res.status} ${await res.text()}`);
  const tokens = await res.json();
  return { access: tokens.access_token, refresh: tokens.refresh_token, clientId: reg.client_id };
}
