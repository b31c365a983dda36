//! Running it in production: probes, metrics, rate limits, CORS, slow and oversized clients.

use std::time::Duration;

use reqwest::{StatusCode, header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::flow::{Browser, OAuthClient};
use crate::helpers::{client, dead_port, start_proxy, start_upstream, token_for};

async fn json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn readiness_follows_the_upstream_and_health_answers_any_host() {
    // The upstream is not there yet: alive, not ready.
    let port = dead_port().await;
    let upstream = format!("http://127.0.0.1:{port}/mcp");
    let p = start_proxy(&["--upstream-connect-timeout", "1s", &upstream]).await;
    let (status, body) = json(client().get(p.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = json(client().get(p.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["store"], "ok");
    assert!(
        body["checks"]["backend"]
            .as_str()
            .unwrap()
            .contains("refuses")
    );

    // It comes up: ready.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let (status, body) = json(client().get(p.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    task.abort();

    // Orchestrators probe the pod's own address: any Host is answered; other paths are not.
    let probe = |path: &str| {
        client()
            .get(p.url(path))
            .header(header::HOST, "10.1.2.3:8080")
            .send()
    };
    assert_eq!(probe("/healthz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        probe("/.well-known/oauth-authorization-server")
            .await
            .unwrap()
            .status(),
        StatusCode::MISDIRECTED_REQUEST
    );
}

#[tokio::test]
async fn readiness_of_a_stdio_backend_needs_a_command_that_exists() {
    let p = start_proxy(&["--", "node", "-e", "0"]).await;
    let (status, body) = json(client().get(p.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = start_proxy(&["--", "/nonexistent/mcp-server"]).await;
    let (status, body) = json(client().get(p.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["checks"]["backend"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
}

/// The value of a sample line of the metrics text, 0 when absent.
fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_after_requests_and_sign_ins() {
    let up = start_upstream().await;
    let p = start_proxy(&["--metrics-listen", "127.0.0.1:0", &up.url("/mcp")]).await;
    let metrics_url = format!("http://{}/metrics", p.metrics_addr.unwrap());
    let scrape = || async {
        let resp = client().get(&metrics_url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        resp.text().await.unwrap()
    };
    let before = scrape().await;
    let tokens = r#"mcp_auth_proxy_tokens_total{event="issued"}"#;
    let meta = r#"mcp_auth_proxy_http_requests_total{route="metadata",method="GET",status="200"}"#;
    assert_eq!(sample(&before, meta), 0.0);

    client()
        .get(p.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    let t = p.target();
    let c = OAuthClient::public(&t).await;
    let tokens_json = c.sign_in(&t, &Browser::new()).await;
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(tokens_json["access_token"].as_str().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let after = scrape().await;
    assert_eq!(sample(&after, meta), 1.0, "{after}");
    assert_eq!(sample(&after, tokens), sample(&before, tokens) + 1.0);
    assert_eq!(
        sample(
            &after,
            r#"mcp_auth_proxy_sign_ins_total{provider="password",outcome="success"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            r#"mcp_auth_proxy_upstream_response_seconds_count{backend="http"}"#
        ) >= 1.0,
        "{after}"
    );
    // The probes are served there too.
    let health = format!("http://{}/healthz", p.metrics_addr.unwrap());
    assert_eq!(
        client().get(health).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_token_and_registration_endpoints_are_rate_limited_per_client() {
    let p = start_proxy(&["--rate-limit", "3", "--trusted-proxies", "127.0.0.1/32"]).await;
    let post = |from: &'static str| {
        client()
            .post(p.url("/token"))
            .header("x-forwarded-for", from)
            .form(&[("grant_type", "refresh_token"), ("client_id", "nobody")])
            .send()
    };
    for _ in 0..3 {
        assert_ne!(
            post("198.51.100.7").await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let resp = post("198.51.100.7").await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    let (_, body) = json(resp).await;
    assert_eq!(body["error"], "temporarily_unavailable");
    // Registration shares the client's budget; another client has its own.
    let reg = client()
        .post(p.url("/register"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(
        post("198.51.100.8").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Without a trusted proxy, X-Forwarded-For is not believed.
    let direct = start_proxy(&["--rate-limit", "1"]).await;
    let spoofed = |ip: &'static str| {
        client()
            .post(direct.url("/token"))
            .header("x-forwarded-for", ip)
            .form(&[("grant_type", "refresh_token")])
            .send()
    };
    assert_ne!(
        spoofed("192.0.2.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        spoofed("192.0.2.2").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn cors_preflight_for_allowed_and_refused_origins() {
    let up = start_upstream().await;
    let p = start_proxy(&[
        "--allowed-origins",
        "https://app.example.org",
        &up.url("/mcp"),
    ])
    .await;
    let preflight = |path: &str, origin: &str| {
        client()
            .request(reqwest::Method::OPTIONS, p.url(path))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type, mcp-protocol-version, mcp-session-id",
            )
            .send()
    };
    for path in ["/mcp", "/token", "/register"] {
        let resp = preflight(path, "https://app.example.org").await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let h = resp.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.org"
        );
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
        for name in ["authorization", "mcp-protocol-version", "mcp-session-id"] {
            assert!(allowed.contains(name), "{path}: {allowed}");
        }
        let refused = preflight(path, "https://evil.example").await.unwrap();
        assert!(
            refused
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none(),
            "{path}: a refused origin gets no CORS grant"
        );
    }
    // The real request exposes the session id and the challenge to the page.
    let token = token_for(&p, "password:admin").await;
    let resp = client()
        .post(p.url("/mcp"))
        .header(header::ORIGIN, "https://app.example.org")
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    let exposed = resp.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("mcp-session-id") && exposed.contains("www-authenticate"));
    // Pages get no CORS at all.
    let page = preflight("/.auth/login", "https://app.example.org")
        .await
        .unwrap();
    assert!(
        page.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[tokio::test]
async fn slow_headers_and_oversized_bodies_are_refused() {
    let up = start_upstream().await;
    let p = start_proxy(&[
        "--header-read-timeout",
        "1s",
        "--max-body",
        "1KiB",
        &up.url("/mcp"),
    ])
    .await;
    let addr = p.url("").trim_start_matches("http://").to_string();

    // A client that trickles its headers is cut off after the timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // Keep trickling: one header byte every 200 ms.
            let _ = slow.write_all(b"X").await;
            let mut chunk = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the slow client was not cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A body over --max-body: 413 before it reaches anyone.
    let token = token_for(&p, "password:admin").await;
    for (size, expected) in [(4096, StatusCode::PAYLOAD_TOO_LARGE), (512, StatusCode::OK)] {
        let resp = client()
            .post(p.url("/mcp"))
            .bearer_auth(&token)
            .body(vec![b' '; size])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "{size} bytes");
    }
}

#[tokio::test]
async fn readiness_waits_for_the_acme_certificate() {
    let dead = dead_port().await;
    let directory = format!("https://127.0.0.1:{dead}/dir");
    let p = start_proxy(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--external-url",
        "https://mcp.example.com",
        "--tls-accept-tos",
        "--tls-directory-url",
        &directory,
    ])
    .await;
    let (status, body) = json(client().get(p.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["checks"]["certificate"]
            .as_str()
            .unwrap()
            .contains("no certificate yet")
    );
    // Alive all the same.
    assert_eq!(
        client()
            .get(p.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
