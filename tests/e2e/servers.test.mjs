// Several MCP servers behind one proxy (`--config`): server-everything over stdio, the SDK v2
// stdio fixture, and server-everything over HTTP. The TypeScript SDK client signs in once
// per server, as clients do, and each sees only its server's tools; a token for one server
// gets 401 at another, whose challenge names that server's metadata; one browser sign-in
// serves consent for two servers; per-server `users` admit different people (the password
// account, and a user of a real OpenID provider).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { Browser, ROOT, everythingStdio, freePorts, startEverything, startProxy } from './harness.mjs';
import { startIdp } from './idp.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const toml = (s) => JSON.stringify(s);

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
`);
  proxy = await startProxy({
    port: proxyPort,
    args: [...idp.args, '--oidc-allowed-users', 'ann@example.com', '--config', config],
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
