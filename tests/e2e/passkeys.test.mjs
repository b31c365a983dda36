// Passkeys end to end in a real browser: Chromium's DevTools virtual authenticator
// (WebAuthn.addVirtualAuthenticator) stands in for a phone or security key. A person signs
// in with the password, adds a passkey on the connected-apps page, and signs in with it
// alone; a passkey answer made on another origin and one made with a removed passkey are
// refused; `--require-passkey` turns the password into a key for adding the first passkey
// only. WebAuthn refuses IP addresses as relying-party ids, so these proxies are reached as
// http://localhost:<port>.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';

import { approve, authorizationUrl, exchange, launchChromium, pkce, registerClient, shoot, startCallback, VIEWPORTS } from './chromium.mjs';
import { freePort, PASSWORD, startProxy, waitFor } from './harness.mjs';

let browser;
let callback;
let REDIRECT;

before(async () => {
  browser = await launchChromium();
  callback = await startCallback();
  REDIRECT = callback.url;
});

after(async () => {
  await browser?.close();
  await callback?.close();
});

/** A proxy reached as http://localhost:<port>, where browsers allow passkeys. */
async function startLocalhostProxy(args = []) {
  const port = await freePort();
  const proxy = await startProxy({ port, externalUrl: `http://localhost:${port}`, args });
  return { ...proxy, url: (p) => `http://localhost:${port}${p}`, origin: `http://localhost:${port}` };
}

/** A browser context with JavaScript and one virtual platform authenticator (a passkey
 * provider with user verification, as a phone's screen lock is). */
async function contextWithAuthenticator(options = VIEWPORTS.desktop) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  const credentials = async () => (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  return { context, page, credentials };
}

/** Starts an authorization for a new client; returns what finishing it needs. */
async function startAuthorization(proxy, page, name) {
  const clientId = await registerClient(proxy, name, REDIRECT);
  const { verifier, challenge } = pkce();
  await page.goto(authorizationUrl(proxy, clientId, REDIRECT, challenge));
  return { clientId, verifier };
}

/** Approves the consent page and exchanges the code; returns the token response. */
async function finishAuthorization(proxy, page, { clientId, verifier }) {
  assert.match(page.url(), /\/\.auth\/consent\?req=/);
  const code = await approve(page, REDIRECT);
  return exchange(proxy, { clientId, code, verifier, redirect: REDIRECT });
}

async function signInWithPassword(page) {
  await page.fill('#password', PASSWORD);
  await page.click('form button[type=submit]');
}

async function signOut(proxy, page) {
  await page.goto(proxy.url('/.auth/login'));
  await page.click('form[action="/.auth/logout"] button');
  assert.match(page.url(), /\/\.auth\/login$/);
}

/** The JSON a ceremony request gets when sent by hand (the browser's cookies, our Origin,
 * the CSRF token the page carries). */
async function ceremony(context, proxy, path, csrf, body) {
  const res = await context.request.post(proxy.url(path), {
    headers: { origin: proxy.origin, 'x-csrf-token': csrf, 'content-type': 'application/json' },
    data: JSON.stringify(body),
  });
  return { status: res.status(), body: await res.json() };
}

/** In `page`, answers sign-in options with the virtual authenticator; returns the assertion
 * as the pages' script sends it. `allow` replaces the options' credential list. */
function assertIn(page, options, allow) {
  return page.evaluate(async ({ options, allow }) => {
    const bytes = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4)), (c) => c.charCodeAt(0));
    const text = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const pk = options.publicKey;
    pk.challenge = bytes(pk.challenge);
    pk.allowCredentials = (allow ?? pk.allowCredentials).map((c) => ({ ...c, id: bytes(c.id) }));
    const cred = await navigator.credentials.get({ publicKey: pk });
    const r = cred.response;
    return {
      id: cred.id,
      rawId: text(cred.rawId),
      type: cred.type,
      response: { authenticatorData: text(r.authenticatorData), clientDataJSON: text(r.clientDataJSON), signature: text(r.signature), userHandle: r.userHandle ? text(r.userHandle) : null },
      extensions: {},
    };
  }, { options, allow });
}

