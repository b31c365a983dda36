//! The OAuth 2.1 authorization server (draft-ietf-oauth-v2-1) for MCP clients: metadata
//! (RFC 8414, RFC 9728), dynamic registration (RFC 7591/7592), the authorization endpoint
//! with PKCE and consent, client ID metadata documents, the token endpoint, revocation (RFC 7009).

pub mod authorize;
pub mod cimd;
pub mod clients;
pub mod consent;
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

use crate::gate::MCP_SCOPE;

/// The scope that asks for refresh tokens (issued anyway, see docs/design.md, "Tokens").
pub const OFFLINE_ACCESS: &str = "offline_access";

/// The scopes granted for a requested `scope` parameter: `mcp` always, `offline_access` when
/// asked; anything else is dropped, not refused.
pub fn granted_scopes(requested: Option<&str>) -> Vec<String> {
    let mut out = vec![MCP_SCOPE.to_string()];
    if requested.is_some_and(|s| s.split(' ').any(|s| s == OFFLINE_ACCESS)) {
        out.push(OFFLINE_ACCESS.to_string());
    }
    out
}

/// A human description of a scope, for the consent page.
pub fn describe_scope(scope: &str) -> &'static str {
    match scope {
        MCP_SCOPE => "Use the tools, resources and prompts of this MCP server as you",
        OFFLINE_ACCESS => "Stay connected when you are not here (refresh tokens)",
        _ => "An unknown permission",
    }
}
