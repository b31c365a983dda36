// The sign-in pages in a real browser (Debian's Chromium, JavaScript off): every page of the
// flow renders, works by plain form posts, fits a phone screen, and is screenshotted to
// target/e2e-screenshots/ for a person to look at.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { PASSWORD, ROOT, startProxy } from './harness.mjs';

const OUT = path.join(ROOT, 'target/e2e-screenshots');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// The client's callback: a real local server (as a native app would run).
let REDIRECT;
let callbackServer;

const VIEWPORTS = {
  desktop: { viewport: { width: 1280, height: 800 } },
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 },
};

let proxy;
let browser;

before(async () => {
  mkdirSync(OUT, { recursive: true });
  callbackServer = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('client callback');
  });
  await new Promise((resolve) => callbackServer.listen(0, '127.0.0.1', resolve));
  REDIRECT = `http://127.0.0.1:${callbackServer.address().port}/callback`;
  proxy = await startProxy({ args: ['--login-max-failures', '3', '--admin-users', 'password:admin'] });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await proxy?.stop();
  callbackServer?.close();
});

async function register(name, redirect) {
  const res = await fetch(proxy.url('/register'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: name, redirect_uris: [redirect ?? REDIRECT] }),
  });
  assert.equal(res.status, 201);
  return (await res.json()).client_id;
}

function authUrl(clientId, redirect) {
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirect ?? REDIRECT,
    code_challenge: 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM',
    code_challenge_method: 'S256',
    state: 'pages',
  });
  return proxy.url(`/authorize?${q}`);
}

async function shoot(page, kind, name) {
  // Nothing may stick out sideways, on a phone least of all.
  const box = await page.locator('main').boundingBox();
  const { width } = page.viewportSize();
  assert.ok(box && box.x >= 0 && box.x + box.width <= width + 0.5, `${kind}/${name}: the card fits (${JSON.stringify(box)})`);
  await page.screenshot({ path: path.join(OUT, `${kind}-${name}.png`), fullPage: true });
}

for (const [kind, options] of Object.entries(VIEWPORTS)) {
  test(`the sign-in pages on a ${kind}`, async () => {
    const context = await browser.newContext({ ...options, javaScriptEnabled: false });
    const page = await context.newPage();

    const id = await register('Claude Desktop');
    await page.goto(authUrl(id));
    assert.match(page.url(), /\/\.auth\/login\?req=/);
    assert.equal(await page.title(), `Sign in · 127.0.0.1`);
    await shoot(page, kind, 'login');

    await page.fill('#password', 'not the password');
    await page.click('button[type=submit]');
    assert.match(await page.locator('.alert').innerText(), /not right/);
    await shoot(page, kind, 'login-wrong-password');

    await page.fill('#password', PASSWORD);
    await page.click('button[type=submit]');
    assert.match(page.url(), /\/\.auth\/consent\?req=/);
    assert.match(await page.locator('h1').innerText(), /Claude Desktop/);
    await shoot(page, kind, 'consent');

    await Promise.all([page.waitForURL((u) => u.href.startsWith(REDIRECT)), page.click('button[value=approve]')]);
    const back = new URL(page.url());
    assert.equal(`${back.origin}${back.pathname}`, REDIRECT);
    assert.ok(back.searchParams.get('code'));
    assert.equal(back.searchParams.get('state'), 'pages');

    const liar = await register('claude.ai', 'https://evil.example/cb');
    await page.goto(authUrl(liar, 'https://evil.example/cb'));
    assert.match(await page.locator('.alert.warn').first().innerText(), /calls itself “claude\.ai” but your authorization will be sent to evil\.example/);
    await shoot(page, kind, 'consent-warning');

    // The address itself, opened in the browser: what it is and how to connect, signed in.
    await page.goto(proxy.url('/'));
    assert.equal(await page.inputValue('#mcp-url'), proxy.url('/mcp'));
    assert.match(await page.locator('main').innerText(), /signed in as/);
    assert.match(await page.locator('main').innerText(), /claude mcp add --transport http/);
    await shoot(page, kind, 'home');

    await page.goto(proxy.url('/.auth/login'));
    assert.match(await page.locator('h1').innerText(), /signed in/);
    await shoot(page, kind, 'signed-in');
    await page.click('button[type=submit]');
    assert.match(page.url(), /\/\.auth\/login$/);
    assert.equal(await page.locator('#password').count(), 1, 'signed out');

    await page.goto(authUrl('no-such-client'));
    assert.match(await page.locator('h1').innerText(), /Unknown app/);
    await shoot(page, kind, 'error');
    await context.close();
  });
}

