//! The streaming HTTP proxy against a real local upstream.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::flow::{Browser, OAuthClient};
use crate::helpers::{
    Binary, BinarySite, TestProxy, big_events, client, dead_port, start_proxy, start_tls_upstream,
    start_upstream, token_for,
};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;

#[tokio::test]
async fn forwards_body_and_exactly_the_right_headers() {
    let up = start_upstream().await;
    let p = start_proxy(&[
        "--proxy-headers",
        "X-Static: one, X-Api-Key: k2",
        "--proxy-bearer-token",
        "upstream-secret",
        &up.url("/mcp"),
    ])
    .await;
    let t = token_for(&p, "password:alice").await;
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
    let resp = client()
        .post(p.url("/mcp?x=1"))
        .bearer_auth(&t)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(
            header::COOKIE,
            "theirs=1; mcp_proxy_session=s3cret; __Host-mcp_proxy_csrf=c",
        )
        .header("x-forwarded-user", "root")
        .header("x-forwarded-email", "root@evil")
        .header("x-forwarded-for", "6.6.6.6")
        .header("mcp-protocol-version", "2025-06-18")
        .header("last-event-id", "42")
        // 2026-07-28's mirrored headers, a tool's own Mcp-Param-* among them, pass as sent.
        .header("mcp-method", "tools/list")
        .header("mcp-param-region", "=?base64?ZXU=?=")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["body"], body);
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["path"], "/mcp");
    assert_eq!(
        h["authorization"], "Bearer upstream-secret",
        "the client's token never goes upstream"
    );
    assert_eq!(h["x-static"], "one");
    assert_eq!(h["mcp-method"], "tools/list");
    assert_eq!(h["mcp-param-region"], "=?base64?ZXU=?=");
    assert_eq!(h["x-api-key"], "k2");
    assert_eq!(
        h["cookie"], "theirs=1",
        "our cookies are removed, others kept"
    );
    assert!(h.get("x-forwarded-user").is_none() && h.get("x-forwarded-email").is_none());
    assert!(h.get("origin").is_none());
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client X-Forwarded-For not believed"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-forwarded-host"],
        p.state
            .site()
            .server
            .origin
            .as_str()
            .trim_start_matches("http://")
    );
    assert_eq!(h["host"], up.addr.to_string());
    assert_eq!(h["mcp-protocol-version"], "2025-06-18");
    assert_eq!(h["last-event-id"], "42");
    assert_eq!(h["content-type"], "application/json");
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended() {
    let up = start_upstream().await;
    let p = start_proxy(&["--trusted-proxies", "127.0.0.0/8", &up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let echo: Value = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .header("x-forwarded-for", "203.0.113.9")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

/// A plain client's GET stream (`Accept: text/event-stream`) at `url`.
async fn open_stream(url: String, token: &str) -> reqwest::Response {
    client()
        .get(url)
        .bearer_auth(token)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap()
}

/// An access token from a sign-in at the binary `bin`, started for `site`.
async fn access_token_at(bin: &Binary, site: &BinarySite) -> String {
    let t = bin.target(&site.origin);
    let tokens = OAuthClient::public(&t)
        .await
        .sign_in(&t, &Browser::new())
        .await;
    tokens["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn sse_arrives_event_by_event() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let start = Instant::now();
    let resp = open_stream(p.url("/mcp"), &t).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            arrivals.push((start.elapsed(), event));
        }
    }
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    for (i, (_, ev)) in arrivals.iter().enumerate() {
        assert!(ev.contains(&format!("\"n\":{i}")), "{ev}");
    }
    // The upstream waits 300 ms between events: had the proxy buffered, all three would
    // arrive together at the end.
    let gap1 = arrivals[1].0 - arrivals[0].0;
    let gap2 = arrivals[2].0 - arrivals[1].0;
    assert!(gap1 >= Duration::from_millis(200), "{arrivals:?}");
    assert!(gap2 >= Duration::from_millis(200), "{arrivals:?}");
}

/// An HTTP/2 client's stream is served by the general stack (the fast lane speaks HTTP/1),
/// whose upstream connections for `GET` read 1 KiB at a time: events still arrive one by
/// one, and larger ones whole.
#[tokio::test]
async fn an_http2_clients_stream_arrives_event_by_event_and_whole() {
    let up = start_upstream().await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let get = |p: &TestProxy, t: &str| {
        h2.get(p.url("/mcp"))
            .bearer_auth(t)
            .header(header::ACCEPT, "text/event-stream")
            .send()
    };

    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let resp = get(&p, &t).await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let mut arrived = Vec::new();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if buf.ends_with("\n\n") {
            arrived.push((Instant::now(), std::mem::take(&mut buf)));
        }
    }
    assert_eq!(arrived.len(), 3, "{arrived:?}");
    // 300 ms apart upstream: buffered, they would have come together.
    assert!(arrived[2].0 - arrived[1].0 >= Duration::from_millis(200));

    let p = start_proxy(&[&up.url("/big-events")]).await;
    let t = token_for(&p, "password:alice").await;
    let resp = get(&p, &t).await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), big_events().concat());
}

