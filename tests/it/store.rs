//! The store: durability across SIGKILL, the single-process lock, versioning, sweeping,
//! sealing.

use std::sync::Arc;

use mcp_auth_proxy::clock::Clock;
use mcp_auth_proxy::store::postgres::PostgresStore;
use mcp_auth_proxy::store::sled::SledStore;
use mcp_auth_proxy::store::{
    GrantRecord, Identity, Keys, McpSessionRecord, Repo, Rotation, SessionRecord, Store, Table,
    TokenHash, TokenKind, TokenRecord,
};
use reqwest::StatusCode;
use sqlx::Connection;

use crate::helpers::{Binary, BinarySite, Mint, client, mint, run_binary, start_upstream};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;

fn repo_at(dir: &std::path::Path) -> Repo {
    let store = crate::helpers::reopen_sled(dir);
    let keys = Keys::load(dir, None, None).unwrap();
    Repo::new(Arc::new(store), keys, Clock::system())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_write_survives_sigkill() {
    let up = start_upstream().await;
    let site = BinarySite::new().await;
    let resource = site.resource();
    let (alice, bob) = {
        let repo = repo_at(site.dir.path());
        let a = mint(
            &repo,
            &resource,
            Mint {
                subject: "password:alice",
                ..Mint::default()
            },
        )
        .await;
        let b = mint(
            &repo,
            &resource,
            Mint {
                subject: "password:bob",
                grant_id: "g2",
                ..Mint::default()
            },
        )
        .await;
        repo.flush().await.unwrap();
        (a, b)
    };
    let upstream = up.url("/mcp");
    let bin = site.start(&[&upstream]).await;
    let c = client();
    let resp = c
        .post(bin.url("/mcp"))
        .bearer_auth(&alice)
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    // The binding of the session to alice was answered: kill -9 right now.
    bin.kill9().await;

    let mut bin = site.start(&[&upstream]).await;
    let ping = |t: &str| {
        c.post(bin.url("/mcp"))
            .bearer_auth(t)
            .header("mcp-session-id", &sid)
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
            .send()
    };
    assert_eq!(
        ping(&alice).await.unwrap().status(),
        StatusCode::OK,
        "alice's session survived"
    );
    assert_eq!(
        ping(&bob).await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "and is still hers alone"
    );
    let resp = c
        .post(bin.url("/mcp"))
        .bearer_auth("mcpat_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Every request is logged in one line: wait for the one of this 401.
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("\"status\":401")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line for the 401: {lines:?}"
        );
        lines.extend(bin.log_so_far());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = lines.join("\n");
    for secret in [alice.as_str(), bob.as_str(), "mcpat_wrong"] {
        assert!(!log.contains(secret), "a token reached the log: {log}");
    }
    bin.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let first = Binary::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-path",
            &data,
            &up.url("/mcp"),
        ],
        &[],
    )
    .await;
    let (code, stderr) = run_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-path",
            &data,
            &up.url("/mcp"),
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another mcp-auth-proxy"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", first.child.id().unwrap())),
        "{stderr}"
    );
    first.kill9().await;
    // Once the holder is gone (even by SIGKILL) the lock is free again.
    let again = Binary::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-path",
            &data,
            &up.url("/mcp"),
        ],
        &[],
    )
    .await;
    again.kill9().await;
}

#[tokio::test]
async fn expired_records_read_as_absent_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_000_000);
    let repo = Repo::new(
        Arc::new(SledStore::open(dir.path()).unwrap()),
        Keys::ephemeral(),
        clock.clone(),
    );
    let rec = McpSessionRecord {
        subject: "s".into(),
        created_at: 0,
    };
    repo.put(b"short", &rec, Some(1_000_010)).await.unwrap();
    repo.put(b"long", &rec, Some(1_000_100)).await.unwrap();
    repo.put(b"forever", &rec, None).await.unwrap();
    let t = mint(
        &repo,
        "r",
        Mint {
            ttl: 10,
            ..Mint::default()
        },
    )
    .await;
    assert_eq!(repo.sweep().await.unwrap(), 0);

    clock.advance(50);
    assert!(
        repo.get::<McpSessionRecord>(b"short")
            .await
            .unwrap()
            .is_none(),
        "expired reads as absent"
    );
    assert!(
        repo.get::<McpSessionRecord>(b"long")
            .await
            .unwrap()
            .is_some()
    );
    // short + the token + its family index entry.
    assert_eq!(repo.sweep().await.unwrap(), 3);
    assert!(
        repo.get::<mcp_auth_proxy::store::TokenRecord>(&TokenHash::of(&t).0)
            .await
            .unwrap()
            .is_none()
    );

    clock.advance(1000);
    assert_eq!(repo.sweep().await.unwrap(), 1);
    assert!(
        repo.get::<McpSessionRecord>(b"forever")
            .await
            .unwrap()
            .is_some()
    );
}

