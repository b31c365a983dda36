//! `--trusted-proxies` behind a real nginx (the documented `docs/docker/nginx-replicas.conf`,
//! and the same with the common `$proxy_add_x_forwarded_for`): a client that forges the
//! forwarding headers neither escapes the per-IP login lockout nor changes who we say we are.
//! The client connects from 127.0.0.2 and nginx from 127.0.0.1, the only trusted address, as
//! a client and its proxy are different machines in a deployment.

use std::path::Path;

use reqwest::{StatusCode, header};

use crate::flow::hidden;
use crate::helpers::{TEST_PASSWORD, loopback_cert, start_proxy, unused_port};
use crate::nginx_example::{Nginx, nginx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_through_nginx_change_nothing() {
    let Some(binary) = nginx() else {
        assert!(std::env::var("CI").is_err(), "CI must install nginx");
        eprintln!("nginx is not installed (apt-get install nginx): skipped");
        return;
    };
    let documented = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/docker/nginx-replicas.conf"),
    )
    .unwrap();
    let appending = documented.replace(
        "X-Forwarded-For $remote_addr",
        "X-Forwarded-For $proxy_add_x_forwarded_for",
    );
    assert_ne!(documented, appending);
    for site in [documented, appending] {
        // `https://localhost`: nginx passes `Host: 127.0.0.1` (its `$host`, no port), a
        // loopback name on the origin's port 443.
        let p = start_proxy(&[
            "--external-url",
            "https://localhost",
            "--trusted-proxies",
            "127.0.0.1/32",
            "--login-max-failures",
            "3",
        ])
        .await;
        let upstream = p.base.trim_start_matches("http://").to_string();
        let dir = tempfile::tempdir().unwrap();
        let cert = loopback_cert();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, format!("{}{}", cert.leaf, cert.ca)).unwrap();
        std::fs::write(&key_file, &cert.key).unwrap();
        let port = unused_port();
        let mut site = site.clone();
        for (from, to) in [
            ("proxy-a:8080", upstream.clone()),
            ("proxy-b:8080", upstream.clone()),
            ("listen 443 ssl", format!("listen 127.0.0.1:{port} ssl")),
            (
                "/etc/nginx/certs/fullchain.pem",
                cert_file.display().to_string(),
            ),
            (
                "/etc/nginx/certs/privkey.pem",
                key_file.display().to_string(),
            ),
        ] {
            site = site.replace(from, &to);
        }
        let browser = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
            .tls_certs_only([reqwest::Certificate::from_pem(cert.ca.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
        let front = Nginx::start(binary, &site, dir, &browser, &url("/healthz")).await;

        // Who we are does not move with forged headers.
        let meta = browser
            .get(url("/.well-known/oauth-authorization-server"))
            .header("x-forwarded-proto", "http")
            .send()
            .await
            .unwrap();
        assert_eq!(meta.status(), StatusCode::OK);
        let meta: serde_json::Value = meta.json().await.unwrap();
        assert_eq!(meta["issuer"], "https://localhost");
        // nginx replaces the client's X-Forwarded-Host with the host it was asked for, so a
        // forged one (as a DNS-rebinding page could set) moves nothing either.
        let fronted = browser
            .get(url("/.well-known/oauth-authorization-server"))
            .header("x-forwarded-host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(fronted.status(), StatusCode::OK);
        let fronted: serde_json::Value = fronted.json().await.unwrap();
        assert_eq!(fronted["issuer"], "https://localhost");

        // Three wrong passwords lock the client out, each from a "new address".
        let page = browser.get(url("/.auth/login")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let csrf = hidden(&page.text().await.unwrap(), "csrf").unwrap();
        let attempt = |n: u32, password: &'static str| {
            let forged = format!("203.0.113.{n}");
            browser
                .post(url("/.auth/login"))
                .header("x-forwarded-for", &forged)
                .header("x-real-ip", &forged)
                .header(header::FORWARDED, format!("for={forged}"))
                .form(&[("password", password), ("csrf", csrf.as_str())])
                .send()
        };
        let mut statuses = Vec::new();
        for n in 1..=3 {
            statuses.push(attempt(n, "wrong").await.unwrap().status().as_u16());
        }
        statuses.push(attempt(4, TEST_PASSWORD).await.unwrap().status().as_u16());
        assert_eq!(statuses, [401, 401, 429, 429], "{site}");
        front.stop().await;
    }
}
