//! What the proxy puts in front of: an HTTP MCP server ([`http`]).

pub mod exchange;
pub mod http;
pub mod identity;
pub mod mapping;
pub mod sessions;
pub mod stdio;

use std::sync::Arc;
use std::time::Duration;

/// The MCP server behind the proxy: an HTTP one, or a stdio one bridged.
pub enum Backend {
    Http(Arc<http::HttpBackend>),
    Stdio(Box<stdio::bridge::StdioBackend>),
}

impl Backend {
    pub fn http(&self) -> Option<&Arc<http::HttpBackend>> {
        match self {
            Self::Http(b) => Some(b),
            Self::Stdio(_) => None,
        }
    }

    pub fn stdio(&self) -> Option<&stdio::bridge::StdioBackend> {
        match self {
            Self::Stdio(b) => Some(b),
            Self::Http(_) => None,
        }
    }

    /// Why it cannot serve now, as a person reads it, or `None` when it can: an HTTP server
    /// accepts a connection within `limit`; a stdio command is found and not crash-looping.
    /// One check for readiness (`/readyz`) and for the startup banner.
    pub async fn not_ready(&self, limit: Duration) -> Option<String> {
        match self {
            Self::Http(b) => b.reachable(limit).await.err().map(|e| e.to_string()),
            Self::Stdio(b) => b.startable().err().map(|e| e.to_string()),
        }
    }
}
