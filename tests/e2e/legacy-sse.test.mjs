// The 2024-11-05 HTTP+SSE transport (GET /sse + POST /messages) in front of a stdio child:
// the TypeScript SDK's own SSEClientTransport, with tokens from our OAuth flow, lists the
// tools, gets progress and answers a sampling request; closing the stream ends the child.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';

import { Browser, canonical, childrenOf, everythingStdio, startProxy, waitFor } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const SECRET = 'legacy-sse-e2e-password';
let proxy;

before(async () => {
  proxy = await startProxy({ command: everythingStdio(), password: SECRET });
});

after(async () => {
  await proxy?.stop();
});

/** Signs in over Streamable HTTP (ending that session); a provider holding the tokens. */
async function signIn() {
  const provider = new TestProvider(new Browser(), { password: SECRET });
  const first = await connect(proxy.resource, provider);
  await first.transport.terminateSession();
  await first.close();
  return provider;
}

/** A legacy SSE client with `provider`'s tokens. */
async function legacyClient(provider, capabilities = {}) {
  const client = new Client({ name: 'legacy', version: '1.0.0' }, { capabilities });
  await client.connect(new SSEClientTransport(new URL('/sse', proxy.resource), { authProvider: provider }));
  return client;
}

test('without a token the SSE endpoint answers 401 with the MCP challenge', async () => {
  const r = await fetch(new URL('/sse', proxy.resource), { headers: { accept: 'text/event-stream' } });
  assert.equal(r.status, 401);
  assert.match(r.headers.get('www-authenticate'), /resource_metadata="http/);
});

test('a 2024-11-05 SSE client works through the bridge, and closing it stops its child', async () => {
  const direct = new Client({ name: 'direct', version: '1.0.0' }, { capabilities: { sampling: {} } });
  const [command, ...args] = everythingStdio();
  await direct.connect(new StdioClientTransport({ command, args, stderr: 'ignore' }));
  const expected = await direct.listTools();
  await direct.close();

  const provider = await signIn();
  const before = new Set(childrenOf(proxy.child.pid));
  const client = await legacyClient(provider, { sampling: {} });
  try {
    await exercise(client, expected, before);
  } finally {
    await client.close();
  }
});

async function exercise(client, expected, before) {
  const mine = childrenOf(proxy.child.pid).filter((p) => !before.has(p));
  assert.equal(mine.length, 1, 'the stream has its own child');

  assert.deepEqual(canonical(await client.listTools()), canonical(expected));
  const echo = await client.callTool({ name: 'echo', arguments: { message: 'over legacy sse' } });
  assert.match(echo.content[0].text, /over legacy sse/);

  const progress = [];
  const long = await client.callTool(
    { name: 'trigger-long-running-operation', arguments: { duration: 1, steps: 3 } },
    undefined,
    { onprogress: (p) => progress.push(p) },
  );
  assert.match(JSON.stringify(long.content), /completed/i);
  assert.ok(progress.length >= 2, JSON.stringify(progress));

  let asked = 0;
  client.setRequestHandler(CreateMessageRequestSchema, async () => {
    asked += 1;
    return { model: 'm', role: 'assistant', content: { type: 'text', text: 'legacy sampled' } };
  });
  const sampled = await client.callTool({ name: 'trigger-sampling-request', arguments: { prompt: 'hi', maxTokens: 5 } });
  assert.equal(asked, 1);
  assert.match(JSON.stringify(sampled.content), /legacy sampled/);

  await client.close();
  assert.ok(
    await waitFor(() => !childrenOf(proxy.child.pid).includes(mine[0])),
    'the child stops when its stream closes',
  );
}
