//! The [`Store`] contract on PostgreSQL, for several proxies that share one database.
//!
//! One table holds every record: `(tbl, key)` is the primary key, `value` the bytes the
//! [`Repo`](super::Repo) wrote, `expires_at` the expiry (NULL: never). Each method is one
//! statement, so each is atomic on its own as the contract asks: `take` is `DELETE …
//! RETURNING`, compare-and-swap a conditional `INSERT`, `UPDATE` or `DELETE` whose row count
//! says whether it swapped. A commit is durable when it returns (PostgreSQL's default
//! `synchronous_commit`), so [`Store::flush`] has nothing left to wait for.
//!
//! The schema comes from the versioned migrations in `migrations/postgres/`, embedded in the
//! binary and applied at startup under PostgreSQL's advisory lock (sqlx's migrator), so two
//! processes starting at once apply each migration once. Migrations only add: a binary older
//! than the database's schema still runs on it (rolling upgrades), and says so in its log.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row, SqlSafeStr};
use tokio::sync::broadcast;

use super::{Entry, Exclusive, Revocation, Store, StoreError, Table, TokenHash};
use crate::clock::UnixTime;

/// The migrations, in order. A version once released never changes (sqlx checks a checksum).
const MIGRATIONS: [(i64, &str, &str); 1] = [(
    1,
    "entries",
    include_str!("../../migrations/postgres/0001_entries.sql"),
)];

/// Where sqlx records the applied migrations: a name of our own, so a database shared with
/// another sqlx application keeps both histories apart.
const MIGRATIONS_TABLE: &str = "mcp_auth_proxy_migrations";

/// How long one store operation may take, waiting for a connection included: beyond it the
/// request gets a 503 rather than hanging while the database is away.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per process. The proxy's store work is short statements; a handful of
/// connections serve thousands of requests a second, and several replicas stay well under
/// PostgreSQL's default `max_connections` (100).
const MAX_CONNECTIONS: u32 = 16;

/// The application name of the connection the sweeps use (`Store::for_background`).
pub const BACKGROUND_NAME: &str = "mcp-auth-proxy sweeps";

/// Expired records deleted per statement by the sweep.
const SWEEP_BATCH: i64 = 5_000;