/// An `https` upstream is reached over TLS and verified against the system's roots (here a
/// test CA given by `SSL_CERT_FILE`, which the platform verifier reads on Linux): calls and
/// the SSE stream pass, through the general stack (the fast lane speaks plain HTTP upstream).
/// Without the CA the certificate is refused and the client gets a 502.
#[tokio::test]
async fn an_https_upstream_is_verified_and_served() {
    let ca = crate::tls::ca();
    let dir = tempfile::tempdir().unwrap();
    crate::tls::leaf(&ca, dir.path(), "upstream");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let up = start_tls_upstream(dir.path()).await;
    let url = format!("https://localhost:{}/mcp", up.addr.port());
    let call = |bin: &Binary, t: String| {
        client()
            .post(bin.url("/mcp"))
            .bearer_auth(t)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(INIT)
            .send()
    };

    let site = BinarySite::new().await;
    let ca_path = ca_file.to_str().unwrap();
    let bin = Binary::start(&site.args(&[&url]), &[("SSL_CERT_FILE", ca_path)]).await;
    let token = access_token_at(&bin, &site).await;
    let resp = call(&bin, token.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], INIT);
    let stream = open_stream(bin.url("/mcp"), &token).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let events = stream.text().await.unwrap();
    assert_eq!(events.matches("\n\n").count(), 3, "{events}");
    drop(bin);

    // The same upstream without the CA among the roots: refused.
    let site = BinarySite::new().await;
    let none = dir.path().join("no-roots.pem");
    std::fs::write(&none, "").unwrap();
    let bin = Binary::start(
        &site.args(&[&url]),
        &[("SSL_CERT_FILE", none.to_str().unwrap())],
    )
    .await;
    let token = access_token_at(&bin, &site).await;
    assert_eq!(
        call(&bin, token).await.unwrap().status(),
        StatusCode::BAD_GATEWAY
    );
}

#[tokio::test]
async fn upstream_401_and_403_become_502_without_the_upstream_challenge() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    for code in [401, 403] {
        let resp = client()
            .post(p.url(&format!("/status/{code}")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["error"]["code"], -32000);
    }
    // Other statuses pass through.
    let resp = client()
        .post(p.url("/status/418"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
}

#[tokio::test]
async fn upstream_sessions_belong_to_their_user() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let alice = token_for(&p, "password:alice").await;
    let bob = token_for(&p, "password:bob").await;
    let c = client();
    let resp = c
        .post(p.url("/mcp"))
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

    let with = |token: &str, sid: &str| {
        c.post(p.url("/mcp"))
            .bearer_auth(token)
            .header("mcp-session-id", sid)
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
    };
    assert_eq!(
        with(&alice, &sid).send().await.unwrap().status(),
        StatusCode::OK
    );
    let stolen = with(&bob, &sid).send().await.unwrap();
    assert_eq!(stolen.status(), StatusCode::NOT_FOUND);
    let body: Value = stolen.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(
        with(&alice, "never-issued").send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // GET and DELETE are checked the same way.
    let get = c
        .get(p.url("/mcp"))
        .bearer_auth(&bob)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    let del = c
        .delete(p.url("/mcp"))
        .bearer_auth(&bob)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
    // The owner ends it; afterwards it is gone for everyone.
    let del = c
        .delete(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::OK);
    assert_eq!(
        with(&alice, &sid).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn same_origin_307_is_followed_with_the_body() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/starlette/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/starlette/mcp/");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], INIT);
}

#[tokio::test]
async fn large_bodies_are_read_whole_then_forwarded_and_replayed() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"p":"{}"}}}}"#,
        "a".repeat(1_000_000)
    );
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body_len"], big.len());

    let p2 = start_proxy(&[&up.url("/starlette/mcp")]).await;
    let t2 = token_for(&p2, "password:alice").await;
    // Every body within --max-body is read whole before anything goes upstream (so one over
    // it is refused before any of it is sent), which also lets a 307 replay it.
    let resp = client()
        .post(p2.url("/mcp"))
        .bearer_auth(&t2)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/starlette/mcp/");
    assert_eq!(echo["body_len"], big.len());
}

#[tokio::test]
async fn cross_origin_redirects_are_not_followed() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let resp = client()
        .post(p.url("/elsewhere"))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.headers().get(header::LOCATION).is_none());
}

#[tokio::test]
async fn unreachable_upstream_is_a_quick_502() {
    let port = dead_port().await;
    let p = start_proxy(&[&format!("http://127.0.0.1:{port}/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let start = Instant::now();
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"the MCP server is unreachable"}})
    );
}

#[tokio::test]
async fn path_mapping_joins_other_paths_onto_the_upstream_origin() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/api/v1/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let c = client();
    let echo: Value = c
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/api/v1/mcp");
    let echo: Value = client()
        .get(p.url("/static/x.js?v=2"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/static/x.js");
    assert_eq!(echo["query"], "v=2");

    let p2 = start_proxy(&[&up.url("")]).await;
    let t2 = token_for(&p2, "password:alice").await;
    let echo: Value = c
        .post(p2.url("/mcp"))
        .bearer_auth(&t2)
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/mcp");
}

#[tokio::test]
async fn http_streaming_only_refuses_the_get_stream() {
    let up = start_upstream().await;
    let p = start_proxy(&["--http-streaming-only", &up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let resp = open_stream(p.url("/mcp"), &t).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_person_opening_the_address_gets_a_page_and_clients_their_401() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let resource = p.state.site().server.resource.clone();
    let page = client()
        .get(p.url("/"))
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("value=\"{resource}\"")), "{html}");
    assert!(html.contains("claude mcp add --transport http"), "{html}");
    assert!(html.contains("not signed in"), "{html}");
    // A program (no HTML asked for) or anyone with credentials: the gate, as on any path.
    let api = client().get(p.url("/")).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    assert!(api.headers().contains_key(header::WWW_AUTHENTICATE));
    let t = token_for(&p, "password:alice").await;
    let proxied = client()
        .get(p.url("/"))
        .header(header::ACCEPT, "text/html")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let echo: Value = proxied.json().await.unwrap();
    assert_eq!(echo["path"], "/", "with a token, / is the upstream's");
}
