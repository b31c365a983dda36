// The MCP Inspector's CLI (@modelcontextprotocol/inspector 2.12.0, `--cli`) signs in through
// our flow headlessly: with MCP_AUTO_OPEN_ENABLED=true it "opens" the authorization URL
// through $BROWSER (browser-open.mjs signs in and delivers the code to its callback), then
// lists and calls the tools of server-everything (stdio) behind the proxy. Inspector 2.x
// declares Node >= 22.19; its CLI runs on the Node 20 here.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { everythingStdio, freePort, startProxy } from './harness.mjs';

const here = import.meta.dirname;
const CLI = path.join(here, 'node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js');
const SECRET = 'inspector-e2e-password';
let proxy;
let home;

before(async () => {
  proxy = await startProxy({ command: everythingStdio(), password: SECRET });
  home = mkdtempSync(path.join(os.tmpdir(), 'inspector-e2e-'));
});

after(async () => {
  await proxy?.stop();
  if (home) rmSync(home, { recursive: true, force: true });
});

/**
 * Runs `inspector --cli <resource> …args`, its browser answering consent with `decision`;
 * resolves with its exit code and output.
 */
async function inspector(args, callbackPort, decision = 'approve') {
  const child = spawn(
    process.execPath,
    [CLI, '--cli', proxy.resource, ...args, '--callback-url', `http://127.0.0.1:${callbackPort}/oauth/callback`],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        HOME: home,
        MCP_INSPECTOR_SECRET_STORE: 'memory',
        MCP_AUTO_OPEN_ENABLED: 'true',
        BROWSER: path.join(here, 'browser-open.mjs'),
        E2E_PASSWORD: SECRET,
        E2E_DECISION: decision,
        E2E_BROWSER_LOG: path.join(home, 'browser.log'),
        NO_COLOR: '1',
      },
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise((resolve) => child.once('exit', resolve));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

test('the Inspector CLI signs in through $BROWSER, lists and calls tools', async () => {
  const port = await freePort();
  const list = await inspector(['--method', 'tools/list'], port);
  assert.equal(list.code, 0, `${list.stdout}\n${list.stderr}`);
  const tools = JSON.parse(list.stdout).tools.map((t) => t.name);
  assert.ok(tools.includes('echo'), tools.join(','));

  // The browser went through our consent page and back to the Inspector's callback.
  const log = readFileSync(path.join(home, 'browser.log'), 'utf8').split('\n');
  assert.match(log[0], new RegExp(`^${proxy.origin}/authorize\\?`));
  assert.match(log[1], new RegExp(`^http://127\\.0\\.0\\.1:${port}/oauth/callback\\?code=`));
  assert.match(log[1], /[?&]iss=/);

  const call = await inspector(['--method', 'tools/call', '--tool-name', 'echo', '--tool-arg', 'message=from the inspector'], await freePort());
  assert.equal(call.code, 0, `${call.stdout}\n${call.stderr}`);
  assert.match(call.stdout, /from the inspector/);
});

test('when the person denies access the Inspector gets no token and fails', async () => {
  const port = await freePort();
  const child = await inspector(['--method', 'tools/list', '--relogin', '--no-revoke'], port, 'deny');
  assert.notEqual(child.code, 0, 'a denied sign-in is not a success');
  const log = readFileSync(path.join(home, 'browser.log'), 'utf8').trim().split('\n');
  assert.match(log.at(-1), /[?&]error=access_denied/);
  assert.doesNotMatch(child.stdout, /"tools"/);
});
