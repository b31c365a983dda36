// Two replicas on one PostgreSQL database behind a real nginx, configured as the README's
// "Running several replicas" says (requests without a session spread over both; a session's
// requests go to the replica its id names): the official SDK client signs in through the
// pair and calls tools, on an HTTP upstream and on a stdio server (whose sessions live in
// one replica).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';

import { Browser, everythingStdio, freePorts, startEverything, startProxy, statelessToolCall } from './harness.mjs';
import { startNginx } from './nginx.mjs';
import { startPostgres } from './postgres.mjs';
import { TestProvider, connect, connectModern } from './sdk-client.mjs';

let pg;
let upstream;
let nginx;
const replicas = { http: [], stdio: [] };
const fronts = {};

/** The http block: each front spreads requests over its replicas, except that a request of
 * a session goes to the replica its id names, as the README's configuration (and
 * docs/docker/nginx-replicas.conf) does: one upstream per replica id, one for the rest. */
function nginxHttp(servers) {
  const upstreamOf = (id) => `replica_${id.replace(/[^A-Za-z0-9]/g, '_')}`;
  const blocks = Object.entries(servers).map(([name, { listen, ids, ports }]) => `
  map $mcp_replica $route_${name} {
${ids.map((id) => `    ${id} ${upstreamOf(id)};`).join('\n')}
    default ${name};
  }
  upstream ${name} {
    hash $http_authorization consistent;
    ${ports.map((p) => `server 127.0.0.1:${p};`).join('\n    ')}
  }
${ids.map((id, i) => `  upstream ${upstreamOf(id)} { server 127.0.0.1:${ports[i]}; }`).join('\n')}
  server {
    listen 127.0.0.1:${listen};
    location / {
      proxy_pass http://$route_${name};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }`).join('\n');
  return `  map $http_mcp_session_id $mcp_replica {
    "~^(?<replica>.+)\\.[^.]+$" $replica;
    default "";
  }
${blocks}`;
}

before(async () => {
  pg = await startPostgres();
  upstream = await startEverything();
  const [httpFront, stdioFront, ...ports] = await freePorts(6);
  fronts.http = `http://127.0.0.1:${httpFront}`;
  fronts.stdio = `http://127.0.0.1:${stdioFront}`;
  const env = { REPOSITORY_DSN: pg.dsn, ENCRYPTION_KEY: randomBytes(32).toString('base64') };
  const args = ['--repository-backend', 'postgres', '--trusted-proxies', '127.0.0.1'];
  for (const [i, port] of ports.slice(0, 2).entries()) {
    replicas.http.push(await startProxy({ backend: upstream.url, port, externalUrl: fronts.http, args: [...args, '--replica-id', `http-${i}`], env }));
  }
  for (const [i, port] of ports.slice(2).entries()) {
    replicas.stdio.push(await startProxy({ command: everythingStdio(), port, externalUrl: fronts.stdio, args: [...args, '--replica-id', `stdio-${i}`], env }));
  }
  nginx = await startNginx(nginxHttp({
    http_replicas: { listen: httpFront, ports: ports.slice(0, 2), ids: ['http-0', 'http-1'] },
    stdio_replicas: { listen: stdioFront, ports: ports.slice(2), ids: ['stdio-0', 'stdio-1'] },
  }), `${fronts.stdio}/healthz`);
});

after(async () => {
  await nginx?.stop();
  for (const r of [...replicas.http, ...replicas.stdio]) await r.stop();
  await upstream?.stop();
  pg?.stop();
});

/** How many requests each replica logged (its request log line names the route). */
const served = (rs) => rs.map((r) => r.logs.filter((l) => l.includes('"route"')).length);

