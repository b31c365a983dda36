//! The `Store` contract, one suite run against both backends: the embedded sled store and
//! PostgreSQL (a throwaway cluster of Debian's server, see `pg.rs`). Whatever the proxy
//! relies on (single-use `take`, compare-and-swap under races, prefix scans in key order,
//! the sweep, records of a newer schema skipped) is checked here on each.

use std::sync::Arc;
use std::time::Duration;

use mcp_auth_proxy::clock::Clock;
use mcp_auth_proxy::store::postgres::PostgresStore;
use mcp_auth_proxy::store::sled::SledStore;
use mcp_auth_proxy::store::{Entry, Keys, McpSessionRecord, Repo, Store, Table, TokenHash};

use crate::pg::PgCluster;

fn entry(value: &[u8], expires_at: Option<u64>) -> Entry {
    Entry {
        expires_at,
        value: value.to_vec(),
    }
}

/// Every single-task rule of the contract.
async fn contract(store: Arc<dyn Store>) {
    let t = Table::Clients;
    // get / put / replace.
    assert_eq!(store.get(t, b"k").await.unwrap(), None);
    store.put(t, b"k", entry(b"one", Some(9))).await.unwrap();
    assert_eq!(
        store.get(t, b"k").await.unwrap(),
        Some(entry(b"one", Some(9)))
    );
    store.put(t, b"k", entry(b"two", None)).await.unwrap();
    assert_eq!(store.get(t, b"k").await.unwrap(), Some(entry(b"two", None)));
    // Tables are apart.
    assert_eq!(store.get(Table::Codes, b"k").await.unwrap(), None);
    // Arbitrary bytes in keys and values, empty values included.
    store
        .put(t, b"\x00\xff", entry(b"", Some(0)))
        .await
        .unwrap();
    assert_eq!(
        store.get(t, b"\x00\xff").await.unwrap(),
        Some(entry(b"", Some(0)))
    );

    // take: returns and removes, once.
    assert_eq!(
        store.take(t, b"k").await.unwrap(),
        Some(entry(b"two", None))
    );
    assert_eq!(store.take(t, b"k").await.unwrap(), None);
    assert_eq!(store.get(t, b"k").await.unwrap(), None);

    // compare-and-swap, every shape.
    let a = entry(b"a", Some(5));
    let b = entry(b"b", None);
    assert!(
        store.compare_and_swap(t, b"c", None, None).await.unwrap(),
        "absent stays absent"
    );
    assert!(
        store
            .compare_and_swap(t, b"c", None, Some(a.clone()))
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_swap(t, b"c", None, Some(b.clone()))
            .await
            .unwrap(),
        "present"
    );
    assert!(
        !store.compare_and_swap(t, b"c", None, None).await.unwrap(),
        "present"
    );
    assert!(
        !store
            .compare_and_swap(t, b"c", Some(&b), Some(b.clone()))
            .await
            .unwrap()
    );
    let same_value_other_expiry = entry(b"a", Some(6));
    assert!(
        !store
            .compare_and_swap(t, b"c", Some(&same_value_other_expiry), Some(b.clone()))
            .await
            .unwrap(),
        "the expiry is part of the entry"
    );
    assert!(
        store
            .compare_and_swap(t, b"c", Some(&a), Some(b.clone()))
            .await
            .unwrap()
    );
    assert_eq!(store.get(t, b"c").await.unwrap(), Some(b.clone()));
    assert!(
        !store
            .compare_and_swap(t, b"c", Some(&a), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .compare_and_swap(t, b"c", Some(&b), None)
            .await
            .unwrap(),
        "delete"
    );
    assert_eq!(store.get(t, b"c").await.unwrap(), None);

    // Prefix scans: in key order, bounded by the prefix, 0xFF edges included.
    let s = Table::GrantTokens;
    for k in [
        &b"a\xff\xff"[..],
        b"b",
        b"a\x01",
        b"a\xff",
        b"a\x00",
        b"a",
        b"`\xff",
    ] {
        store.put(s, k, entry(k, None)).await.unwrap();
    }
    let keys = |v: Vec<(Vec<u8>, Entry)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.scan_prefix(s, b"a").await.unwrap()),
        vec![
            b"a".to_vec(),
            b"a\x00".to_vec(),
            b"a\x01".to_vec(),
            b"a\xff".to_vec(),
            b"a\xff\xff".to_vec()
        ]
    );
    assert_eq!(
        keys(store.scan_prefix(s, b"a\xff").await.unwrap()),
        vec![b"a\xff".to_vec(), b"a\xff\xff".to_vec()]
    );
    assert_eq!(store.scan_prefix(s, b"").await.unwrap().len(), 7);
    assert!(store.scan_prefix(s, b"c").await.unwrap().is_empty());
    let (_, e) = &store.scan_prefix(s, b"b").await.unwrap()[0];
    assert_eq!(e, &entry(b"b", None), "scans return the entries");

    // The sweep: expired before `now` goes, the rest stays.
    let w = Table::SignIns;
    store.put(w, b"old", entry(b"x", Some(99))).await.unwrap();
    store.put(w, b"now", entry(b"x", Some(100))).await.unwrap();
    store.put(w, b"new", entry(b"x", Some(101))).await.unwrap();
    store.put(w, b"never", entry(b"x", None)).await.unwrap();
    let removed = store.sweep(100).await.unwrap();
    assert_eq!(
        removed, 2,
        "the sign-in at 99 and the client at 0, in every table"
    );
    assert_eq!(store.get(t, b"\x00\xff").await.unwrap(), None);
    assert_eq!(store.get(w, b"old").await.unwrap(), None);
    for k in [&b"now"[..], b"new", b"never"] {
        assert!(store.get(w, k).await.unwrap().is_some(), "{k:?} kept");
    }
    store.flush().await.unwrap();

    unknown_versions_are_skipped(store.clone()).await;
}

