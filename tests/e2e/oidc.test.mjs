// Sign-in through a real OpenID provider: the npm `oidc-provider` package on loopback, with a
// static client for the proxy and three accounts. The TypeScript SDK client goes through our
// proxy, the provider's own login and consent pages, back to our consent, to a token and a
// tools/call. Allow-lists: ann by user id, bob by the `groups` claim, eve by nothing.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { Browser, ROOT, freePorts, startEverything, startProxy } from './harness.mjs';
import { startIdp } from './idp.mjs';
import { TestProvider, connect } from './sdk-client.mjs';

const ACCOUNTS = {
  ann: { email: 'ann@example.com', groups: ['staff'] },
  bob: { email: 'bob@elsewhere.example', groups: ['staff', 'admins'] },
  eve: { email: 'eve@example.com', groups: [] },
};

let idp;
let everything;
let proxy;
// A second proxy with every sign-in method, for the pages in Chromium.
let pagesProxy;

before(async () => {
  everything = await startEverything();
  const [idpPort, proxyPort, pagesPort] = await freePorts(3);
  idp = await startIdp(idpPort, ACCOUNTS, [proxyPort, pagesPort]);
  const oidcArgs = [
    ...idp.args,
    '--oidc-allowed-users', 'ann@example.com',
    '--oidc-allowed-attributes', '/groups=admins',
    '--oidc-provider-name', 'Example SSO',
  ];
  proxy = await startProxy({ backend: everything.url, password: null, port: proxyPort, args: oidcArgs });
  // Google and GitHub appear as buttons only (they are SaaS; their flows run against
  // local fakes in the Rust suite), so their endpoints may point nowhere.
  pagesProxy = await startProxy({
    backend: everything.url,
    port: pagesPort,
    args: [
      ...oidcArgs,
      '--google-client-id', 'g', '--google-client-secret', 'g', '--google-allowed-workspaces', 'example.com',
      '--github-client-id', 'gh', '--github-client-secret', 'gh', '--github-allowed-orgs', 'example',
    ],
  });
});

after(async () => {
  await pagesProxy?.stop();
  await proxy?.stop();
  await idp?.stop();
  await everything?.stop();
});

function signInAs(login) {
  return new TestProvider(new Browser(), { idp: { origin: idp.issuer, login } });
}

test('an allowed user signs in at the OpenID provider and calls a tool', async () => {
  const provider = signInAs('ann');
  const client = await connect(proxy.resource, provider);
  assert.equal(provider.sessions, 1);
  const r = await client.callTool({ name: 'echo', arguments: { message: 'via oidc' } });
  assert.match(r.content[0].text, /via oidc/);
  await client.close();
});

test('a user on no list gets access_denied', async () => {
  const provider = signInAs('eve');
  await assert.rejects(connect(proxy.resource, provider), /code|access_denied/);
  assert.equal(provider.error, 'access_denied');
  assert.equal(provider.code, null);
});

test('a member of an allowed group is admitted by the attribute rule', async () => {
  const provider = signInAs('bob');
  const client = await connect(proxy.resource, provider);
  const r = await client.callTool({ name: 'echo', arguments: { message: 'group member' } });
  assert.match(r.content[0].text, /group member/);
  await client.close();
});

/** Submits the provider's remaining pages (its consent) until the browser is back with us. */
async function leaveProvider(page) {
  for (let i = 0; i < 3 && page.url().startsWith(idp.issuer); i++) {
    await page.locator('button[type=submit]').first().click();
  }
}

test('the login page with every method, the denied page and consent, in Chromium', async () => {
  const out = path.join(ROOT, 'target/e2e-screenshots');
  mkdirSync(out, { recursive: true });
  const chrome = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    for (const [kind, options] of Object.entries({
      desktop: { viewport: { width: 1280, height: 800 } },
      phone: { viewport: { width: 390, height: 844 }, isMobile: true, deviceScaleFactor: 2 },
    })) {
      const context = await chrome.newContext({ ...options, javaScriptEnabled: false });
      const page = await context.newPage();
      const res = await fetch(pagesProxy.url('/register'), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ client_name: 'Claude Desktop', redirect_uris: ['http://127.0.0.1:9/callback'] }),
      });
      const clientId = (await res.json()).client_id;
      const q = new URLSearchParams({
        response_type: 'code', client_id: clientId, redirect_uri: 'http://127.0.0.1:9/callback',
        code_challenge: 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM', code_challenge_method: 'S256', state: 's',
      });
      await page.goto(pagesProxy.url(`/authorize?${q}`));
      for (const label of ['Google', 'GitHub', 'Example SSO']) {
        assert.equal(await page.getByRole('link', { name: `Sign in with ${label}` }).count(), 1, label);
      }
      assert.equal(await page.locator('#password').count(), 1);
      await page.screenshot({ path: path.join(out, `${kind}-login-providers.png`), fullPage: true });

      // eve signs in at the provider (its own pages) and is refused by ours.
      await page.getByRole('link', { name: 'Sign in with Example SSO' }).click();
      await page.fill('input[name=login]', 'eve');
      await page.fill('input[name=password]', 'any');
      await page.click('button[type=submit]');
      await leaveProvider(page);
      assert.match(await page.locator('h1').innerText(), /Not allowed/);
      assert.match(await page.locator('.alert').innerText(), /eve@example\.com/);
      assert.equal(await page.getByRole('link', { name: /Back to Claude Desktop/ }).count(), 1);
      await page.screenshot({ path: path.join(out, `${kind}-denied.png`), fullPage: true });
      await context.close();

      // ann gets to our consent page, signed in through the provider.
      const ctx2 = await chrome.newContext({ ...options, javaScriptEnabled: false });
      const p2 = await ctx2.newPage();
      await p2.goto(pagesProxy.url(`/authorize?${q}`));
      await p2.getByRole('link', { name: 'Sign in with Example SSO' }).click();
      await p2.fill('input[name=login]', 'ann');
      await p2.fill('input[name=password]', 'any');
      await p2.click('button[type=submit]');
      await leaveProvider(p2);
      assert.match(p2.url(), /\/\.auth\/consent\?req=/);
      assert.match(await p2.locator('main').innerText(), /ann@example\.com/);
      await p2.screenshot({ path: path.join(out, `${kind}-consent-oidc.png`), fullPage: true });
      await ctx2.close();
    }
  } finally {
    await chrome.close();
  }
});
