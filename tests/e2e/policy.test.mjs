// The tool policy end to end: two people of a real OpenID provider (`oidc-provider`), in
// different groups, sign in with the TypeScript SDK client and see different tools/list
// answers from server-everything over stdio and over HTTP; a call the policy refuses gets a
// JSON-RPC error; a call that needs a scope the token lacks gets 403 insufficient_scope, the
// SDK v2 client signs in again for the wider scope, and the call then succeeds. (The v1 SDK
// answers such a 403 with a refresh, which cannot widen a grant: it then gives up.)

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { UnauthorizedError as ModernUnauthorized } from '@modelcontextprotocol/client';
import { auth } from '@modelcontextprotocol/sdk/client/auth.js';

import { Browser, ROOT, everythingStdio, freePorts, startEverything, startProxy } from './harness.mjs';
import { startIdp } from './idp.mjs';
import { TestProvider, connect, connectModern } from './sdk-client.mjs';

const ACCOUNTS = {
  ann: { email: 'ann@example.com', groups: ['staff'] },
  bob: { email: 'bob@example.com', groups: ['staff', 'writers'] },
};

// The same policy as the Rust suite's: writers may change things with mcp:write.
const POLICY = path.join(ROOT, 'tests/fixtures/policy.toml');

let idp;
let everything;
const proxies = {};

before(async () => {
  everything = await startEverything();
  const [idpPort, stdioPort, httpPort] = await freePorts(3);
  idp = await startIdp(idpPort, ACCOUNTS, [stdioPort, httpPort]);
  const args = [...idp.args, '--oidc-allowed-attributes', '/groups=staff', '--policy-file', POLICY];
  proxies.stdio = await startProxy({ command: everythingStdio(), password: null, port: stdioPort, args });
  proxies.http = await startProxy({ backend: everything.url, password: null, port: httpPort, args });
});

after(async () => {
  for (const p of Object.values(proxies)) await p.stop();
  await idp?.stop();
  await everything?.stop();
});

const signInAs = (login) => new TestProvider(new Browser(), { idp: { origin: idp.issuer, login } });
const names = async (client) => (await client.listTools()).tools.map((t) => t.name).sort();

for (const backend of ['stdio', 'http']) {
  test(`two users see different tools from server-everything (${backend})`, async () => {
    const ann = await connect(proxies[backend].resource, signInAs('ann'));
    const bob = await connect(proxies[backend].resource, signInAs('bob'));
    const seenByAnn = await names(ann);
    const seenByBob = await names(bob);
    assert.ok(seenByAnn.includes('echo') && seenByBob.includes('echo'));
    assert.ok(!seenByAnn.includes('toggle-simulated-logging'), seenByAnn.join());
    assert.ok(seenByBob.includes('toggle-simulated-logging'), seenByBob.join());
    assert.ok(seenByBob.length > seenByAnn.length);
    // ann's call is refused by the policy and never served.
    await assert.rejects(
      ann.callTool({ name: 'toggle-simulated-logging', arguments: {} }),
      (e) => e.code === -32001 && /not allowed/.test(e.message),
    );
    await ann.close();
    await bob.close();
  });
}

test('step-up with the SDK v2 client: 403, a new sign-in for mcp:write, the call succeeds', async () => {
  const provider = signInAs('bob');
  const bob = await connectModern(proxies.stdio.resource, provider, 'legacy');
  assert.equal(provider.sessions, 1);
  assert.ok(!provider.tokens().scope.split(' ').includes('mcp:write'), provider.tokens().scope);
  await names(bob); // the tools' annotations are known to the proxy from this list
  const toggle = { name: 'toggle-simulated-logging', arguments: {} };
  // The client meets 403 insufficient_scope, asks for the union of its scopes and the
  // challenge's, and sends the browser through a new authorization (our consent names it).
  await assert.rejects(bob.callTool(toggle), ModernUnauthorized);
  assert.equal(provider.sessions, 2, 'signed in again for the wider scope');
  assert.ok(provider.code, `the step-up produced a code (error: ${provider.error})`);
  await bob.transport.finishAuth(provider.code, provider.iss);
  assert.ok(provider.tokens().scope.split(' ').includes('mcp:write'), provider.tokens().scope);
  const r = await bob.callTool(toggle);
  assert.match(r.content[0].text, /logging/i);
  await bob.close();
});

test('the authorization server grants mcp:write only to those the policy names', async () => {
  const meta = await (await fetch(proxies.stdio.url('/.well-known/oauth-authorization-server'))).json();
  assert.ok(meta.scopes_supported.includes('mcp:write'), meta.scopes_supported.join());
  // ann asks for it (as the SDK does after a challenge) and is granted only mcp.
  const asked = signInAs('ann');
  assert.equal(await auth(asked, { serverUrl: proxies.stdio.resource, scope: 'mcp mcp:write' }), 'REDIRECT');
  assert.equal(await auth(asked, { serverUrl: proxies.stdio.resource, authorizationCode: asked.code }), 'AUTHORIZED');
  assert.equal(asked.tokens().scope, 'mcp');
});
