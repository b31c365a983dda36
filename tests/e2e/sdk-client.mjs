// The official TypeScript SDK client, signed in through our flow by the harness's browser.

import assert from 'node:assert/strict';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import {
  Client as ModernClient,
  StreamableHTTPClientTransport as ModernTransport,
  UnauthorizedError as ModernUnauthorized,
} from '@modelcontextprotocol/client';

/** An in-memory OAuthClientProvider whose "browser" is the harness. */
export class TestProvider {
  constructor(browser, opts = {}) {
    this.browser = browser;
    this.opts = opts;
    this.sessions = 0;
    this.code = undefined;
    this._tokens = undefined;
    this._client = undefined;
    this._verifier = undefined;
  }
  get redirectUrl() {
    return 'http://127.0.0.1:43219/callback';
  }
  get clientMetadata() {
    return {
      client_name: 'E2E SDK client',
      redirect_uris: [this.redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  clientInformation() {
    return this._client;
  }
  saveClientInformation(info) {
    this._client = info;
  }
  tokens() {
    return this._tokens;
  }
  saveTokens(tokens) {
    this._tokens = tokens;
  }
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'tokens') this._tokens = undefined;
    if (scope === 'all' || scope === 'client') this._client = undefined;
    if (scope === 'all' || scope === 'verifier') this._verifier = undefined;
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  codeVerifier() {
    return this._verifier;
  }
  async redirectToAuthorization(url) {
    this.sessions += 1;
    const back = new URL(await this.browser.authorize(url.href, this.opts));
    this.code = back.searchParams.get('code');
    this.error = back.searchParams.get('error');
    this.iss = back.searchParams.get('iss');
  }
}

/** Connects, signing in when needed; returns the connected client. `transport` adds to the
 * transport's options (a `fetch` of the test's own). */
export async function connect(resource, provider, capabilities = {}, transport = {}) {
  const open = () => new StreamableHTTPClientTransport(new URL(resource), { authProvider: provider, ...transport });
  const client = new Client({ name: 'e2e', version: '1.0.0' }, { capabilities });
  try {
    await client.connect(open());
    return client;
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  assert.ok(provider.code, `the sign-in produced a code (error: ${provider.error})`);
  await open().finishAuth(provider.code);
  const fresh = new Client({ name: 'e2e', version: '1.0.0' }, { capabilities });
  await fresh.connect(open());
  return fresh;
}


/** The SDK v2 client (@modelcontextprotocol/client) in negotiation `mode` ('legacy', 'auto'
 * or { pin: '2026-07-28' }), signed in through the browser when needed. */
export async function connectModern(resource, provider, mode, capabilities = {}) {
  const make = () => new ModernClient({ name: 'e2e-v2', version: '1.0.0' }, { capabilities, versionNegotiation: { mode } });
  const transport = () => new ModernTransport(new URL(resource), { authProvider: provider });
  try {
    const client = make();
    await client.connect(transport());
    return client;
  } catch (e) {
    if (!(e instanceof ModernUnauthorized)) throw e;
  }
  assert.ok(provider.code, `the sign-in produced a code (error: ${provider.error})`);
  await transport().finishAuth(provider.code, provider.iss);
  const client = make();
  await client.connect(transport());
  return client;
}
