// MCP 2026-07-28 on the stdio bridge: the TypeScript SDK v2 client (@modelcontextprotocol/
// client), signed in through our OAuth flow, pinned to 2026-07-28, against
// @modelcontextprotocol/server-everything (a stdio server of the 2025 revisions) behind the
// bridge; the same client in `auto` and `legacy` modes; and the revision's HTTP rules.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Browser, canonical, everythingStdio, startProxy, statelessToolCall } from './harness.mjs';
import { TestProvider, connect, connectModern as connectTo } from './sdk-client.mjs';

let proxy;

before(async () => {
  proxy = await startProxy({ command: everythingStdio(), args: ['--stdio-cache-ttl', '90s'] });
});

after(async () => {
  await proxy?.stop();
});

/** The v2 client in negotiation `mode` on the proxy of these tests. */
const connectModern = (provider, mode, capabilities = {}) => connectTo(proxy.resource, provider, mode, capabilities);

/** What the same server lists to a 2025 client through the bridge (one that can answer
 * what the bridge can relay, as the bridge declares when it initializes a modern child). */
async function legacyTools() {
  const client = await connect(proxy.resource, new TestProvider(new Browser()), { sampling: {}, elicitation: {}, roots: {} });
  const tools = await client.listTools();
  await client.close();
  return tools.tools;
}

test('a client pinned to 2026-07-28 discovers, lists and calls tools of a 2025 stdio server', async () => {
  const provider = new TestProvider(new Browser());
  const client = await connectModern(provider, { pin: '2026-07-28' });
  assert.equal(client.getProtocolEra(), 'modern');
  const { tools } = await client.listTools();
  // The v2 client drops `execution` (tasks are an extension in 2026-07-28); all else is
  // the same as what the legacy path lists.
  const legacy = (await legacyTools()).map(({ execution, ...rest }) => rest);
  assert.ok(tools.length > 5, `tools: ${tools.length}`);
  assert.deepEqual(canonical(tools), canonical(legacy), 'the same tools as the legacy path');
  const r = await client.callTool({ name: 'echo', arguments: { message: 'stateless hello' } });
  assert.match(r.content[0].text, /stateless hello/);

  // Progress rides on the request's own response stream.
  const progress = [];
  const long = await client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
    { onprogress: (p) => progress.push(p) },
  );
  assert.ok(progress.length >= 2, `progress: ${JSON.stringify(progress)}`);
  assert.match(JSON.stringify(long.content), /completed/i);

  // Closing the response stream is the cancellation: the child hears it at once.
  const cancelled = () => proxy.logs.filter((l) => l.includes('requests cancelled at the MCP server')).length;
  const before = cancelled();
  const abort = new AbortController();
  const started = new Promise((resolve) => {
    client
      .callTool(
        { name: 'trigger-long-running-operation', arguments: { duration: 30, steps: 30 } },
        { signal: abort.signal, onprogress: () => resolve() },
      )
      .catch(() => {});
  });
  await started;
  abort.abort();
  for (let i = 0; cancelled() === before; i++) {
    assert.ok(i < 100, 'the child was not told of the cancellation');
    await new Promise((r) => setTimeout(r, 50));
  }
  await client.close();
});

test('sampling and elicitation of a 2025 child reach a 2026-07-28 client as multi round-trip results', async () => {
  const provider = new TestProvider(new Browser());
  const client = await connectModern(provider, { pin: '2026-07-28' }, { sampling: {}, elicitation: {} });
  const asked = [];
  client.setRequestHandler('sampling/createMessage', async () => {
    asked.push('sampling');
    return { model: 'test-model', role: 'assistant', content: { type: 'text', text: 'sampled answer' } };
  });
  client.setRequestHandler('elicitation/create', async (req) => {
    asked.push('elicitation');
    assert.ok(req.params.requestedSchema.properties.name);
    return { action: 'decline' };
  });
  const sampled = await client.callTool({ name: 'trigger-sampling-request', arguments: { prompt: 'hi', maxTokens: 10 } });
  assert.match(JSON.stringify(sampled.content), /sampled answer/);
  const elicited = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} });
  assert.match(JSON.stringify(elicited.content), /decline/i);
  assert.deepEqual(asked, ['sampling', 'elicitation']);
  await client.close();
});

