// The stdio bridge in shared mode (`--stdio-mode shared`): one server-everything child serves
// every session. Two SDK clients, signed in through our OAuth flow, use the same request ids
// and progress tokens at the same time; each must get its own answers, its own progress and
// its own sampling requests, and the child must start once.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';

import { Browser, canonical, childrenOf, everythingStdio, startProxy } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const SECRET = 'stdio-shared-e2e-password';
let proxy;

before(async () => {
  proxy = await startProxy({ command: everythingStdio(), password: SECRET, args: ['--stdio-mode', 'shared'] });
});

after(async () => {
  await proxy?.stop();
});



/** A signed-in client whose sampling handler answers with `label`. */
async function signedIn(label) {
  const provider = new TestProvider(new Browser(), { password: SECRET });
  const client = await connect(proxy.resource, provider, { sampling: {} });
  const asked = [];
  client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
    asked.push(req.params);
    return { model: 'test-model', role: 'assistant', content: { type: 'text', text: `sampled by ${label}` } };
  });
  return { client, asked };
}

test('two sessions share one child, and each gets only its own messages', async () => {
  const a = await signedIn('a');
  const b = await signedIn('b');
  assert.equal(childrenOf(proxy.child.pid).length, 1, 'one child for both sessions');

  // The same tools as over plain stdio (to a client with the same capabilities: the server
  // offers tools by what the client can do), on both sessions.
  const direct = new Client({ name: 'direct', version: '1.0.0' }, { capabilities: { sampling: {} } });
  const [command, ...args] = everythingStdio();
  await direct.connect(new StdioClientTransport({ command, args, stderr: 'ignore' }));
  const expected = await direct.listTools();
  await direct.close();
  const [la, lb] = await Promise.all([a.client.listTools(), b.client.listTools()]);
  assert.deepEqual(canonical(la), canonical(expected));
  assert.deepEqual(canonical(lb), canonical(expected));

  // Concurrent calls with the same ids and progress tokens on both sessions.
  const progress = { a: [], b: [] };
  const long = (who, label, steps) =>
    who.client.callTool({ name: 'trigger-long-running-operation', arguments: { duration: 1, steps } }, undefined, {
      onprogress: (p) => progress[label].push(p),
    });
  const [ra, rb] = await Promise.all([long(a, 'a', 2), long(b, 'b', 4)]);
  assert.match(JSON.stringify(ra.content), /completed/i);
  assert.match(JSON.stringify(rb.content), /completed/i);
  assert.ok(progress.a.length >= 1 && progress.a.every((p) => p.total === 2), JSON.stringify(progress.a));
  assert.ok(progress.b.length >= 3 && progress.b.every((p) => p.total === 4), JSON.stringify(progress.b));

  // A sampling request goes to the session whose call caused it.
  const sample = (who, prompt) => who.client.callTool({ name: 'trigger-sampling-request', arguments: { prompt, maxTokens: 5 } });
  assert.match(JSON.stringify((await sample(a, 'from a')).content), /sampled by a/);
  assert.match(JSON.stringify((await sample(b, 'from b')).content), /sampled by b/);
  assert.equal(a.asked.length, 1);
  assert.equal(b.asked.length, 1);
  assert.match(JSON.stringify(a.asked[0]), /from a/);
  assert.match(JSON.stringify(b.asked[0]), /from b/);

  // While both sessions have calls running, nothing tells whose a sampling request is: the
  // proxy refuses it rather than show one user's prompt to another.
  const [pa, pb] = await Promise.allSettled([sample(a, 'both a'), sample(b, 'both b')]);
  for (const [who, r] of [[a, pa], [b, pb]]) {
    for (const q of who.asked) assert.doesNotMatch(JSON.stringify(q), who === a ? /both b/ : /both a/);
    if (r.status === 'fulfilled' && !r.value.isError) assert.match(JSON.stringify(r.value.content), who === a ? /sampled by a/ : /sampled by b/);
  }

  // One session ending leaves the child to the other.
  await a.client.close();
  const r = await b.client.callTool({ name: 'echo', arguments: { message: 'still here' } });
  assert.match(r.content[0].text, /still here/);
  await b.client.close();
  const c = await signedIn('c');
  const again = await c.client.callTool({ name: 'echo', arguments: { message: 'new session' } });
  assert.match(again.content[0].text, /new session/);
  assert.equal(childrenOf(proxy.child.pid).length, 1, 'still the one child');
  await c.client.close();
});
