// Several MCP servers behind one proxy (`--config`): server-everything over stdio, the SDK v2
// stdio fixture, and server-everything over HTTP, by path; server-everything over stdio
// again, routed by its own host name. The TypeScript SDK client signs in once
// per server, as clients do, and each sees only its server's tools; a token for one server
// gets 401 at another, whose challenge names that server's metadata; one browser sign-in
// serves consent for two servers; per-server `users` admit different people (the password
// account, and a user of a real OpenID provider).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

// The SDK's requests to the server routed by host name: that name resolves to loopback here
// (an undici Agent, pinned in package.json, as the dispatcher of Node's fetch).
import { Agent } from 'undici';

import { launchChromium, pkce, registerClient, shoot, startCallback, VIEWPORTS } from './chromium.mjs';
import { Browser, PASSWORD, ROOT, everythingStdio, freePorts, startEverything, startProxy } from './harness.mjs';
import { startIdp } from './idp.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const toml = (s) => JSON.stringify(s);
const HOSTED = 'files.e2e-test.example';
const loopback = new Agent({
  connect: { lookup: (_host, _opts, done) => done(null, [{ address: '127.0.0.1', family: 4 }]) },
});
const fetchResolvingHosted = (url, init) => fetch(url, { ...init, dispatcher: loopback });

let idp;
let everything;
let proxy;
let dir;

before(async () => {
  everything = await startEverything();
  const [idpPort, proxyPort] = await freePorts(2);
  idp = await startIdp(idpPort, { ann: { email: 'ann@example.com', groups: [] } }, [proxyPort]);
  dir = mkdtempSync(path.join(os.tmpdir(), 'mcp-auth-proxy-servers-'));
  const config = path.join(dir, 'servers.toml');
  const v2 = path.join(ROOT, 'tests/e2e/fixtures/v2-stdio-server.mjs');
  writeFileSync(config, `
[[server]]
name = "everything"
command = [${everythingStdio().map(toml).join(', ')}]
users = ["password:*"]

[[server]]
name = "v2"
command = [${[process.execPath, v2].map(toml).join(', ')}]
users = ["ann@example.com"]

[[server]]
name = "web"
url = ${toml(everything.url)}

[[server]]
name = "hosted"
host = ${toml(HOSTED)}
command = [${everythingStdio().map(toml).join(', ')}]
`);
  proxy = await startProxy({
    port: proxyPort,
    args: [...idp.args, '--oidc-allowed-users', 'ann@example.com', '--admin-users', 'password:admin', '--config', config],
  });
});

