// mcp-remote (the stdio ↔ remote bridge many desktop clients use) completes our sign-in
// headlessly: it "opens" the authorization URL through $BROWSER, which here is a script
// that signs in with the harness and delivers the code to mcp-remote's callback server.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

import { PASSWORD, freePort, startEverything, startProxy } from './harness.mjs';

const here = import.meta.dirname;
let upstream;
let proxy;
let configDir;

before(async () => {
  upstream = await startEverything();
  proxy = await startProxy({ backend: upstream.url });
  configDir = mkdtempSync(path.join(os.tmpdir(), 'mcp-remote-e2e-'));
});

after(async () => {
  await proxy?.stop();
  await upstream?.stop();
  if (configDir) rmSync(configDir, { recursive: true, force: true });
});

test('mcp-remote signs in through $BROWSER and lists the upstream tools', async () => {
  const callbackPort = await freePort();
  const browserLog = path.join(configDir, 'browser.log');
  let stderr = '';
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [
      path.join(here, 'node_modules/mcp-remote/dist/proxy.js'),
      proxy.resource,
      String(callbackPort),
      '--allow-http',
      '--host', '127.0.0.1',
      '--transport', 'http-only',
    ],
    env: {
      ...process.env,
      BROWSER: path.join(here, 'browser-open.mjs'),
      MCP_REMOTE_CONFIG_DIR: configDir,
      E2E_PASSWORD: PASSWORD,
      E2E_BROWSER_LOG: browserLog,
    },
    stderr: 'pipe',
  });
  transport.stderr?.on('data', (d) => {
    stderr += d;
  });
  const client = new Client({ name: 'e2e-via-mcp-remote', version: '1.0.0' });
  try {
    await client.connect(transport);
    const { tools } = await client.listTools();
    assert.ok(tools.some((t) => t.name === 'echo'), `tools: ${tools.map((t) => t.name)}`);
    const r = await client.callTool({ name: 'echo', arguments: { message: 'via mcp-remote' } });
    assert.match(r.content[0].text, /via mcp-remote/);
  } catch (e) {
    const log = existsSync(browserLog) ? readFileSync(browserLog, 'utf8') : '(no browser log)';
    throw new Error(`${e.stack}\n--- mcp-remote stderr ---\n${stderr}\n--- browser ---\n${log}`);
  } finally {
    await client.close();
  }
  // It went through the real flow: the browser stand-in was used, with our callback path.
  const log = readFileSync(browserLog, 'utf8');
  assert.match(log, /\/authorize\?/);
  assert.match(log, new RegExp(`http://127\\.0\\.0\\.1:${callbackPort}/oauth/callback\\?code=`));
});
