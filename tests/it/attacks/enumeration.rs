//! What a stranger can learn by asking: nothing about who or what exists.
//!
//! Password sign-in has no user names: the form asks for a password only, and the
//! verifier checks it against every accepted hash whichever matches (so the time does not
//! say which one did; `login::password::PasswordVerifier::verify`). Tested here structurally
//! (one field; every wrong password gets the same answer) and statistically with a wide
//! margin, never a tight timing bound on shared cores. Registrations and revocation answer
//! the same for what exists and what does not.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};

use crate::flow::{Browser, OAuthClient, hidden};
use crate::helpers::{TEST_PASSWORD, client, start_proxy};

/// The page without its per-request parts (the CSRF token), to compare answers.
fn without_tokens(html: &str) -> String {
    match hidden(html, "csrf") {
        Some(csrf) => html.replace(&csrf, "CSRF"),
        None => html.to_string(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn the_password_form_tells_nothing_but_wrong() {
    let p = start_proxy(&["--login-max-failures", "1000", "--rate-limit", "0"]).await;
    let t = p.target();
    let b = Browser::new();
    let page = b.http.get(t.url("/.auth/login")).send().await.unwrap();
    let html = page.text().await.unwrap();
    // One credential: a password. No user name, e-mail or account field to probe.
    assert_eq!(
        html.matches("<input").count() - html.matches("type=\"hidden\"").count(),
        1,
        "{html}"
    );
    assert!(html.contains("type=\"password\""));
    for field in [
        "name=\"user",
        "name=\"email",
        "type=\"email\"",
        "name=\"login\"",
    ] {
        assert!(!html.contains(field), "{field}: {html}");
    }
    let csrf = hidden(&html, "csrf").unwrap();
    let attempt = |password: String| {
        let form = [("password", password), ("csrf", csrf.clone())];
        let req = b.http.post(t.url("/.auth/login")).form(&form);
        async move {
            let started = Instant::now();
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            (status, without_tokens(&body), started.elapsed())
        }
    };
    // Wrong in every way: the same answer, word for word.
    let near = TEST_PASSWORD[..TEST_PASSWORD.len() - 1].to_string();
    let wrongs = [
        "wrong".to_string(),
        near.clone(),
        format!("{TEST_PASSWORD}x"),
        "x".repeat(200),
    ];
    let mut answers = Vec::new();
    for w in &wrongs {
        let (status, body, _) = attempt(w.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "answers differ");

    // Statistically (a wide margin): a wrong password near the right one, a wrong one far
    // from it and the right one cost the same bcrypt check.
    let (mut near_t, mut far_t, mut right_t) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        near_t.push(attempt(near.clone()).await.2);
        far_t.push(attempt("zzzzzzzzzzzzzzzz".into()).await.2);
        right_t.push(attempt(TEST_PASSWORD.into()).await.2);
    }
    let (n, f, r) = (median(near_t), median(far_t), median(right_t));
    eprintln!("medians: near {n:?}, far {f:?}, right {r:?}");
    for (a, b) in [(n, f), (n, r), (f, r)] {
        let ratio = a.as_secs_f64() / b.as_secs_f64();
        assert!(
            (0.33..3.0).contains(&ratio),
            "near {n:?}, far {f:?}, right {r:?}"
        );
    }
}

#[tokio::test]
async fn registrations_and_revocation_answer_alike_for_what_exists_and_what_does_not() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let c = OAuthClient::public(&t).await;
    let answer = |method: reqwest::Method, path: String| {
        let req = client()
            .request(method, t.url(&path))
            .bearer_auth("not-the-registration-token");
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let challenge = resp.headers().get(header::WWW_AUTHENTICATE).cloned();
            (status, challenge, resp.text().await.unwrap())
        }
    };
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let known = answer(method.clone(), format!("/register/{}", c.id)).await;
        let unknown = answer(method.clone(), "/register/no-such-client".into()).await;
        assert_eq!(known.0, StatusCode::UNAUTHORIZED);
        assert_eq!(known, unknown, "{method}");
    }
    // Revocation (RFC 7009 §2.2): 200 whether the token existed or not.
    let tokens = c.sign_in(&t, &Browser::new()).await;
    let revoke = |token: String| {
        let form = [("token", token), ("client_id", c.id.clone())];
        let req = client().post(t.url("/revoke")).form(&form);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let real = revoke(tokens["access_token"].as_str().unwrap().to_string()).await;
    let made_up = revoke("made-up-token".into()).await;
    assert_eq!(real.0, StatusCode::OK);
    assert_eq!(real, made_up);
}