fn grant(grant_id: &str, user_id: &str) -> GrantRecord {
    GrantRecord {
        grant_id: grant_id.into(),
        client_id: "client".into(),
        identity: Identity {
            provider: "password".into(),
            user_id: user_id.into(),
            email: None,
            name: None,
            groups: Vec::new(),
            claims: serde_json::Value::Null,
        },
        scopes: vec!["mcp".into()],
        resource: "http://127.0.0.1/mcp".into(),
        created_at: 1,
        expires_at: u64::MAX / 2,
        jkt: None,
    }
}

/// A person's grants are read through the index by person, never by reading every grant;
/// grants stored before the index are found once indexed, and indexed once.
#[tokio::test]
async fn a_persons_grants_are_found_through_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let keys = Keys::load(dir.path(), None, None).unwrap();
    let repo = Repo::new(store.clone(), keys, Clock::system());
    let indexed = |table, key: &'static [u8]| {
        let store = store.clone();
        async move { store.get(table, key).await.unwrap().is_some() }
    };
    let alice = grant("g-alice", "alice");
    // A subject may hold the index's separator. This one's entry, `password:alice` 0 `g` 0
    // `x`, sits under alice's prefix and names the grant `g` 0 `x`, which is mallory's.
    let lookalike = grant("x", "alice\0g");
    let mallory = grant("g\0x", "mallory");
    for g in [&alice, &lookalike, &mallory] {
        repo.put_grant(g).await.unwrap();
    }
    assert_eq!(
        repo.grants_of("password:alice").await.unwrap(),
        std::slice::from_ref(&alice)
    );
    assert_eq!(
        repo.grants_of("password:alice\0g").await.unwrap(),
        std::slice::from_ref(&lookalike)
    );

    assert!(indexed(Table::PersonGrants, b"password:alice\0g-alice").await);
    repo.revoke_grant("g-alice").await.unwrap();
    assert!(repo.grants_of("password:alice").await.unwrap().is_empty());
    assert!(
        !indexed(Table::PersonGrants, b"password:alice\0g-alice").await,
        "its entry goes with it"
    );

    // Written as before the index: not found until indexed.
    let old = grant("g-old", "bob");
    repo.put(b"g-old", &old, Some(old.expires_at))
        .await
        .unwrap();
    assert!(repo.grants_of("password:bob").await.unwrap().is_empty());
    let both = [old.clone(), mallory.clone()];
    assert_eq!(repo.index_by_person(&both).await.unwrap(), 1);
    assert_eq!(
        repo.grants_of("password:bob").await.unwrap(),
        std::slice::from_ref(&old)
    );
    assert_eq!(repo.index_by_person(&both).await.unwrap(), 0);

    // A browser session: found under its person, and its entry ended with it.
    let session = SessionRecord {
        identity: alice.identity.clone(),
        created_at: 1,
        expires_at: u64::MAX / 2,
    };
    repo.put_session(b"s-1", &session).await.unwrap();
    let found = repo.sessions_of("password:alice").await.unwrap();
    assert_eq!(found, [(b"s-1".to_vec(), session.clone())]);
    assert_eq!(repo.remove_session(b"s-1").await.unwrap(), Some(session));
    assert!(repo.sessions_of("password:alice").await.unwrap().is_empty());
    assert!(!indexed(Table::PersonSessions, b"password:alice\0s-1").await);
}

/// A repo on a new database of `pg` (a store other processes may share), on a manual clock.
async fn shared_repo_on_a_manual_clock(pg: &crate::pg::PgCluster, database: &str) -> (Repo, Clock) {
    let dsn = pg.database(database).await;
    let clock = Clock::manual(1_000_000);
    (shared_repo_at(&dsn, &clock).await, clock)
}

