//! Discovery documents.
//!
//! RFC 9728 protected-resource metadata, served identically at the root well-known path and
//! at the path-suffixed form (`/.well-known/oauth-protected-resource/mcp`): Claude probes
//! both, gemini-cli and Junie need the path form. `resource` comes from configuration, never
//! from the Host header.
//!
//! Each server of `--config` has its own documents: its resource's at
//! `/.well-known/oauth-protected-resource/<name>/mcp`, naming its issuer `<origin>/<name>`,
//! whose metadata is at `/.well-known/oauth-authorization-server/<name>` (RFC 8414 §3.1). The
//! root documents are the default server's; without one they are 404.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{AuthServer, Served};
use crate::config::Site;
use crate::gate::MCP_SCOPE;

/// RFC 9728 §2 document.
#[derive(Debug, Serialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub bearer_methods_supported: Vec<&'static str>,
    pub resource_name: &'static str,
}

impl ProtectedResourceMetadata {
    pub fn for_site(site: &Site) -> Self {
        Self {
            resource: site.server.resource.clone(),
            authorization_servers: vec![site.server.issuer.clone()],
            scopes_supported: vec![MCP_SCOPE.to_string()],
            bearer_methods_supported: vec!["header"],
            resource_name: "MCP server",
        }
    }
}

/// `GET /.well-known/oauth-protected-resource[<mcp-path>]`.
pub async fn protected_resource(
    State(app): State<AuthServer>,
    State(served): State<Served>,
) -> Response {
    if !served.serves() {
        return no_default_server();
    }
    let mut doc = ProtectedResourceMetadata::for_site(&served);
    doc.scopes_supported
        .extend(crate::oauth::policy_scopes(&app, &served.server.resource));
    cacheable(Json(doc))
}

/// The root documents of `--config` without a default server: each server has its own.
fn no_default_server() -> Response {
    let why = "this proxy serves several MCP servers, each at /<name>/mcp with its own metadata; none is the default";
    let body = serde_json::json!({ "error": "not_found", "error_description": why });
    (axum::http::StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Metadata may be cached briefly by clients and intermediaries.
fn cacheable(body: impl IntoResponse) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// RFC 8414 authorization-server metadata path.
pub const AS_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// RFC 8414 §2 document: only what is implemented is advertised.
#[derive(Debug, Serialize)]
pub struct AuthorizationServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub registration_endpoint: String,
    pub revocation_endpoint: String,
    pub response_types_supported: [&'static str; 1],
    pub response_modes_supported: [&'static str; 1],
    pub grant_types_supported: Vec<&'static str>,
    pub code_challenge_methods_supported: [&'static str; 1],
    pub token_endpoint_auth_methods_supported: [&'static str; 3],
    pub revocation_endpoint_auth_methods_supported: [&'static str; 3],
    /// RFC 7662, when a confidential client is declared in `--clients-file` (only those may
    /// use it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint_auth_methods_supported: Option<[&'static str; 2]>,
    pub scopes_supported: Vec<String>,
    pub authorization_response_iss_parameter_supported: bool,
    pub service_documentation: &'static str,
    /// The keys of our identity assertions, when they are sent upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The algorithms of the DPoP proofs this server verifies (RFC 9449 §5.1).
    pub dpop_signing_alg_values_supported: Vec<String>,
    /// Client ID metadata documents are accepted (unless `--no-cimd`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_id_metadata_document_supported: bool,
}

impl AuthorizationServerMetadata {
    pub fn for_site(site: &Site) -> Self {
        // The shared endpoints are on the proxy's own origin, also for a server routed by
        // host name.
        let at = |p: &str| site.home.join(p);
        let auth_methods = ["none", "client_secret_post", "client_secret_basic"];
        Self {
            issuer: site.server.issuer.clone(),
            // The issuer's own endpoints: they know which server's tokens they issue.
            authorization_endpoint: format!("{}/authorize", site.server.issuer),
            token_endpoint: format!("{}/token", site.server.issuer),
            registration_endpoint: at("/register"),
            revocation_endpoint: at("/revoke"),
            response_types_supported: ["code"],
            response_modes_supported: ["query"],
            grant_types_supported: vec!["authorization_code", "refresh_token"],
            code_challenge_methods_supported: [crate::oauth::pkce::S256],
            token_endpoint_auth_methods_supported: auth_methods,
            revocation_endpoint_auth_methods_supported: auth_methods,
            introspection_endpoint: None,
            introspection_endpoint_auth_methods_supported: None,
            scopes_supported: vec![MCP_SCOPE.into(), crate::oauth::OFFLINE_ACCESS.into()],
            authorization_response_iss_parameter_supported: true,
            service_documentation: "https://modelcontextprotocol.io/specification/2025-11-25/basic/authorization",
            jwks_uri: None,
            dpop_signing_alg_values_supported: crate::dpop::algorithm_names(),
            client_id_metadata_document_supported: false,
        }
    }
}

/// `GET /.well-known/oauth-authorization-server[/<anything>]`: one issuer, one document.
pub async fn authorization_server(
    State(app): State<AuthServer>,
    State(served): State<Served>,
) -> Response {
    if !served.serves() {
        return no_default_server();
    }
    let mut doc = AuthorizationServerMetadata::for_site(&served);
    doc.scopes_supported
        .extend(crate::oauth::policy_scopes(&app, &served.server.resource));
    if app.assertion {
        doc.jwks_uri = Some(app.site.home.join(crate::assertion::JWKS_PATH));
    }
    doc.client_id_metadata_document_supported = app.documents.is_some();
    if app.client_credentials {
        doc.grant_types_supported.push("client_credentials");
    }
    if app.introspection {
        doc.introspection_endpoint = Some(app.site.home.join("/introspect"));
        doc.introspection_endpoint_auth_methods_supported = Some([
            crate::oauth::clients::SECRET_BASIC,
            crate::oauth::clients::SECRET_POST,
        ]);
    }
    cacheable(Json(doc))
}