test('subscriptions/listen carries the list changes of a 2025 child, tagged with the subscription', async () => {
  const provider = new TestProvider(new Browser());
  const client = await connectModern(provider, { pin: '2026-07-28' });
  const changed = new Promise((resolve) =>
    client.setNotificationHandler('notifications/resources/list_changed', (n) => resolve(n)),
  );
  const sub = await client.listen({ resourcesListChanged: true, promptsListChanged: true });
  assert.deepEqual(sub.honoredFilter, { resourcesListChanged: true, promptsListChanged: true });
  // A new resource at the child (server-everything registers one per gzip call).
  await client.callTool({
    name: 'gzip-file-as-resource',
    arguments: { name: 'hello.txt.gz', data: 'data:text/plain;base64,aGVsbG8=', outputType: 'resourceLink' },
  });
  const n = await Promise.race([
    changed,
    new Promise((_, reject) => setTimeout(() => reject(new Error('no list change within 10 s')), 10_000)),
  ]);
  assert.equal(n.method, 'notifications/resources/list_changed');
  await sub.close();
  assert.equal(await sub.closed, 'local');
  await client.close();
});

test('the same client in auto mode speaks 2026-07-28, and in legacy mode 2025', async () => {
  const provider = new TestProvider(new Browser());
  for (const [mode, era] of [['auto', 'modern'], ['legacy', 'legacy']]) {
    const client = await connectModern(provider, mode);
    assert.equal(client.getProtocolEra(), era, mode);
    const r = await client.callTool({ name: 'echo', arguments: { message: `in ${mode} mode` } });
    assert.match(r.content[0].text, new RegExp(`in ${mode} mode`));
    await client.close();
  }
});

test('the 2026-07-28 HTTP rules: mirrored headers, versions, no GET or DELETE', async () => {
  const provider = new TestProvider(new Browser());
  await (await connectModern(provider, { pin: '2026-07-28' })).close();
  const token = provider.tokens().access_token;
  const meta = (version) => ({
    'io.modelcontextprotocol/protocolVersion': version,
    'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
    'io.modelcontextprotocol/clientCapabilities': {},
  });
  const post = (headers, body) =>
    fetch(proxy.resource, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        ...headers,
      },
      body: JSON.stringify(body),
    });
  const call = (name, version = '2026-07-28') => ({
    jsonrpc: '2.0',
    id: 9,
    method: 'tools/call',
    params: { name, arguments: { message: 'x' }, _meta: meta(version) },
  });
  const good = { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'echo' };

  const ok = await post(good, call('echo'));
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('mcp-session-id'), null, 'no session is minted');
  assert.match(await ok.text(), /x/);

  for (const [headers, why] of [
    [{ ...good, 'mcp-name': 'other' }, 'Mcp-Name differs from the body'],
    [{ ...good, 'mcp-method': 'tools/list' }, 'Mcp-Method differs from the body'],
    [{ 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call' }, 'Mcp-Name is missing'],
  ]) {
    const r = await post(headers, call('echo'));
    assert.equal(r.status, 400, why);
    const body = await r.json();
    assert.equal(body.error.code, -32020, why);
    assert.equal(body.id, 9, why);
  }
  // A name outside the header set travels in the Base64 sentinel form.
  const encoded = `=?base64?${Buffer.from('echo').toString('base64')}?=`;
  assert.equal((await post({ ...good, 'mcp-name': encoded }, call('echo'))).status, 200);

  const unsupported = await post({ ...good, 'mcp-protocol-version': '2099-01-01' }, call('echo', '2099-01-01'));
  assert.equal(unsupported.status, 400);
  const u = await unsupported.json();
  assert.equal(u.error.code, -32022);
  assert.ok(u.error.data.supported.includes('2026-07-28'));
  assert.equal(u.error.data.requested, '2099-01-01');

  // server/discover: the child's identity and capabilities, with caching hints.
  const discover = await post(
    { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'server/discover' },
    { jsonrpc: '2.0', id: 'd', method: 'server/discover', params: { _meta: meta('2026-07-28') } },
  );
  assert.equal(discover.status, 200);
  const d = (await discover.json()).result;
  assert.equal(d.resultType, 'complete');
  assert.equal(d.supportedVersions[0], '2026-07-28');
  assert.ok(d.capabilities.tools, JSON.stringify(d));
  assert.ok(d._meta['io.modelcontextprotocol/serverInfo'].name, JSON.stringify(d));
  assert.equal(d.ttlMs, 90_000, '--stdio-cache-ttl');
  assert.equal(d.cacheScope, 'private');

  for (const method of ['GET', 'DELETE']) {
    const r = await fetch(proxy.resource, {
      method,
      headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
    });
    assert.equal(r.status, 405, method);
  }
});