for (const kind of ['http', 'stdio']) {
  test(`the SDK client signs in through two replicas and calls tools (${kind} backend)`, async () => {
    const before = served(replicas[kind]);
    const provider = new TestProvider(new Browser());
    const client = await connect(`${fronts[kind]}/mcp`, provider);
    for (let i = 0; i < 10; i++) {
      const res = await client.callTool({ name: 'echo', arguments: { message: `call ${i}` } });
      assert.match(res.content[0].text, new RegExp(`call ${i}`));
    }
    await client.close();
    // A second client: its own sign-in, its own session, maybe on the other replica.
    const other = await connect(`${fronts[kind]}/mcp`, new TestProvider(new Browser()));
    const { tools } = await other.listTools();
    assert.ok(tools.some((t) => t.name === 'echo'));
    await other.close();
    const after = served(replicas[kind]);
    const each = after.map((n, i) => n - before[i]);
    assert.ok(each.every((n) => n > 0), `both replicas served requests: ${each}`);
  });
}

test('a stdio session sent to the replica that does not hold it gets 404, and the client starts anew', async () => {
  const provider = new TestProvider(new Browser());
  const client = await connect(`${fronts.stdio}/mcp`, provider);
  const sessionId = client.transport.sessionId;
  const owner = replicas.stdio.findIndex((_, i) => sessionId.startsWith(`stdio-${i}.`));
  assert.ok(owner >= 0, `the session id names its replica: ${sessionId}`);
  const other = replicas.stdio[1 - owner];
  // Straight to the other replica, as a load balancer without the rule would send it; the
  // public name travels as nginx would forward it (127.0.0.1 is a trusted proxy).
  const res = await fetch(other.url('/mcp'), {
    method: 'POST',
    headers: {
      authorization: `Bearer ${provider.tokens().access_token}`,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-session-id': sessionId,
      'mcp-protocol-version': '2025-11-25',
      'x-forwarded-host': new URL(fronts.stdio).host,
      'x-forwarded-proto': 'http',
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
  });
  assert.equal(res.status, 404, await res.text());
  await client.close();
  // A new session through the front works (the client's answer to a 404).
  const again = await connect(`${fronts.stdio}/mcp`, provider);
  const { tools } = await again.listTools();
  assert.ok(tools.some((t) => t.name === 'echo'));
  await again.close();
});

test('2026-07-28 through the pair: a question and its retry stay on one replica; a retry elsewhere is told where', async () => {
  const provider = new TestProvider(new Browser());
  const resource = `${fronts.stdio}/mcp`;
  const client = await connectModern(resource, provider, { pin: '2026-07-28' }, { elicitation: {} });
  client.setRequestHandler('elicitation/create', async () => ({ action: 'decline' }));
  for (let i = 0; i < 3; i++) {
    const r = await client.callTool({ name: 'trigger-elicitation-request', arguments: {} });
    assert.match(JSON.stringify(r.content), /decline/i);
  }
  await client.close();

  // Straight to the replicas: the question from one, the retry at the other.
  const post = (replica, id, params = {}) =>
    statelessToolCall(replica.url('/mcp'), provider.tokens().access_token, {
      id,
      name: 'trigger-elicitation-request',
      capabilities: { elicitation: {} },
      params,
      headers: { 'x-forwarded-host': new URL(fronts.stdio).host, 'x-forwarded-proto': 'http' },
    });
  const [a, b] = replicas.stdio;
  const asked = await post(a, 1);
  assert.equal(asked.body.result?.resultType, 'input_required', JSON.stringify(asked.body));
  const { requestState, inputRequests } = asked.body.result;
  const answer = { requestState, inputResponses: { [Object.keys(inputRequests)[0]]: { action: 'decline' } } };
  const elsewhere = await post(b, 2, answer);
  assert.equal(elsewhere.status, 400);
  assert.equal(elsewhere.body.error.code, -32602);
  assert.match(elsewhere.body.error.message, /held by replica stdio-0/);
  const done = await post(a, 3, answer);
  assert.equal(done.body.result?.resultType, 'complete', JSON.stringify(done.body));
});
