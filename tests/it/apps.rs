//! "Your connected apps" (`/.auth/apps`): a signed-in person sees the apps they allowed and
//! takes access back; a revoked app's token is refused at once; nobody else's grant can be
//! revoked; forms need their CSRF token; "sign out everywhere" ends every browser session.

use reqwest::StatusCode;
use serde_json::Value;

use crate::flow::{Browser, OAuthClient, hidden, location};
use mcp_auth_proxy::clock::Clock;

use crate::helpers::{TestProxy, client, start_proxy, start_proxy_with, start_upstream};

/// The page's text, fetched with `browser`'s cookies (`None`: a redirect, with its target).
async fn apps_page(p: &TestProxy, browser: &Browser) -> Result<String, String> {
    let resp = browser.http.get(p.url("/.auth/apps")).send().await.unwrap();
    match resp.status() {
        StatusCode::OK => Ok(resp.text().await.unwrap()),
        StatusCode::SEE_OTHER => Err(location(&resp)),
        other => panic!("{other}: {:?}", resp.text().await),
    }
}

async fn mcp_status(p: &TestProxy, token: &str) -> StatusCode {
    client()
        .post(p.url("/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap()
        .status()
}

/// The grant id in the "Revoke" link of the app called `name`.
fn grant_of(page: &str, name: &str) -> String {
    let link = page
        .split("<a ")
        .find(|a| a.contains(&format!("aria-label=\"Revoke {name}\"")))
        .unwrap_or_else(|| panic!("no revoke link for {name}: {page}"));
    let at = link.find("grant=").unwrap() + "grant=".len();
    link[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn a_person_sees_their_apps_and_revoking_one_ends_its_token_at_once() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();

    // Not signed in: the sign-in page.
    let stranger = Browser::new();
    assert_eq!(
        apps_page(&p, &stranger).await,
        Err("/.auth/login".to_string())
    );

    let browser = Browser::new();
    let first = OAuthClient::register(&t, serde_json::json!({"client_name": "Claude Desktop", "redirect_uris": [crate::flow::REDIRECT]})).await;
    let second = OAuthClient::register(
        &t,
        serde_json::json!({"client_name": "Cursor", "redirect_uris": ["http://127.0.0.1:9/cb"]}),
    )
    .await;
    let token_first: Value = first.sign_in(&t, &browser).await;
    let token_second: Value = second.sign_in(&t, &browser).await;
    let access_first = token_first["access_token"].as_str().unwrap();
    let access_second = token_second["access_token"].as_str().unwrap();
    assert_eq!(mcp_status(&p, access_first).await, StatusCode::OK);

    let page = apps_page(&p, &browser).await.unwrap();
    for text in [
        "Claude Desktop",
        "Cursor",
        "127.0.0.1:33418",
        "127.0.0.1:9",
        "Use the tools, resources and prompts",
        "Last active",
    ] {
        assert!(page.contains(text), "{text}: {page}");
    }
    let grant = grant_of(&page, "Cursor");
    let confirm = browser
        .http
        .get(p.url(&format!("/.auth/apps/revoke?grant={grant}")))
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), StatusCode::OK);
    let confirm = confirm.text().await.unwrap();
    assert!(
        confirm.contains("Revoke <strong>Cursor</strong>?"),
        "{confirm}"
    );

    // The form needs its CSRF token.
    let forged = browser
        .http
        .post(p.url("/.auth/apps/revoke"))
        .form(&[("grant", grant.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        mcp_status(&p, access_second).await,
        StatusCode::OK,
        "nothing revoked by a forged form"
    );

    let done = browser
        .post_form(
            &t,
            "/.auth/apps/revoke",
            &confirm,
            &[("grant", grant.as_str())],
        )
        .await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/.auth/apps?done=revoked");
    // At once: the gate's cache does not keep it alive.
    assert_eq!(
        mcp_status(&p, access_second).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(mcp_status(&p, access_first).await, StatusCode::OK);
    let page = browser.follow(&t, &done).await;
    assert!(
        !page.contains("Cursor") && page.contains("Claude Desktop"),
        "{page}"
    );
    assert!(page.contains("Access revoked"), "{page}");
    // Its remembered consent went with it; the other app's stays.
    let consents = p
        .repo()
        .scan::<mcp_auth_proxy::store::ConsentRecord>(b"")
        .await
        .unwrap();
    let clients: Vec<&str> = consents.iter().map(|(_, c)| c.client_id.as_str()).collect();
    assert_eq!(clients, [first.id.as_str()]);
    // Its refresh token is gone too.
    let refreshed = crate::flow::refresh(
        &t,
        &second.id,
        token_second["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(refreshed.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn nobody_revokes_another_persons_app() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let browser = Browser::new();
    OAuthClient::public(&t).await.sign_in(&t, &browser).await;
    // Mallory's grant, as the authorization server stores one.
    let theirs = mcp_auth_proxy::store::GrantRecord {
        grant_id: "grant-of-mallory".into(),
        client_id: "client-1".into(),
        identity: mcp_auth_proxy::store::Identity {
            provider: "oidc".into(),
            user_id: "mallory".into(),
            email: None,
            name: None,
            groups: vec![],
            claims: Value::Null,
        },
        scopes: vec!["mcp".into()],
        resource: p.state.site().server.resource.clone(),
        created_at: 1,
        expires_at: u64::MAX / 2,
        jkt: None,
    };
    p.repo()
        .put(b"grant-of-mallory", &theirs, None)
        .await
        .unwrap();
    let confirm = browser
        .http
        .get(p.url("/.auth/apps/revoke?grant=grant-of-mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), StatusCode::NOT_FOUND);
    let page = apps_page(&p, &browser).await.unwrap();
    assert!(!page.contains("grant-of-mallory"), "{page}");
    let csrf_page = page.clone();
    let tried = browser
        .post_form(
            &t,
            "/.auth/apps/revoke",
            &csrf_page,
            &[("grant", "grant-of-mallory")],
        )
        .await;
    assert_eq!(tried.status(), StatusCode::NOT_FOUND);
    assert!(
        p.repo()
            .get::<mcp_auth_proxy::store::GrantRecord>(b"grant-of-mallory")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn sign_out_everywhere_ends_every_browser_session() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let (laptop, phone) = (Browser::new(), Browser::new());
    let token: Value = OAuthClient::public(&t).await.sign_in(&t, &laptop).await;
    OAuthClient::public(&t).await.sign_in(&t, &phone).await;
    let page = apps_page(&p, &laptop).await.unwrap();
    assert!(apps_page(&p, &phone).await.is_ok());
    assert!(hidden(&page, "csrf").is_some());
    let out = laptop
        .post_form(&t, "/.auth/apps/sign-out-everywhere", &page, &[])
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    for browser in [&laptop, &phone] {
        assert_eq!(
            apps_page(&p, browser).await,
            Err("/.auth/login".to_string())
        );
    }
    // The apps keep their access: that is what revoking is for.
    assert_eq!(
        mcp_status(&p, token["access_token"].as_str().unwrap()).await,
        StatusCode::OK
    );
}

/// An app signed in before the index by person existed (or through an older proxy on a
/// shared store) has no entry there, nor has the browser session it was approved in; the
/// proxy indexes both when it starts, so its person's page lists the app and "sign out
/// everywhere" ends the session.
#[tokio::test]
async fn grants_and_sessions_from_before_the_index_by_person_are_found_after_a_restart() {
    use mcp_auth_proxy::store::{Store, Table};

    let up = start_upstream().await;
    let upstream = up.url("/mcp");
    let p = start_proxy(&[&upstream]).await;
    let t = p.target();
    let app = OAuthClient::register(
        &t,
        serde_json::json!({"client_name": "Old App", "redirect_uris": [crate::flow::REDIRECT]}),
    )
    .await;
    app.sign_in(&t, &Browser::new()).await;
    let dir = p.stop().await;
    // What a store written before the index holds: the grant and the session, and nothing
    // under their person.
    {
        let store = crate::helpers::reopen_sled(dir.path());
        for table in [Table::PersonGrants, Table::PersonSessions] {
            let entries = store.scan_prefix(table, b"").await.unwrap();
            assert_eq!(entries.len(), 1, "the sign-in indexed it: {table:?}");
            for (key, _) in entries {
                store.take(table, &key).await.unwrap();
            }
        }
        store.flush().await.unwrap();
    }
    let p = start_proxy_with(&[&upstream], Clock::system(), dir).await;
    let listed: Vec<String> = p
        .repo()
        .grants_of("password:admin")
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.client_id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&app.id));
    assert_eq!(
        p.repo().sessions_of("password:admin").await.unwrap().len(),
        1
    );
}
