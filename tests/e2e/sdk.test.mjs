// The official TypeScript SDK client signs in through our authorization server and talks
// to server-everything through the gate: discovery → registration → login → consent →
// token → tools/list → tools/call → a forced refresh → revocation → 401 → a fresh sign-in.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

import { Browser, freePorts, startEverything, startProxy } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

let upstream;
let proxy;
let metrics;

before(async () => {
  upstream = await startEverything();
  const [port, metricsPort] = await freePorts(2);
  metrics = `http://127.0.0.1:${metricsPort}/metrics`;
  proxy = await startProxy({ backend: upstream.url, port, args: ['--metrics-listen', new URL(metrics).host] });
});

after(async () => {
  await proxy?.stop();
  await upstream?.stop();
});

test('the TypeScript SDK client signs in, calls tools, refreshes, is revoked and signs in again', async () => {
  const provider = new TestProvider(new Browser());
  const client = await connect(proxy.resource, provider);
  assert.equal(provider.sessions, 1, 'one interactive sign-in');
  assert.equal(provider.iss, proxy.origin, 'the authorization response carries iss');
  assert.ok(provider.clientInformation()?.client_id, 'registered dynamically');
  const first = provider.tokens();
  assert.ok(first.access_token.startsWith('mcpat_'));
  assert.ok(first.refresh_token, 'a refresh token is issued without offline_access');

  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  assert.ok(names.includes('echo'), `tools: ${names}`);
  const echoed = await client.callTool({ name: 'echo', arguments: { message: 'through the gate' } });
  assert.match(echoed.content[0].text, /through the gate/);

  // Forced refresh: the stored access token stops working; the SDK meets a 401, refreshes
  // with its refresh token, and retries.
  provider.saveTokens({ ...first, access_token: 'mcpat_no_longer_valid' });
  const sum = await client.callTool({ name: 'get-sum', arguments: { a: 2, b: 40 } });
  assert.match(JSON.stringify(sum.content), /42/);
  const second = provider.tokens();
  assert.notEqual(second.access_token, 'mcpat_no_longer_valid');
  assert.notEqual(second.refresh_token, first.refresh_token, 'refresh tokens rotate');
  assert.equal(provider.sessions, 1, 'the refresh needed no sign-in');

  // Revocation of the refresh token ends the whole sign-in at once.
  const res = await fetch(proxy.url('/revoke'), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: second.refresh_token, client_id: provider.clientInformation().client_id }),
  });
  assert.equal(res.status, 200);
  const raw = await fetch(proxy.resource, {
    method: 'POST',
    headers: { authorization: `Bearer ${second.access_token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'ping' }),
  });
  assert.equal(raw.status, 401);
  assert.match(raw.headers.get('www-authenticate'), /error="invalid_token"/);

  // The SDK meets the 401, its refresh gets invalid_grant, and it starts a fresh sign-in.
  await assert.rejects(client.listTools(), (e) => e instanceof UnauthorizedError || /Unauthorized/i.test(String(e)));
  assert.equal(provider.sessions, 2, 'a fresh interactive sign-in was started');
  await client.close();
  const again = await connect(proxy.resource, provider);
  const after = await again.callTool({ name: 'echo', arguments: { message: 'welcome back' } });
  assert.match(after.content[0].text, /welcome back/);
  await again.close();

  // The SDK's posts (initialize, its session, SSE answers) took the HTTP/1 fast lane.
  const text = await (await fetch(metrics)).text();
  const served = Number(/^mcp_auth_proxy_fast_lane_requests_total (\d+)/m.exec(text)?.[1] ?? 0);
  assert.ok(served >= 5, `fast lane served ${served} requests:\n${text}`);
});

test('a denied consent reaches the client as access_denied', async () => {
  const provider = new TestProvider(new Browser(), { decision: 'deny' });
  const client = new Client({ name: 'e2e', version: '1.0.0' });
  await assert.rejects(client.connect(new StreamableHTTPClientTransport(new URL(proxy.resource), { authProvider: provider })));
  assert.equal(provider.error, 'access_denied');
  assert.equal(provider.code, null);
});
