//! What the proxy puts in front of: an HTTP MCP server ([`http`]) or a stdio one ([`stdio`]),
//! behind one [`Backend`] trait.

pub mod exchange;
pub mod http;
pub mod identity;
pub mod lane;
pub mod mapping;
pub mod sessions;
pub mod stdio;

use std::time::Duration;

use async_trait::async_trait;
use axum::extract::Request;
use axum::response::Response;

use self::http::{ClientInfo, Upstream};
use crate::config::Site;
use crate::gate::Caller;
use crate::store::Repo;

/// A live session as the operator console shows it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: String,
    /// The subject of its user.
    pub user: String,
    /// Its child's process id.
    pub pid: Option<u32>,
    pub age: Duration,
    pub idle: Duration,
    /// The child's resident memory, read from `/proc` (Linux).
    pub rss_kib: Option<u64>,
    /// A 2026-07-28 user's session (stateless requests) rather than a 2025 one.
    pub stateless: bool,
    /// Its child serves every session (`--stdio-mode shared`).
    pub shared_child: bool,
}

/// One authenticated request handed to the MCP server, with what the proxy knows about it.
pub struct Handoff<'a> {
    pub caller: &'a Caller,
    pub site: &'a Site,
    pub repo: &'a Repo,
    /// Who sent it, for `X-Forwarded-For`.
    pub client: ClientInfo,
    /// What goes upstream beside the request (HTTP only).
    pub upstream: Upstream<'a>,
}

/// The MCP server behind the proxy: an HTTP one ([`http::HttpBackend`]) or a stdio one
/// bridged ([`stdio::bridge::StdioBackend`]). The router, the probes, the metrics and the
/// shutdown talk to it only through this.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `http` or `stdio`: the metrics label and the word in logs.
    fn kind(&self) -> &'static str;

    /// Why it cannot serve now, as a person reads it, or `None` when it can: an HTTP server
    /// accepts a connection within `limit`; a stdio command is found and not crash-looping.
    /// One check for readiness (`/readyz`) and for the startup banner.
    async fn not_ready(&self, limit: Duration) -> Option<String>;

    /// Answers one authenticated request for a path the proxy does not serve itself.
    async fn serve(&self, handoff: Handoff<'_>, req: Request) -> Response;

    /// Whether the user's provider token goes upstream with `--pass-access-token` (it is
    /// fetched, and refreshed if needed, only for a backend that sends it).
    fn sends_provider_token(&self) -> bool {
        false
    }

    /// The live MCP sessions that hold a process (the `mcp_sessions` gauge).
    fn live_sessions(&self) -> usize {
        0
    }

    /// The live sessions and their processes, for the operator console (none for an HTTP
    /// server: its sessions are the upstream's).
    fn sessions(&self) -> Vec<SessionView> {
        Vec::new()
    }

    /// Ends the session `id` and stops its process (a shared child keeps serving the
    /// others); whether there was one.
    fn end_session(&self, _id: &str) -> bool {
        false
    }

    /// Whether this backend's sessions live on one worker thread each (stdio), so that
    /// [`Backend::worker_of_session`] and [`Backend::worker_of_user`] may answer: the server
    /// looks at a connection's first request only for such backends.
    fn places_sessions(&self) -> bool {
        false
    }

    /// The worker thread that runs session `id`'s process, when this backend has one there
    /// (stdio): the server serves a connection whose first request names that session on
    /// that worker, so calls and answers do not cross threads.
    fn worker_of_session(&self, _id: &str) -> Option<usize> {
        None
    }

    /// The worker thread that runs the process serving user `subject`'s stateless requests,
    /// when there is one (stdio; see [`Backend::worker_of_session`]).
    fn worker_of_user(&self, _subject: &str) -> Option<usize> {
        None
    }

    /// How often [`Backend::housekeep`] runs, or `None` when there is nothing to keep.
    fn housekeeping_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic upkeep (idle stdio sessions reaped).
    fn housekeep(&self) {}

    /// Ends what it started, at shutdown (stdio children are stopped).
    async fn shutdown(&self) {}
}
