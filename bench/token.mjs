// Prints an access token for the proxy at argv[2], obtained through the real flow
// (registration, PKCE, login, consent, token) with the e2e harness's browser.
import { createHash, randomBytes } from 'node:crypto';
import { Browser } from '../tests/e2e/harness.mjs';

const origin = process.argv[2];
const password = process.argv[3];
const redirect = 'http://127.0.0.1:9/callback';
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
const back = new URL(await new Browser().authorize(`${origin}/authorize?${q}`, { password }));
const tok = await (await fetch(`${origin}/token`, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({
    grant_type: 'authorization_code', code: back.searchParams.get('code'), redirect_uri: redirect,
    code_verifier: verifier, client_id: reg.client_id,
  }),
})).json();
process.stdout.write(tok.access_token);
