// The soak load of bench/soak.sh: for SECONDS, at once and without pause but for sign-ins,
//   - people signing in (registration, PKCE, login, consent, token) and refreshing once,
//     one a second (SOAK_SIGN_INS_PER_SECOND);
//   - 3 clients calling tools/call (echo) on their sessions, each session closed (DELETE) and
//     a new one opened every 200 calls;
//   - 2 clients opening the GET (SSE) stream of their session and dropping it 50 ms later;
//   - 1 client making stateless 2026-07-28 tools/call requests.
// The proxy's RSS (process PID, children excluded) is sampled every 5 s. Prints one JSON
// object: counts per kind, errors per kind (with the first few), and the RSS samples and
// slope (least squares over the samples after the first fifth, in KiB per minute).
//
// Sign-ins come from 50 addresses in turn (X-Forwarded-For, the proxy trusting loopback), as
// a team's people do: one address would meet the per-client bound on pending sign-ins.
// SOAK_ONLY=kind[,kind…] runs only those kinds (sign-in, call, stream, stateless), to find
// which one moves the memory. One more kind runs only when named there: `refresh`, one
// signed-in client refreshing its tokens SOAK_REFRESHES_PER_SECOND times a second (default
// 20), each refresh with the token the last one returned, as a client that stays signed in
// for weeks does once an hour.
//
// Usage: node bench/soak.mjs ORIGIN PASSWORD PID SECONDS
import { readFileSync } from 'node:fs';
import { Browser } from '../tests/e2e/harness.mjs';
import { nextClient } from './forwarded.mjs';
import { signInClient } from './sign-in.mjs';

const only = process.env.SOAK_ONLY?.split(',');
const runs = (kind) => !only || only.includes(kind);

const [origin, password, pid, seconds] = process.argv.slice(2);
const mcp = `${origin}/mcp`;
const until = Date.now() + Number(seconds) * 1000;
const counts = {}, errors = {}, firstErrors = [];
const count = (k) => { counts[k] = (counts[k] ?? 0) + 1; };
const fail = (k, e) => {
  errors[k] = (errors[k] ?? 0) + 1;
  if (firstErrors.length < 10) firstErrors.push(`${k}: ${String(e).slice(0, 300)}`);
};

const { access } = await signInClient(origin, new Browser(), password);
const base = { authorization: `Bearer ${access}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' };

async function rpc(body, sid, extra = {}) {
  const headers = { ...base, 'mcp-protocol-version': '2025-06-18', ...extra };
  if (sid) headers['mcp-session-id'] = sid;
  const res = await fetch(mcp, { method: 'POST', headers, body: JSON.stringify(body) });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${res.status} ${text.slice(0, 200)}`);
  return { sid: res.headers.get('mcp-session-id'), text };
}

async function openSession() {
  const r = await rpc({ jsonrpc: '2.0', id: 0, method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'soak', version: '1' } } });
  await rpc({ jsonrpc: '2.0', method: 'notifications/initialized' }, r.sid);
  return r.sid;
}

async function closeSession(sid) {
  const res = await fetch(mcp, { method: 'DELETE', headers: { ...base, 'mcp-session-id': sid } });
  await res.arrayBuffer();
  if (res.status >= 300) throw new Error(`DELETE ${res.status}`);
}

async function loop(kind, step) {
  while (Date.now() < until) {
    try { await step(); count(kind); } catch (e) { fail(kind, e); await new Promise((r) => setTimeout(r, 100)); }
  }
}

// People sign in at SOAK_SIGN_INS_PER_SECOND (default 1: a busy team's morning, every
// minute of the run); each one's records stay in the store as long as their tokens live, so
// signing in as fast as possible measures the store's growth, not the proxy's leaks.
const signInGap = 1000 / Number(process.env.SOAK_SIGN_INS_PER_SECOND ?? 1);
const signer = runs('sign-in') && loop('sign-in+refresh', async () => {
  const next = Date.now() + signInGap;
  nextClient(50);
  const c = await signInClient(origin, new Browser(), password);
  const res = await fetch(`${origin}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: c.refresh, client_id: c.clientId }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`refresh ${res.status} ${text.slice(0, 200)}`);
  await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
});

const refreshGap = 1000 / Number(process.env.SOAK_REFRESHES_PER_SECOND ?? 20);
const refresher = only?.includes('refresh') && (async () => {
  const c = await signInClient(origin, new Browser(), password);
  let token = c.refresh;
  await loop('refresh', async () => {
    const next = Date.now() + refreshGap;
    const res = await fetch(`${origin}/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: token, client_id: c.clientId }),
    });
    const body = await res.json();
    if (res.status !== 200) throw new Error(`refresh ${res.status} ${JSON.stringify(body).slice(0, 200)}`);
    token = body.refresh_token;
    await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
  });
})();

const callers = !runs('call') ? [] : Array.from({ length: 3 }, async (_, w) => {
  let sid = await openSession();
  let n = 0;
  await loop('call', async () => {
    n++;
    if (n % 200 === 0) {
      await closeSession(sid);
      sid = await openSession();
      count('session-renewed');
    }
    const r = await rpc({ jsonrpc: '2.0', id: n, method: 'tools/call', params: { name: 'echo', arguments: { message: `w${w}` } } }, sid);
    if (!r.text.includes('"result"')) throw new Error(r.text.slice(0, 200));
  });
});

const streamers = !runs('stream') ? [] : Array.from({ length: 2 }, async () => {
  const sid = await openSession();
  await loop('stream-dropped', async () => {
    const abort = new AbortController();
    const res = await fetch(mcp, { headers: { ...base, accept: 'text/event-stream', 'mcp-session-id': sid }, signal: abort.signal });
    if (res.status !== 200) throw new Error(`GET ${res.status}`);
    await new Promise((r) => setTimeout(r, 50));
    abort.abort();
  });
});

const stateless = runs('stateless') && loop('stateless-call', async () => {
  const meta = { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientCapabilities': {} };
  const r = await rpc({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { message: 'x' }, _meta: meta } },
    null, { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'echo' });
  if (!r.text.includes('"complete"')) throw new Error(r.text.slice(0, 200));
});

const samples = [];
const started = Date.now();
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
samples.push([0, rss()]);
const sampler = setInterval(() => samples.push([(Date.now() - started) / 1000, rss()]), 5000);
await Promise.all([signer, refresher, ...callers, ...streamers, stateless]);
clearInterval(sampler);
samples.push([(Date.now() - started) / 1000, rss()]);

// Least squares over the samples after the first fifth (warm-up): KiB per minute.
const kept = samples.filter(([t]) => t >= Number(seconds) / 5);
const n = kept.length;
const mt = kept.reduce((s, [t]) => s + t, 0) / n, mr = kept.reduce((s, [, r]) => s + r, 0) / n;
const slope = kept.reduce((s, [t, r]) => s + (t - mt) * (r - mr), 0) / kept.reduce((s, [t]) => s + (t - mt) ** 2, 0);
console.log(JSON.stringify({
  seconds: Number(seconds), counts, errors, firstErrors,
  rss_kib: { first: samples[0][1], after_warmup: kept[0]?.[1], last: samples.at(-1)[1], max: Math.max(...samples.map(([, r]) => r)) },
  slope_kib_per_min: Number((slope * 60).toFixed(1)),
  samples: samples.map(([t, r]) => [Math.round(t), r]),
}, null, 1));
