//! The metrics listener: it serves metrics and probes only, nothing an attacker sends can
//! add series to it (labels are fixed words, never paths, methods, hosts or client ids), and
//! nothing secret or personal is in it.

use reqwest::{Method, StatusCode};

use crate::flow::{Browser, OAuthClient};
use crate::helpers::{client, start_proxy, start_upstream};

/// The series in a scrape: every sample line.
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name))
        .collect()
}

#[tokio::test]
async fn the_metrics_listener_cannot_be_grown_or_read_for_secrets() {
    let up = start_upstream().await;
    let p = start_proxy(&["--metrics-listen", "127.0.0.1:0", &up.url("/mcp")]).await;
    let metrics = |path: &str| format!("http://{}{path}", p.metrics_addr.unwrap());
    let scrape = || async {
        client()
            .get(metrics("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };

    // Only metrics and probes there: none of the proxy's endpoints.
    for path in [
        "/mcp",
        "/token",
        "/authorize",
        "/register",
        "/.well-known/oauth-authorization-server",
        "/.auth/login",
    ] {
        let status = client().get(metrics(path)).send().await.unwrap().status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // And no metrics on the public listener.
    let public = client()
        .get(p.url("/metrics"))
        .send()
        .await
        .unwrap()
        .status();
    assert_ne!(public, StatusCode::OK);

    // Every kind of traffic once, so the series that exist exist.
    let t = p.target();
    let c = OAuthClient::public(&t).await;
    let tokens = c.sign_in(&t, &Browser::new()).await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    client()
        .post(p.url("/mcp"))
        .bearer_auth(&access)
        .body("{}")
        .send()
        .await
        .unwrap();
    client().get(p.url("/nope")).send().await.unwrap();
    let baseline = scrape().await;
    let before = series(&baseline).len();

    // Then 80 rounds of hostile requests: invented paths, methods, hosts, client ids, tokens.
    let methods = ["PURGE", "PROPFIND", "X-EVIL", "BREW"];
    for i in 0..80 {
        let method = Method::from_bytes(methods[i % methods.len()].as_bytes()).unwrap();
        let _ = client()
            .request(method, p.url(&format!("/evil-{i}/{}", "a".repeat(i % 50))))
            .bearer_auth(format!("forged-token-{i}"))
            .send()
            .await;
        let _ = client()
            .get(p.url("/mcp"))
            .header("host", format!("evil-{i}.example"))
            .send()
            .await;
        let _ = client()
            .post(p.url("/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", &format!("client-{i}")),
                ("code", "x"),
            ])
            .send()
            .await;
        let _ = client()
            .get(p.url(&format!("/.auth/provider-{i}/callback?state=s{i}")))
            .send()
            .await;
    }
    let after = scrape().await;
    let grown: Vec<&str> = series(&after)
        .into_iter()
        .filter(|s| !series(&baseline).contains(s))
        .collect();
    // New status codes of existing routes may appear (a handful); nothing per request.
    assert!(grown.len() <= 12, "{} new series: {grown:#?}", grown.len());
    assert!(series(&after).len() <= before + 12);
    for secret in [
        access.as_str(),
        tokens["refresh_token"].as_str().unwrap(),
        crate::helpers::TEST_PASSWORD,
        c.id.as_str(),
        "forged-token-",
        "evil-",
        "client-1",
        "provider-1",
        "PURGE",
    ] {
        assert!(!after.contains(secret), "{secret} is in the metrics");
    }
}
