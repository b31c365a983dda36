// How long a revocation at one replica takes to reach another's cache of checked tokens:
// sign in (through the load balancer), have replica B check the token (now cached at B),
// revoke it at replica A, then ask B until it answers 401. Repeated N times; median and
// max in ms. Usage: node bench/propagation.mjs N PUBLIC_ORIGIN A B (PASSWORD in the
// environment; A and B are the replicas' own addresses, asked with the public Host; they
// trust 127.0.0.1's X-Forwarded-For, see forwarded.mjs).
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { Browser } from '../tests/e2e/harness.mjs';
import { forwardedFor, nextClient } from './forwarded.mjs';
import { signInClient } from './sign-in.mjs';

const [n, origin, a, b] = process.argv.slice(2);
const host = new URL(origin).host;
const call = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { message: 'x' } } });

/** A request to one replica as the public URL names it (node's fetch will not set Host). */
function post(base, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, base), { method: 'POST', headers: { host, 'x-forwarded-for': forwardedFor(), ...headers } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(body);
  });
}
const atB = (token) => post(b, '/mcp', { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, call);

const browser = new Browser();
const times = [];
for (let i = 0; i < Number(n); i++) {
  nextClient();
  const { access, clientId } = await signInClient(origin, browser, process.env.PASSWORD);
  if (await atB(access) !== 200) throw new Error("B does not honour the token");
  const form = new URLSearchParams({ token: access, client_id: clientId }).toString();
  if (await post(a, '/revoke', { 'content-type': 'application/x-www-form-urlencoded' }, form) !== 200) {
    throw new Error('revocation at A failed');
  }
  const started = performance.now();
  while (await atB(access) !== 401) {
    if (performance.now() - started > 5000) throw new Error('not propagated within 5 s');
  }
  times.push(performance.now() - started);
}
times.sort((x, y) => x - y);
console.log(`revocation at A seen at B, over ${times.length}: median ${times[Math.floor(times.length / 2)].toFixed(1)} ms, max ${times.at(-1).toFixed(1)} ms`);
