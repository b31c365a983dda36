//! Two proxies on one PostgreSQL database behind one public URL act as one server: what one
//! issues the other honours, a code is redeemed once across both, and a revocation at one
//! reaches the other's cache of checked tokens within a second.

use std::time::Duration;

use base64::Engine;
use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::flow::{Browser, OAuthClient, query};
use crate::helpers::{Binary, BinarySite, TEST_PASSWORD, client, start_upstream, unused_port};
use crate::pg::PgCluster;

/// A replica: its own listener and data directory, the site's public URL and database.
struct Replica {
    bin: Binary,
    authority: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(site: &BinarySite, dsn: &str, key: &str, upstream: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", unused_port());
        let data = dir.path().to_str().unwrap().to_string();
        let args = [
            "--listen",
            &listen,
            "--external-url",
            &site.origin,
            "--data-path",
            &data,
            "--repository-backend",
            "postgres",
            "--replica-id",
            "replica-b",
            "--login-max-failures",
            "3",
            upstream,
        ];
        let bin = Binary::start(&args, &[("REPOSITORY_DSN", dsn), ("ENCRYPTION_KEY", key)]).await;
        Replica {
            bin,
            authority: site.origin.trim_start_matches("http://").to_string(),
            _dir: dir,
        }
    }

    /// A request to this replica as the public URL names it (the load balancer's `Host`).
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        client()
            .post(self.bin.url(path))
            .header(header::HOST, &self.authority)
    }

    /// Waits until every token in `tokens` gets 401 here, failing with `why` after a second
    /// (the revocation's bound across replicas); how long it took.
    async fn refuses_within_a_second(&self, tokens: &[&str], why: &str) -> Duration {
        let started = tokio::time::Instant::now();
        for token in tokens {
            while self.mcp(token).await != StatusCode::UNAUTHORIZED {
                assert!(started.elapsed() < Duration::from_secs(1), "{why}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        started.elapsed()
    }

    async fn mcp(&self, access: &str) -> StatusCode {
        self.post("/mcp")
            .bearer_auth(access)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_act_as_one_server() {
    let pg = PgCluster::start().await;
    let dsn = pg.database("replicas").await;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let up = start_upstream().await;
    let upstream = up.url("/mcp");
    let site = BinarySite::new().await;
    // Replica A answers on the public URL itself; B beside it.
    let a_args = site.args(&[
        "--repository-backend",
        "postgres",
        "--login-max-failures",
        "3",
        &upstream,
    ]);
    let envs = [
        ("REPOSITORY_DSN", dsn.as_str()),
        ("ENCRYPTION_KEY", key.as_str()),
    ];
    let a_bin = Binary::start(&a_args, &envs).await;
    let b = Replica::start(&site, &dsn, &key, &upstream).await;
    let t = a_bin.target(&site.origin);
    let said = |bin: &Binary, what: &str| bin.before_listening.iter().any(|l| l.contains(what));
    assert!(said(&b.bin, "replica-b"), "{:?}", b.bin.before_listening);
    assert!(
        said(&a_bin, "replica id"),
        "a default id: {:?}",
        a_bin.before_listening
    );

    // A client registered and signed in through A; its token passes B's gate.
    let oc = OAuthClient::public(&t).await;
    let browser = Browser::new();
    let tokens = oc.sign_in(&t, &browser).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(b.mcp(access).await, StatusCode::OK, "B honours A's token");

    // A revocation at A reaches B's cache of checked tokens within a second (B checked the
    // token just now, so without being told it would believe it for 30 s).
    let revoked = client()
        .post(t.url("/revoke"))
        .form(&[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", oc.id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let took = b
        .refuses_within_a_second(&[access], "B still honours a token revoked at A")
        .await;
    eprintln!("revocation reached the other replica in {took:?}");

    // A code issued by A is redeemed at B, once; a replay at either is refused, and revokes
    // what the code issued, on both.
    let back = browser
        .authorize(&t, &oc.auth_url(&t, &[]), TEST_PASSWORD, "approve")
        .await;
    let code = query(&back, "code").unwrap();
    let redeem = |at: reqwest::RequestBuilder| at.form(&oc.code_params(&code, &[])).send();
    let first = redeem(b.post("/token")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let issued: Value = first.json().await.unwrap();
    let issued_access = issued["access_token"].as_str().unwrap();
    assert_eq!(b.mcp(issued_access).await, StatusCode::OK);
    let again_a = redeem(client().post(t.url("/token"))).await.unwrap();
    assert_eq!(again_a.status(), StatusCode::BAD_REQUEST);
    let again_b = redeem(b.post("/token")).await.unwrap();
    assert_eq!(again_b.status(), StatusCode::BAD_REQUEST);
    b.refuses_within_a_second(&[issued_access], "the replay at A did not reach B")
        .await;

    // Two replicas racing on one refresh token: one rotation happens, and every racer gets
    // its result (the previous token answers with the same successor until that is used or
    // `--refresh-grace` passes: README, "Signing in"), so the family never forks.
    let fresh = oc.sign_in(&t, &browser).await;
    let old_refresh = fresh["refresh_token"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", old_refresh),
        ("client_id", oc.id.as_str()),
    ];
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let to = if i % 2 == 0 {
                client().post(t.url("/token"))
            } else {
                b.post("/token")
            };
            let sent = to.form(&form).send();
            tokio::spawn(async move {
                let r = sent.await.unwrap();
                (r.status(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut successors = std::collections::BTreeSet::new();
    for racer in racers {
        let (status, body) = racer.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        successors.insert((
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(successors.len(), 1, "one rotation, not {successors:?}");
    let (successor_access, successor_refresh) = successors.pop_first().unwrap();
    // The successor used at B; the old token again at A is now reuse: refused, and the
    // whole family revoked, on both replicas.
    let next = b
        .post("/token")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", successor_refresh.as_str()),
            ("client_id", oc.id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    let next: Value = next.json().await.unwrap();
    let reuse = client()
        .post(t.url("/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
    let reuse: Value = reuse.json().await.unwrap();
    assert_eq!(reuse["error"], "invalid_grant", "{reuse}");
    let newest_access = next["access_token"].as_str().unwrap();
    b.refuses_within_a_second(
        &[newest_access, &successor_access],
        "the family revoked at A is still honoured at B",
    )
    .await;

    // The password lockout counts across replicas: 20 guesses at once, spread over both,
    // get three checks in all (two wrong, the third locks), not three per replica.
    let guesser = Browser::new();
    let page = guesser
        .http
        .get(t.url("/.auth/login"))
        .send()
        .await
        .unwrap();
    let csrf = crate::flow::hidden(&page.text().await.unwrap(), "csrf").unwrap();
    let guesses = (0..20)
        .map(|i| {
            let form = [("password", format!("wrong {i}")), ("csrf", csrf.clone())];
            let to = if i % 2 == 0 {
                t.url("/.auth/login")
            } else {
                b.bin.url("/.auth/login")
            };
            guesser
                .http
                .post(to)
                .header(header::HOST, &b.authority)
                .form(&form)
        })
        .collect();
    let statuses = crate::helpers::all_at_once(guesses).await;
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((wrong, locked), (2, 18), "{statuses:?}");
    drop(b);
    drop(a_bin);
}

/// Two replicas on a new database of a throwaway cluster, in front of one HTTP upstream: A
/// on the site's public address, B beside it. What they share lives here; `start` hands out
/// A, B and A's target.
struct Pair {
    site: BinarySite,
    dsn: String,
    key: String,
    upstream: String,
    _up: crate::helpers::Upstream,
    _pg: PgCluster,
}

impl Pair {
    async fn start(database: &str) -> (Pair, Binary, Replica, crate::helpers::Target) {
        Self::start_at(database, BinarySite::new().await).await
    }

    /// [`Pair::start`] on `site`.
    async fn start_at(
        database: &str,
        site: BinarySite,
    ) -> (Pair, Binary, Replica, crate::helpers::Target) {
        let pg = PgCluster::start().await;
        let dsn = pg.database(database).await;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let up = start_upstream().await;
        let pair = Pair {
            site,
            upstream: up.url("/mcp"),
            dsn,
            key,
            _up: up,
            _pg: pg,
        };
        let a = Binary::start(&pair.a_args(), &pair.envs()).await;
        let b = Replica::start(&pair.site, &pair.dsn, &pair.key, &pair.upstream).await;
        let t = a.target(&pair.site.origin);
        (pair, a, b, t)
    }

    fn a_args(&self) -> Vec<&str> {
        self.site
            .args(&["--repository-backend", "postgres", &self.upstream])
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        vec![
            ("REPOSITORY_DSN", self.dsn.as_str()),
            ("ENCRYPTION_KEY", self.key.as_str()),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_and_the_other_keeps_serving() {
    let (_pair, a, b, t) = Pair::start("killed").await;

    // Clients and tokens issued by A.
    let mut issued = Vec::new();
    for _ in 0..3 {
        let oc = OAuthClient::public(&t).await;
        let tokens = oc.sign_in(&t, &Browser::new()).await;
        issued.push((oc, tokens));
    }
    // Load on B while A is killed.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let b = Arc::new(b);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for (_, tokens) in &issued {
        let (b, stop, answered) = (b.clone(), stop.clone(), answered.clone());
        let access = tokens["access_token"].as_str().unwrap().to_string();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(b.mcp(&access).await, StatusCode::OK, "B kept serving");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let until = |n: usize| {
        let answered = answered.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while answered.load(Ordering::Relaxed) < n {
                assert!(tokio::time::Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    until(30).await;
    a.kill9().await;
    let at_kill = answered.load(Ordering::Relaxed);
    until(at_kill + 60).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    // Nothing A issued is lost: every client refreshes at B.
    for (oc, tokens) in &issued {
        let resp = b
            .post("/token")
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", oc.id.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    }
}

/// A changed password, rolled out by restarting one replica with it, ends the old password's
/// sign-ins on the other replica too, within a second, though that one checked the token just
/// before and would otherwise believe it from memory for 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_at_one_replica_ends_old_sign_ins_at_the_other() {
    let (pair, a, b, t) = Pair::start("password_roll").await;
    let oc = OAuthClient::public(&t).await;
    let tokens = oc.sign_in(&t, &Browser::new()).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(b.mcp(access).await, StatusCode::OK);

    assert_eq!(a.terminate(Duration::from_secs(10)).await, Some(0));
    let mut changed = pair.envs();
    changed.push(("PASSWORD", "a new passphrase for the roll"));
    let a = Binary::start(&pair.a_args(), &changed).await;
    b.refuses_within_a_second(
        &[access],
        "B still honours a sign-in made with the old password",
    )
    .await;
    drop((a, b));
}

/// A DPoP proof is taken once across replicas: the one A accepted is a replay at B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_proof_used_at_one_replica_is_a_replay_at_the_other() {
    use crate::dpop::{Key, bound_tokens, code_for};
    let (_pair, a, b, t) = Pair::start("dpop_replay").await;
    let now = mcp_auth_proxy::clock::Clock::system().now();
    let key = Key::new();
    let oc = OAuthClient::public(&t).await;
    let code = code_for(&t, &Browser::new(), &oc.auth_url(&t, &[])).await;
    let issued = bound_tokens(&t, &oc, &code, &key, now).await;
    let access = issued["access_token"].as_str().unwrap();
    let proof = key.proof("POST", &format!("{}/mcp", t.origin), Some(access), now);
    let at = |r: reqwest::RequestBuilder| {
        r.header(header::AUTHORIZATION, format!("DPoP {access}"))
            .header("dpop", &proof)
            .body("{}")
            .send()
    };
    let first = at(client()
        .post(a.url("/mcp"))
        .header(header::HOST, t.origin.trim_start_matches("http://")));
    assert_eq!(
        first.await.unwrap().status(),
        StatusCode::OK,
        "A takes the proof"
    );
    let again = at(b.post("/mcp")).await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "B refuses it");
    let challenge = again.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
}

/// A passkey ceremony begun at one replica is finished at the other, both ways: the
/// challenge and the credential live in the shared database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_ceremony_begun_at_one_replica_finishes_at_the_other() {
    use crate::passkeys::{register_at, sign_in_at};
    let (_pair, a, b, t) = Pair::start_at("passkeys", BinarySite::on_localhost().await).await;
    let at_b = crate::helpers::Target {
        base: b.bin.url(""),
        ..t.clone()
    };
    let mut key = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);

    let owner = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &owner).await;
    let (status, added, _) = register_at(&t, &at_b, &owner, &mut key, "Laptop").await;
    assert_eq!(status, StatusCode::OK, "B finishes what A began: {added}");
    let (status, answer, _) = sign_in_at(&at_b, &t, &Browser::new(), &mut key, None).await;
    assert_eq!(status, StatusCode::OK, "A finishes what B began: {answer}");
    drop((a, b));
}
