// The official MCP conformance suite (@modelcontextprotocol/conformance, pinned prerelease):
// its authorization-server scenarios against our OAuth server (the code grant with a
// declared client, its browser step driven here), and its server scenarios against `/mcp`
// with server-everything (stdio) behind us. The runner sends no token, so a small forwarder
// in front adds one and passes everything else (Host and Origin included) through untouched.
// The suite wants Node 22; on Node 20 node20/register.mjs supplies `fs.globSync`.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { Browser, everythingStdio, freePort, startProxy } from './harness.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const require = createRequire(import.meta.url);
const CLI = path.join(path.dirname(require.resolve('@modelcontextprotocol/conformance/package.json')), 'dist/index.js');
const NODE20 = new URL('./node20/register.mjs', import.meta.url).href;
const SECRET = 'conformance-e2e-password';
const CLIENT_ID = 'conformance-suite';

/** The scenarios the issue names, and what they must show. */
const SERVER_SCENARIOS = [
  'server-initialize',
  'ping',
  'tools-list',
  'server-session-lifecycle',
  'server-sse-multiple-streams',
  'dns-rebinding-protection',
];

let proxy;
let work;
const totals = { passed: 0, failed: 0 };

before(async () => {
  work = mkdtempSync(path.join(os.tmpdir(), 'conformance-'));
  const clients = path.join(work, 'clients.toml');
  // A declared public client: the code-grant scenario needs a pre-registered one.
  writeFileSync(
    clients,
    `[[client]]\nid = "${CLIENT_ID}"\nname = "MCP conformance suite"\nredirect_uris = ["http://127.0.0.1/callback"]\n`,
  );
  proxy = await startProxy({ command: everythingStdio(), password: SECRET, args: ['--clients-file', clients] });
});

after(async () => {
  await proxy?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
  console.log(`conformance checks: ${totals.passed} passed, ${totals.failed} failed`);
});

/**
 * Runs the suite's CLI with `args`; `onLine` sees its stdout lines as they come. Resolves
 * with the checks it wrote to its output directory.
 */
async function conformance(args, onLine = () => {}) {
  const out = mkdtempSync(path.join(work, 'out-'));
  const child = spawn(process.execPath, ['--import', NODE20, CLI, ...args, '-o', out], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  let stdout = '';
  let stderr = '';
  let pending = '';
  child.stdout.on('data', (d) => {
    stdout += d;
    pending += d;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
  });
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const code = await new Promise((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  const checks = [];
  const collect = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) collect(p);
      else if (e.name === 'checks.json') checks.push(...JSON.parse(readFileSync(p, 'utf8')));
    }
  };
  collect(out);
  return { code, checks, stdout, stderr };
}

/** Asserts that every check passed (warnings and skips are reported, not failures). */
function allPassed(label, { checks, stdout, stderr }) {
  assert.ok(checks.length > 0, `${label}: no checks ran\n${stdout}\n${stderr}`);
  const failed = checks.filter((c) => c.status === 'FAILURE');
  for (const c of checks) console.log(`${label}: ${c.id} ${c.status}${c.errorMessage ? ` (${c.errorMessage})` : ''}`);
  totals.passed += checks.filter((c) => c.status === 'SUCCESS').length;
  totals.failed += failed.length;
  assert.deepEqual(
    failed.map((c) => `${c.id}: ${c.errorMessage}`),
    [],
    `${label}: failed checks`,
  );
  return checks;
}

