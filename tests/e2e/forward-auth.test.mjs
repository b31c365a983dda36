// Forward-auth behind a real nginx (Debian): nginx's auth_request asks our /authenticate for
// every /mcp request and sends everything else (metadata, registration, sign-in, tokens) to
// our proxy, which runs with no backend. The TypeScript SDK client discovers, signs in and
// calls a tool of server-everything through nginx alone. The nginx configuration is
// docs/forward-auth/nginx.conf with test ports and no TLS.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { Browser, ROOT, freePort, startEverything, startProxy, stopChild } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p)) ?? 'nginx';
let everything;
let proxy;
let nginx;
let dir;
let origin;

before(async () => {
  everything = await startEverything();
  const nginxPort = await freePort();
  origin = `http://127.0.0.1:${nginxPort}`;
  proxy = await startProxy({ externalUrl: origin, args: ['--trusted-proxies', '127.0.0.1'] });
  const proxyPort = new URL(proxy.origin).port;
  dir = mkdtempSync(path.join(os.tmpdir(), 'mcp-nginx-'));
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(path.join(dir, d));
  // The documented configuration, adapted: plain http on a test port, our ports.
  const site = readFileSync(path.join(ROOT, 'docs/forward-auth/nginx.conf'), 'utf8')
    .replace('server 127.0.0.1:8080;', `server 127.0.0.1:${proxyPort};`)
    .replace('server 127.0.0.1:3000; keepalive 16;', `server 127.0.0.1:${everything.port}; keepalive 16;`)
    .replace('listen 443 ssl;', `listen 127.0.0.1:${nginxPort};`)
    .replace('http2 on;', '');
  assert.ok(site.includes(`127.0.0.1:${proxyPort}`) && site.includes(`listen 127.0.0.1:${nginxPort}`));
  writeFileSync(
    path.join(dir, 'nginx.conf'),
    `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
${site}
}
`,
  );
  nginx = spawn(NGINX, ['-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'error.log')], { stdio: ['ignore', 'ignore', 'pipe'] });
  for (let i = 0; i < 100; i++) {
    try {
      await fetch(`${origin}/.well-known/oauth-authorization-server`);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`nginx did not start: ${existsSync(path.join(dir, 'error.log')) ? readFileSync(path.join(dir, 'error.log'), 'utf8') : ''}`);
});

after(async () => {
  if (nginx) await stopChild(nginx);
  await proxy?.stop();
  await everything?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
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
