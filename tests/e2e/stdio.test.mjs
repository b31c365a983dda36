// The stdio bridge, end to end: the TypeScript SDK client signs in through our OAuth flow
// and talks to @modelcontextprotocol/server-everything running as a stdio child of the proxy.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';

import { Browser, canonical, childrenOf, everythingStdio, startProxy } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const SECRET = 'stdio-e2e-secret-password';
let proxy;

before(async () => {
  proxy = await startProxy({ command: everythingStdio(), password: SECRET, env: { PASSWORD: SECRET, API_KEY: 'for-the-server' } });
});

after(async () => {
  await proxy?.stop();
});


async function signedIn(capabilities = {}) {
  const provider = new TestProvider(new Browser(), { password: SECRET });
  return connect(proxy.resource, provider, capabilities);
}

test('tools/list through the bridge is what the server says over plain stdio', async () => {
  const direct = new Client({ name: 'direct', version: '1.0.0' });
  const [command, ...args] = everythingStdio();
  await direct.connect(new StdioClientTransport({ command, args, stderr: 'ignore' }));
  const expected = await direct.listTools();
  await direct.close();

  const client = await signedIn();
  const got = await client.listTools();
  assert.deepEqual(canonical(got), canonical(expected));
  const r = await client.callTool({ name: 'echo', arguments: { message: 'over stdio' } });
  assert.match(r.content[0].text, /over stdio/);
  await client.close();
});

test('progress notifications arrive while a long tool runs', async () => {
  const client = await signedIn();
  const progress = [];
  const r = await client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push(p) },
  );
  assert.ok(progress.length >= 2, `progress: ${JSON.stringify(progress)}`);
  assert.match(JSON.stringify(r.content), /completed/i);
  await client.close();
});

test('a sampling request from the server is answered by the client', async () => {
  const client = await signedIn({ sampling: {} });
  let asked = 0;
  client.setRequestHandler(CreateMessageRequestSchema, async () => {
    asked += 1;
    return { model: 'test-model', role: 'assistant', content: { type: 'text', text: 'sampled answer' } };
  });
  const r = await client.callTool({ name: 'trigger-sampling-request', arguments: { prompt: 'hi', maxTokens: 10 } });
  assert.equal(asked, 1);
  assert.match(JSON.stringify(r.content), /sampled answer/);
  await client.close();
});

test('two sessions run side by side, each with its own child', async () => {
  const [a, b] = await Promise.all([signedIn(), signedIn()]);
  const [ra, rb] = await Promise.all([
    a.callTool({ name: 'echo', arguments: { message: 'from a' } }),
    b.callTool({ name: 'echo', arguments: { message: 'from b' } }),
  ]);
  assert.match(ra.content[0].text, /from a/);
  assert.match(rb.content[0].text, /from b/);
  await a.close();
  // b is unaffected by a's end.
  const again = await b.callTool({ name: 'echo', arguments: { message: 'still here' } });
  assert.match(again.content[0].text, /still here/);
  await b.close();
});

test('the child sees its own variables but none of the proxy secrets', async () => {
  const client = await signedIn();
  const r = await client.callTool({ name: 'get-env', arguments: {} });
  const text = JSON.stringify(r.content);
  assert.match(text, /for-the-server/, 'variables meant for the server arrive');
  assert.doesNotMatch(text, new RegExp(SECRET), 'the proxy password never does');
  assert.doesNotMatch(text, /"PASSWORD"|PASSWORD=/);
  await client.close();
});

test('an elicitation from the server is answered by the client', async () => {
  const { ElicitRequestSchema } = await import('@modelcontextprotocol/sdk/types.js');
  const client = await signedIn({ elicitation: {} });
  let asked = 0;
  client.setRequestHandler(ElicitRequestSchema, async (req) => {
    asked += 1;
    assert.ok(req.params.requestedSchema.properties.name);
    return { action: 'decline' };
  });
  const r = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} });
  assert.equal(asked, 1);
  assert.match(JSON.stringify(r.content), /decline/i);
  await client.close();
});

test('server-initiated notifications arrive on the GET stream', async () => {
  const { ResourceUpdatedNotificationSchema } = await import('@modelcontextprotocol/sdk/types.js');
  const client = await signedIn();
  const updated = new Promise((resolve) => client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => resolve(n)));
  const { resources } = await client.listResources();
  await client.subscribeResource({ uri: resources[0].uri });
  await client.callTool({ name: 'toggle-subscriber-updates', arguments: {} });
  // server-everything sends its simulated updates every 5 s, outside any request.
  const n = await Promise.race([updated, new Promise((_, reject) => setTimeout(() => reject(new Error('no update within 12 s')), 12_000))]);
  assert.equal(n.params.uri, resources[0].uri);
  await client.close();
});


test('a child killed mid-call fails the call at once, and a new session works', async () => {
  const before = new Set(childrenOf(proxy.child.pid));
  const client = await signedIn();
  const mine = childrenOf(proxy.child.pid).filter((p) => !before.has(p));
  assert.equal(mine.length, 1, `one new child for the session: ${mine}`);
  const started = Date.now();
  const call = client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 30, steps: 30 } });
  await new Promise((r) => setTimeout(r, 500));
  process.kill(mine[0], 'SIGKILL');
  await assert.rejects(call, /exited|MCP server/i);
  assert.ok(Date.now() - started < 10_000, 'failed at once, not after the 30 s operation');
  await client.close().catch(() => {});
  const fresh = await signedIn();
  const r = await fresh.callTool({ name: 'echo', arguments: { message: 'after the crash' } });
  assert.match(r.content[0].text, /after the crash/);
  await fresh.close();
});

test('resource templates, completions, roots and cancellation cross the bridge', async () => {
  const { ListRootsRequestSchema } = await import('@modelcontextprotocol/sdk/types.js');
  const direct = new Client({ name: 'direct', version: '1.0.0' });
  const [command, ...args] = everythingStdio();
  await direct.connect(new StdioClientTransport({ command, args, stderr: 'ignore' }));
  const expectedTemplates = await direct.listResourceTemplates();
  await direct.close();

  const client = await signedIn({ roots: { listChanged: true } });
  let rootsAsked = 0;
  client.setRequestHandler(ListRootsRequestSchema, async () => {
    rootsAsked += 1;
    return { roots: [{ uri: 'file:///work/project', name: 'project' }] };
  });
  const templates = await client.listResourceTemplates();
  assert.ok(templates.resourceTemplates.length > 0);
  assert.deepEqual(canonical(templates), canonical(expectedTemplates));

  const completion = await client.complete({
    ref: { type: 'ref/prompt', name: 'completable-prompt' },
    argument: { name: 'department', value: 'Eng' },
  });
  assert.deepEqual(completion.completion.values, ['Engineering']);

  // The server asks for the roots on its own (no request of ours open) and the tool shows them.
  const roots = await client.callTool({ name: 'get-roots-list', arguments: {} });
  assert.match(JSON.stringify(roots.content), /file:\/\/\/work\/project/);
  assert.ok(rootsAsked >= 1);

  // A cancelled call ends at once and the session goes on.
  const controller = new AbortController();
  const started = Date.now();
  const long = client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 20, steps: 20 } }, undefined, {
    signal: controller.signal,
  });
  setTimeout(() => controller.abort('changed my mind'), 300);
  await assert.rejects(long, /abort|changed my mind/i);
  assert.ok(Date.now() - started < 5_000);
  const r = await client.callTool({ name: 'echo', arguments: { message: 'after the cancel' } });
  assert.match(r.content[0].text, /after the cancel/);
  await client.close();
});

