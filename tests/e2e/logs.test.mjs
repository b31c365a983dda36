// The log after a full sign-in holds no secret: the proxy runs at debug level (more than
// production's info) while the SDK client registers a confidential client, signs in, calls a
// tool, refreshes and revokes; then every line is searched for the password, the code, the
// tokens, the client secret, the cookies and the CSRF token. The request lines are there
// (one per request), without query strings.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Browser, everythingStdio, startProxy } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const SECRET = 'logs-e2e-Password-7f3a';
let proxy;

before(async () => {
  proxy = await startProxy({ command: everythingStdio(), password: SECRET, env: { RUST_LOG: 'debug' } });
});

after(async () => {
  await proxy?.stop();
});

/** A provider that registers as a confidential client and remembers what it saw. */
class Confidential extends TestProvider {
  get clientMetadata() {
    return { ...super.clientMetadata, token_endpoint_auth_method: 'client_secret_post' };
  }
}

/** A browser that remembers every cookie value and CSRF token it handled. */
class RecordingBrowser extends Browser {
  constructor() {
    super();
    this.seen = new Set();
  }
  keepCookies(url, res) {
    super.keepCookies(url, res);
    for (const jar of this.cookies.values()) for (const v of jar.values()) if (v.length >= 16) this.seen.add(v);
  }
  async postForm(url, html, fields) {
    const csrf = html.match(/name="csrf" value="([^"]*)"/)?.[1];
    if (csrf) this.seen.add(csrf);
    return super.postForm(url, html, fields);
  }
}

test('a full sign-in, refresh and revocation leave no secret in the log', async () => {
  const browser = new RecordingBrowser();
  const provider = new Confidential(browser, { password: SECRET });
  const client = await connect(proxy.resource, provider);
  const r = await client.callTool({ name: 'echo', arguments: { message: 'logged?' } });
  assert.match(r.content[0].text, /logged\?/);
  const first = provider.tokens();
  const info = provider.clientInformation();
  assert.ok(info.client_secret, 'a confidential client');

  // Refresh and revoke by hand, so every token kind crosses the log's path.
  const refreshed = await (
    await fetch(proxy.url('/token'), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: first.refresh_token,
        client_id: info.client_id,
        client_secret: info.client_secret,
      }),
    })
  ).json();
  assert.ok(refreshed.access_token);
  const revoked = await fetch(proxy.url('/revoke'), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: refreshed.refresh_token, client_id: info.client_id, client_secret: info.client_secret }),
  });
  assert.equal(revoked.status, 200);
  await client.close();
  await new Promise((r) => setTimeout(r, 200));

  const secrets = {
    password: SECRET,
    code: provider.code,
    'access token': first.access_token,
    'refresh token': first.refresh_token,
    'refreshed access token': refreshed.access_token,
    'refreshed refresh token': refreshed.refresh_token,
    'client secret': info.client_secret,
    'registration access token': info.registration_access_token,
    'code verifier': provider.codeVerifier(),
  };
  for (const [i, v] of [...browser.seen].entries()) secrets[`cookie or csrf #${i}`] = v;
  assert.ok(browser.seen.size >= 2, 'session cookie and CSRF token were seen');
  const log = proxy.logs.join('\n');
  for (const [name, value] of Object.entries(secrets)) {
    if (!value) continue;
    assert.ok(!log.includes(value), `the ${name} appears in the log`);
    // Not even a large piece of it.
    assert.ok(!log.includes(value.slice(-16)), `the end of the ${name} appears in the log`);
  }

  // One request line per request, with the path and without the query.
  const requests = proxy.logs.filter((l) => l.includes('"message":"request"'));
  assert.ok(requests.some((l) => l.includes('"path":"/authorize"')), 'the authorization request is logged');
  assert.ok(requests.some((l) => l.includes('"path":"/token"')));
  assert.ok(requests.some((l) => l.includes('"path":"/mcp"')));
  assert.ok(!requests.some((l) => /code_challenge|state=|\?/.test(l)), 'no query string');
});