test('authorization server scenarios: metadata, and the code grant with a declared client', async () => {
  const port = await freePort();
  const browser = new Browser();
  let signedIn;
  const r = await conformance(
    [
      'authorization',
      '--url', proxy.origin,
      '--client-id', CLIENT_ID,
      '--resource', proxy.resource,
      '--port', String(port),
    ],
    (line) => {
      // The code grant prints the authorization URL and waits for its callback: sign in
      // and approve, then deliver the redirect to its callback server, as a browser would.
      if (!signedIn && line.startsWith(`${proxy.origin}/authorize?`)) {
        signedIn = browser
          .authorize(line.trim(), { password: SECRET })
          .then((back) => fetch(back))
          .then((res) => res.text());
      }
    },
  );
  assert.ok(signedIn, `the suite printed an authorization URL:\n${r.stdout}\n${r.stderr}`);
  await signedIn;
  const checks = allPassed('authorization', r);
  // Both scenarios ran (the metadata one also checks that CIMD is advertised).
  for (const id of ['authorization-server-metadata', 'authorization-server-metadata-cimd', 'authorization-code-grant']) {
    assert.ok(
      checks.some((c) => c.id === id && c.status === 'SUCCESS'),
      `${id} ran and passed: ${JSON.stringify(checks.map((c) => [c.id, c.status]))}`,
    );
  }
});

/**
 * A forwarder to the proxy that adds `Authorization`. Like a port mapping, it moves a
 * loopback `Host`/`Origin` from its own port to the proxy's; anything else (a rebinding
 * name) passes untouched, for the proxy to judge.
 */
async function tokenForwarder(token) {
  const target = new URL(proxy.origin);
  let own;
  const remap = (value, withScheme) => {
    if (!value) return value;
    const u = new URL(withScheme ? value : `http://${value}`);
    const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(u.hostname);
    if (!loopback || u.port !== String(own)) return value;
    u.port = target.port;
    return withScheme ? u.origin : u.host;
  };
  const server = http.createServer((req, res) => {
    const headers = { ...req.headers, authorization: `Bearer ${token}` };
    headers.host = remap(headers.host, false);
    if (headers.origin) headers.origin = remap(headers.origin, true);
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
    res.on('close', () => up.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  own = server.address().port;
  return {
    url: `http://127.0.0.1:${server.address().port}/mcp`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

test('server scenarios against /mcp with a stdio server behind the proxy', async () => {
  const provider = new TestProvider(new Browser(), { password: SECRET });
  const client = await connect(proxy.resource, provider);
  await client.close();
  const token = provider.tokens().access_token;
  assert.ok(token);
  const fwd = await tokenForwarder(token);
  try {
    for (const scenario of SERVER_SCENARIOS) {
      const r = await conformance(['server', '--url', fwd.url, '--scenario', scenario]);
      allPassed(scenario, r);
    }
  } finally {
    await fwd.close();
  }
});

/** The 2026-07-28 scenarios that need none of the conformance project's own fixture tools. */
const MODERN_SCENARIOS = [
  'server-stateless',
  'tools-list',
  'http-header-validation',
  'dns-rebinding-protection',
  'server-sse-multiple-streams',
  'caching',
];

/** Checks of those scenarios that call the conformance project's diagnostic tools, which a
 * real server does not have (our own tests cover the behaviour: tests/e2e/modern.test.mjs). */
const NEEDS_FIXTURE_TOOLS = new Set([
  'sep-2575-server-rejects-undeclared-capability',
  'sep-2575-missing-capability-http-400',
]);

test('2026-07-28 server scenarios through the bridge', async () => {
  const provider = new TestProvider(new Browser(), { password: SECRET });
  const client = await connect(proxy.resource, provider);
  await client.close();
  const fwd = await tokenForwarder(provider.tokens().access_token);
  try {
    for (const scenario of MODERN_SCENARIOS) {
      const r = await conformance(['server', '--url', fwd.url, '--scenario', scenario, '--spec-version', '2026-07-28']);
      const checks = r.checks.filter((c) => !NEEDS_FIXTURE_TOOLS.has(c.id));
      allPassed(`2026-07-28 ${scenario}`, { ...r, checks });
    }
  } finally {
    await fwd.close();
  }
});

test('without the forwarder the suite gets our 401, not the server', async () => {
  const r = await conformance(['server', '--url', proxy.resource, '--scenario', 'ping']);
  const failed = r.checks.filter((c) => c.status === 'FAILURE');
  assert.ok(failed.length > 0 || r.code !== 0, 'the suite cannot pass the gate without a token');
});