/// The database could not be used at startup.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "the PostgreSQL connection string cannot be read: {0} (expected postgres://user:password@host:5432/database?sslmode=require)"
    )]
    Dsn(#[source] sqlx::Error),
    #[error("PostgreSQL at {target} did not answer within {waited:?}: {last}")]
    Unreachable {
        target: String,
        waited: Duration,
        #[source]
        last: sqlx::Error,
    },
    #[error("the store's schema could not be brought up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The channel on which processes sharing the database tell each other of revocations.
const REVOCATIONS: &str = "mcp_auth_proxy_revocations";

/// Takes the advisory lock named by `$1` (waiting for it). PostgreSQL's advisory locks are
/// numbered; the name's 64-bit hash is the number, and the wait queue is first come, first
/// served.
pub const ADVISORY_LOCK: &str = "SELECT pg_advisory_lock(hashtextextended($1, 0))";

/// Token hashes per notification: PostgreSQL's payload limit is 8000 bytes, and each hash
/// is 64 hex digits and a comma.
const HASHES_PER_NOTIFICATION: usize = 100;

/// The PostgreSQL store: a pool of connections, reconnecting by itself after an outage, one
/// more connection for background work, and one listening for the revocations other
/// processes announce.
pub struct PostgresStore {
    pool: PgPool,
    /// One connection for the sweeps ([`Store::for_background`]).
    background: PgPool,
    /// This process's name in its announcements, so its listener can skip its own.
    me: String,
    revocations: broadcast::Sender<Revocation>,
    listening: Arc<Listening>,
}

/// The revocation listener, stopped when the last copy of the store that shares it is
/// dropped.
struct Listening(tokio::task::JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens for revocations and hands on those of other processes (this one's own come back
/// too, and were applied when made). Each time it (re)starts listening it says
/// [`Revocation::Missed`]: what was announced while nobody listened is unknown. While the
/// connection is down it says nothing, so that checks cached just before an outage keep
/// working for their TTL (no revocation can be stored while the database is away; if only
/// this connection dropped, the TTL bounds what was missed).
async fn listen(pool: PgPool, me: String, to: broadcast::Sender<Revocation>) {
    let subscribe = || async {
        let mut l = PgListener::connect_with(&pool).await?;
        l.listen(REVOCATIONS).await?;
        Ok::<_, sqlx::Error>(l)
    };
    let mut listener: Option<PgListener> = None;
    loop {
        let l = match &mut listener {
            Some(l) => l,
            None => match subscribe().await {
                Ok(l) => {
                    let _ = to.send(Revocation::Missed);
                    listener.insert(l)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for revocations yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        match l.try_recv().await {
            Ok(Some(n)) => match parse_revocation(n.payload()) {
                Some((from, _)) if from == me => {}
                Some((_, r)) => {
                    let _ = to.send(r);
                }
                // One we cannot read (a newer release's) is treated as missed: fail closed.
                None => {
                    let _ = to.send(Revocation::Missed);
                }
            },
            // The connection was lost: listen anew (and say so once listening again).
            Ok(None) => listener = None,
            Err(e) => {
                tracing::warn!(error = %e, "listening for revocations failed; reconnecting");
                listener = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `<sender> g <grant id>` or `<sender> t <hex>,<hex>,…`.
fn payloads(me: &str, r: &Revocation) -> Vec<String> {
    match r {
        Revocation::Grant(id) => vec![format!("{me} g {id}")],
        Revocation::Tokens(hashes) => hashes
            .chunks(HASHES_PER_NOTIFICATION)
            .map(|c| {
                let hex: Vec<String> = c.iter().map(|h| hex::encode(h.0)).collect();
                format!("{me} t {}", hex.join(","))
            })
            .collect(),
        Revocation::Missed => Vec::new(),
    }
}

/// The sender and the revocation of a payload.
fn parse_revocation(payload: &str) -> Option<(&str, Revocation)> {
    let (from, payload) = payload.split_once(' ')?;
    let revocation = match payload.split_once(' ')? {
        ("g", id) if !id.is_empty() => Revocation::Grant(id.to_string()),
        ("t", list) => {
            let hashes = list
                .split(',')
                .map(|h| {
                    let bytes = hex::decode(h).ok()?;
                    Some(TokenHash(bytes.try_into().ok()?))
                })
                .collect::<Option<Vec<_>>>()?;
            Revocation::Tokens(hashes)
        }
        _ => return None,
    };
    Some((from, revocation))
}

impl PostgresStore {
    /// Connects to `dsn` (retrying for up to `patience` while the database is not reachable,
    /// with a log line each time), then brings the schema up to date.
    pub async fn connect(dsn: &str, patience: Duration) -> Result<Self, ConnectError> {
        let options = PgConnectOptions::from_str(dsn)
            .map_err(ConnectError::Dsn)?
            .application_name("mcp-auth-proxy");
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        // Each attempt is one connection, bounded, so the log says at once what is wrong.
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(250);
        loop {
            let attempt = tokio::time::timeout(
                OPERATION_TIMEOUT.min(patience),
                PgConnection::connect_with(&options),
            )
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
            match attempt {
                Ok(c) => {
                    // Closed politely; the pool opens its own.
                    let _ = c.close().await;
                    break;
                }
                Err(last) if started.elapsed() + wait <= patience => {
                    tracing::warn!(database = %target, error = %last, retry_in_ms = wait.as_millis() as u64, "PostgreSQL is not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(last) => {
                    return Err(ConnectError::Unreachable {
                        target,
                        waited: started.elapsed(),
                        last,
                    });
                }
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(OPERATION_TIMEOUT)
            .connect_lazy_with(options.clone());
        // Opened at once and kept, so the first sweep does not add to the process's memory;
        // named apart in `pg_stat_activity`.
        let background = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(OPERATION_TIMEOUT)
            .connect_lazy_with(options.clone().application_name(BACKGROUND_NAME));
        migrator().run(&pool).await?;
        tracing::info!(database = %target, "store: PostgreSQL");
        let (revocations, _) = broadcast::channel(1024);
        let me = format!("{:016x}", rand::random::<u64>());
        let listening = tokio::spawn(listen(pool.clone(), me.clone(), revocations.clone()));
        Ok(Self {
            pool,
            background,
            me,
            revocations,
            listening: Arc::new(Listening(listening)),
        })
    }

    /// The connections the pool holds open now (not counting the background one).
    pub fn open_connections(&self) -> u32 {
        self.pool.size()
    }

    /// Runs `op` within [`OPERATION_TIMEOUT`].
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::TimedOut(OPERATION_TIMEOUT)),
        }
    }
}

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut m = Migrator::with_migrations(migrations);
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    // Applied by a newer release: kept, since migrations only add.
    m.set_ignore_missing(true);
    m
}

/// `expires_at` as PostgreSQL's BIGINT: times beyond its range never expire.
fn expiry(entry: &Entry) -> Option<i64> {
    entry
        .expires_at
        .map(|t| i64::try_from(t).unwrap_or(i64::MAX))
}

fn entry_of(row: &PgRow) -> Result<Entry, sqlx::Error> {
    let expires_at: Option<i64> = row.try_get("expires_at")?;
    Ok(Entry {
        expires_at: expires_at.map(|t| u64::try_from(t).unwrap_or(0)),
        value: row.try_get("value")?,
    })
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is
/// none (an empty prefix, or one of only 0xFF bytes): the upper bound of a prefix scan, so
/// the scan uses the primary key's order.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[async_trait]
impl Store for PostgresStore {
    async fn get(&self, table: Table, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        let row = self
            .bounded(
                sqlx::query(
                    "SELECT value, expires_at FROM mcp_auth_proxy_entries WHERE tbl = $1 AND key = $2",
                )
                .bind(table.name())
                .bind(key)
                .fetch_optional(&self.pool),
            )
            .await?;
        Ok(row.as_ref().map(entry_of).transpose()?)
    }

    async fn put(&self, table: Table, key: &[u8], entry: Entry) -> Result<(), StoreError> {
        self.bounded(
            sqlx::query(
                "INSERT INTO mcp_auth_proxy_entries (tbl, key, value, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            )
            .bind(table.name())
            .bind(key)
            .bind(&entry.value)
            .bind(expiry(&entry))
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    async fn take(&self, table: Table, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        let row = self
            .bounded(
                sqlx::query(
                    "DELETE FROM mcp_auth_proxy_entries WHERE tbl = $1 AND key = $2 RETURNING value, expires_at",
                )
                .bind(table.name())
                .bind(key)
                .fetch_optional(&self.pool),
            )
            .await?;
        Ok(row.as_ref().map(entry_of).transpose()?)
    }

    async fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&Entry>,
        new: Option<Entry>,
    ) -> Result<bool, StoreError> {
        let name = table.name();
        let done = match (expected, new) {
            (None, Some(new)) => self.bounded(
                sqlx::query(
                    "INSERT INTO mcp_auth_proxy_entries (tbl, key, value, expires_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tbl, key) DO NOTHING",
                )
                .bind(name)
                .bind(key)
                .bind(&new.value)
                .bind(expiry(&new))
                .execute(&self.pool),
            ),
            (Some(old), Some(new)) => self.bounded(
                sqlx::query(
                    "UPDATE mcp_auth_proxy_entries SET value = $3, expires_at = $4
                     WHERE tbl = $1 AND key = $2 AND value = $5 AND expires_at IS NOT DISTINCT FROM $6",
                )
                .bind(name)
                .bind(key)
                .bind(&new.value)
                .bind(expiry(&new))
                .bind(&old.value)
                .bind(expiry(old))
                .execute(&self.pool),
            ),
            (Some(old), None) => self.bounded(
                sqlx::query(
                    "DELETE FROM mcp_auth_proxy_entries
                     WHERE tbl = $1 AND key = $2 AND value = $3 AND expires_at IS NOT DISTINCT FROM $4",
                )
                .bind(name)
                .bind(key)
                .bind(&old.value)
                .bind(expiry(old))
                .execute(&self.pool),
            ),
            // Absent stays absent: it "swaps" when nothing is there.
            (None, None) => return Ok(self.get(table, key).await?.is_none()),
        }
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Entry)>, StoreError> {
        let rows = self
            .bounded(
                sqlx::query(
                    "SELECT key, value, expires_at FROM mcp_auth_proxy_entries
                     WHERE tbl = $1 AND key >= $2 AND ($3::bytea IS NULL OR key < $3)
                     ORDER BY key",
                )
                .bind(table.name())
                .bind(prefix)
                .bind(prefix_end(prefix))
                .fetch_all(&self.pool),
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push((row.try_get("key")?, entry_of(row)?));
        }
        Ok(out)
    }

    async fn sweep(&self, now: UnixTime) -> Result<usize, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let mut removed = 0usize;
        // In batches, so each statement stays short however much expired at once.
        loop {
            let done = self
                .bounded(
                    sqlx::query(
                        "DELETE FROM mcp_auth_proxy_entries WHERE ctid IN (
                           SELECT ctid FROM mcp_auth_proxy_entries WHERE expires_at < $1 LIMIT $2)",
                    )
                    .bind(now)
                    .bind(SWEEP_BATCH)
                    .execute(&self.pool),
                )
                .await?;
            let n = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
            removed = removed.saturating_add(n);
            if n < SWEEP_BATCH as usize {
                return Ok(removed);
            }
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every statement above committed durably before it returned.
        Ok(())
    }

    async fn announce(&self, revocation: &Revocation) -> Result<(), StoreError> {
        for payload in payloads(&self.me, revocation) {
            self.bounded(
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(REVOCATIONS)
                    .bind(payload)
                    .execute(&self.pool),
            )
            .await?;
        }
        Ok(())
    }

    fn revocations(&self) -> Option<broadcast::Receiver<Revocation>> {
        Some(self.revocations.subscribe())
    }

    /// A session-level advisory lock on a connection of its own (outside the pool, so a
    /// long wait takes no request's connection): the lock lasts as long as that session, so
    /// a holder that dies, or whose connection drops, releases it.
    async fn exclusive(&self, name: &str) -> Result<Exclusive, StoreError> {
        let options = self.pool.connect_options();
        let mut session = self.bounded(PgConnection::connect_with(&options)).await?;
        sqlx::query(ADVISORY_LOCK)
            .bind(name)
            .execute(&mut session)
            .await?;
        Ok(Exclusive::kept_by(session))
    }

    fn shared(&self) -> bool {
        true
    }

    /// The sweeps make hundreds of short statements one after another. Through the pool,
    /// each takes whichever connection is idle when it starts, and the one it used goes back
    /// to the pool a moment later (sqlx returns it from a task of its own). Beside the load
    /// the next statement then often finds none idle and the pool opens another connection,
    /// which the process keeps: its memory stepped up at each sweep (BENCHMARKS.md, the
    /// soak on PostgreSQL). On one connection of their own, the sweeps open none.
    fn for_background(&self) -> Option<Arc<dyn Store>> {
        Some(Arc::new(Self {
            pool: self.background.clone(),
            background: self.background.clone(),
            me: self.me.clone(),
            revocations: self.revocations.clone(),
            listening: self.listening.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_scan_ends_before_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn revocations_travel_as_short_payloads() {
        let me = format!("{:016x}", rand::random::<u64>());
        let grant = Revocation::Grant("g_123".into());
        assert_eq!(payloads(&me, &grant), vec![format!("{me} g g_123")]);
        assert_eq!(
            parse_revocation(&format!("{me} g g_123")),
            Some((me.as_str(), grant))
        );
        let hashes: Vec<TokenHash> = (0..250u8).map(|i| TokenHash([i; 32])).collect();
        let sent = payloads(&me, &Revocation::Tokens(hashes.clone()));
        assert_eq!(sent.len(), 3, "chunked");
        assert!(sent.iter().all(|p| p.len() < 8000));
        let back: Vec<TokenHash> = sent
            .iter()
            .flat_map(|p| match parse_revocation(p) {
                Some((_, Revocation::Tokens(t))) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(back == hashes);
        for garbage in ["", "x y", "me t zz", "me g ", "me t 00", "g g_1"] {
            assert_eq!(parse_revocation(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn the_embedded_migrations_are_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert!(migrator().iter().all(|m| !m.sql.as_str().is_empty()));
    }
}
