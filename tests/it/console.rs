//! The operator console (`/.auth/admin`): an operator named by `--admin-users` sees live
//! sessions with their children, grants, clients and sign-in failures, and acts on them
//! (each action needs the CSRF token); anyone else gets 403 on the page and every action.

use reqwest::StatusCode;
use serde_json::Value;

use crate::flow::{Browser, OAuthClient, location};
use crate::helpers::{TestProxy, client};
use crate::stdio::{bridge_with, ready};

async fn console(p: &TestProxy, browser: &Browser) -> (StatusCode, String) {
    let resp = browser
        .http
        .get(p.url("/.auth/admin"))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// Posts an action with the console page's CSRF token.
async fn act(
    p: &TestProxy,
    browser: &Browser,
    page: &str,
    action: &str,
    target: &str,
) -> reqwest::Response {
    browser
        .post_form(
            &p.target(),
            "/.auth/admin",
            page,
            &[("action", action), ("target", target)],
        )
        .await
}

async fn mcp_status(p: &TestProxy, token: &str, sid: &str) -> StatusCode {
    crate::stdio::session_post(
        &p.url("/mcp"),
        token,
        sid,
        &serde_json::json!({"jsonrpc":"2.0","id":9,"method":"ping"}),
    )
    .send()
    .await
    .unwrap()
    .status()
}

/// The password user signed in through a client of its own (the browser, the client, its
/// access token) with an initialized MCP session (its id).
async fn signed_in_with_session(p: &TestProxy) -> (Browser, OAuthClient, String, String) {
    let t = p.target();
    let browser = Browser::new();
    let app = OAuthClient::public(&t).await;
    let token: Value = app.sign_in(&t, &browser).await;
    let token = token["access_token"].as_str().unwrap().to_string();
    let sid = ready(p, &token).await;
    (browser, app, token, sid)
}

/// Two wrong passwords from this address.
async fn fail_twice(p: &TestProxy) {
    let b = Browser::new();
    for _ in 0..2 {
        let login = b.text(&p.url("/.auth/login")).await;
        b.post_form(
            &p.target(),
            "/.auth/login",
            &login,
            &[("password", "wrong")],
        )
        .await;
    }
}

#[tokio::test]
async fn an_operator_sees_sessions_grants_clients_and_failures_and_acts_on_them() {
    let logs = tempfile::tempdir().unwrap();
    let audit = logs.path().join("audit.jsonl");
    let p = bridge_with(&[
        "--admin-users",
        "password:admin",
        "--audit-log",
        audit.to_str().unwrap(),
    ])
    .await;
    let (browser, app, token, sid) = signed_in_with_session(&p).await;
    fail_twice(&p).await;

    let (status, page) = console(&p, &browser).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let pid = page
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .expect("the child's pid")
        .to_string();
    for text in [
        sid.as_str(),
        "password:admin",
        "Test Client",
        app.id.as_str(),
        "MiB",
        "127.0.0.1",
        "Attempts",
    ] {
        assert!(page.contains(text), "{text}: {page}");
    }
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // Without the CSRF token nothing happens.
    let forged = browser
        .http
        .post(p.url("/.auth/admin"))
        .form(&[("action", "end-session"), ("target", sid.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(mcp_status(&p, &token, &sid).await, StatusCode::OK);

    // End the session: its child is stopped.
    let done = act(&p, &browser, &page, "end-session", &sid).await;
    assert_eq!(location(&done), "/.auth/admin?done=end-session");
    crate::helpers::wait_until(
        || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the child to exit",
    )
    .await;
    assert_eq!(mcp_status(&p, &token, &sid).await, StatusCode::NOT_FOUND);

    // Unlock the address.
    let done = act(&p, &browser, &page, "unlock-ip", "127.0.0.1").await;
    assert_eq!(location(&done), "/.auth/admin?done=unlock-ip");
    let (_, page) = console(&p, &browser).await;
    assert!(page.contains("Sign-in failures and lockouts (0)"), "{page}");

    // Revoke the grant: its token stops at once.
    let grant = page
        .split("name=\"action\" value=\"revoke-grant\"")
        .nth(1)
        .and_then(|rest| rest.split("name=\"target\" value=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let sid2 = ready(&p, &token).await;
    let done = act(&p, &browser, &page, "revoke-grant", &grant).await;
    assert_eq!(location(&done), "/.auth/admin?done=revoke-grant");
    assert_eq!(
        mcp_status(&p, &token, &sid2).await,
        StatusCode::UNAUTHORIZED
    );

    // Delete the client.
    let done = act(&p, &browser, &page, "delete-client", &app.id).await;
    assert_eq!(location(&done), "/.auth/admin?done=delete-client");
    let (_, page) = console(&p, &browser).await;
    assert!(!page.contains(app.id.as_str()), "{page}");
    assert!(
        p.repo()
            .get::<mcp_auth_proxy::store::ClientRecord>(app.id.as_bytes())
            .await
            .unwrap()
            .is_none()
    );

    // Every action is in the audit log, as its operator's.
    crate::helpers::wait_until(
        || {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .count()
                >= 4
        },
        "four audit records",
    )
    .await;
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "admin/end-session",
            "admin/unlock-ip",
            "admin/revoke-grant",
            "admin/delete-client"
        ]
    );
    assert!(records.iter().all(|r| r["user"] == "password:admin"));

    // A target that is gone: a readable 404, nothing else.
    let gone = act(&p, &browser, &page, "end-session", &sid).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn everyone_else_gets_403_on_the_console_and_every_action() {
    let p = bridge_with(&["--admin-users", "oidc:the-operator"]).await;
    let (browser, app, token, sid) = signed_in_with_session(&p).await;

    // Nobody signed in: the sign-in page.
    let anonymous = client().get(p.url("/.auth/admin")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);

    let (status, page) = console(&p, &browser).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        page.contains("Not allowed") && !page.contains(sid.as_str()),
        "{page}"
    );
    // The CSRF token of another page of ours, so only the operator check can refuse.
    let apps = browser.text(&p.url("/.auth/apps")).await;
    for (action, target) in [
        ("end-session", sid.as_str()),
        ("revoke-grant", "any"),
        ("delete-client", app.id.as_str()),
        ("unlock-ip", "127.0.0.1"),
        ("remove-passkey", "AAAA"),
    ] {
        let refused = act(&p, &browser, &apps, action, target).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{action}");
    }
    assert_eq!(
        mcp_status(&p, &token, &sid).await,
        StatusCode::OK,
        "nothing was done"
    );
}

#[tokio::test]
async fn an_operator_sees_and_ends_the_sessions_of_an_http_upstream() {
    let up = crate::helpers::start_upstream().await;
    let p =
        crate::helpers::start_proxy(&["--admin-users", "password:admin", &up.url("/mcp")]).await;
    let t = p.target();
    let browser = Browser::new();
    let token: Value = OAuthClient::public(&t).await.sign_in(&t, &browser).await;
    let token = token["access_token"].as_str().unwrap().to_string();
    let init = client()
        .post(p.url("/mcp"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#)
        .send()
        .await
        .unwrap();
    let sid = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let ping = || {
        client()
            .post(p.url("/mcp"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("mcp-session-id", &sid)
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
            .send()
    };
    assert_eq!(ping().await.unwrap().status(), StatusCode::OK);

    let (status, page) = console(&p, &browser).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("the HTTP upstream&#39;s") || page.contains("the HTTP upstream's"),
        "{page}"
    );
    let target = page
        .split("value=\"upstream:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|hash| format!("upstream:{hash}"))
        .expect("the upstream session's row");
    assert!(
        !page.contains(&sid),
        "the session id itself is never shown (the proxy keeps its hash)"
    );
    let resp = act(&p, &browser, &page, "end-session", &target).await;
    assert_eq!(location(&resp), "/.auth/admin?done=end-session");
    assert_eq!(
        ping().await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "the client must start a new session"
    );
    let resp = act(&p, &browser, &page, "end-session", &target).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "ended already");
}

#[tokio::test]
async fn an_operator_removes_a_passkey_of_the_password_account() {
    let p =
        crate::helpers::start_proxy(&["--admin-users", "password:admin", "http://127.0.0.1:9/mcp"])
            .await;
    let t = p.target();
    let browser = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &browser).await;
    let mut key = webauthn_authenticator_rs::softpasskey::SoftPasskey::new(true);
    let (status, _, _) =
        crate::passkeys::register_at(&t, &t, &browser, &mut key, "Lost phone").await;
    assert_eq!(status, StatusCode::OK);

    let (_, page) = console(&p, &browser).await;
    assert!(page.contains("Lost phone"), "{page}");
    let target = page
        .split("name=\"action\" value=\"remove-passkey\">")
        .nth(1)
        .and_then(|rest| rest.split("value=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("the passkey's row")
        .to_string();
    let resp = act(&p, &browser, &page, "remove-passkey", &target).await;
    assert_eq!(location(&resp), "/.auth/admin?done=remove-passkey");
    assert!(
        p.repo()
            .scan::<mcp_auth_proxy::store::PasskeyRecord>(b"")
            .await
            .unwrap()
            .is_empty()
    );
    let (status, _, _) =
        crate::passkeys::register_at(&t, &t, &browser, &mut key, "New phone").await;
    assert_eq!(status, StatusCode::OK, "a new one can be added");
    let resp = act(&p, &browser, &page, "remove-passkey", &target).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "removed already");
}
