//! Persistent state.
//!
//! Two layers:
//! - [`Store`] is the backend contract: named tables of byte records, each with an optional
//!   expiry, plus compare-and-swap, an expiry sweep and a durability barrier. [`sled::SledStore`]
//!   implements it on the embedded sled database, [`postgres::PostgresStore`] on a PostgreSQL
//!   database that several proxies share.
//! - [`Repo`] is what the rest of the proxy uses: typed, versioned records (clients, codes,
//!   grants, tokens, consents, sessions, secrets). It owns the rules that must not differ
//!   between backends: tokens and codes keyed by their hash only, secrets sealed with the
//!   store's key, records of a newer schema skipped rather than misread.

mod by_person;
mod keys;
pub mod postgres;
mod records;
mod repo;
pub mod sled;
mod upgrade;

pub use keys::{COOKIE_KEY_SECRET, KeyError, Keys, SecretBox};
pub use records::*;
pub use repo::Repo;

use async_trait::async_trait;

use crate::clock::UnixTime;

/// The tables every backend provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// OAuth clients, by client id.
    Clients,
    /// Authorization codes, by hash.
    Codes,
    /// Grants (one sign-in of one user for one client), by grant id.
    Grants,
    /// Access and refresh tokens, by hash.
    Tokens,
    /// Index: grant id ++ token hash → nothing; finds a grant's tokens to revoke them.
    GrantTokens,
    /// Remembered consents, by subject ++ client id.
    Consents,
    /// Browser sessions of signed-in people, by hash of the session cookie.
    Sessions,
    /// Upstream MCP session ids and the user they were issued to.
    McpSessions,
    /// Sealed secrets and key material, by name.
    Secrets,
    /// Authorization requests waiting for sign-in and consent, by request id.
    Requests,
    /// Sign-ins in progress at an upstream provider, by hash of their `state`.
    SignIns,
    /// Password sign-in attempts per client, when several processes share the store.
    Lockouts,
    /// Certificate orders of processes that share the store: the challenge answers any of
    /// them may be asked for, and the pause after a failed order.
    Acme,
    /// DPoP proofs already used, by hash of key thumbprint and `jti`, until they expire.
    DpopProofs,
    /// Passkeys of password accounts, by user ++ 0 ++ credential id.
    Passkeys,
    /// Passkey registrations and sign-ins between their two requests, by hash of the
    /// ceremony cookie.
    PasskeyCeremonies,
    /// Index: subject ++ 0 ++ grant id → nothing; finds a person's grants (their apps page)
    /// without reading every grant (`by_person.rs`).
    PersonGrants,
    /// Index: subject ++ 0 ++ session key → nothing; finds a person's browser sessions.
    PersonSessions,
    /// What a refresh token was rotated into, sealed, for the grace period only: by hash of
    /// the refresh token it returned (see [`RotationAnswer`]).
    RotationAnswers,
    /// Rotated tokens that carry their answer inline for older proxies, and when a sweep
    /// takes it out: by rotated token hash ++ successor hash (see [`InlineAnswerDue`]).
    InlineAnswers,
}

impl Table {
    pub const ALL: [Table; 20] = [
        Table::Clients,
        Table::Codes,
        Table::Grants,
        Table::Tokens,
        Table::GrantTokens,
        Table::Consents,
        Table::Sessions,
        Table::McpSessions,
        Table::Secrets,
        Table::Requests,
        Table::SignIns,
        Table::Lockouts,
        Table::Acme,
        Table::DpopProofs,
        Table::Passkeys,
        Table::PasskeyCeremonies,
        Table::PersonGrants,
        Table::PersonSessions,
        Table::RotationAnswers,
        Table::InlineAnswers,
    ];

    /// Stable name, used as the backend's table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Clients => "clients",
            Table::Codes => "codes",
            Table::Grants => "grants",
            Table::Tokens => "tokens",
            Table::GrantTokens => "grant_tokens",
            Table::Consents => "consents",
            Table::Sessions => "sessions",
            Table::McpSessions => "mcp_sessions",
            Table::Secrets => "secrets",
            Table::Requests => "requests",
            Table::SignIns => "sign_ins",
            Table::Lockouts => "lockouts",
            Table::Acme => "acme",
            Table::DpopProofs => "dpop_proofs",
            Table::Passkeys => "passkeys",
            Table::PasskeyCeremonies => "passkey_ceremonies",
            Table::PersonGrants => "person_grants",
            Table::PersonSessions => "person_sessions",
            Table::RotationAnswers => "rotation_answers",
            Table::InlineAnswers => "inline_answers",
        }
    }
}

