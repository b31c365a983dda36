// Drivers of bench/scale.sh.
//   node bench/scale.mjs sessions URL TOKEN N      opens N MCP sessions (32 at a time), one
//                                                  call each; prints how many answered
//   node bench/scale.mjs streams URL TOKEN SID N   opens N idle SSE streams (GET) and holds
//                                                  them; prints "open N" once all are open,
//                                                  then holds until killed
//   node bench/scale.mjs h2-streams URL TOKEN SID N
//                                                  the same over HTTP/2 (cleartext, prior
//                                                  knowledge): 100 streams a connection
//   node bench/scale.mjs upstream PORT             an HTTP MCP upstream whose GET /mcp streams
//                                                  stay open and idle (one comment, then
//                                                  nothing); POSTs answer a JSON result
//   node bench/scale.mjs first-call URL TOKEN N GAP_MS
//                                                  N new sessions one after another (GAP_MS
//                                                  apart): the median and p90 milliseconds
//                                                  from initialize to the first tools/call
//                                                  answer
import http from 'node:http';
import http2 from 'node:http2';

const [mode, url, token, ...rest] = process.argv.slice(2);
const headers = {
  authorization: `Bearer ${token}`,
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
};

async function post(body, sid) {
  const h = { ...headers, 'mcp-protocol-version': '2025-06-18' };
  if (sid) h['mcp-session-id'] = sid;
  const res = await fetch(url, { method: 'POST', headers: h, body: JSON.stringify(body) });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${res.status} ${text.slice(0, 200)}`);
  return { sid: res.headers.get('mcp-session-id'), text };
}

/** A new session and its first tool call; the session id. */
async function session(n) {
  const init = await post({
    jsonrpc: '2.0', id: 0, method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'scale', version: '1' } },
  });
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, init.sid);
  const called = await post({ jsonrpc: '2.0', id: n, method: 'tools/call', params: { name: 'echo', arguments: { message: 'hi' } } }, init.sid);
  if (!called.text.includes('"result"')) throw new Error(`call: ${called.text.slice(0, 200)}`);
  return init.sid;
}

if (mode === 'upstream') {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.headers.accept ?? '').includes('text/event-stream')) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
      res.write(': open\n\n');
      return;
    }
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': 'upstream-session' });
      res.end('{"jsonrpc":"2.0","id":1,"result":{}}');
    });
  });
  server.maxConnections = 100000;
  server.keepAliveTimeout = 0;
  server.headersTimeout = 0;
  server.requestTimeout = 0;
  server.listen(Number(url), '127.0.0.1');
} else if (mode === 'sessions') {
  const total = Number(rest[0]);
  let next = 0, ok = 0, failed = 0;
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (next < total) {
      const n = next++;
      try { await session(n); ok++; } catch (e) { failed++; if (failed < 5) console.error(String(e)); }
    }
  }));
  console.log(`sessions ${ok} failed ${failed}`);
} else if (mode === 'streams') {
  const [sid, n] = [rest[0], Number(rest[1])];
  const target = new URL(url);
  let open = 0, failed = 0;
  const one = () => new Promise((resolve) => {
    const req = http.request({
      host: target.hostname, port: target.port, path: target.pathname, method: 'GET', agent: false,
      headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream', 'mcp-session-id': sid },
    }, (res) => {
      if (res.statusCode === 200) open++; else failed++;
      res.on('data', () => {});
      res.on('error', () => {});
      resolve();
    });
    req.on('error', (e) => { failed++; if (failed < 5) console.error(String(e)); resolve(); });
    req.end();
  });
  for (let i = 0; i < n; i += 200) {
    await Promise.all(Array.from({ length: Math.min(200, n - i) }, one));
  }
  console.log(`open ${open} failed ${failed}`);
  setInterval(() => {}, 1 << 30);
} else if (mode === 'h2-streams') {
  const [sid, n] = [rest[0], Number(rest[1])];
  const perConnection = 100;
  let open = 0, failed = 0;
  const fail = (e) => { failed++; if (failed < 5) console.error(String(e)); };
  const one = (conn) => new Promise((resolve) => {
    const req = conn.request({
      ':method': 'GET', ':path': new URL(url).pathname,
      authorization: `Bearer ${token}`, accept: 'text/event-stream', 'mcp-session-id': sid,
    });
    req.on('response', (h) => { if (h[':status'] === 200) open++; else failed++; resolve(); });
    req.on('data', () => {});
    req.on('error', (e) => { fail(e); resolve(); });
  });
  for (let i = 0; i < n; i += perConnection) {
    const conn = http2.connect(new URL(url).origin);
    conn.on('error', fail);
    await Promise.all(Array.from({ length: Math.min(perConnection, n - i) }, () => one(conn)));
  }
  console.log(`open ${open} failed ${failed}`);
  setInterval(() => {}, 1 << 30);
} else if (mode === 'first-call') {
  const [n, gap] = [Number(rest[0]), Number(rest[1])];
  const ms = [];
  for (let i = 0; i < n; i++) {
    await new Promise((r) => setTimeout(r, gap));
    const t0 = performance.now();
    await session(i);
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  console.log(`median ${ms[Math.floor(n / 2)].toFixed(0)} ms, p90 ${ms[Math.floor(n * 0.9)].toFixed(0)} ms`);
} else {
  console.error('usage: see the top of bench/scale.mjs');
  process.exit(2);
}
