//! The gate in front of proxied paths: every failure path, on every method.

use mcp_auth_proxy::store::TokenKind;
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::helpers::{Mint, client, mint, start_proxy, start_upstream, token_for};

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn metadata_is_served_at_root_and_path_form() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let a: Value = crate::helpers::get_json(p.url("/.well-known/oauth-protected-resource")).await;
    let b: Value =
        crate::helpers::get_json(p.url("/.well-known/oauth-protected-resource/mcp")).await;
    assert_eq!(a, b);
    let origin = p.state.site().server.origin.as_str().to_string();
    assert_eq!(a["resource"], format!("{origin}/mcp"));
    assert_eq!(a["authorization_servers"][0], origin);
    assert_eq!(a["bearer_methods_supported"][0], "header");
    assert!(
        a["scopes_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "mcp")
    );
}

#[tokio::test]
async fn missing_token_gets_401_with_absolute_resource_metadata_on_every_method() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let c = client();
    for method in [Method::POST, Method::GET, Method::DELETE, Method::PUT] {
        for path in ["/mcp", "/other/path"] {
            let resp = c.request(method.clone(), p.url(path)).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            let ch = challenge(&resp);
            let expected = format!(
                "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                p.state.site().server.origin.as_str()
            );
            assert!(ch.starts_with("Bearer "), "{ch}");
            assert!(ch.contains(&expected), "{ch}");
            assert!(
                !ch.contains("error="),
                "no error code without credentials: {ch}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["jsonrpc"], "2.0");
            assert!(body["error"]["message"].is_string());
        }
    }
}

#[tokio::test]
async fn bad_tokens_get_invalid_token() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let resource = p.state.site().server.resource.clone();
    let repo = p.repo();
    let expired = mint(
        repo,
        &resource,
        Mint {
            ttl: -1,
            ..Mint::default()
        },
    )
    .await;
    let foreign = mint(
        repo,
        &resource,
        Mint {
            resource: Some("https://other.example/mcp"),
            ..Mint::default()
        },
    )
    .await;
    let refresh = mint(
        repo,
        &resource,
        Mint {
            kind: TokenKind::Refresh,
            ..Mint::default()
        },
    )
    .await;
    let c = client();
    for (name, token) in [
        ("unknown", "mcpat_not-a-real-token".to_string()),
        ("expired", expired),
        ("other resource", foreign),
        ("refresh token used as access token", refresh),
    ] {
        for method in [Method::POST, Method::GET, Method::DELETE] {
            let resp = c
                .request(method.clone(), p.url("/mcp"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name} {method}");
            let ch = challenge(&resp);
            assert!(ch.contains("error=\"invalid_token\""), "{name}: {ch}");
            assert!(ch.contains("resource_metadata=\"http"), "{name}: {ch}");
        }
    }
}

