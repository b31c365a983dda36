//! Why the bridge answers a request itself instead of passing it to a child. Every refusal
//! is a JSON-RPC error with the HTTP status that fits (Streamable HTTP, MCP 2025-11-25
//! "Transports"), so a handler returns `Result<Response, Refusal>` and refuses with `?`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::jsonrpc_error;
use crate::request_body::Unread;

/// The bridge's own answer to a request it does not pass on.
#[derive(Debug)]
pub enum Refusal {
    /// An HTTP status and what the client is told.
    Rpc(StatusCode, &'static str),
    Session(SessionRefusal),
    Body(Unread),
    /// The body is not a JSON-RPC 2.0 message (JSON-RPC's parse error, -32700).
    Parse,
    /// A method this path does not take; the ones it takes (the `Allow` header).
    Method(&'static str),
    /// A 2026-07-28 request that breaks that revision's rules.
    Modern(super::modern::ModernRefusal),
}

impl From<super::modern::ModernRefusal> for Refusal {
    fn from(refused: super::modern::ModernRefusal) -> Self {
        Self::Modern(refused)
    }
}

impl From<SessionRefusal> for Refusal {
    fn from(refused: SessionRefusal) -> Self {
        Self::Session(refused)
    }
}

impl From<Unread> for Refusal {
    fn from(unread: Unread) -> Self {
        Self::Body(unread)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Rpc(status, message) => jsonrpc_error(status, message),
            Self::Session(refused) => refused.into_response(),
            Self::Body(unread) => unread.jsonrpc(),
            Self::Parse => {
                let body = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: the body is not a JSON-RPC 2.0 message"}}"#;
                super::json_response(StatusCode::BAD_REQUEST, body)
            }
            Self::Modern(refused) => refused.into_response(),
            Self::Method(allow) => {
                let mut r = jsonrpc_error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
        }
    }
}

/// Why a request gets no session: none named, none of the caller's by that name, or none
/// can start. Each answers as a JSON-RPC error.
#[derive(Debug)]
pub enum SessionRefusal {
    /// A request other than `initialize` without `Mcp-Session-Id`.
    Unnamed,
    NotFound,
    /// The caller holds `--max-sessions-per-user` already.
    UserFull {
        held: usize,
    },
    /// `--max-sessions` are in use, `top` of them by one user.
    ServerFull {
        total: usize,
        top: usize,
    },
    /// The child keeps exiting at start: the next try waits this long.
    BackingOff(std::time::Duration),
    NotStarted,
    Internal,
}

impl IntoResponse for SessionRefusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Unnamed => (StatusCode::BAD_REQUEST, "Mcp-Session-Id is required".into()),
            Self::NotFound => (StatusCode::NOT_FOUND, "session not found".into()),
            Self::UserFull { held } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "you already hold {held} MCP sessions, the most one user may; close one (or let it idle out) and try again"
                ),
            ),
            Self::ServerFull { total, top } => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "all {total} MCP sessions of this server are in use ({top} by one user); try again later"
                ),
            ),
            Self::BackingOff(wait) => {
                let mut r = jsonrpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the MCP server keeps exiting right after it starts; retrying later",
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
                return r;
            }
            Self::NotStarted => (
                StatusCode::BAD_GATEWAY,
                "the MCP server could not be started".to_string(),
            ),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
        };
        jsonrpc_error(status, &message)
    }
}
