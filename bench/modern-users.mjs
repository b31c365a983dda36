// The bridge's memory for each user's MCP 2026-07-28 child (issue 20). USERS distinct people
// sign in through a real OpenID provider (npm oidc-provider on loopback, one login each) and
// each makes one stateless tools/call, which starts and initializes that user's own child
// (server-everything over stdio). Reported: the proxy's RSS (its children excluded) before
// and after, per user, and the children it runs.
//
// Usage: node bench/modern-users.mjs [USERS]  (MCP_AUTH_PROXY_BIN names the binary; bench/
// modern-users.sh builds the release one and runs this.)
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

import { Browser, ROOT, childrenOf, everythingStdio, freePorts, startProxy } from '../tests/e2e/harness.mjs';
import { signInClient } from './sign-in.mjs';

const USERS = Number(process.argv[2] ?? 40);
const WARM = 5;
const { default: Provider } = await import(
  pathToFileURL(path.join(ROOT, 'tests/e2e/node_modules/oidc-provider/lib/index.js')).href
);

const [idpPort, proxyPort] = await freePorts(2);
const issuer = `http://127.0.0.1:${idpPort}`;
const idp = new Provider(issuer, {
  clients: [{
    client_id: 'mcp-auth-proxy',
    client_secret: 'a-secret-shared-with-the-proxy',
    redirect_uris: [`http://127.0.0.1:${proxyPort}/.auth/oidc/callback`],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  async findAccount(_ctx, id) {
    return { accountId: id, async claims() { return { sub: id, email: `${id}@example.com`, email_verified: true }; } };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  scopes: ['openid', 'email'],
  cookies: { keys: ['bench-cookie-key'] },
  features: { devInteractions: { enabled: true } },
});
const idpServer = await new Promise((resolve) => {
  const s = idp.listen(idpPort, '127.0.0.1', () => resolve(s));
});
const proxy = await startProxy({
  password: null,
  port: proxyPort,
  command: everythingStdio(),
  args: [
    '--oidc-configuration-url', `${issuer}/.well-known/openid-configuration`,
    '--oidc-client-id', 'mcp-auth-proxy',
    '--oidc-client-secret', 'a-secret-shared-with-the-proxy',
    '--oidc-scopes', 'openid,email',
    '--oidc-allow-all-users',
    '--max-sessions', '1000',
    // Every sign-in comes from 127.0.0.1.
    '--rate-limit', '0',
  ],
});

const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${proxy.child.pid}/status`, 'utf8'))[1]);
const meta = {
  'io.modelcontextprotocol/protocolVersion': '2026-07-28',
  'io.modelcontextprotocol/clientCapabilities': {},
};

/** Signs `login` in: their access token. */
async function signedIn(login) {
  return (await signInClient(proxy.origin, new Browser(), undefined, { origin: issuer, login })).access;
}

/** A user's first stateless call, which starts their child. */
async function firstCall(access) {
  const res = await fetch(`${proxy.origin}/mcp`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${access}`, 'content-type': 'application/json',
      accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2026-07-28',
      'mcp-method': 'tools/call', 'mcp-name': 'echo',
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { message: 'hi' }, _meta: meta } }),
  });
  const answer = await res.json();
  if (answer.result?.resultType !== 'complete') throw new Error(JSON.stringify(answer));
}

try {
  // Everyone signs in first, so that what is measured is the children's bridge state alone
  // (not grants and tokens); the first users' calls warm the allocator.
  const tokens = [];
  for (let i = 0; i < WARM + USERS; i++) tokens.push(await signedIn(`user${i}`));
  for (const t of tokens.slice(0, WARM)) await firstCall(t);
  await new Promise((r) => setTimeout(r, 1000));
  const before = rss();
  const childrenBefore = childrenOf(proxy.child.pid).length;
  for (const t of tokens.slice(WARM)) await firstCall(t);
  await new Promise((r) => setTimeout(r, 1000));
  const after = rss();
  const children = childrenOf(proxy.child.pid).length;
  console.log(`users: ${WARM + USERS} signed in; ${WARM} made a first call to warm up, then ${USERS} more`);
  console.log(`children of the proxy: ${childrenBefore} before, ${children} after (one per user)`);
  console.log(`proxy RSS: ${before} KiB before, ${after} KiB after ${USERS} more users' first calls: ${Math.round((after - before) / USERS)} KiB per user's idle child (bridge state; the child itself excluded)`);
} finally {
  await proxy.stop();
  idpServer.close();
  for (const pid of childrenOf(process.pid)) process.kill(pid);
}