/// Records written by a newer release (a version this one does not know) or garbage read as
/// absent through the `Repo`, never misread.
async fn unknown_versions_are_skipped(store: Arc<dyn Store>) {
    let repo = Repo::new(store.clone(), Keys::ephemeral(), Clock::system());
    let key = TokenHash::of("sid").0;
    let good = McpSessionRecord {
        subject: "s".into(),
        created_at: 1,
    };
    repo.put(&key, &good, None).await.unwrap();
    assert_eq!(
        repo.get::<McpSessionRecord>(&key).await.unwrap(),
        Some(good)
    );
    let future = br#"{"v":99,"d":{"subject":"s","created_at":1,"new_field":true}}"#;
    store
        .put(Table::McpSessions, &key, entry(future, None))
        .await
        .unwrap();
    assert_eq!(repo.get::<McpSessionRecord>(&key).await.unwrap(), None);
    store
        .put(Table::McpSessions, &key, entry(b"\xff not json", None))
        .await
        .unwrap();
    assert_eq!(repo.get::<McpSessionRecord>(&key).await.unwrap(), None);
}

/// Many tasks at once: a counter raised only by compare-and-swap loses no increment, and a
/// key taken by many at once is had by exactly one.
async fn races(store: Arc<dyn Store>) {
    const TASKS: usize = 24;
    const EACH: usize = 10;
    let t = Table::Grants;
    store.put(t, b"n", entry(b"0", None)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lost = 0;
            for _ in 0..EACH {
                loop {
                    let old = store.get(t, b"n").await.unwrap().unwrap();
                    let n: usize = std::str::from_utf8(&old.value).unwrap().parse().unwrap();
                    let new = entry((n + 1).to_string().as_bytes(), None);
                    if store
                        .compare_and_swap(t, b"n", Some(&old), Some(new))
                        .await
                        .unwrap()
                    {
                        break;
                    }
                    lost += 1;
                }
            }
            lost
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let n = store.get(t, b"n").await.unwrap().unwrap();
    assert_eq!(
        n.value,
        (TASKS * EACH).to_string().as_bytes(),
        "no increment lost ({conflicts} retries)"
    );

    for round in 0..5u8 {
        let key = [b'c', round];
        store
            .put(Table::Codes, &key, entry(b"code", Some(4_000_000_000)))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.take(Table::Codes, &key).await.unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if let Some(e) = task.await.unwrap() {
                assert_eq!(
                    e,
                    entry(b"code", Some(4_000_000_000)),
                    "the entry as written"
                );
                winners += 1;
            }
        }
        assert_eq!(
            winners, 1,
            "a code is redeemed exactly once (round {round})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    contract(store.clone()).await;
    races(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_contract_holds_on_postgres() {
    let pg = PgCluster::start().await;
    let dsn = pg.database("contract").await;
    // Two processes starting at once on an empty database: each migration is applied once,
    // and both come up.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&dsn, Duration::from_secs(10)),
        PostgresStore::connect(&dsn, Duration::from_secs(10)),
    );
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
    contract(a.clone()).await;
    races(a.clone()).await;
    // What one process wrote, the other reads.
    a.put(Table::Consents, b"shared", entry(b"x", None))
        .await
        .unwrap();
    assert_eq!(
        b.get(Table::Consents, b"shared").await.unwrap(),
        Some(entry(b"x", None))
    );
    one_holder_at_a_time(a, b).await;
}

/// The lock of `Store::exclusive` across two processes: the second waits for the first to
/// let go, and other names do not wait.
async fn one_holder_at_a_time(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let held = a.exclusive("contract lock").await.unwrap();
    let (got_tx, mut got) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let lock = b.exclusive("contract lock").await.unwrap();
        let _ = got_tx.send(());
        lock
    });
    // Another name is free meanwhile.
    let other = tokio::time::timeout(Duration::from_secs(5), a.exclusive("another lock"))
        .await
        .expect("another name does not wait")
        .unwrap();
    drop(other);
    assert!(
        got.try_recv().is_err(),
        "the second holder got the lock while the first held it"
    );
    drop(held);
    let lock = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the lock was not handed on when its holder let go")
        .unwrap();
    drop(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_release_still_serves_an_older_one() {
    let pg = PgCluster::start().await;
    let dsn = pg.database("newer").await;
    let store = PostgresStore::connect(&dsn, Duration::from_secs(10))
        .await
        .unwrap();
    store
        .put(Table::Clients, b"k", entry(b"v", None))
        .await
        .unwrap();
    // A later release added migration 999 (migrations only add).
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&dsn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO mcp_auth_proxy_migrations (version, description, success, checksum, execution_time)
         VALUES (999, 'from the future', true, '\\x00', 0);
         ALTER TABLE mcp_auth_proxy_entries ADD COLUMN IF NOT EXISTS later TEXT",
    )
    .execute(&mut c)
    .await
    .unwrap();
    drop(store);
    let again = PostgresStore::connect(&dsn, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        again.get(Table::Clients, b"k").await.unwrap(),
        Some(entry(b"v", None))
    );
    again
        .put(Table::Clients, b"k2", entry(b"w", None))
        .await
        .unwrap();
}