after(async () => {
  await proxy?.stop();
  await idp?.stop();
  await everything?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const at = (name) => proxy.url(`/${name}/mcp`);
const toolsOf = async (client) => (await client.listTools()).tools.map((t) => t.name);

test('each server is its own resource: its own tools, its own issuer, its own tokens', async () => {
  const browser = new Browser();
  const files = new TestProvider(browser);
  const everythingClient = await connect(at('everything'), files);
  assert.equal(files.sessions, 1);
  assert.equal(files.iss, `${proxy.origin}/everything`, 'the response names the server\'s issuer');
  const tools = await toolsOf(everythingClient);
  assert.ok(tools.includes('echo') && !tools.includes('whoami'), `tools: ${tools}`);

  // The same browser, a second server: consent only (a wrong password would fail if the
  // login page were shown again).
  const web = new TestProvider(browser, { password: 'not the password' });
  const webClient = await connect(at('web'), web);
  assert.equal(web.iss, `${proxy.origin}/web`);
  const echoed = await webClient.callTool({ name: 'echo', arguments: { message: 'over http' } });
  assert.match(echoed.content[0].text, /over http/);

  // A token for one server is refused by another, which points at its own metadata.
  for (const other of ['v2', 'web']) {
    const res = await fetch(at(other), {
      method: 'POST',
      headers: {
        authorization: `Bearer ${files.tokens().access_token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    assert.equal(res.status, 401, other);
    assert.match(
      res.headers.get('www-authenticate'),
      new RegExp(`resource_metadata="${proxy.origin}/.well-known/oauth-protected-resource/${other}/mcp"`),
    );
  }

  // v2 admits ann only: the password account is refused there, on a page, and the app is
  // told access_denied.
  const refused = new TestProvider(browser);
  await assert.rejects(connect(at('v2'), refused), /code|access_denied/);
  assert.equal(refused.error, 'access_denied');
  await everythingClient.close();
  await webClient.close();
});

test('a server routed by its own host name: the SDK client discovers it there and signs in at its issuer', async () => {
  const port = new URL(proxy.origin).port;
  const url = `http://${HOSTED}:${port}/mcp`;
  const provider = new TestProvider(new Browser());
  const client = await connect(url, provider, {}, { fetch: fetchResolvingHosted });
  assert.equal(provider.iss, `${proxy.origin}/hosted`, 'its issuer is on the main host');
  const echoed = await client.callTool({ name: 'echo', arguments: { message: 'by host' } });
  assert.match(echoed.content[0].text, /by host/);
  // Its token is for its host's resource only.
  const res = await fetch(at('everything'), {
    method: 'POST',
    headers: { authorization: `Bearer ${provider.tokens().access_token}`, 'content-type': 'application/json' },
    body: '{}',
  });
  assert.equal(res.status, 401);
  await client.close();
});

test('a user of the OpenID provider is admitted where the users list names her, and only there', async () => {
  const ann = () => new TestProvider(new Browser(), { idp: { origin: idp.issuer, login: 'ann' } });
  const provider = ann();
  const client = await connect(at('v2'), provider);
  assert.equal(provider.iss, `${proxy.origin}/v2`);
  const tools = await toolsOf(client);
  assert.deepEqual(tools, ['whoami']);
  const r = await client.callTool({ name: 'whoami', arguments: { message: 'hi' } });
  assert.match(r.content[0].text, /v2 fixture: hi/);
  await client.close();

  const elsewhere = ann();
  await assert.rejects(connect(at('everything'), elsewhere), /code|access_denied/);
  assert.equal(elsewhere.error, 'access_denied');
});

test('the pages name the server: consent, the refusal, the apps page and the console, in Chromium', async () => {
  const chrome = await launchChromium();
  const callback = await startCallback();
  try {
    for (const [kind, options] of Object.entries(VIEWPORTS)) {
      const context = await chrome.newContext({ ...options, javaScriptEnabled: false });
      const page = await context.newPage();
      const clientId = await registerClient(proxy, 'Claude Desktop', callback.url);
      const authorize = (server) => {
        const q = new URLSearchParams({
          response_type: 'code', client_id: clientId, redirect_uri: callback.url,
          code_challenge: pkce().challenge, code_challenge_method: 'S256', state: 'pages',
        });
        return proxy.url(`/${server}/authorize?${q}`);
      };
      await page.goto(authorize('everything'));
      await page.fill('#password', PASSWORD);
      await page.click('button[type=submit]');
      assert.match(await page.locator('h1').innerText(), /Claude Desktop to use the MCP server “everything”\?/);
      await shoot(page, kind, 'servers-consent');
      await Promise.all([page.waitForURL((u) => u.href.startsWith(callback.url)), page.click('button[value=approve]')]);

      const refused = await page.goto(authorize('v2'));
      assert.equal(refused.status(), 403);
      assert.match(await page.locator('main').innerText(), /may not use the MCP server “v2”/);
      await shoot(page, kind, 'servers-not-admitted');

      await page.goto(proxy.url('/.auth/apps'));
      assert.match(await page.locator('main').innerText(), /Server\s+everything/);
      await shoot(page, kind, 'servers-apps');
      await page.goto(proxy.url('/.auth/admin'));
      const console = await page.locator('main').innerText();
      assert.match(console, /MCP servers \(4\)/);
      assert.ok(console.includes(`${proxy.origin}/v2/mcp`), console);
      await shoot(page, kind, 'servers-console');
      await context.close();
    }
  } finally {
    await chrome.close();
    await callback.close();
  }
});
