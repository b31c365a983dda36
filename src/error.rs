//! The response shapes for errors, one per audience.
//!
//! - MCP clients on proxied paths get a JSON-RPC error object (`id: null`).
//! - OAuth endpoints get RFC 6749 §5.2 JSON errors ([`OAuthError`]).
//! - People get an HTML page (see `login`).
//!
//! Details go to the log; the body says only what the client can act on.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// JSON-RPC "server error" code used for every proxy-level failure.
pub const JSONRPC_SERVER_ERROR: i64 = -32000;

/// A JSON-RPC error response with `id: null`.
pub fn jsonrpc_error(status: StatusCode, message: &str) -> Response {
    jsonrpc_error_coded(status, JSONRPC_SERVER_ERROR, message)
}

/// [`jsonrpc_error`] with a code of JSON-RPC 2.0's own (`-32700` parse error, `-32600`
/// invalid request…) instead of the server-error one.
pub fn jsonrpc_error_coded(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    });
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The error codes of RFC 6749 §4.1.2.1/§5.2, RFC 7591 §3.2.2, RFC 8707 and RFC 7009.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    UnsupportedTokenType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    ServerError,
    TemporarilyUnavailable,
    InvalidRedirectUri,
    InvalidClientMetadata,
    InvalidToken,
    InsufficientScope,
    LoginRequired,
    ConsentRequired,
    /// RFC 9449 §5: the DPoP proof is missing, invalid, or for another key.
    InvalidDpopProof,
    /// RFC 9449 §8: the DPoP proof must carry the server's nonce.
    UseDpopNonce,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::AccessDenied => "access_denied",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::InvalidRedirectUri => "invalid_redirect_uri",
            Self::InvalidClientMetadata => "invalid_client_metadata",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::LoginRequired => "login_required",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::ConsentRequired => "consent_required",
        }
    }
}

/// An OAuth error answered as JSON with `Cache-Control: no-store`.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: OAuthErrorCode,
    pub description: String,
    /// `WWW-Authenticate` to send (401 from the token endpoint with Basic auth).
    pub challenge: Option<String>,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            challenge: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, description)
    }

    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            OAuthErrorCode::ServerError,
            "internal error; see the proxy's log",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code.as_str(), "error_description": self.description });
        let mut resp = (self.status, Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The store being away (a database outage) is 503 with `Retry-After`, so clients try again
/// rather than give up; a record or key we cannot use is our fault: 500.
impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        if !e.is_outage() {
            return Self::server_error();
        }
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            OAuthErrorCode::TemporarilyUnavailable,
            "the proxy's store is unavailable; try again shortly",
        );
        err.retry_after = Some(STORE_RETRY_AFTER);
        err
    }
}

/// Seconds a client is asked to wait after a store failure.
pub const STORE_RETRY_AFTER: u64 = 5;

impl From<crate::store::KeyError> for OAuthError {
    fn from(e: crate::store::KeyError) -> Self {
        tracing::error!(error = %e, "key failure");
        Self::server_error()
    }
}

/// A request body that could not be read (too large, or broken) as an OAuth error.
pub fn body_error(e: axum::extract::rejection::BytesRejection) -> OAuthError {
    OAuthError::new(
        e.status(),
        OAuthErrorCode::InvalidRequest,
        "the request body is too large or could not be read",
    )
}

/// An error and its sources, `: `-separated (reqwest's own message alone says "builder
/// error" where its source says which certificate store was missing).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
