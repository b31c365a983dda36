//! Upstream MCP sessions belong to the user who opened them.
//!
//! When an HTTP upstream answers with `Mcp-Session-Id`, the proxy records which subject it was
//! issued to (keyed by the id's hash). A request carrying that id with another user's token,
//! or an id the proxy never saw issued, gets 404 — the transport spec's answer for an unknown
//! session, which makes clients start a new one.

use crate::clock::UnixTime;
use crate::store::{McpSessionRecord, Repo, StoreError, TokenHash};

/// How long an upstream session binding is remembered.
pub const SESSION_BINDING_TTL: UnixTime = 30 * 86_400;

/// Whether `subject` may use the upstream session `id`.
pub async fn owned_by(repo: &Repo, id: &str, subject: &str) -> Result<bool, StoreError> {
    let rec = repo.get::<McpSessionRecord>(&TokenHash::of(id).0).await?;
    Ok(rec.is_some_and(|r| r.subject == subject))
}

/// Records that the upstream issued `id` to `subject`, durably: the client will use the id
/// after we answer, possibly after a crash and restart.
pub async fn bind(repo: &Repo, id: &str, subject: &str) -> Result<(), StoreError> {
    let now = repo.clock().now();
    let rec = McpSessionRecord {
        subject: subject.to_string(),
        created_at: now,
    };
    repo.put(&TokenHash::of(id).0, &rec, Some(now + SESSION_BINDING_TTL))
        .await?;
    repo.flush().await
}

/// Forgets a session the client ended.
pub async fn unbind(repo: &Repo, id: &str) -> Result<(), StoreError> {
    repo.remove::<McpSessionRecord>(&TokenHash::of(id).0)
        .await
        .map(|_| ())
}