/// A process's repo on the database at `dsn`, on `clock`.
async fn shared_repo_at(dsn: &str, clock: &Clock) -> Repo {
    shared_repo_and_store_at(dsn, clock).await.0
}

/// [`shared_repo_at`], and the store under it.
async fn shared_repo_and_store_at(dsn: &str, clock: &Clock) -> (Repo, Arc<PostgresStore>) {
    let store = PostgresStore::connect(dsn, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let store = Arc::new(store);
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::load(dir.path(), None, None).unwrap();
    (Repo::new(store.clone(), keys, clock.clone()), store)
}

/// The inline answers still to be taken out of rotated tokens, by anyone's sweep.
async fn inline_answers_due(repo: &Repo) -> Vec<(Vec<u8>, mcp_auth_proxy::store::InlineAnswerDue)> {
    repo.scan::<mcp_auth_proxy::store::InlineAnswerDue>(b"")
        .await
        .unwrap()
}

/// A refresh token rotated (on the manual clock's first second) into the token whose hash is
/// `[n; 32]`, its answer inside.
fn rotated_into(n: u8) -> TokenRecord {
    TokenRecord {
        kind: TokenKind::Refresh,
        grant_id: "g".into(),
        client_id: "c".into(),
        subject: "password:alice".into(),
        scopes: vec!["mcp".into()],
        resource: "https://mcp.example/mcp".into(),
        issued_at: 1_000_000,
        expires_at: 2_000_000,
        rotation: Some(Rotation {
            at: 1_000_000,
            successor_hash: [n; 32],
            sealed_response: vec![n; 40],
        }),
        identity: None,
        jkt: None,
    }
}

/// An older proxy still running on a shared store while a rolling upgrade replaces it
/// writes grants and browser sessions without entries in the index by person. A newer
/// proxy's sweeps index them for an hour after it starts, and for an hour after a sweep last
/// found some, so the person's apps page lists them and "sign out everywhere" ends them
/// without a restart while older proxies go on writing. After an hour without any, one sweep
/// an hour still looks (an older proxy silent for longer is found within the hour, and the
/// window opens again); the sweeps between leave the index alone, as do sweeps of a store no
/// other process shares.
#[tokio::test]
async fn sweeps_index_what_an_older_proxy_writes_during_a_rolling_upgrade() {
    let pg = crate::pg::PgCluster::start().await;
    let (repo, clock) = shared_repo_on_a_manual_clock(&pg, "upgrade").await;
    // What an older proxy writes: the records, and nothing under their person.
    let write_as_an_older_proxy = |grant_id: &'static str, person: &'static str| {
        let repo = repo.clone();
        async move {
            let old = grant(grant_id, person);
            let session = SessionRecord {
                identity: old.identity.clone(),
                created_at: 1,
                expires_at: u64::MAX / 2,
            };
            let session_key = format!("s-{grant_id}");
            repo.put(grant_id.as_bytes(), &old, Some(old.expires_at))
                .await
                .unwrap();
            repo.put(session_key.as_bytes(), &session, Some(session.expires_at))
                .await
                .unwrap();
            old
        }
    };
    let found = |person: &'static str| {
        let repo = repo.clone();
        async move {
            let subject = format!("password:{person}");
            let grants = repo.grants_of(&subject).await.unwrap();
            (grants, repo.sessions_of(&subject).await.unwrap().len())
        }
    };

    let bobs = write_as_an_older_proxy("g-bob", "bob").await;
    assert_eq!(found("bob").await, (vec![], 0));
    clock.advance(300);
    repo.sweep().await.unwrap();
    assert_eq!(found("bob").await, (vec![bobs], 1));

    // Older proxies still writing past the first hour (a canary upgrade) keep it open.
    clock.advance(3000);
    let carols = write_as_an_older_proxy("g-carol", "carol").await;
    repo.sweep().await.unwrap();
    assert_eq!(found("carol").await, (vec![carols], 1));
    clock.advance(3000);
    let erins = write_as_an_older_proxy("g-erin", "erin").await;
    repo.sweep().await.unwrap();
    assert_eq!(
        found("erin").await,
        (vec![erins], 1),
        "6 300 s after the start, 3 000 after the last find"
    );

    // A look that finds nothing: the window closes an hour after the last find.
    clock.advance(3300);
    repo.sweep().await.unwrap();
    assert!(repo.in_upgrade_window());
    clock.advance(600);
    assert!(!repo.in_upgrade_window(), "an hour without a find is over");
    let franks = write_as_an_older_proxy("g-frank", "frank").await;
    repo.sweep().await.unwrap();
    assert_eq!(
        found("frank").await,
        (vec![], 0),
        "600 s after the last look, out of the window: not looked for"
    );
    clock.advance(2999);
    repo.sweep().await.unwrap();
    assert_eq!(found("frank").await, (vec![], 0), "not yet an hour");
    clock.advance(1);
    repo.sweep().await.unwrap();
    assert_eq!(
        found("frank").await,
        (vec![franks], 1),
        "the hourly look finds what an older proxy wrote after its silence"
    );
    assert!(repo.in_upgrade_window(), "and opens the window again");

    let dir = tempfile::tempdir().unwrap();
    let embedded = repo_at(dir.path());
    let daves = grant("g-dave", "dave");
    embedded
        .put(b"g-dave", &daves, Some(daves.expires_at))
        .await
        .unwrap();
    embedded.sweep().await.unwrap();
    assert!(
        embedded
            .grants_of("password:dave")
            .await
            .unwrap()
            .is_empty(),
        "no other process writes to sled"
    );
}

