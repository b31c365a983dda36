//! The OAuth 2.1 authorization server (draft-ietf-oauth-v2-1) for MCP clients: metadata
//! (RFC 8414, RFC 9728), dynamic registration (RFC 7591/7592), the authorization endpoint
//! with PKCE and consent, client ID metadata documents, the token endpoint, revocation (RFC 7009).

pub mod apps;
pub mod authorize;
pub mod cimd;
pub mod clients;
pub mod consent;
pub mod console;
pub mod introspect;
pub mod metadata;
pub mod pending;
pub mod pkce;
pub mod redirect_uri;
pub mod register;
pub mod resource;
pub mod revoke;
pub mod static_clients;
pub mod token;

use std::sync::Arc;

use crate::config::Site;
use crate::gate::{MCP_SCOPE, TokenCache};
use crate::login::SignIn;
use crate::policy::PolicyFile;

/// The server an authorization-server request is for: the one whose issuer's endpoint was
/// called. Each server of `--config` has its own issuer (`<origin>/<name>`) and endpoints
/// under it; the router lends each route its server's site. An issuer issues tokens for its
/// own server's resource only, so a client that omits `resource` still gets the right one.
#[derive(Clone)]
pub struct Served(pub Arc<Site>);

impl std::ops::Deref for Served {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.0
    }
}

impl Served {
    /// Whether `resource` is another of this proxy's servers' (a code or grant for it is
    /// redeemed at that server's issuer only). A resource no server has any more, such as
    /// one under an earlier external URL, is not another server's.
    pub fn for_another_server(&self, resource: &str) -> bool {
        resource != self.server.resource && self.server_of(resource).is_some()
    }

    /// An endpoint of this server's issuer (`/authorize`, `/token`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.server.issuer)
    }
}

/// The policy files: each server's own, else the shared `--policy-file`.
#[derive(Clone, Default)]
pub struct Policies {
    pub shared: Option<Arc<PolicyFile>>,
    /// A server's own policy, by its resource.
    pub by_resource: Vec<(String, Arc<PolicyFile>)>,
}

impl Policies {
    /// The policy in force for tokens of `resource`.
    pub fn of(&self, resource: &str) -> Option<&Arc<PolicyFile>> {
        self.by_resource
            .iter()
            .find(|(r, _)| r == resource)
            .map(|(_, p)| p)
            .or(self.shared.as_ref())
    }
}

/// What the authorization server needs of the running proxy, handed to its handlers through
/// axum's `FromRef`. It builds on sign-in: its requests are answered by a person signed in
/// there, so sign-in's state (site, store, sessions, metrics) is read through it.
#[derive(Clone)]
pub struct AuthServer(std::sync::Arc<AuthServerParts>);

pub struct AuthServerParts {
    pub signin: SignIn,
    /// The gate's cache: a revoked token leaves it at once.
    pub tokens: std::sync::Arc<TokenCache>,
    /// Client ID metadata documents, unless `--no-cimd`.
    pub documents: Option<cimd::Documents>,
    /// Authorization requests waiting for a sign-in, per client and in all.
    pub pending: pending::PendingBudget,
    /// Whether a declared client may use `client_credentials` (advertised then).
    pub client_credentials: bool,
    /// Whether a declared confidential client may introspect tokens (advertised then).
    pub introspection: bool,
    /// Whether identity assertions are signed (their keys then advertised as `jwks_uri`).
    pub assertion: bool,
    /// `--policy-file` and each server's own: the scopes a server's policy names are known
    /// scopes for its tokens, granted to whom it allows.
    pub policies: Policies,
    /// `--admin-users`: who may use the operator console.
    pub admin_users: Vec<String>,
    /// The MCP servers (with their names in `--config`), whose sessions the console shows
    /// and ends.
    pub backends: Vec<(Option<String>, std::sync::Arc<dyn crate::backend::Backend>)>,
    /// `--audit-log`, where the console's actions are recorded too.
    pub audit: Option<std::sync::Arc<crate::audit::AuditLog>>,
}

impl AuthServer {
    pub fn new(parts: AuthServerParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for AuthServer {
    type Target = AuthServerParts;
    fn deref(&self) -> &AuthServerParts {
        &self.0
    }
}

impl std::ops::Deref for AuthServerParts {
    type Target = SignIn;
    fn deref(&self) -> &SignIn {
        &self.signin
    }
}

pub use crate::tokens::OFFLINE_ACCESS;

/// The scopes kept of a requested `scope` parameter: `mcp` always, `offline_access` and the
/// policy's scopes when asked; anything else is dropped, not refused. Whether the user may
/// hold a policy scope is known only once they have signed in ([`scopes_for`]).
pub fn granted_scopes(requested: Option<&str>, known: &[String]) -> Vec<String> {
    let mut out = vec![MCP_SCOPE.to_string()];
    let asked: Vec<&str> = requested.unwrap_or_default().split(' ').collect();
    if asked.contains(&OFFLINE_ACCESS) {
        out.push(OFFLINE_ACCESS.to_string());
    }
    for scope in known {
        if asked.contains(&scope.as_str()) && !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    out
}

/// The scopes the policy of `resource` names (none without one).
pub fn policy_scopes(app: &AuthServer, resource: &str) -> Vec<String> {
    app.policies
        .of(resource)
        .map(|p| p.current().scopes())
        .unwrap_or_default()
}

/// Of the scopes a request kept, those `identity` may hold: a policy scope only for users
/// the policy of `resource` allows to hold it (checked against the policy in force now).
pub fn scopes_for(
    app: &AuthServer,
    resource: &str,
    identity: &crate::store::Identity,
    scopes: &[String],
) -> Vec<String> {
    let policy = app.policies.of(resource).map(|p| p.current());
    let who = crate::policy::Who::from_identity(identity, &[]);
    scopes
        .iter()
        .filter(|s| {
            *s == MCP_SCOPE
                || *s == OFFLINE_ACCESS
                || policy.as_ref().is_some_and(|p| p.may_hold(&who, s))
        })
        .cloned()
        .collect()
}

/// A human description of a scope, for the consent page.
pub fn describe_scope(app: &AuthServer, resource: &str, scope: &str) -> String {
    match scope {
        MCP_SCOPE => "Use the tools, resources and prompts of this MCP server as you".into(),
        OFFLINE_ACCESS => "Stay connected when you are not here (refresh tokens)".into(),
        other => {
            let said = app
                .policies
                .of(resource)
                .and_then(|p| p.current().describe(other));
            match said {
                Some(words) => format!("{words} (permission “{other}”)"),
                None => {
                    format!("Use what this server's policy reserves for the permission “{other}”")
                }
            }
        }
    }
}