#[tokio::test]
async fn malformed_credentials_and_query_tokens_are_refused() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let good = token_for(&p, "password:alice").await;
    let c = client();

    let resp = c
        .post(p.url(&format!("/mcp?access_token={good}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(challenge(&resp).contains("error=\"invalid_request\""));

    // Even together with a good header: the query token is refused, never ignored.
    let resp = c
        .post(p.url(&format!("/mcp?access_token={good}")))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let resp = c
        .post(p.url("/mcp"))
        .header(header::AUTHORIZATION, "Bearer")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let resp = c
        .post(p.url("/mcp"))
        .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = c
        .post(p.url("/mcp"))
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .header(header::AUTHORIZATION, format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn token_without_the_mcp_scope_gets_403_insufficient_scope() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = mint(
        p.repo(),
        &p.state.site().server.resource,
        Mint {
            scopes: &["offline_access"],
            ..Mint::default()
        },
    )
    .await;
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let ch = challenge(&resp);
    assert!(ch.contains("error=\"insufficient_scope\""), "{ch}");
    assert!(
        ch.contains("scope=\"offline_access mcp\""),
        "needed scopes include those granted: {ch}"
    );
    assert!(ch.contains("resource_metadata="), "{ch}");
}

#[tokio::test]
async fn revocation_reaches_the_gate_at_once() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let c = client();
    let ok = c
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK, "token works and is now cached");
    let hashes = p.repo().revoke_grant("grant-1").await.unwrap();
    assert_eq!(hashes.len(), 1);
    p.state.tokens().evict(&hashes);
    let resp = c
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn foreign_origin_is_refused_before_auth() {
    let up = start_upstream().await;
    let p = start_proxy(&[
        "--allowed-origins",
        "https://app.example.org",
        &up.url("/mcp"),
    ])
    .await;
    let t = token_for(&p, "password:alice").await;
    let c = client();
    for (origin, token, expected) in [
        ("https://evil.example", None, StatusCode::FORBIDDEN),
        ("https://evil.example", Some(&t), StatusCode::FORBIDDEN),
        ("null", Some(&t), StatusCode::FORBIDDEN),
        ("https://app.example.org", None, StatusCode::UNAUTHORIZED),
        ("https://app.example.org", Some(&t), StatusCode::OK),
    ] {
        let mut req = c
            .post(p.url("/mcp"))
            .header(header::ORIGIN, origin)
            .body("{}");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.status(),
            expected,
            "{origin} with token: {}",
            token.is_some()
        );
    }
    // Our own origin is always allowed; metadata is guarded too.
    let own = p.state.site().server.origin.as_str().to_string();
    let resp = c
        .post(p.url("/mcp"))
        .header(header::ORIGIN, own)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = c
        .get(p.url("/.well-known/oauth-protected-resource"))
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn wrong_host_is_misdirected_before_auth() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = token_for(&p, "password:alice").await;
    let c = client();
    let port = p.state.site().server.origin.port();
    for (host, expected) in [
        (
            "rebind.attacker.example".to_string(),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            format!("attacker.example:{port}"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            format!("localhost:{}", port.wrapping_add(1)),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (format!("localhost:{port}"), StatusCode::OK),
        (format!("127.0.0.1:{port}"), StatusCode::OK),
    ] {
        let resp = c
            .post(p.url("/mcp"))
            .header(header::HOST, &host)
            .bearer_auth(&t)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "Host: {host}");
    }
    let resp = c
        .get(p.url("/.well-known/oauth-protected-resource"))
        .header(header::HOST, "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn x_forwarded_host_is_believed_only_from_trusted_proxies() {
    let up = start_upstream().await;
    // Behind a TLS-terminating proxy: an https external URL without our own TLS.
    let ext = ["--external-url", "https://mcp.example.com", "--no-auto-tls"];
    let untrusted = start_proxy(&[ext[0], ext[1], ext[2], &up.url("/mcp")]).await;
    let trusted = start_proxy(&[
        ext[0],
        ext[1],
        ext[2],
        "--trusted-proxies",
        "127.0.0.1",
        &up.url("/mcp"),
    ])
    .await;
    let c = client();
    for (p, expected) in [
        (&untrusted, StatusCode::MISDIRECTED_REQUEST),
        (&trusted, StatusCode::UNAUTHORIZED),
    ] {
        let resp = c
            .post(p.url("/mcp"))
            .header("x-forwarded-host", "mcp.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected);
    }

    // The trusted proxy's one host is believed; two, or a list, name no one host (the first
    // of them would be whatever the client sent before the proxy appended its own), and both
    // the lane and the general stack refuse them, with a token or without.
    let token = token_for(&trusted, "password:alice").await;
    let post = |hosts: &[&str], token: Option<&str>| {
        let mut req = c
            .post(trusted.url("/mcp"))
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        for h in hosts {
            req = req.header("x-forwarded-host", *h);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let one = post(&["mcp.example.com"], Some(&token)).await.unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    for hosts in [
        &["mcp.example.com", "mcp.example.com"][..],
        &["mcp.example.com", "evil.example"],
        &["mcp.example.com, evil.example"],
        &["evil.example,mcp.example.com"],
    ] {
        for token in [Some(token.as_str()), None] {
            let resp = post(hosts, token).await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{hosts:?}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(
                body["error"]["message"], "X-Forwarded-Host must name one host",
                "{hosts:?}"
            );
        }
    }
    // From anyone else the header is not read at all, however many there are.
    let resp = c
        .get(untrusted.url("/.well-known/oauth-protected-resource"))
        .header(header::HOST, "mcp.example.com")
        .header("x-forwarded-host", "a.example")
        .header("x-forwarded-host", "b.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
