// Debian's Chromium for the page tests: how it is started here, the two screen sizes every
// page is checked at, screenshots for a person to look at (target/e2e-screenshots/), and the
// steps of an OAuth authorization a browser takes (a client registered, its callback served
// locally as a native app would, the code exchanged).

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { ROOT } from './harness.mjs';

export const SCREENSHOTS = path.join(ROOT, 'target/e2e-screenshots');

export const VIEWPORTS = {
  desktop: { viewport: { width: 1280, height: 800 } },
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 },
};

/** Chromium, headless, with nothing reaching for the network beyond the test's own servers. */
export async function launchChromium() {
  mkdirSync(SCREENSHOTS, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A full-page screenshot, after checking the card fits the screen (a phone's least of all). */
export async function shoot(page, kind, name) {
  const box = await page.locator('main').boundingBox();
  const { width } = page.viewportSize();
  assert.ok(box && box.x >= 0 && box.x + box.width <= width + 0.5, `${kind}/${name}: the card fits (${JSON.stringify(box)})`);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${kind}-${name}.png`), fullPage: true });
}

/** A client's callback: a real local server. `close()` stops it. */
export async function startCallback() {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('client callback');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/callback`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** Registers a client named `name` (DCR); returns its id. */
export async function registerClient(proxy, name, redirect) {
  const res = await fetch(proxy.url('/register'), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: name, redirect_uris: [redirect] }),
  });
  assert.equal(res.status, 201);
  return (await res.json()).client_id;
}

/** A PKCE pair. */
export function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  return { verifier, challenge: crypto.createHash('sha256').update(verifier).digest('base64url') };
}

/** The authorization URL a client sends the browser to. */
export function authorizationUrl(proxy, clientId, redirect, challenge = pkce().challenge) {
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirect,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state: 'pages',
  });
  return proxy.url(`/authorize?${q}`);
}

/** Approves on the consent page `page` shows; returns the code the client's callback got. */
export async function approve(page, redirect) {
  await Promise.all([page.waitForURL((u) => u.href.startsWith(redirect)), page.click('button[value=approve]')]);
  return new URL(page.url()).searchParams.get('code');
}

/** Exchanges an authorization code; returns the token response. */
export async function exchange(proxy, { clientId, code, verifier, redirect }) {
  const res = await fetch(proxy.url('/token'), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirect, code_verifier: verifier, client_id: clientId }),
  });
  assert.equal(res.status, 200);
  return res.json();
}