test('a passkey added after a password sign-in signs in alone; another origin and a removed passkey are refused', async () => {
  const proxy = await startLocalhostProxy();
  const { context, page, credentials } = await contextWithAuthenticator();
  const evil = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>another site</title>');
  });
  try {
    // A password sign-in for a first app; no passkey is offered yet.
    const first = await startAuthorization(proxy, page, 'Claude Desktop');
    assert.equal(await page.locator('#passkey-sign-in').count(), 0, 'no passkey yet');
    await signInWithPassword(page);
    await finishAuthorization(proxy, page, first);

    // Adding one on the connected-apps page.
    await page.goto(proxy.url('/.auth/apps'));
    await page.fill('#passkey-name', 'Laptop');
    await Promise.all([page.waitForURL(/done=passkey-added/), page.click('#passkey-add')]);
    assert.match(await page.locator('.alert.ok').innerText(), /Passkey added/);
    assert.match(await page.locator('#passkeys + p + ul').innerText(), /Laptop/);
    assert.equal((await credentials()).length, 1, 'the authenticator holds it');

    // Signed out, the passkey alone signs in and approves a second app.
    await signOut(proxy, page);
    const second = await startAuthorization(proxy, page, 'Cursor');
    await Promise.all([page.waitForURL(/\/\.auth\/consent\?req=/), page.click('#passkey-sign-in')]);
    const tokens = await finishAuthorization(proxy, page, second);
    assert.ok(tokens.access_token);
    await page.goto(proxy.url('/.auth/apps'));
    assert.doesNotMatch(await page.locator('#passkeys + p + ul').innerText(), /Last used\s+—/, 'its use is recorded');

    // Another origin (a site at localhost on another port: the same relying-party id, so the
    // authenticator answers) relays our challenge: the answer names that origin, refused.
    await page.goto(proxy.url('/.auth/login'));
    await signOut(proxy, page);
    const csrf = await page.locator('#passkey-sign-in').getAttribute('data-csrf');
    const options = await ceremony(context, proxy, '/.auth/passkeys/sign-in/options', csrf, {});
    assert.equal(options.status, 200);
    await new Promise((resolve) => evil.listen(0, '127.0.0.1', resolve));
    await page.goto(`http://localhost:${evil.address().port}/`);
    const relayed = await assertIn(page, options.body);
    const refused = await ceremony(context, proxy, '/.auth/passkeys/sign-in', csrf, relayed);
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error, 'passkey_refused');
    assert.ok(await waitFor(() => proxy.logs.some((l) => /failed passkey sign-in/.test(l) && /origin/i.test(l))), 'refused for its origin');

    // A passkey removed after the options were made signs nobody in.
    await page.goto(proxy.url('/.auth/login'));
    await Promise.all([page.waitForSelector('h1:has-text("You are signed in")'), page.click('#passkey-sign-in')]);
    const removedOptions = await ceremony(context, proxy, '/.auth/passkeys/sign-in/options', csrf, {});
    assert.equal(removedOptions.status, 200);
    await page.goto(proxy.url('/.auth/apps'));
    await page.getByRole('link', { name: 'Remove passkey Laptop' }).click();
    assert.match(await page.locator('h1').innerText(), /Remove the passkey “Laptop”\?/);
    await page.getByRole('button', { name: 'Remove passkey' }).click();
    assert.match(page.url(), /done=passkey-removed/);
    await signOut(proxy, page);
    const stale = await assertIn(page, removedOptions.body);
    const gone = await ceremony(context, proxy, '/.auth/passkeys/sign-in', csrf, stale);
    assert.equal(gone.status, 401);
    assert.ok(await waitFor(() => proxy.logs.some((l) => /the passkey was removed/.test(l))), proxy.logs.slice(-5).join('\n'));
    assert.equal(await page.locator('#passkey-sign-in').count(), 0, 'no passkey left to offer');
    assert.equal((await ceremony(context, proxy, '/.auth/passkeys/sign-in/options', csrf, {})).status, 404);
  } finally {
    evil.close();
    await context.close();
    await proxy.stop();
  }
});

for (const [kind, options] of Object.entries(VIEWPORTS)) {
  test(`--require-passkey: the password adds the first passkey and nothing else, on a ${kind}`, async () => {
    const proxy = await startLocalhostProxy(['--require-passkey']);
    const { context, page } = await contextWithAuthenticator(options);
    try {
      const flow = await startAuthorization(proxy, page, 'Claude Desktop');
      await shoot(page, kind, 'passkey-login-first');
      await signInWithPassword(page);
      assert.match(page.url(), /\/\.auth\/passkeys\?req=/, 'sent to add a passkey');
      assert.equal(await page.locator('h1').innerText(), 'Add a passkey');
      await shoot(page, kind, 'passkey-enrol');

      // The password alone reaches neither consent nor the connected apps.
      const req = new URL(page.url()).searchParams.get('req');
      await page.goto(proxy.url(`/.auth/consent?req=${req}`));
      assert.match(page.url(), /\/\.auth\/login\?req=/);
      await page.goto(proxy.url('/.auth/apps'));
      assert.match(page.url(), /\/\.auth\/login/);

      await page.goto(proxy.url(`/.auth/passkeys?req=${req}`));
      await Promise.all([page.waitForURL(/done=passkey-added/), page.click('#passkey-add')]);
      assert.match(await page.locator('.alert.ok').innerText(), /Passkey added/);
      assert.equal(await page.locator('#password').count(), 0, 'the password no longer signs in');
      await shoot(page, kind, 'passkey-login');
      await Promise.all([page.waitForURL(/\/\.auth\/consent\?req=/), page.click('#passkey-sign-in')]);
      assert.ok((await finishAuthorization(proxy, page, flow)).access_token);

      // The connected-apps page lists the passkey; removing the last one warns.
      await page.goto(proxy.url('/.auth/apps'));
      await shoot(page, kind, 'apps-passkeys');
      await page.getByRole('link', { name: /^Remove passkey/ }).click();
      assert.match(await page.locator('.alert.warn').innerText(), /last passkey/);
      await shoot(page, kind, 'passkey-remove');

      // Signed out, the password is refused even when right.
      await signOut(proxy, page);
      const csrf = await page.locator('#passkey-sign-in').getAttribute('data-csrf');
      const res = await context.request.post(proxy.url('/.auth/login'), {
        headers: { origin: proxy.origin },
        form: { csrf, password: PASSWORD },
        maxRedirects: 0,
      });
      assert.equal(res.status(), 403);
      assert.match(await res.text(), /signs in with its passkey/);
    } finally {
      await context.close();
      await proxy.stop();
    }
  });
}