/// A proxy working for older ones on a shared store leaves a rotated token's answer inside
/// the token's record, and the first sweep after the grace period takes it out
/// (`store::upgrade`): a sweep of any newer process on the store, also once the one that
/// wrote it has stopped, and only the answer of the rotation it names. A sweep that finds
/// the database gone leaves them for the next one.
#[tokio::test]
async fn inline_answers_are_taken_out_by_the_next_sweep_that_can() {
    let pg = crate::pg::PgCluster::start().await;
    let dsn = pg.database("inline").await;
    let clock = Clock::manual(1_000_000);
    let writer = shared_repo_at(&dsn, &clock).await;
    let hashes = [1, 2, 3].map(|n| TokenHash::of(&format!("r-{n}")).0);
    for (n, hash) in (1..).zip(hashes) {
        assert!(writer.in_upgrade_window());
        // The third lost its race: the record holds another process's rotation (into 3),
        // not the one this process meant to take out (into 9).
        let successor = if n == 3 { [9; 32] } else { [n; 32] };
        let inline = writer
            .inline_answer(&hash, &successor, 1_000_031, vec![n; 40])
            .await
            .unwrap();
        assert_eq!(inline, vec![n; 40], "carried inside in the window");
        let record = rotated_into(n);
        writer
            .put(&hash, &record, Some(record.expires_at))
            .await
            .unwrap();
    }
    // The writer stops before its grace periods end; another process sweeps.
    drop(writer);
    let sweeper = shared_repo_at(&dsn, &clock).await;
    let inline = |hash: [u8; 32]| {
        let repo = sweeper.clone();
        async move {
            let record = repo.get::<TokenRecord>(&hash).await.unwrap().unwrap();
            record.rotation.unwrap().sealed_response
        }
    };

    clock.advance(30);
    sweeper.sweep().await.unwrap();
    assert_eq!(
        inline(hashes[0]).await,
        vec![1; 40],
        "within the grace period"
    );
    clock.advance(1);
    pg.pause();
    assert!(sweeper.sweep().await.is_err(), "the database is gone");
    pg.resume();
    // The pool reconnects by itself; wait for it (polling, at most ten seconds).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sweeper.probe().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(inline(hashes[0]).await, vec![1; 40], "not taken out yet");
    sweeper.sweep().await.unwrap();
    for hash in &hashes[..2] {
        assert!(
            inline(*hash).await.is_empty(),
            "taken out by the next sweep"
        );
    }
    assert_eq!(
        inline(hashes[2]).await,
        vec![3; 40],
        "another rotation's answer is left alone"
    );
    let left = inline_answers_due(&sweeper).await;
    assert!(left.is_empty(), "nothing left to do: {left:?}");
}

