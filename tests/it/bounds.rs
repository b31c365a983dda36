//! Hostile volume: what a stranger sends without signing in is bounded in size and count, so
//! a flood can neither fill the store nor crowd out real clients.

use reqwest::StatusCode;

use crate::flow::{Browser, OAuthClient, hidden};
use crate::helpers::Target;
use crate::helpers::{client, start_proxy};

#[tokio::test]
async fn an_anonymous_authorize_flood_cannot_fill_the_store() {
    // No per-IP rate limit here, so the pending-request budget itself is what holds.
    let p = start_proxy(&["--rate-limit", "0"]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let http = client();

    // A 30 kB state (or any oversized parameter) is refused, and nothing is stored.
    let huge = "s".repeat(30_000);
    let resp = http
        .get(oc.auth_url(&t, &[("state", &huge)]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("longer than"));

    // A flood of valid requests with the largest state: a bounded number is kept.
    let big = "s".repeat(mcp_auth_proxy::web::form::MAX_VALUE);
    let mut kept = 0;
    let mut refused = 0;
    for _ in 0..200 {
        let resp = http
            .get(oc.auth_url(&t, &[("state", &big)]))
            .send()
            .await
            .unwrap();
        match resp.status() {
            StatusCode::SEE_OTHER => kept += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(resp.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(kept, mcp_auth_proxy::oauth::pending::PER_CLIENT);
    assert_eq!(refused, 200 - kept);

    // With the per-IP limit on, /authorize is rate-limited like the other endpoints.
    let limited = start_proxy(&["--rate-limit", "3"]).await;
    let lt = limited.target();
    let loc = OAuthClient::public(&lt).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = http.get(loc.auth_url(&lt, &[])).send().await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    // The registration above took one of the three.
    assert_eq!(statuses, [303, 303, 429, 429, 429]);
}

#[tokio::test]
async fn registrations_are_bounded_field_by_field() {
    let p = start_proxy(&[]).await;
    let register = |doc: serde_json::Value| {
        let url = p.url("/register");
        async move { client().post(url).json(&doc).send().await.unwrap() }
    };
    let redirect = "http://127.0.0.1:9/cb";
    let contacts: Vec<String> = (0..4000).map(|i| format!("{i}@x")).collect();
    let long = format!("https://example.com/{}", "l".repeat(3000));
    let many_redirects: Vec<String> = (0..11)
        .map(|i| format!("http://127.0.0.1:{i}/cb"))
        .collect();
    for (doc, field) in [
        (
            serde_json::json!({"redirect_uris": [redirect], "contacts": contacts}),
            "contacts",
        ),
        (
            serde_json::json!({"redirect_uris": many_redirects}),
            "redirect_uris",
        ),
        (
            serde_json::json!({"redirect_uris": [redirect], "logo_uri": long}),
            "logo_uri",
        ),
        (
            serde_json::json!({"redirect_uris": [redirect], "jwks_uri": {"keys": [1, 2, 3]}}),
            "jwks_uri",
        ),
    ] {
        let resp = register(doc).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{field}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client_metadata", "{field}");
        assert!(
            body["error_description"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    // Ordinary metadata is still kept and echoed.
    let resp = register(serde_json::json!({
        "redirect_uris": [redirect], "contacts": ["a@example.com"], "logo_uri": "https://example.com/l.png"
    }))
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["contacts"], serde_json::json!(["a@example.com"]));
    assert_eq!(body["logo_uri"], "https://example.com/l.png");
}

#[tokio::test]
async fn a_parallel_burst_of_guesses_gets_only_the_allowed_attempts() {
    let p = start_proxy(&["--login-max-failures", "3"]).await;
    let t = p.target();
    let (b, csrf) = login_form(&t).await;
    // 20 guesses at once: each attempt is counted before its password is checked, so three
    // are checked (two answered 401, the third, which locks, 429) and the rest refused.
    let guesses = (0..20)
        .map(|i| {
            let form = [("password", format!("wrong {i}")), ("csrf", csrf.clone())];
            b.http.post(t.url("/.auth/login")).form(&form)
        })
        .collect();
    let statuses = crate::helpers::all_at_once(guesses).await;
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((wrong, locked), (2, 18), "{statuses:?}");
    // Locked now: even the right password is not checked.
    let right = sign_in(&b, &t, &csrf, crate::helpers::TEST_PASSWORD).await;
    assert_eq!(right, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_login_form_is_rate_limited() {
    let p = start_proxy(&["--rate-limit", "2", "--login-max-failures", "100"]).await;
    let t = p.target();
    let (b, csrf) = login_form(&t).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(sign_in(&b, &t, &csrf, "wrong").await.as_u16());
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
}

/// A browser that opened the login form, and the form's CSRF token.
async fn login_form(t: &Target) -> (Browser, String) {
    let b = Browser::new();
    let page = b.http.get(t.url("/.auth/login")).send().await.unwrap();
    let csrf = hidden(&page.text().await.unwrap(), "csrf").unwrap();
    (b, csrf)
}

/// The status of a password sign-in with `password`.
async fn sign_in(b: &Browser, t: &Target, csrf: &str, password: &str) -> StatusCode {
    let form = [("password", password), ("csrf", csrf)];
    let resp = b.http.post(t.url("/.auth/login")).form(&form).send().await;
    resp.unwrap().status()
}
