//! The real binary on PostgreSQL (a throwaway cluster per test, see `pg.rs`): the whole OAuth
//! flow, restarts and `kill -9`, the database going away and coming back under a running
//! proxy, and startup refusing what cannot work.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;

use crate::flow::{Browser, OAuthClient, query, refresh, token};
use crate::helpers::{
    Binary, BinarySite, Target, client, dead_port, gate_status, run_binary, start_upstream,
};
use crate::pg::PgCluster;

pub fn encryption_key() -> String {
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The binary on `site`, storing in the database at `dsn`.
pub async fn start_on(site: &BinarySite, dsn: &str, key: &str, upstream: &str) -> Binary {
    let args = site.args(&["--repository-backend", "postgres", upstream]);
    Binary::start(&args, &[("REPOSITORY_DSN", dsn), ("ENCRYPTION_KEY", key)]).await
}

/// A sign-in of `oc` by a browser that must already be signed in: were the login form shown,
/// the wrong password would fail the flow.
async fn sign_in_without_password(t: &Target, oc: &OAuthClient, browser: &Browser) -> Value {
    let url = oc.auth_url(t, &[]);
    let back = browser
        .authorize(t, &url, "not the password", "approve")
        .await;
    let code = query(&back, "code").expect("a code without the password");
    let resp = token(t, &oc.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or_default().into())
}

fn str_of<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_on_postgres_survives_restarts_and_sigkill() {
    let pg = PgCluster::start().await;
    let dsn = pg.database("flow").await;
    let key = encryption_key();
    let up = start_upstream().await;
    let upstream = up.url("/mcp");
    let site = BinarySite::new().await;
    let bin = start_on(&site, &dsn, &key, &upstream).await;
    let t = bin.target(&site.origin);

    // Register, sign in, consent, code, token, through the gate.
    let oc = OAuthClient::public(&t).await;
    let browser = Browser::new();
    let first = oc.sign_in(&t, &browser).await;
    assert_eq!(
        gate_status(&t, str_of(&first, "access_token")).await,
        StatusCode::OK
    );

    // Refresh rotation; using the successor ends the old one's grace, and reusing the old
    // one then is theft: the whole family is revoked.
    let r1 = str_of(&first, "refresh_token");
    let second: Value = refresh(&t, &oc.id, r1).await.json().await.unwrap();
    let third: Value = refresh(&t, &oc.id, str_of(&second, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    let a3 = str_of(&third, "access_token");
    assert_eq!(gate_status(&t, a3).await, StatusCode::OK);
    let (status, error) = error_of(refresh(&t, &oc.id, r1).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    assert_eq!(
        gate_status(&t, a3).await,
        StatusCode::UNAUTHORIZED,
        "family revoked"
    );

    // Revocation.
    let other = oc.sign_in(&t, &browser).await;
    let revoked = client()
        .post(t.url("/revoke"))
        .form(&[
            ("token", str_of(&other, "refresh_token")),
            ("client_id", &oc.id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(
        gate_status(&t, str_of(&other, "access_token")).await,
        StatusCode::UNAUTHORIZED
    );

    // A sign-in answered just now, then kill -9: nothing answered is lost.
    let kept = oc.sign_in(&t, &browser).await;
    bin.kill9().await;
    let bin = start_on(&site, &dsn, &key, &upstream).await;
    let t = bin.target(&site.origin);
    assert_eq!(
        gate_status(&t, str_of(&kept, "access_token")).await,
        StatusCode::OK
    );
    let (status, _) = error_of(refresh(&t, &oc.id, r1).await).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the revoked family stays revoked"
    );
    // The browser session and the client registration too: a new sign-in needs no password
    // (a wrong one would fail the flow if the login form came up).
    let again = sign_in_without_password(&t, &oc, &browser).await;
    assert_eq!(
        gate_status(&t, str_of(&again, "access_token")).await,
        StatusCode::OK
    );
    let renewed = refresh(&t, &oc.id, str_of(&kept, "refresh_token")).await;
    assert_eq!(renewed.status(), StatusCode::OK, "refresh after a restart");
    assert_eq!(bin.terminate(Duration::from_secs(20)).await, Some(0));

    // Nothing was kept on the local disk.
    let left: Vec<_> = std::fs::read_dir(site.dir.path()).unwrap().collect();
    assert!(left.is_empty(), "the data directory holds {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_gives_503_and_the_proxy_recovers_without_a_restart() {
    let pg = PgCluster::start().await;
    let dsn = pg.database("outage").await;
    let key = encryption_key();
    let up = start_upstream().await;
    let site = BinarySite::new().await;
    let bin = start_on(&site, &dsn, &key, &up.url("/mcp")).await;
    let t = bin.target(&site.origin);
    let oc = OAuthClient::public(&t).await;
    let tokens = oc.sign_in(&t, &Browser::new()).await;
    let access = str_of(&tokens, "access_token");
    assert_eq!(gate_status(&t, access).await, StatusCode::OK, "now cached");
    let ready = || async {
        client()
            .get(t.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(ready().await, StatusCode::OK);

    pg.pause();
    assert_eq!(
        ready().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready without the store"
    );
    let resp = refresh(&t, &oc.id, str_of(&tokens, "refresh_token")).await;
    assert!(resp.headers().contains_key("retry-after"));
    let (status, error) = error_of(resp).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
    );
    // A token checked just before keeps working from memory (for at most the cache's TTL);
    // one never seen cannot be checked: refused as unavailable, never let through.
    assert_eq!(gate_status(&t, access).await, StatusCode::OK);
    assert_eq!(
        gate_status(&t, "mcpat_never_seen").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A person gets a readable page.
    let page = client()
        .get(t.url(&format!(
            "/authorize?client_id={}&response_type=code",
            oc.id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("Temporarily unavailable")
    );

    pg.resume();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ready().await != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = refresh(&t, &oc.id, str_of(&tokens, "refresh_token")).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the refresh token survived the outage"
    );
    let next: Value = resp.json().await.unwrap();
    assert_eq!(
        gate_status(&t, str_of(&next, "access_token")).await,
        StatusCode::OK
    );
    drop(bin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_on_postgres_needs_the_key_and_gives_up_on_a_database_that_never_answers() {
    let site = BinarySite::new().await;
    let dsn = format!("postgres://postgres@127.0.0.1:{}/none", dead_port().await);
    let args = site.args(&[
        "--repository-backend",
        "postgres",
        "--repository-connect-timeout",
        "2s",
    ]);
    let (code, err) = run_binary(&args, &[("REPOSITORY_DSN", &dsn)]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ENCRYPTION_KEY is required"), "{err}");
    assert!(err.contains("openssl rand -base64 32"), "{err}");

    let key = encryption_key();
    let (code, err) =
        run_binary(&args, &[("REPOSITORY_DSN", &dsn), ("ENCRYPTION_KEY", &key)]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not reachable yet; retrying"), "{err}");
    assert!(err.contains("did not answer within"), "{err}");
    assert!(!err.contains(&key), "the key reached the log");

    // obot's variable alone chooses PostgreSQL.
    let local = site.args(&["--repository-connect-timeout", "1s"]);
    let (code, err) = run_binary(&local, &[("DATABASE_DSN", &dsn), ("ENCRYPTION_KEY", &key)]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did not answer within"), "{err}");
    for (backend, word) in [
        ("sqlite", "not supported"),
        ("mysql", "not supported"),
        ("oracle", "unknown"),
    ] {
        let (code, err) = run_binary(&site.args(&["--repository-backend", backend]), &[]).await;
        assert_eq!(code, Some(2), "a configuration error");
        assert!(err.contains(word), "{backend}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_data_directory_into_postgres_and_its_tokens_work_there() {
    let pg = PgCluster::start().await;
    let dsn = pg.database("moved").await;
    let up = start_upstream().await;
    let upstream = up.url("/mcp");
    let site = BinarySite::new().await;
    let dir = site.dir.path().to_str().unwrap().to_string();

    // Filled through the real flow on the embedded store.
    let bin = site.start(&[&upstream]).await;
    let t = bin.target(&site.origin);
    let oc = OAuthClient::public(&t).await;
    let browser = Browser::new();
    let tokens = oc.sign_in(&t, &browser).await;
    assert_eq!(
        gate_status(&t, str_of(&tokens, "access_token")).await,
        StatusCode::OK
    );

    // Refused while the proxy runs on the directory.
    let key = encryption_key();
    let envs = [
        ("REPOSITORY_DSN", dsn.as_str()),
        ("ENCRYPTION_KEY", key.as_str()),
    ];
    let migrate = ["migrate", "--from", &dir, "--to", "postgres"];
    let out = crate::helpers::binary_output(&migrate, &envs).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another mcp-auth-proxy"), "{err}");
    assert_eq!(bin.terminate(Duration::from_secs(20)).await, Some(0));

    // Copied (under another ENCRYPTION_KEY than the directory's generated one), twice.
    let mut reports = Vec::new();
    for _ in 0..2 {
        let out = crate::helpers::binary_output(&migrate, &envs).await;
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for what in [
            "1 clients",
            "tokens",
            "grants",
            "browser sessions",
            "the cookie key",
        ] {
            assert!(report.contains(what), "{what}: {report}");
        }
        reports.push(report);
    }
    assert_eq!(reports[0], reports[1], "the same again");

    // The migrated tokens, client and browser session work against the proxy on PostgreSQL.
    let bin = start_on(&site, &dsn, &key, &upstream).await;
    let t = bin.target(&site.origin);
    assert_eq!(
        gate_status(&t, str_of(&tokens, "access_token")).await,
        StatusCode::OK
    );
    let renewed = refresh(&t, &oc.id, str_of(&tokens, "refresh_token")).await;
    assert_eq!(renewed.status(), StatusCode::OK);
    let again = sign_in_without_password(&t, &oc, &browser).await;
    assert_eq!(
        gate_status(&t, str_of(&again, "access_token")).await,
        StatusCode::OK
    );
    assert_eq!(bin.terminate(Duration::from_secs(20)).await, Some(0));

    // Our own directory needs a destination.
    let out = crate::helpers::binary_output(&["migrate", "--from", &dir], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --to"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_in_the_connection_string_is_honoured() {
    use mcp_auth_proxy::store::postgres::PostgresStore;
    // The server takes TCP connections over TLS only.
    let (pg, ca) = PgCluster::start_tls().await;
    let dsn = pg.database("tls").await;
    let with = |query: &str| format!("{dsn}?{query}");
    let patience = Duration::from_secs(1);
    let refused = PostgresStore::connect(&with("sslmode=disable"), patience).await;
    assert!(refused.is_err(), "without TLS the server refuses");
    PostgresStore::connect(&with("sslmode=require"), patience)
        .await
        .expect("require: encrypted");
    let ours = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    PostgresStore::connect(&with(&ours), patience)
        .await
        .expect("verify-full with the server's CA");
    let unknown = PostgresStore::connect(&with("sslmode=verify-full"), patience).await;
    assert!(
        unknown.is_err(),
        "verify-full refuses a CA it was not given"
    );
}
