// The sign-in pages in a real browser (Debian's Chromium, JavaScript off): every page of the
// flow renders, works by plain form posts, fits a phone screen, and is screenshotted to
// target/e2e-screenshots/ for a person to look at.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { approve, authorizationUrl, exchange, launchChromium, pkce, registerClient, shoot, startCallback, VIEWPORTS } from './chromium.mjs';
import { PASSWORD, startProxy } from './harness.mjs';

// The client's callback: a real local server (as a native app would run).
let callback;
let REDIRECT;
let proxy;
let browser;

before(async () => {
  callback = await startCallback();
  REDIRECT = callback.url;
  proxy = await startProxy({ args: ['--login-max-failures', '3', '--admin-users', 'password:admin'] });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await proxy?.stop();
  await callback?.close();
});

const register = (name, redirect) => registerClient(proxy, name, redirect ?? REDIRECT);
const authUrl = (clientId, redirect) => authorizationUrl(proxy, clientId, redirect ?? REDIRECT);

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

    await approve(page, REDIRECT);
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
  const { verifier, challenge } = pkce();
  await page.goto(authorizationUrl(proxy, clientId, REDIRECT, challenge));
  if (await page.locator('#password').count()) {
    await page.fill('#password', PASSWORD);
    await page.click('button[type=submit]');
  }
  const code = await approve(page, REDIRECT);
  return exchange(proxy, { clientId, code, verifier, redirect: REDIRECT });
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
