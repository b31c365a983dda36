// DPoP (RFC 9449, MCP SEP-1932) end to end: the TypeScript SDK v2 client
// (@modelcontextprotocol/client) with a DpopSession signs in through our whole flow
// (discovery, registration, login, consent, token) and calls tools of server-everything
// (stdio) with a proof on every request; its tokens say DPoP, and are worthless as bearer
// tokens. A client without DPoP still gets bearer tokens.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { DpopSession } from '@modelcontextprotocol/client';

import { Browser, everythingStdio, startProxy } from './harness.mjs';
import { TestProvider, connectModern } from './sdk-client.mjs';

let proxy;
// The same with --dpop-nonces: every proof must carry a nonce of ours.
let noncing;

before(async () => {
  proxy = await startProxy({ command: everythingStdio() });
  noncing = await startProxy({ command: everythingStdio(), args: ['--dpop-nonces'] });
});

after(async () => {
  await proxy?.stop();
  await noncing?.stop();
});

/** The harness's provider, with a DPoP key for its registration. */
class DpopProvider extends TestProvider {
  constructor(browser) {
    super(browser);
    this._dpop = DpopSession.create();
  }
  dpop() {
    return this._dpop;
  }
}

/** A tools/list to the MCP endpoint with `authorization` and no proof. */
async function listWith(authorization) {
  return fetch(proxy.resource, {
    method: 'POST',
    headers: {
      authorization, 'content-type': 'application/json', accept: 'application/json, text/event-stream',
      'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/list',
    },
    body: JSON.stringify({
      jsonrpc: '2.0', id: 1, method: 'tools/list',
      params: { _meta: { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientCapabilities': {} } },
    }),
  });
}

for (const mode of [{ pin: '2026-07-28' }, 'legacy']) {
  test(`the v2 client with a DPoP key signs in and calls tools with proofs (${JSON.stringify(mode)})`, async () => {
    const provider = new DpopProvider(new Browser());
    const client = await connectModern(proxy.resource, provider, mode);
    const tokens = provider.tokens();
    assert.equal(tokens.token_type.toLowerCase(), 'dpop', JSON.stringify(tokens));
    const r = await client.callTool({ name: 'echo', arguments: { message: 'bound hello' } });
    assert.match(r.content[0].text, /bound hello/);
    const { tools } = await client.listTools();
    assert.ok(tools.length > 5);
    await client.close();

    // The same token without a proof, as a bearer token: refused.
    const stolen = await listWith(`Bearer ${tokens.access_token}`);
    assert.equal(stolen.status, 401);
    assert.match(stolen.headers.get('www-authenticate'), /^DPoP .*error="invalid_token"/);
    const noProof = await listWith(`DPoP ${tokens.access_token}`);
    assert.equal(noProof.status, 401);
    assert.match(noProof.headers.get('www-authenticate'), /error="invalid_dpop_proof"/);
  });
}

test('with --dpop-nonces the v2 client takes the nonce it is given and retries', async () => {
  const provider = new DpopProvider(new Browser());
  const client = await connectModern(noncing.resource, provider, { pin: '2026-07-28' });
  assert.equal(provider.tokens().token_type.toLowerCase(), 'dpop');
  const r = await client.callTool({ name: 'echo', arguments: { message: 'nonce hello' } });
  assert.match(r.content[0].text, /nonce hello/);
  await client.close();
});

test('a client without DPoP gets bearer tokens that work', async () => {
  const provider = new TestProvider(new Browser());
  const client = await connectModern(proxy.resource, provider, { pin: '2026-07-28' });
  assert.equal(provider.tokens().token_type, 'Bearer');
  const r = await client.callTool({ name: 'echo', arguments: { message: 'plain hello' } });
  assert.match(r.content[0].text, /plain hello/);
  await client.close();
  assert.equal((await listWith(`Bearer ${provider.tokens().access_token}`)).status, 200);
});
