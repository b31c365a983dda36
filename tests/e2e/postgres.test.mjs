// The official TypeScript SDK client against a proxy whose store is PostgreSQL: sign-in,
// tools, refresh rotation, a reused refresh token revoking its family, revocation, and a
// restart of the proxy that keeps every client, token and browser session.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';

import { Browser, freePort, startEverything, startProxy } from './harness.mjs';
import { startPostgres } from './postgres.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

let pg;
let upstream;
let proxy;
let port;
const env = {};

const start = () => startProxy({ backend: upstream.url, port, args: ['--repository-backend', 'postgres'], env });

before(async () => {
  pg = await startPostgres();
  upstream = await startEverything();
  port = await freePort();
  env.REPOSITORY_DSN = pg.dsn;
  env.ENCRYPTION_KEY = randomBytes(32).toString('base64');
  proxy = await start();
});

after(async () => {
  await proxy?.stop();
  await upstream?.stop();
  pg?.stop();
});

async function refresh(refreshToken, clientId) {
  const res = await fetch(proxy.url('/token'), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: clientId }),
  });
  return { status: res.status, body: await res.json() };
}

async function gate(accessToken) {
  const res = await fetch(proxy.resource, {
    method: 'POST',
    headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'e2e', version: '1.0.0' } },
    }),
  });
  await res.arrayBuffer();
  return res.status;
}

test('the SDK client on a PostgreSQL-backed proxy: rotation, reuse, revocation, restart', async () => {
  const browser = new Browser();
  const provider = new TestProvider(browser);
  const client = await connect(proxy.resource, provider);
  const clientId = provider.clientInformation().client_id;
  const { tools } = await client.listTools();
  assert.ok(tools.some((t) => t.name === 'echo'));

  // The SDK refreshes by itself when its access token stops working; tokens rotate.
  const first = provider.tokens();
  provider.saveTokens({ ...first, access_token: 'mcpat_no_longer_valid' });
  const echoed = await client.callTool({ name: 'echo', arguments: { message: 'on postgres' } });
  assert.match(echoed.content[0].text, /on postgres/);
  const second = provider.tokens();
  assert.notEqual(second.refresh_token, first.refresh_token, 'rotated');
  await client.close();

  // The successor used, the first refresh token again is theft: the family is revoked.
  const third = await refresh(second.refresh_token, clientId);
  assert.equal(third.status, 200);
  const reuse = await refresh(first.refresh_token, clientId);
  assert.deepEqual([reuse.status, reuse.body.error], [400, 'invalid_grant']);
  assert.equal(await gate(third.body.access_token), 401, 'the whole family is revoked');

  // A fresh sign-in (the browser session holds), then revocation.
  const fresh = new TestProvider(browser);
  await (await connect(proxy.resource, fresh)).close();
  const revoked = await fetch(proxy.url('/revoke'), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: fresh.tokens().refresh_token, client_id: fresh.clientInformation().client_id }),
  });
  assert.equal(revoked.status, 200);
  assert.equal(await gate(fresh.tokens().access_token), 401);

  // One more sign-in, then a restart: the client, its tokens and the browser session stay.
  const kept = new TestProvider(browser);
  await (await connect(proxy.resource, kept)).close();
  await proxy.stop();
  proxy = await start();
  assert.equal(await gate(kept.tokens().access_token), 200, 'the access token survived the restart');
  const after = await connect(proxy.resource, kept);
  const res = await after.callTool({ name: 'echo', arguments: { message: 'after the restart' } });
  assert.match(res.content[0].text, /after the restart/);
  assert.equal(kept.sessions, 1, 'no new sign-in was needed');
  const renewed = await refresh(kept.tokens().refresh_token, kept.clientInformation().client_id);
  assert.equal(renewed.status, 200, 'refresh after the restart');
  await after.close();
});
