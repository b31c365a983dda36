// The ceiling for the stdio benchmark: server-everything driven straight over its stdio by
// one client keeping CONCURRENCY tools/call (echo) requests in flight for DURATION seconds.
// Prints requests per second. With a third argument `envelope`, each call's `_meta` carries
// what a 2026-07-28 request carries (protocol version, client info and capabilities): what
// a 2025 server would be sent if the bridge relayed that envelope; with `empty-meta`, an
// empty `_meta` (what it would be sent if the bridge removed the envelope's members but not
// the member that held them).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import readline from 'node:readline';

const require = createRequire(import.meta.url);
const DURATION = Number(process.argv[2] ?? 10);
const CONCURRENCY = Number(process.argv[3] ?? 16);
const META = process.argv[4];
const meta = {
  'io.modelcontextprotocol/protocolVersion': '2026-07-28',
  'io.modelcontextprotocol/clientInfo': { name: 'wrk', version: '1' },
  'io.modelcontextprotocol/clientCapabilities': {},
};
const child = spawn(process.execPath, [require.resolve('@modelcontextprotocol/server-everything/dist/index.js'), 'stdio'], {
  stdio: ['pipe', 'pipe', 'ignore'],
});
const waiting = new Map();
readline.createInterface({ input: child.stdout }).on('line', (line) => {
  let m;
  try {
    m = JSON.parse(line);
  } catch {
    return;
  }
  const done = waiting.get(m.id);
  if (done) {
    waiting.delete(m.id);
    done(m);
  }
});
let next = 1;
const request = (method, params) =>
  new Promise((resolve) => {
    const id = next++;
    waiting.set(id, resolve);
    child.stdin.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n');
  });
await request('initialize', { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'ceiling', version: '1' } });
child.stdin.write(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) + '\n');
let count = 0;
const end = Date.now() + DURATION * 1000;
async function worker() {
  while (Date.now() < end) {
    const params = { name: 'echo', arguments: { message: 'bench' } };
    const sent = { envelope: { ...params, _meta: meta }, 'empty-meta': { ...params, _meta: {} } };
    await request('tools/call', sent[META] ?? params);
    count += 1;
  }
}
const started = Date.now();
await Promise.all(Array.from({ length: CONCURRENCY }, worker));
console.log((count / ((Date.now() - started) / 1000)).toFixed(2));
child.kill();
