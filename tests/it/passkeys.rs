//! Passkeys over HTTP, answered by a software authenticator (`webauthn-authenticator-rs`'s
//! SoftPasskey, which checks the relying party as a browser does): added after a password
//! sign-in, then signing in alone; each challenge answered once; every ceremony request from
//! our own page only; failures counted toward the lockout; `--require-passkey`; a changed
//! password ending the passkeys added with the old one. (tests/e2e/passkeys.test.mjs does the
//! same in Chromium with its virtual authenticator.)

use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

use mcp_auth_proxy::clock::Clock;
use mcp_auth_proxy::store::{GrantRecord, PasskeyCeremonyRecord, PasskeyRecord};

use crate::flow::{Browser, OAuthClient, hidden, location, query, token};
use crate::helpers::{
    TEST_PASSWORD, Target, TestProxy, gate_status, start_proxy, start_proxy_with, start_upstream,
};

/// The CSRF token a page of ours carries (a form's hidden field or a button's data-csrf).
pub fn csrf_of(html: &str) -> String {
    if let Some(v) = hidden(html, "csrf") {
        return v;
    }
    let at = html.find("data-csrf=\"").expect("a CSRF token on the page") + "data-csrf=\"".len();
    html[at..].split('"').next().unwrap().replace("&#43;", "+")
}

/// A ceremony request as the pages' script sends it, to the proxy `t` names (its `Host`
/// the external one, as behind a load balancer).
pub async fn ceremony(
    t: &Target,
    browser: &Browser,
    csrf: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let resp = browser
        .http
        .post(t.url(path))
        .header("host", t.origin.trim_start_matches("http://"))
        .header("origin", &t.origin)
        .header("x-csrf-token", csrf)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A page of the proxy `t` names, asked for by its external `Host`.
async fn page(t: &Target, browser: &Browser, path: &str) -> String {
    let resp = browser
        .http
        .get(t.url(path))
        .header("host", t.origin.trim_start_matches("http://"))
        .send()
        .await
        .unwrap();
    resp.text().await.unwrap()
}

/// Adds a passkey to the password account `browser` is signed in as, the options asked of
/// `first` and the authenticator's answer given to `second` (two replicas, or one proxy
/// twice); the answer's status and body.
pub async fn register_at(
    first: &Target,
    second: &Target,
    browser: &Browser,
    key: &mut SoftPasskey,
    name: &str,
) -> (StatusCode, Value, Value) {
    // The browser's CSRF token is the same on every page; the sign-in page is open to every
    // sign-in, enrolment-only ones too.
    let csrf = csrf_of(&page(first, browser, "/.auth/login").await);
    let path = "/.auth/passkeys/register/options";
    let (status, options) = ceremony(first, browser, &csrf, path, &json!({ "name": name })).await;
    assert_eq!(status, StatusCode::OK, "{options}");
    let origin = Url::parse(&first.origin).unwrap();
    let created = key
        .do_registration(origin, serde_json::from_value(options.clone()).unwrap())
        .unwrap();
    let (status, answer) = ceremony(
        second,
        browser,
        &csrf,
        "/.auth/passkeys/register",
        &json!(created),
    )
    .await;
    (status, answer, options)
}

/// Signs `browser` in with the passkey for the pending request `req`, the options asked of
/// `first` and the answer given to `second`; the answer's status and body, and the assertion.
pub async fn sign_in_at(
    first: &Target,
    second: &Target,
    browser: &Browser,
    key: &mut SoftPasskey,
    req: Option<&str>,
) -> (StatusCode, Value, Value) {
    let csrf = csrf_of(&page(first, browser, "/.auth/login").await);
    let path = "/.auth/passkeys/sign-in/options";
    let (status, options) = ceremony(first, browser, &csrf, path, &json!({ "req": req })).await;
    assert_eq!(status, StatusCode::OK, "{options}");
    let origin = Url::parse(&first.origin).unwrap();
    let assertion = json!(
        key.do_authentication(origin, serde_json::from_value(options).unwrap())
            .unwrap()
    );
    let (status, answer) = ceremony(
        second,
        browser,
        &csrf,
        "/.auth/passkeys/sign-in",
        &assertion,
    )
    .await;
    (status, answer, assertion)
}

/// Adds a passkey named `name`, checking it was; returns the options.
async fn add_passkey(p: &TestProxy, browser: &Browser, key: &mut SoftPasskey, name: &str) -> Value {
    let t = p.target();
    let (status, added, options) = register_at(&t, &t, browser, key, name).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["added"], name);
    options
}

