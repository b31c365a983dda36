// The store's share of the proxy's latency, for each proxy origin given (say, one on the
// embedded store and one on PostgreSQL), interleaved in ROUNDS rounds:
//   flow: one client's whole sign-in, register → authorize → consent → code → token, with a
//         browser already signed in (so the password's bcrypt is paid once, not per flow);
//   cold: the first request of a fresh access token at the MCP endpoint (the gate reads the
//         token from the store), against warm: the same token's next request (from memory).
// Sequential requests, one at a time, timed with performance.now(): latencies, not
// throughput. Usage: node bench/store.mjs ROUNDS NAME=ORIGIN… (PASSWORD in the environment).
// The proxies must trust 127.0.0.1 as a proxy (--trusted-proxies): each sign-in comes from
// its own X-Forwarded-For address, so the per-client bound on pending sign-ins (60) does not
// stop hundreds of them.
import { performance } from 'node:perf_hooks';
import { Browser } from '../tests/e2e/harness.mjs';
import { nextClient } from './forwarded.mjs';
import { signIn } from './sign-in.mjs';

const [rounds, ...targets] = process.argv.slice(2);
const password = process.env.PASSWORD;
const FLOWS = 20;
const TOKENS = 100;
const call = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { message: 'bench' } } });

async function timedCall(origin, token) {
  const started = performance.now();
  const res = await fetch(`${origin}/mcp`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: call,
  });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`mcp: ${res.status}`);
  return performance.now() - started;
}

const samples = Object.fromEntries(targets.map((t) => [t.split('=')[0], { flow: [], cold: [], warm: [] }]));
const browsers = {};
for (let round = 1; round <= Number(rounds); round++) {
  for (const t of targets) {
    const [name, origin] = t.split('=');
    browsers[name] ??= new Browser();
    const s = samples[name];
    for (let i = 0; i < FLOWS; i++) {
      nextClient();
      const started = performance.now();
      await signIn(origin, browsers[name], password);
      s.flow.push(performance.now() - started);
    }
    const tokens = [];
    for (let i = 0; i < TOKENS; i++) {
      nextClient();
      tokens.push(await signIn(origin, browsers[name], password));
    }
    for (const token of tokens) {
      s.cold.push(await timedCall(origin, token));
      s.warm.push(await timedCall(origin, token));
    }
    console.error(`round ${round} ${name}: done`);
  }
}

const pct = (xs, p) => {
  const a = [...xs].sort((x, y) => x - y);
  return a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))].toFixed(2);
};
console.log('| store | sign-in flow p50 / p99 ms | cold token p50 / p99 ms | warm token p50 / p99 ms |');
console.log('|---|---|---|---|');
for (const [name, s] of Object.entries(samples)) {
  console.log(`| ${name} | ${pct(s.flow, 50)} / ${pct(s.flow, 99)} | ${pct(s.cold, 50)} / ${pct(s.cold, 99)} | ${pct(s.warm, 50)} / ${pct(s.warm, 99)} |`);
}
