//! Discovery documents.
//!
//! RFC 9728 protected-resource metadata, served identically at the root well-known path and
//! at the path-suffixed form (`/.well-known/oauth-protected-resource/mcp`): Claude probes
//! both, gemini-cli and Junie need the path form. `resource` comes from configuration, never
//! from the Host header.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::Site;
use crate::gate::MCP_SCOPE;
use crate::server::AppState;

/// Root of the protected-resource metadata path (RFC 9728 §3).
pub const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// RFC 9728 §2 document.
#[derive(Debug, Serialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<&'static str>,
    pub bearer_methods_supported: Vec<&'static str>,
    pub resource_name: &'static str,
}

impl ProtectedResourceMetadata {
    pub fn for_site(site: &Site) -> Self {
        Self {
            resource: site.resource.clone(),
            authorization_servers: vec![site.origin.as_str().to_string()],
            scopes_supported: vec![MCP_SCOPE],
            bearer_methods_supported: vec!["header"],
            resource_name: "MCP server",
        }
    }
}

/// `GET /.well-known/oauth-protected-resource[<mcp-path>]`.
pub async fn protected_resource(State(app): State<AppState>) -> Response {
    cacheable(Json(ProtectedResourceMetadata::for_site(&app.site)))
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