/** Signs `page` through an authorization for `clientId` (signed in already, or with the
 * password) and exchanges the code; returns the token response. */
async function connectApp(page, clientId) {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const url = new URL(authUrl(clientId));
  url.searchParams.set('code_challenge', challenge);
  await page.goto(url.href);
  if (await page.locator('#password').count()) {
    await page.fill('#password', PASSWORD);
    await page.click('button[type=submit]');
  }
  await Promise.all([page.waitForURL((u) => u.href.startsWith(REDIRECT)), page.click('button[value=approve]')]);
  const code = new URL(page.url()).searchParams.get('code');
  const res = await fetch(proxy.url('/token'), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier, client_id: clientId }),
  });
  assert.equal(res.status, 200);
  return res.json();
}

const gateStatus = async (token) =>
  (await fetch(proxy.url('/mcp'), { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}' })).status;

for (const [kind, options] of Object.entries(VIEWPORTS)) {
  test(`the connected-apps pages on a ${kind}`, async () => {
    const context = await browser.newContext({ ...options, javaScriptEnabled: false });
    const page = await context.newPage();
    await connectApp(page, await register('Claude Desktop'));
    const cursor = await connectApp(page, await register('Cursor'));
    assert.notEqual(await gateStatus(cursor.access_token), 401);

    await page.goto(proxy.url('/.auth/apps'));
    assert.equal(await page.locator('h1').innerText(), 'Your connected apps');
    assert.ok((await page.locator('.apps > li').count()) >= 2);
    await shoot(page, kind, 'apps');

    await page.getByRole('link', { name: 'Revoke Cursor' }).first().click();
    assert.match(await page.locator('h1').innerText(), /Revoke Cursor\?/);
    await shoot(page, kind, 'apps-revoke');
    await page.getByRole('button', { name: 'Revoke access' }).click();
    assert.match(page.url(), /\/\.auth\/apps\?done=revoked$/);
    assert.match(await page.locator('.alert.ok').innerText(), /Access revoked/);
    await shoot(page, kind, 'apps-revoked');
    assert.equal(await gateStatus(cursor.access_token), 401, 'the revoked token is refused at once');

    // The operator console (the password user is the operator here).
    await page.goto(proxy.url('/.auth/admin'));
    assert.equal(await page.locator('h1').innerText(), 'Operator console');
    assert.match(await page.locator('main').innerText(), /Claude Desktop/);
    await shoot(page, kind, 'admin');
    await page.getByRole('button', { name: /^Revoke the grant of password:admin to Claude Desktop/ }).first().click();
    assert.match(await page.locator('.alert.ok').innerText(), /grant was revoked/);

    await page.goto(proxy.url('/.auth/apps'));
    await page.getByRole('button', { name: 'Sign out everywhere' }).click();
    assert.match(page.url(), /\/\.auth\/login$/);
    await page.goto(proxy.url('/.auth/apps'));
    assert.match(page.url(), /\/\.auth\/login$/, 'signed out');
    await context.close();
  });
}

test('the lockout page', async () => {
  const context = await browser.newContext({ ...VIEWPORTS.phone, javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(proxy.url('/.auth/login'));
  for (let i = 0; i < 3; i++) {
    await page.fill('#password', `wrong ${i}`);
    await page.click('button[type=submit]');
  }
  assert.match(await page.locator('.alert').innerText(), /Too many failed attempts/);
  assert.equal(await page.locator('#password').count(), 0, 'no form while locked');
  await shoot(page, 'phone', 'lockout');
  await context.close();
});
