// Forward-auth behind a real nginx (Debian): nginx's auth_request asks our /authenticate for
// every /mcp request and sends everything else (metadata, registration, sign-in, tokens) to
// our proxy, which runs with no backend. The TypeScript SDK client discovers, signs in and
// calls a tool of server-everything through nginx alone. The nginx configuration is
// docs/forward-auth/nginx.conf with test ports and no TLS.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { Browser, ROOT, freePort, startEverything, startProxy } from './harness.mjs';
import { startNginx } from './nginx.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

let everything;
let proxy;
let nginx;
let origin;

before(async () => {
  everything = await startEverything();
  const nginxPort = await freePort();
  origin = `http://127.0.0.1:${nginxPort}`;
  proxy = await startProxy({ externalUrl: origin, args: ['--trusted-proxies', '127.0.0.1'] });
  const proxyPort = new URL(proxy.origin).port;
  // The documented configuration, adapted: plain http on a test port, our ports.
  const site = readFileSync(path.join(ROOT, 'docs/forward-auth/nginx.conf'), 'utf8')
    .replace('server 127.0.0.1:8080;', `server 127.0.0.1:${proxyPort};`)
    .replace('server 127.0.0.1:3000; keepalive 16;', `server 127.0.0.1:${everything.port}; keepalive 16;`)
    .replace('listen 443 ssl;', `listen 127.0.0.1:${nginxPort};`)
    .replace('http2 on;', '');
  assert.ok(site.includes(`127.0.0.1:${proxyPort}`) && site.includes(`listen 127.0.0.1:${nginxPort}`));
  nginx = await startNginx(site, `${origin}/.well-known/oauth-authorization-server`);
});

after(async () => {
  await nginx?.stop();
  await proxy?.stop();
  await everything?.stop();
});

test('an SDK client signs in and calls a tool through nginx auth_request', async () => {
  // Without a token nginx answers 401 with our challenge, which starts discovery.
  const bare = await fetch(`${origin}/mcp`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
  });
  assert.equal(bare.status, 401);
  assert.match(bare.headers.get('www-authenticate') ?? '', new RegExp(`resource_metadata="${origin}/\\.well-known/oauth-protected-resource/mcp"`));

  const provider = new TestProvider(new Browser());
  const client = await connect(`${origin}/mcp`, provider);
  assert.equal(provider.sessions, 1);
  const r = await client.callTool({ name: 'echo', arguments: { message: 'through nginx' } });
  assert.match(r.content[0].text, /through nginx/);
  await client.close();
});