/// One stored value and when it stops counting (`None`: never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub expires_at: Option<UnixTime>,
    pub value: Vec<u8>,
}

/// A failure of the storage itself (I/O, corruption), never "not found".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's files could not be created or opened.
    #[error("cannot {doing} {}: {source}", path.display())]
    Open {
        doing: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The embedded store failed (I/O, corruption).
    #[error("store I/O: {0}")]
    Sled(#[from] ::sled::Error),
    #[error(
        "the data directory {path} is in use by another mcp-auth-proxy{pid}; stop it or choose another --data-path"
    )]
    Locked { path: String, pid: String },
    /// PostgreSQL failed or is away.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A store operation took longer than its bound (the database is slow or away).
    #[error("the store did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("store record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Tokens revoked by one process, told to the others that share its store, so that their
/// caches of checked tokens forget them at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every token of this grant.
    Grant(String),
    /// These tokens.
    Tokens(Vec<TokenHash>),
    /// Announcements may have been missed (the connection that listens was lost): forget
    /// every cached check.
    Missed,
}

impl StoreError {
    /// Whether the storage is away or failing (a database outage, I/O), as opposed to a
    /// record or key we cannot use: what a request hears as "try again shortly".
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Self::Open { .. } | Self::Sled(_) | Self::Postgres(_) | Self::TimedOut(_)
        )
    }
}

/// A lock held across the processes that share a store, released when dropped.
pub struct Exclusive {
    /// What keeps the lock (a database session), if anything must.
    _held: Option<Box<dyn Send>>,
}

impl Exclusive {
    /// A lock nobody else can contend for (a store of one process).
    pub fn alone() -> Self {
        Self { _held: None }
    }

    /// A lock that lasts as long as `holder`.
    pub fn kept_by(holder: impl Send + 'static) -> Self {
        Self {
            _held: Some(Box::new(holder)),
        }
    }
}

/// The backend contract. Every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The entry at `key`, expired or not (the caller judges expiry by its clock).
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Writes `entry` at `key`, replacing any previous one.
    async fn put(&self, table: Table, key: &[u8], entry: Entry) -> Result<(), StoreError>;
    /// Removes `key` and returns what was there: the single-use primitive for codes.
    async fn take(&self, table: Table, key: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Replaces `expected` by `new` only if the entry is still `expected` (None = absent or
    /// delete). Returns whether it swapped.
    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&Entry>,
        new: Option<Entry>,
    ) -> Result<bool, StoreError>;
    /// Every key starting with `prefix`, with its entry, in key order.
    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError>;
    /// Deletes every entry that expired before `now`; returns how many.
    async fn sweep(&self, now: UnixTime) -> Result<usize, StoreError>;
    /// Returns once every write before it is on disk (survives `kill -9`).
    async fn flush(&self) -> Result<(), StoreError>;
    /// Tells every other process on this store of a revocation. The embedded store has one
    /// process: there is nobody to tell.
    async fn announce(&self, _revocation: &Revocation) -> Result<(), StoreError> {
        Ok(())
    }
    /// The revocations other processes on this store announce, or `None` when no other
    /// process can share it.
    fn revocations(&self) -> Option<tokio::sync::broadcast::Receiver<Revocation>> {
        None
    }
    /// Waits until this process holds the lock called `name` among every process on this
    /// store, and holds it until the returned value is dropped (or the process dies). The
    /// wait has no bound: the holder may work for minutes (a certificate order). The
    /// embedded store has one process, and its callers within it take turns themselves.
    async fn exclusive(&self, _name: &str) -> Result<Exclusive, StoreError> {
        Ok(Exclusive::alone())
    }
    /// Whether other processes may use this store at the same time (so that what one
    /// process counts in memory, such as failed sign-ins, must be counted here instead).
    fn shared(&self) -> bool {
        false
    }
    /// The same records for background work (the sweeps), through a connection of its own
    /// where the backend pools connections for requests; `None`: this store itself.
    fn for_background(&self) -> Option<std::sync::Arc<dyn Store>> {
        None
    }
}