/// A sweep makes hundreds of short statements one after another: here it takes the answer
/// out of 300 rotated tokens, three statements each. Through the requests' pool, a
/// statement would often start before the connection the one before it used was back, and
/// the pool would open another, which the process keeps. The sweep runs on the store's
/// background connection (as PostgreSQL sees it), and the pool opens none for it.
#[tokio::test]
async fn a_sweep_opens_no_connection_of_the_requests_pool() {
    let pg = crate::pg::PgCluster::start().await;
    let dsn = pg.database("background").await;
    let clock = Clock::manual(1_000_000);
    let (repo, store) = shared_repo_and_store_at(&dsn, &clock).await;
    for n in 0..300u16 {
        let hash = TokenHash::of(&format!("r-{n}")).0;
        let record = rotated_into(1);
        repo.inline_answer(&hash, &[1; 32], 1_000_031, vec![1; 40])
            .await
            .unwrap();
        repo.put(&hash, &record, Some(record.expires_at))
            .await
            .unwrap();
    }
    clock.advance(31);
    let before = store.open_connections();
    repo.sweep().await.unwrap();
    assert_eq!(store.open_connections(), before);
    let mut c = sqlx::PgConnection::connect(&dsn).await.unwrap();
    let last: Vec<String> =
        sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE application_name = $1")
            .bind(mcp_auth_proxy::store::postgres::BACKGROUND_NAME)
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert!(
        matches!(&last[..], [one] if one.contains("mcp_auth_proxy_entries")),
        "one background connection, and the sweep's statements ran on it: {last:?}"
    );
    let left = inline_answers_due(&repo).await;
    assert!(left.is_empty(), "the sweep took every answer out");
}

#[tokio::test]
async fn secrets_are_sealed_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let plaintext = b"upstream-refresh-token-PLAINTEXT-MARKER";
    {
        let repo = repo_at(dir.path());
        repo.put_secret("google:alice", plaintext).await.unwrap();
        assert_eq!(
            repo.get_secret("google:alice")
                .await
                .unwrap()
                .unwrap()
                .as_slice(),
            plaintext
        );
        repo.flush().await.unwrap();
    }
    let mut found = false;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        found |= bytes.windows(plaintext.len()).any(|w| w == plaintext);
    }
    assert!(
        !found,
        "the plaintext must not appear in any file of the data dir"
    );
    // Reopened with the same key file, the secret opens again; with another key it does not.
    let repo = repo_at(dir.path());
    assert_eq!(
        repo.get_secret("google:alice")
            .await
            .unwrap()
            .unwrap()
            .as_slice(),
        plaintext
    );
    drop(repo);
    let store = crate::helpers::reopen_sled(dir.path());
    let other = Repo::new(Arc::new(store), Keys::ephemeral(), Clock::system());
    assert!(other.get_secret("google:alice").await.is_err());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_sse_stream_exits_cleanly_within_the_grace_period() {
    use futures_util::StreamExt;
    let up = start_upstream().await;
    let site = BinarySite::new().await;
    let token = {
        let repo = repo_at(site.dir.path());
        let t = mint(&repo, &site.resource(), Mint::default()).await;
        repo.flush().await.unwrap();
        t
    };
    let upstream = up.url("/mcp");
    let bin = site.start(&["--shutdown-grace", "1s", &upstream]).await;
    let resp = client()
        .get(bin.url("/forever"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    assert!(stream.next().await.is_some(), "the stream is flowing");
    let started = std::time::Instant::now();
    let code = bin.terminate(std::time::Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900),
        "the stream had its grace: {took:?}"
    );
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    // The client sees its stream end rather than hang.
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_flushing_at_once_never_hang_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(repo_at(dir.path()));
    // Each answered write is flushed; many at once (a burst of token requests) must all
    // finish. Unserialised, sled's flushes took every thread of its pool and waited there
    // for log writes queued behind them.
    let finished = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let repo = repo.clone();
            writers.spawn(async move {
                let rec = McpSessionRecord {
                    subject: format!("password:u{i}"),
                    created_at: 0,
                };
                repo.put(format!("s{i}").as_bytes(), &rec, None)
                    .await
                    .unwrap();
                repo.flush().await.unwrap();
            });
        }
        while writers.join_next().await.is_some() {}
    })
    .await;
    assert!(finished.is_ok(), "the store hung with concurrent flushes");
}