/// The authenticator, told it is on this proxy's page (it refuses another relying party).
fn page_origin(p: &TestProxy) -> Url {
    Url::parse(&p.target().origin).unwrap()
}

/// Starts an authorization for `c` in `browser`; returns its pending request id.
async fn pending_request(p: &TestProxy, browser: &Browser, c: &OAuthClient) -> String {
    let resp = browser
        .http
        .get(c.auth_url(&p.target(), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let login = Url::parse(&p.url(&location(&resp))).unwrap();
    query(&login, "req").expect("a pending request")
}

/// Approves the consent page at `next` and exchanges the code; returns the token response.
async fn consent_and_exchange(
    p: &TestProxy,
    browser: &Browser,
    c: &OAuthClient,
    next: &str,
) -> Value {
    let back = browser
        .authorize(&p.target(), &p.url(next), "unused", "approve")
        .await;
    let code = query(&back, "code").expect("a code");
    let resp = token(&p.target(), &c.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_passkey_added_after_a_password_sign_in_signs_in_alone_and_answers_each_challenge_once() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let mut key = SoftPasskey::new(true);

    // Nobody signed in may start adding one.
    let stranger = Browser::new();
    let login = stranger.text(&p.url("/.auth/login")).await;
    assert!(
        !login.contains("passkey-sign-in"),
        "no passkey to offer yet"
    );
    let (status, body) = ceremony(
        &p.target(),
        &stranger,
        &csrf_of(&login),
        "/.auth/passkeys/register/options",
        &json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("sign_in_first"))
    );

    let browser = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &browser).await;
    let options = add_passkey(&p, &browser, &mut key, "Laptop").await;
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost");
    assert_eq!(
        options["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    let stored = p.repo().scan::<PasskeyRecord>(b"").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].1.user.as_str(), stored[0].1.name.as_str()),
        ("admin", "Laptop")
    );
    assert!(browser.text(&p.url("/.auth/apps")).await.contains("Laptop"));

    // A new browser signs in with the passkey alone and approves a client.
    let fresh = Browser::new();
    let c = OAuthClient::public(&t).await;
    let req = pending_request(&p, &fresh, &c).await;
    assert!(
        fresh
            .text(&p.url(&format!("/.auth/login?req={req}")))
            .await
            .contains("Sign in with a passkey")
    );
    let (status, answer, assertion) = sign_in_at(&t, &t, &fresh, &mut key, Some(&req)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["next"], format!("/.auth/consent?req={req}"));
    let tokens = consent_and_exchange(&p, &fresh, &c, answer["next"].as_str().unwrap()).await;
    assert_ne!(
        gate_status(&t, tokens["access_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED
    );
    let grants = p.repo().scan::<GrantRecord>(b"").await.unwrap();
    assert!(
        grants.iter().any(|(_, g)| g.client_id == c.id
            && g.identity.claims["signed_in_with"] == "passkey"
            && g.identity.subject() == "password:admin"),
        "the grant says the passkey signed in"
    );
    let used = p.repo().scan::<PasskeyRecord>(b"").await.unwrap();
    assert!(used[0].1.last_used.is_some(), "its use is recorded");

    // The same answer again: its challenge was taken by the first.
    let login = fresh.text(&p.url("/.auth/login")).await;
    let (status, body) = ceremony(
        &p.target(),
        &fresh,
        &csrf_of(&login),
        "/.auth/passkeys/sign-in",
        &assertion,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ceremony_expired"))
    );
    assert!(
        p.repo()
            .scan::<PasskeyCeremonyRecord>(b"")
            .await
            .unwrap()
            .is_empty(),
        "no ceremony left behind"
    );

    // Another authenticator, never added, signs nobody in.
    let mut other = SoftPasskey::new(true);
    let stranger = Browser::new();
    let login = stranger.text(&p.url("/.auth/login")).await;
    let (status, options) = ceremony(
        &p.target(),
        &stranger,
        &csrf_of(&login),
        "/.auth/passkeys/sign-in/options",
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        other
            .do_authentication(page_origin(&p), serde_json::from_value(options).unwrap())
            .is_err(),
        "it holds none of the listed passkeys"
    );
}

#[tokio::test]
async fn ceremony_requests_come_only_from_our_own_page() {
    let p = start_proxy(&["http://127.0.0.1:9/mcp"]).await;
    let browser = Browser::new();
    let login = browser.text(&p.url("/.auth/login")).await;
    let csrf = csrf_of(&login);
    let origin = p.target().origin;
    let path = p.url("/.auth/passkeys/sign-in/options");
    let send = |headers: &[(&str, &str)], body: &'static str| {
        let mut req = browser.http.post(&path).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let json_type = ("content-type", "application/json");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'static str, StatusCode);
    let cases: Vec<Case<'_>> = vec![
        (
            "no Origin",
            vec![json_type, ("x-csrf-token", &csrf)],
            "{}",
            StatusCode::FORBIDDEN,
        ),
        (
            "another site's Origin",
            vec![
                json_type,
                ("origin", "https://evil.example"),
                ("x-csrf-token", &csrf),
            ],
            "{}",
            StatusCode::FORBIDDEN,
        ),
        (
            "no CSRF token",
            vec![json_type, ("origin", &origin)],
            "{}",
            StatusCode::FORBIDDEN,
        ),
        (
            "a forged CSRF token",
            vec![json_type, ("origin", &origin), ("x-csrf-token", "AAAA")],
            "{}",
            StatusCode::FORBIDDEN,
        ),
        (
            "a form, not JSON",
            vec![
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
                ("x-csrf-token", &csrf),
            ],
            "a=b",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "JSON that is not an object",
            vec![json_type, ("origin", &origin), ("x-csrf-token", &csrf)],
            "[1,2",
            StatusCode::BAD_REQUEST,
        ),
        (
            "two CSRF tokens",
            vec![
                json_type,
                ("origin", &origin),
                ("x-csrf-token", &csrf),
                ("x-csrf-token", &csrf),
            ],
            "{}",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, headers, body, want) in cases {
        let resp = send(&headers, body).await.unwrap();
        assert_eq!(resp.status(), want, "{what}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{what}");
    }
    // With everything right, there is simply no passkey yet.
    let resp = send(
        &[json_type, ("origin", &origin), ("x-csrf-token", &csrf)],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "no_passkey");
    assert!(
        p.repo()
            .scan::<PasskeyCeremonyRecord>(b"")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn failed_passkey_answers_count_toward_the_lockout() {
    let up = start_upstream().await;
    let p = start_proxy(&["--login-max-failures", "3", &up.url("/mcp")]).await;
    let t = p.target();
    let mut key = SoftPasskey::new(true);
    let owner = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &owner).await;
    add_passkey(&p, &owner, &mut key, "Phone").await;

    // Answers made on another origin: a page at localhost on another port (the same
    // relying-party id, so the authenticator answers) relaying our challenge.
    let attacker = Browser::new();
    let login = attacker.text(&p.url("/.auth/login")).await;
    let csrf = csrf_of(&login);
    let phishing = Url::parse("http://localhost:1").unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, options) = ceremony(
            &p.target(),
            &attacker,
            &csrf,
            "/.auth/passkeys/sign-in/options",
            &json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let options: webauthn_rs::prelude::RequestChallengeResponse =
            serde_json::from_value(options).unwrap();
        let assertion = key.do_authentication(phishing.clone(), options);
        let body = json!(assertion.expect("the authenticator answers for our relying party"));
        statuses.push(
            ceremony(
                &p.target(),
                &attacker,
                &csrf,
                "/.auth/passkeys/sign-in",
                &body,
            )
            .await
            .0,
        );
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn require_passkey_makes_the_password_add_the_first_passkey_and_nothing_else() {
    let up = start_upstream().await;
    let backend = up.url("/mcp");
    // A grant made with the password before the flag is ended when the flag comes.
    let p = start_proxy(&[&backend]).await;
    let t = p.target();
    let old = OAuthClient::public(&t)
        .await
        .sign_in(&t, &Browser::new())
        .await;
    let old_access = old["access_token"].as_str().unwrap().to_string();
    let dir = p.stop().await;
    let p = start_proxy_with(&["--require-passkey", &backend], Clock::system(), dir).await;
    let t = p.target();
    assert_eq!(
        gate_status(&t, &old_access).await,
        StatusCode::UNAUTHORIZED,
        "the password-only grant was revoked"
    );

    // The password signs in only to the page that adds a passkey.
    let browser = Browser::new();
    let c = OAuthClient::public(&t).await;
    let req = pending_request(&p, &browser, &c).await;
    let login = browser
        .text(&p.url(&format!("/.auth/login?req={req}")))
        .await;
    let resp = browser
        .post_form(&t, "/.auth/login", &login, &[("password", TEST_PASSWORD)])
        .await;
    assert_eq!(location(&resp), format!("/.auth/passkeys?req={req}"));
    for page in [
        format!("/.auth/consent?req={req}"),
        "/.auth/apps".to_string(),
    ] {
        let resp = browser.http.get(p.url(&page)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{page}");
        assert!(
            location(&resp).starts_with("/.auth/login"),
            "{page}: not for a password-only sign-in"
        );
    }
    let enrol = browser
        .text(&p.url(&format!("/.auth/passkeys?req={req}")))
        .await;
    assert!(enrol.contains("Add a passkey"));
    let mut key = SoftPasskey::new(true);
    let csrf = csrf_of(&enrol);
    let (status, added, _) = register_at(&t, &t, &browser, &mut key, "First").await;
    assert_eq!(status, StatusCode::OK, "{added}");

    // Now the password is refused even when right, and the form is gone.
    let login = browser
        .text(&p.url(&format!("/.auth/login?req={req}")))
        .await;
    assert!(!login.contains("name=\"password\""), "{login}");
    let resp = browser
        .post_form(
            &t,
            "/.auth/login",
            &login,
            &[
                ("password", TEST_PASSWORD),
                ("csrf", &csrf_of(&login)),
                ("req", &req),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("signs in with its passkey")
    );
    // A second passkey cannot be added by that password-only sign-in either.
    let (status, _) = ceremony(
        &p.target(),
        &browser,
        &csrf,
        "/.auth/passkeys/register/options",
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The passkey signs in and the client gets its token.
    let (status, answer, _) = sign_in_at(&t, &t, &browser, &mut key, Some(&req)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let tokens = consent_and_exchange(&p, &browser, &c, answer["next"].as_str().unwrap()).await;
    assert_ne!(
        gate_status(&t, tokens["access_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_changed_password_ends_the_passkeys_added_with_the_old_one() {
    let p = start_proxy(&["http://127.0.0.1:9/mcp"]).await;
    let t = p.target();
    let browser = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &browser).await;
    add_passkey(&p, &browser, &mut SoftPasskey::new(true), "Laptop").await;
    let dir = p.stop().await;

    let p = start_proxy_with(
        &[
            "--password",
            "another long passphrase",
            "http://127.0.0.1:9/mcp",
        ],
        Clock::system(),
        dir,
    )
    .await;
    assert!(
        p.repo()
            .scan::<PasskeyRecord>(b"")
            .await
            .unwrap()
            .is_empty()
    );
    let login = Browser::new().text(&p.url("/.auth/login")).await;
    assert!(!login.contains("passkey-sign-in"), "no passkey is offered");
}

#[tokio::test]
async fn require_passkey_refuses_to_start_where_browsers_cannot_use_passkeys() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    for (origin, says) in [
        ("http://127.0.0.1:8080", "host name (not an IP address)"),
        ("http://mcp.example.com", "https or http://localhost"),
    ] {
        let (code, stderr) = crate::helpers::run_binary(
            &[
                "--listen",
                "127.0.0.1:0",
                "--external-url",
                origin,
                "--password",
                TEST_PASSWORD,
                "--require-passkey",
                "--data-path",
                data,
                "http://127.0.0.1:9/mcp",
            ],
            &[],
        )
        .await;
        assert_ne!(code, Some(0), "{origin}");
        assert!(stderr.contains(says), "{origin}: {stderr}");
    }
}

#[tokio::test]
async fn a_client_may_keep_only_so_many_passkey_prompts_open() {
    use mcp_auth_proxy::login::passkey::CEREMONIES_PER_CLIENT;
    let p = start_proxy(&["--rate-limit", "0", "http://127.0.0.1:9/mcp"]).await;
    let t = p.target();
    let owner = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &owner).await;
    add_passkey(&p, &owner, &mut SoftPasskey::new(true), "Laptop").await;

    // Options nobody answers: each keeps a challenge in the store until it expires.
    let stranger = Browser::new();
    let csrf = csrf_of(&stranger.text(&p.url("/.auth/login")).await);
    let path = "/.auth/passkeys/sign-in/options";
    let mut opened = 1; // the registration's
    let refusal = loop {
        let (status, body) = ceremony(&t, &stranger, &csrf, path, &json!({})).await;
        if status != StatusCode::OK {
            break (status, body);
        }
        opened += 1;
        assert!(opened <= CEREMONIES_PER_CLIENT, "no bound");
    };
    assert_eq!(opened, CEREMONIES_PER_CLIENT);
    assert_eq!(
        (refusal.0, refusal.1["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_ceremonies"))
    );
    let stored = p.repo().scan::<PasskeyCeremonyRecord>(b"").await.unwrap();
    assert_eq!(
        stored.len(),
        CEREMONIES_PER_CLIENT - 1,
        "the registration's was taken by its answer"
    );
}
