//! HTTPS from certificate files (a test CA made with rcgen): both ALPN protocols, HSTS, the
//! plain listener's redirect, reloading changed files, and clear startup errors.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use reqwest::{StatusCode, header};

use crate::helpers::{TestProxy, start_proxy};

pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

pub fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mcp-auth-proxy test CA");
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// Writes a leaf for localhost signed by `ca` to `dir` (cert.pem, key.pem); returns its DER.
pub fn leaf(ca: &Ca, dir: &Path, cn: &str) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    // Write the key first: the proxy must never see a new certificate with the old key.
    std::fs::write(dir.join("key.tmp"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.tmp"), cert.pem()).unwrap();
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).unwrap();
    cert.der().to_vec()
}

pub fn https_client(ca: &Ca, http1_only: bool, addr: std::net::SocketAddr) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap();
    let b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([root])
        .tls_info(true)
        .resolve("localhost", addr)
        .redirect(reqwest::redirect::Policy::none());
    if http1_only { b.http1_only() } else { b }.build().unwrap()
}

async fn tls_proxy(dir: &Path) -> TestProxy {
    tls_proxy_for(dir, &[]).await
}

pub async fn tls_proxy_for(dir: &Path, rest: &[&str]) -> TestProxy {
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
    ];
    args.extend_from_slice(rest);
    start_proxy(&args).await
}

/// The fast lane serves MCP posts over TLS with HTTP/1.1 (HSTS added as on every https
/// answer); HTTP/2 connections stay with the general stack.
#[tokio::test]
async fn mcp_posts_over_tls_in_both_protocols() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    leaf(&ca, dir.path(), "lane");
    let up = crate::helpers::start_upstream().await;
    let p = tls_proxy_for(dir.path(), &[&up.url("/mcp")]).await;
    let addr = p.tls_addr.unwrap();
    let token = crate::helpers::token_for(&p, "password:alice").await;
    let url = format!("https://localhost:{}/mcp", addr.port());
    for (http1_only, version, lane_total) in [
        (true, reqwest::Version::HTTP_11, 1),
        (false, reqwest::Version::HTTP_2, 1),
    ] {
        let resp = https_client(&ca, http1_only, addr)
            .post(&url)
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
        assert_eq!(
            resp.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000"
        );
        assert_eq!(resp.headers()[header::VARY], "origin");
        let echo: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(echo["body"], r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        assert_eq!(p.state.metrics().fast_lane.get(), lane_total);
    }
}

fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn https_from_files_with_h2_hsts_redirects_and_reload() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let first = leaf(&ca, dir.path(), "first");
    let p = tls_proxy(dir.path()).await;
    let addr = p.tls_addr.unwrap();
    let origin = format!("https://localhost:{}", addr.port());
    assert_eq!(
        p.state.site().server.origin.as_str(),
        origin,
        "the TLS listener's origin"
    );
    let url = format!("{origin}/.well-known/oauth-authorization-server");

    // Both ALPN protocols, HSTS, our issuer.
    let h2 = https_client(&ca, false, addr)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), StatusCode::OK);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        h2.headers()[header::STRICT_TRANSPORT_SECURITY],
        "max-age=31536000"
    );
    assert_eq!(peer_cert(&h2), first);
    let meta: serde_json::Value = h2.json().await.unwrap();
    assert_eq!(meta["issuer"], origin);
    let h1 = https_client(&ca, true, addr)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    // The plain listener sends everything to https, path and query kept.
    let plain = crate::helpers::client()
        .get(p.url("/some/path?x=1&y=%20"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        plain.headers()[header::LOCATION],
        format!("{origin}/some/path?x=1&y=%20").as_str()
    );
    assert!(
        plain
            .headers()
            .get(header::STRICT_TRANSPORT_SECURITY)
            .is_none()
    );

    // New files: the next handshake presents the new certificate, without a restart.
    let second = leaf(&ca, dir.path(), "second");
    let mut served = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let r = https_client(&ca, true, addr)
            .get(&url)
            .send()
            .await
            .unwrap();
        served = peer_cert(&r);
        if served == second {
            break;
        }
    }
    assert_eq!(served, second, "reloaded");

    // A broken replacement is refused and the current certificate kept.
    let refused = || {
        p.state
            .metrics()
            .certificate_files
            .get_or_create(&mcp_auth_proxy::metrics::EventLabels {
                event: "refused".into(),
            })
            .get()
    };
    assert_eq!(refused(), 0);
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while refused() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the change was never looked at"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = https_client(&ca, true, addr)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), second);
}

#[tokio::test]
async fn missing_or_mismatched_files_stop_startup_clearly() {
    use clap::Parser;
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    leaf(&ca, dir.path(), "one");
    let other = tempfile::tempdir().unwrap();
    leaf(&ca, other.path(), "two");
    let start = |cert: String, key: String| async move {
        let data = tempfile::tempdir().unwrap();
        let cli = mcp_auth_proxy::cli::Cli::try_parse_from([
            "mcp-auth-proxy",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--password",
            "pw",
            "--data-path",
            &data.path().display().to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ])
        .unwrap();
        let config = mcp_auth_proxy::config::Config::from_cli(cli).unwrap();
        match mcp_auth_proxy::prepare(
            config,
            mcp_auth_proxy::EnvSecrets::default(),
            mcp_auth_proxy::clock::Clock::system(),
        )
        .await
        {
            Ok(_) => panic!("started"),
            Err(e) => e.to_string(),
        }
    };
    let err = start(
        dir.path().join("cert.pem").display().to_string(),
        other.path().join("key.pem").display().to_string(),
    )
    .await;
    assert!(err.contains("do not belong together"), "{err}");
    let err = start(
        dir.path().join("nope.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string(),
    )
    .await;
    assert!(err.contains("nope.pem"), "{err}");
}
