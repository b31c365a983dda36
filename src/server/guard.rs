//! The checks that run before authentication, answered: a request not addressed to us gets
//! 421, a browser origin without the right to call gets 403, a head that repeats a
//! single-valued header gets 400 (the rules are in `request_head`). Each refusal is shaped
//! for whoever reads that path.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;

use crate::client_addr::is_trusted;
use crate::config::Site;
use crate::error::jsonrpc_error;
use crate::request_head::{
    forwarded_host_refusal, host_allowed, malformed_head, origin_allowed, requested_authority,
};

/// Who reads the answers of a path, and so the shape of an error there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The authorization server's API (`/token`, `/register`, `/revoke`, `/introspect`):
    /// OAuth JSON errors.
    OAuthClient,
    /// `/authorize` and the sign-in pages: a page for a person.
    Person,
    /// The MCP endpoint, metadata and every proxied path: JSON-RPC errors.
    McpClient,
}

impl Audience {
    /// Who reads `path` on `site`: a server of `--config`'s own endpoints
    /// (`/<name>/token`, `/<name>/authorize`) are read as the proxy's are.
    pub fn at(site: &Site, path: &str) -> Self {
        Self::of(site.server_at(path).map_or(path, |(_, local)| local))
    }

    pub fn of(path: &str) -> Self {
        if matches!(
            path,
            "/token"
                | "/register"
                | "/revoke"
                | "/introspect"
                | crate::oauth::introspect::SIGBIT_PATH
        ) || path.starts_with("/register/")
        {
            Self::OAuthClient
        } else if path == "/authorize" || path.starts_with("/.auth/") {
            Self::Person
        } else {
            Self::McpClient
        }
    }
}

/// A refusal of a malformed request in the shape its [`Audience`] reads.
fn refused(site: &Site, path: &str, status: StatusCode, message: &str) -> Response {
    use crate::error::{OAuthError, OAuthErrorCode};
    use axum::response::IntoResponse;
    match Audience::at(site, path) {
        Audience::OAuthClient => {
            OAuthError::new(status, OAuthErrorCode::InvalidRequest, message).into_response()
        }
        Audience::Person => {
            crate::web::pages::error_page(&site.home.host(), status, "Bad request", message)
        }
        Audience::McpClient => jsonrpc_error(status, message),
    }
}

/// The checks before anything else: `400` for a head that repeats a single-valued header
/// ([`malformed_head`]) or whose trusted proxy's `X-Forwarded-Host` names no one host;
/// `421` unless the request is addressed to our external host and port; `403` when a browser `Origin` is present and not allowed (metadata and proxied
/// paths). Health probes pass: orchestrators address the pod or container directly.
pub fn refusal(site: &Site, peer: IpAddr, req: &Request) -> Option<Response> {
    if super::health::is_probe(req.uri().path()) {
        return None;
    }
    let trusted = is_trusted(&site.trusted_proxies, peer);
    if let Some(why) = malformed_head(req.headers())
        .or_else(|| forwarded_host_refusal(req.headers(), trusted).map(str::to_string))
    {
        return Some(refused(
            site,
            req.uri().path(),
            StatusCode::BAD_REQUEST,
            &why,
        ));
    }
    let host_ok = requested_authority(req.headers(), req.uri(), trusted)
        .is_some_and(|a| host_allowed(site, &a));
    if !host_ok {
        return Some(jsonrpc_error(
            StatusCode::MISDIRECTED_REQUEST,
            "this host name is not served here; use the proxy's external URL",
        ));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN)
        // Browsers reach our own endpoints by navigation and form posts, which carry their
        // own checks (CSRF, Origin on POST); this rule is for fetches of metadata and MCP.
        && Audience::at(site, req.uri().path()) == Audience::McpClient
        && !origin.to_str().is_ok_and(|o| origin_allowed(site, o))
    {
        return Some(jsonrpc_error(
            StatusCode::FORBIDDEN,
            "this Origin is not allowed",
        ));
    }
    None
}
