// A real OpenID provider for the end-to-end tests: the npm `oidc-provider` package on
// loopback, with one static client (the proxy) and the accounts given. Its own login and
// consent pages are the "dev interactions" (any password), which the harness's browser fills.

import Provider from 'oidc-provider';

/**
 * Starts the provider on `port` for `accounts` ({ id: { email, groups } }), accepting the
 * proxy's callback on each of `proxyPorts`. Returns its issuer, the proxy's flags for it
 * (before any allow-list), and `stop()`.
 */
export async function startIdp(port, accounts, proxyPorts) {
  const issuer = `http://127.0.0.1:${port}`;
  const idp = new Provider(issuer, {
    clients: [
      {
        client_id: 'mcp-auth-proxy',
        client_secret: 'a-secret-shared-with-the-proxy',
        redirect_uris: proxyPorts.map((p) => `http://127.0.0.1:${p}/.auth/oidc/callback`),
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    async findAccount(_ctx, id) {
      const a = accounts[id];
      if (!a) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: a.email, email_verified: true, name: `${id} (test)`, groups: a.groups };
        },
      };
    },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    cookies: { keys: ['e2e-cookie-key'] },
    features: { devInteractions: { enabled: true } },
  });
  idp.proxy = false;
  let server;
  await new Promise((resolve) => {
    server = idp.listen(port, '127.0.0.1', resolve);
  });
  return {
    issuer,
    args: [
      '--oidc-configuration-url', `${issuer}/.well-known/openid-configuration`,
      '--oidc-client-id', 'mcp-auth-proxy',
      '--oidc-client-secret', 'a-secret-shared-with-the-proxy',
      '--oidc-scopes', 'openid,email,profile,groups',
    ],
    stop: () => new Promise((resolve) => server.close(resolve)),
  };
}