test('a requestState altered or used twice is refused; a capability not declared is -32021', async () => {
  const provider = new TestProvider(new Browser());
  await (await connectModern(provider, { pin: '2026-07-28' })).close();
  const token = provider.tokens().access_token;
  const post = (id, capabilities, params = {}) =>
    statelessToolCall(proxy.resource, token, { id, name: 'trigger-elicitation-request', capabilities, params });

  const first = await post(1, { elicitation: {} });
  assert.equal(first.status, 200);
  assert.equal(first.body.result.resultType, 'input_required', JSON.stringify(first.body));
  const { inputRequests, requestState } = first.body.result;
  const [key] = Object.keys(inputRequests);
  assert.equal(inputRequests[key].method, 'elicitation/create');

  // Altered: one character of the sealed state changed.
  const i = Math.floor(requestState.length / 2);
  const altered = requestState.slice(0, i) + (requestState[i] === 'A' ? 'B' : 'A') + requestState.slice(i + 1);
  const answer = { inputResponses: { [key]: { action: 'decline' } } };
  const bad = await post(2, { elicitation: {} }, { ...answer, requestState: altered });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, -32602);
  assert.match(bad.body.error.message, /altered/);

  // The real retry completes the call; the same state again is refused.
  const done = await post(3, { elicitation: {} }, { ...answer, requestState });
  assert.equal(done.status, 200, JSON.stringify(done.body));
  assert.equal(done.body.id, 3);
  assert.equal(done.body.result.resultType, 'complete');
  assert.match(JSON.stringify(done.body.result.content), /decline/i);
  const replayed = await post(4, { elicitation: {} }, { ...answer, requestState });
  assert.equal(replayed.status, 400);
  assert.match(replayed.body.error.message, /already used/);

  // A client that declared no elicitation is never asked: the call ends, and the client
  // learns what it lacked.
  const undeclared = await post(5, {});
  assert.equal(undeclared.status, 400, JSON.stringify(undeclared.body));
  assert.equal(undeclared.body.error.code, -32021);
  assert.deepEqual(undeclared.body.error.data.requiredCapabilities, { elicitation: {} });
});

test('the roots/list a child asks once initialized does not end the first call of a client without roots', async () => {
  // A fresh proxy: its first stateless call starts the user's child. server-everything asks
  // roots/list as soon as it is initialized (the bridge declares roots, to relay them), while
  // that call runs; the question is the connection's, not the call's.
  const fresh = await startProxy({ command: everythingStdio() });
  try {
    const provider = new TestProvider(new Browser());
    // Signed in through a 2025 session, which has a child of its own.
    await (await connect(fresh.resource, provider)).close();
    const { status, body } = await statelessToolCall(fresh.resource, provider.tokens().access_token, {
      id: 1,
      name: 'trigger-long-running-operation',
      args: { duration: 1, steps: 1 },
    });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.result.resultType, 'complete', JSON.stringify(body));
    assert.match(JSON.stringify(body.result.content), /completed/i);
  } finally {
    await fresh.stop();
  }
});

test('a stdio server that speaks 2026-07-28 itself is relayed as it is, and 2025 clients still reach it', async () => {
  const fixture = ['node', new URL('./fixtures/v2-stdio-server.mjs', import.meta.url).pathname];
  const v2 = await startProxy({ command: fixture });
  try {
    const provider = new TestProvider(new Browser());
    const client = await connectTo(v2.resource, provider, { pin: '2026-07-28' });
    assert.equal(client.getProtocolEra(), 'modern');
    const r = await client.callTool({ name: 'whoami', arguments: { message: 'modern' } });
    assert.match(r.content[0].text, /v2 fixture: modern/);
    // Its subscription stream comes back through the bridge: the server's own
    // acknowledgement, tagged with the client's request id.
    const sub = await client.listen({ toolsListChanged: true });
    assert.deepEqual(sub.honoredFilter, { toolsListChanged: true });
    await sub.close();
    await client.close();
    // The proxy did not initialize that child: it answered server/discover itself.
    assert.ok(
      v2.logs.some((l) => l.includes('speaks 2026-07-28')),
      'the proxy logs that the server is modern',
    );

    const legacy = await connect(v2.resource, new TestProvider(new Browser()));
    const l = await legacy.callTool({ name: 'whoami', arguments: { message: 'legacy' } });
    assert.match(l.content[0].text, /v2 fixture: legacy/);
    await legacy.close();
  } finally {
    await v2.stop();
  }
});
