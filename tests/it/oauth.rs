//! The authorization server, end to end over HTTP: every endpoint and its failure paths.

use mcp_auth_proxy::clock::Clock;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::flow::{Browser, OAuthClient, REDIRECT, hidden, location, query, refresh, token};
use crate::helpers::{
    BinarySite, TEST_PASSWORD, TestProxy, Upstream, client, gate_status, start_proxy,
    start_proxy_with, start_proxy_with_secrets, start_upstream,
};

const START: u64 = 1_900_000_000;

/// Changes to a token request, and the status and error they must get.
type TokenRow<'a> = (Vec<(&'a str, &'a str)>, StatusCode, &'a str);

async fn json_error(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn the_whole_flow_register_login_consent_token_gate_refresh_revoke() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let c = client();

    // Discovery, as a client does it: 401 → resource metadata → AS metadata.
    let resp = c.post(t.url("/mcp")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let prm: Value =
        crate::helpers::get_json(t.url("/.well-known/oauth-protected-resource/mcp")).await;
    let issuer = prm["authorization_servers"][0].as_str().unwrap();
    assert_eq!(issuer, t.origin);
    let asm: Value =
        crate::helpers::get_json(t.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(asm["issuer"], issuer);
    assert_eq!(asm["registration_endpoint"], format!("{issuer}/register"));

    let oc = OAuthClient::public(&t).await;
    assert_eq!(oc.registration["token_endpoint_auth_method"], "none");
    assert!(oc.secret.is_none());
    assert!(
        oc.registration["registration_client_uri"]
            .as_str()
            .unwrap()
            .starts_with(issuer)
    );

    let browser = Browser::new();
    let back = browser
        .authorize(&t, &oc.auth_url(&t, &[]), TEST_PASSWORD, "approve")
        .await;
    assert!(back.as_str().starts_with(REDIRECT), "{back}");
    assert_eq!(query(&back, "state").as_deref(), Some("st-123"));
    assert_eq!(query(&back, "iss").as_deref(), Some(issuer));
    let code = query(&back, "code").unwrap();

    let resp = token(&t, &oc.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    let tokens: Value = resp.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "mcp offline_access");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    assert!(access.len() >= 43 + 6);

    // The gate opens, and the upstream never sees our token.
    let echo: Value = c
        .post(t.url("/mcp"))
        .bearer_auth(access)
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/mcp");
    assert!(echo["headers"].get("authorization").is_none());

    // The identity is stored with the grant.
    let grants = p
        .repo()
        .scan::<mcp_auth_proxy::store::GrantRecord>(b"")
        .await
        .unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].1.identity.subject(), "password:admin");
    assert_eq!(grants[0].1.client_id, oc.id);

    // Refresh rotates.
    let resp = refresh(&t, &oc.id, refresh_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let next: Value = resp.json().await.unwrap();
    let access2 = next["access_token"].as_str().unwrap();
    assert_ne!(access2, access);
    assert_ne!(next["refresh_token"], tokens["refresh_token"]);
    let ok = c
        .post(t.url("/mcp"))
        .bearer_auth(access2)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // Revoking the refresh token ends the family at once, access tokens included.
    let resp = c
        .post(t.url("/revoke"))
        .form(&[
            ("token", next["refresh_token"].as_str().unwrap()),
            ("client_id", &oc.id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for a in [access, access2] {
        let resp = c
            .post(t.url("/mcp"))
            .bearer_auth(a)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = refresh(&t, &oc.id, next["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        json_error(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
}

#[tokio::test]
async fn metadata_advertises_exactly_what_exists() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let resp = client()
        .get(t.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let m: Value = resp.json().await.unwrap();
    let o = &t.origin;
    assert_eq!(m["issuer"], *o);
    assert_eq!(m["authorization_endpoint"], format!("{o}/authorize"));
    assert_eq!(m["token_endpoint"], format!("{o}/token"));
    assert_eq!(m["revocation_endpoint"], format!("{o}/revoke"));
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(
        m["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!(["none", "client_secret_post", "client_secret_basic"])
    );
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
    assert_eq!(m["scopes_supported"], json!(["mcp", "offline_access"]));
    assert_eq!(m["client_id_metadata_document_supported"], true);
    for absent in ["jwks_uri", "introspection_endpoint"] {
        assert!(m.get(absent).is_none(), "{absent} must not be advertised");
    }
    let suffixed: Value =
        crate::helpers::get_json(t.url("/.well-known/oauth-authorization-server/mcp")).await;
    assert_eq!(suffixed, m);
    let oidc = client()
        .get(t.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_ne!(
        oidc.status(),
        StatusCode::OK,
        "no OpenID document until it would be complete"
    );
}

#[tokio::test]
async fn registration_accepts_real_clients_and_refuses_bad_metadata() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let c = client();
    let ok_rows = [
        // VS Code: no token_endpoint_auth_method.
        json!({"client_name": "Visual Studio Code", "redirect_uris": ["http://127.0.0.1:33418/", "https://vscode.dev/redirect"], "grant_types": ["authorization_code", "refresh_token"]}),
        // Cursor: three URIs in one registration, one of them its own scheme.
        json!({"client_name": "Cursor", "redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback", "http://localhost:1234/callback", "https://cursor.com/cb"]}),
        // Claude.ai: a confidential client with client_secret_post.
        json!({"client_name": "claudeai", "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"], "token_endpoint_auth_method": "client_secret_post", "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"], "scope": "mcp"}),
        json!({"redirect_uris": ["http://localhost:6274/oauth/callback"], "application_type": "native", "client_uri": "https://example.org"}),
    ];
    for doc in ok_rows {
        let resp = c.post(t.url("/register")).json(&doc).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{doc}");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let reg: Value = resp.json().await.unwrap();
        assert_eq!(reg["redirect_uris"], doc["redirect_uris"]);
        assert!(reg["client_id_issued_at"].as_u64().unwrap() > 0);
        assert!(reg["registration_client_uri"].is_string());
        assert!(reg["registration_access_token"].is_string());
        let confidential = doc["token_endpoint_auth_method"] == "client_secret_post";
        assert_eq!(reg["client_secret"].is_string(), confidential, "{reg}");
        assert_eq!(
            reg["client_secret_expires_at"].is_number(),
            confidential,
            "{reg}"
        );
        if let Some(uri) = doc.get("client_uri") {
            assert_eq!(&reg["client_uri"], uri);
        }
    }

    let bad_rows: Vec<(Value, &str)> = vec![
        (json!({}), "invalid_redirect_uri"),
        (json!({"redirect_uris": []}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": ["http://example.com/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["data:text/html,x"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["file:///etc/passwd"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb#f"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb", "evil://x/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": "https://a.example/cb"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "client_name": 5}),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ];
    for (doc, expected) in bad_rows {
        let resp = c.post(t.url("/register")).json(&doc).send().await.unwrap();
        assert_eq!(
            json_error(resp).await,
            (StatusCode::BAD_REQUEST, expected.to_string()),
            "{doc}"
        );
    }
    let resp = c
        .post(t.url("/register"))
        .body("{not json")
        .header(header::CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_error(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_client_metadata".into())
    );
    // A name given twice (serde_json would keep the last, other readers the first).
    let twice = r#"{"redirect_uris": ["https://evil.example/cb"], "redirect_uris": ["https://a.example/cb"]}"#;
    let resp = c
        .post(t.url("/register"))
        .body(twice)
        .header(header::CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client_metadata");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("twice"),
        "{body}"
    );
    let resp = c
        .post(t.url("/register"))
        .form(&[("redirect_uris", "https://a/cb")])
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(resp).await.0, StatusCode::BAD_REQUEST);
    let huge =
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(100_000)});
    let resp = c.post(t.url("/register")).json(&huge).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn registration_can_be_read_and_deleted_with_its_token_and_expires_unused() {
    let clock = Clock::manual(START);
    let p = start_proxy_with(
        &["--client-ttl", "1h"],
        clock.clone(),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let t = p.target();
    let c = client();
    let oc = OAuthClient::public(&t).await;
    let uri = oc.registration["registration_client_uri"]
        .as_str()
        .unwrap()
        .replace(&t.origin, &t.base);
    let rat = oc.registration["registration_access_token"]
        .as_str()
        .unwrap();
    let read: Value = client()
        .get(&uri)
        .bearer_auth(rat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["client_id"], oc.id.as_str());
    assert!(read.get("registration_access_token").is_none());
    assert_eq!(
        c.get(&uri)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.get(&uri).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Unused for longer than --client-ttl: gone.
    let stale = OAuthClient::public(&t).await;
    clock.advance(3601);
    let resp = Browser::new()
        .http
        .get(stale.auth_url(&t, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("not registered"));

    let fresh = OAuthClient::public(&t).await;
    let uri = fresh.registration["registration_client_uri"]
        .as_str()
        .unwrap()
        .replace(&t.origin, &t.base);
    let rat = fresh.registration["registration_access_token"]
        .as_str()
        .unwrap();
    assert_eq!(
        c.delete(&uri)
            .bearer_auth(rat)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get(&uri).bearer_auth(rat).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn authorize_errors_before_the_redirect_uri_is_trusted_are_pages() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let b = Browser::new();
    let rows: Vec<(String, &str)> = vec![
        (
            oc.auth_url(&t, &[("client_id", "")]),
            "client_id is missing",
        ),
        (oc.auth_url(&t, &[("client_id", "nope")]), "not registered"),
        (
            oc.auth_url(&t, &[("redirect_uri", "https://evil.example/cb")]),
            "did not register",
        ),
        (
            oc.auth_url(&t, &[("redirect_uri", "http://127.0.0.1:33418/other")]),
            "did not register",
        ),
        (
            format!("{}&state=again", oc.auth_url(&t, &[])),
            "is repeated",
        ),
    ];
    for (url, text) in rows {
        let resp = b.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(resp.headers().get(header::LOCATION).is_none());
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = resp.text().await.unwrap();
        assert!(html.contains(text), "{url}: {html}");
    }
}

#[tokio::test]
async fn authorize_errors_after_the_redirect_uri_is_trusted_go_back_to_the_client() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let b = Browser::new();
    let rows: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge", "too-short")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("response_type", "")], "unsupported_response_type"),
        (
            vec![("resource", "https://other.example/mcp")],
            "invalid_target",
        ),
        (vec![("prompt", "none")], "login_required"),
    ];
    for (changes, expected) in rows {
        let resp = b.http.get(oc.auth_url(&t, &changes)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{changes:?}");
        let loc = url::Url::parse(&location(&resp)).unwrap();
        assert!(loc.as_str().starts_with(REDIRECT));
        assert_eq!(
            query(&loc, "error").as_deref(),
            Some(expected),
            "{changes:?}"
        );
        assert_eq!(query(&loc, "state").as_deref(), Some("st-123"));
        assert_eq!(query(&loc, "iss").as_deref(), Some(t.origin.as_str()));
        assert!(query(&loc, "code").is_none());
    }
    // Accepted variations: no scope, no resource, resource with a trailing slash or upper-case
    // host, loopback redirect on another port.
    let other_port = "http://127.0.0.1:50505/callback";
    let upper = t.resource.replace("localhost", "LOCALHOST") + "/";
    for changes in [
        vec![("scope", "")],
        vec![("resource", "")],
        vec![("resource", upper.as_str())],
        vec![("redirect_uri", other_port)],
    ] {
        let back = Browser::new()
            .authorize(&t, &oc.auth_url(&t, &changes), TEST_PASSWORD, "approve")
            .await;
        assert!(query(&back, "code").is_some(), "{changes:?} → {back}");
    }
}

#[tokio::test]
async fn the_token_endpoint_refuses_every_mismatch() {
    let clock = Clock::manual(START);
    let p = start_proxy_with(&[], clock.clone(), tempfile::tempdir().unwrap()).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let other = OAuthClient::public(&t).await;
    let b = Browser::new();
    let fresh_code = || async {
        let back = b
            .authorize(&t, &oc.auth_url(&t, &[]), TEST_PASSWORD, "approve")
            .await;
        query(&back, "code").unwrap()
    };
    let wrong_verifier = "x".repeat(50);
    let rows: Vec<TokenRow> = vec![
        (
            vec![("code_verifier", wrong_verifier.as_str())],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("code_verifier", "")],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("code_verifier", "short")],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("redirect_uri", "http://127.0.0.1:33418/other")],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("redirect_uri", "")],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("client_id", other.id.as_str())],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("client_id", "unknown")],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("client_id", "")],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            vec![("grant_type", "password")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![("code", "")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            vec![("code", "mcpac_forged")],
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            vec![("resource", "https://other.example/mcp")],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            vec![("client_secret", "anything")],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
    ];
    for (changes, status, error) in rows {
        let code = fresh_code().await;
        let resp = token(&t, &oc.code_params(&code, &changes)).await;
        assert_eq!(
            json_error(resp).await,
            (status, error.to_string()),
            "{changes:?}"
        );
    }

    // Expired: the code lives --auth-code-ttl (60 s).
    let code = fresh_code().await;
    clock.advance(61);
    let resp = token(&t, &oc.code_params(&code, &[])).await;
    assert_eq!(
        json_error(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );

    // Strict form parsing: a repeated parameter, or not a form at all.
    let code = fresh_code().await;
    let mut params = oc.code_params(&code, &[]);
    params.push(("code".into(), code.clone()));
    assert_eq!(
        json_error(token(&t, &params).await).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let resp = client()
        .post(t.url("/token"))
        .json(&json!({"grant_type": "authorization_code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_error(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    // The code survived those malformed requests and still works once.
    let resp = token(&t, &oc.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A public client and a code for it, after a sign-in and an approval.
async fn code_for_a_new_client(t: &crate::helpers::Target) -> (OAuthClient, String) {
    let oc = OAuthClient::public(t).await;
    let back = Browser::new()
        .authorize(t, &oc.auth_url(t, &[]), TEST_PASSWORD, "approve")
        .await;
    let code = query(&back, "code").unwrap();
    (oc, code)
}

#[tokio::test]
async fn a_replayed_code_revokes_what_it_issued() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let (oc, code) = code_for_a_new_client(&t).await;
    let first: Value = token(&t, &oc.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(gate_status(&t, access).await, StatusCode::OK);

    let replay = token(&t, &oc.code_params(&code, &[])).await;
    assert_eq!(
        json_error(replay).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(gate_status(&t, access).await, StatusCode::UNAUTHORIZED);
    let resp = refresh(&t, &oc.id, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(json_error(resp).await.1, "invalid_grant");
}

#[tokio::test]
async fn a_code_redeemed_many_times_at_once_leaves_no_live_token() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let (oc, code) = code_for_a_new_client(&t).await;
    // Ten redemptions race: one may win, every other is a replay, and a replay revokes
    // what the code issued, whenever it lands (even between the win and the tokens).
    let mut racers = Vec::new();
    for _ in 0..10 {
        let (t, params) = (t.clone(), oc.code_params(&code, &[]));
        racers.push(tokio::spawn(async move {
            token(&t, &params).await.json::<Value>().await.unwrap()
        }));
    }
    let mut issued = Vec::new();
    for r in racers {
        let answer = r.await.unwrap();
        if let Some(a) = answer["access_token"].as_str() {
            issued.push(a.to_string());
        }
    }
    assert!(issued.len() <= 1, "{issued:?}");
    for access in issued {
        let status = gate_status(&t, &access).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "a replayed code's token still works"
        );
    }
}

/// A proxy in front of `up` whose clock the test moves.
async fn proxy_on_a_manual_clock(up: &Upstream) -> (TestProxy, Clock) {
    let clock = Clock::manual(START);
    let dir = tempfile::tempdir().unwrap();
    let p = start_proxy_with(&[&up.url("/mcp")], clock.clone(), dir).await;
    (p, clock)
}

#[tokio::test]
async fn refresh_rotation_grace_and_family_revocation() {
    let up = start_upstream().await;
    let (p, clock) = proxy_on_a_manual_clock(&up).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let b = Browser::new();
    let first = oc.sign_in(&t, &b).await;
    let r1 = first["refresh_token"].as_str().unwrap();

    let second: Value = refresh(&t, &oc.id, r1).await.json().await.unwrap();
    // Within the grace period the old token returns the same pair (two tabs refreshing).
    let again: Value = refresh(&t, &oc.id, r1).await.json().await.unwrap();
    assert_eq!(again, second);
    // Refresh without scope keeps the scopes; a narrower scope is allowed, a wider one is not.
    assert_eq!(second["scope"], "mcp offline_access");
    let r2 = second["refresh_token"].as_str().unwrap();
    let params = |scope: &str| {
        vec![
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".to_string(), r2.to_string()),
            ("client_id".to_string(), oc.id.clone()),
            ("scope".to_string(), scope.to_string()),
        ]
    };
    let wider = token(&t, &params("mcp admin")).await;
    assert_eq!(
        json_error(wider).await,
        (StatusCode::BAD_REQUEST, "invalid_scope".into())
    );
    // Another client cannot use it.
    let thief = OAuthClient::public(&t).await;
    assert_eq!(
        json_error(refresh(&t, &thief.id, r2).await).await.1,
        "invalid_grant"
    );

    // Using the successor ends the old token's grace: reusing the old one now is theft.
    let third: Value = token(&t, &params("mcp")).await.json().await.unwrap();
    assert_eq!(third["scope"], "mcp");
    let a3 = third["access_token"].as_str().unwrap();
    assert_eq!(gate_status(&t, a3).await, StatusCode::OK);
    let reuse = refresh(&t, &oc.id, r1).await;
    assert_eq!(
        json_error(reuse).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(
        gate_status(&t, a3).await,
        StatusCode::UNAUTHORIZED,
        "the whole family is revoked"
    );
    assert_eq!(
        json_error(refresh(&t, &oc.id, third["refresh_token"].as_str().unwrap()).await)
            .await
            .1,
        "invalid_grant"
    );

    // Past the grace period, reuse is theft too.
    let fresh = oc.sign_in(&t, &b).await;
    let f1 = fresh["refresh_token"].as_str().unwrap();
    let f2: Value = refresh(&t, &oc.id, f1).await.json().await.unwrap();
    clock.advance(31);
    assert_eq!(
        json_error(refresh(&t, &oc.id, f1).await).await.1,
        "invalid_grant"
    );
    assert_eq!(
        json_error(refresh(&t, &oc.id, f2["refresh_token"].as_str().unwrap()).await)
            .await
            .1,
        "invalid_grant"
    );

    // Access tokens expire after --access-token-ttl; refresh tokens after --refresh-token-ttl.
    let later = oc.sign_in(&t, &b).await;
    clock.advance(3601);
    let a = later["access_token"].as_str().unwrap();
    assert_eq!(gate_status(&t, a).await, StatusCode::UNAUTHORIZED);
    clock.advance(30 * 86_400);
    assert_eq!(
        json_error(refresh(&t, &oc.id, later["refresh_token"].as_str().unwrap()).await)
            .await
            .1,
        "invalid_grant"
    );
}

/// A new public client signed in and refreshed once: the client and the two token answers.
async fn signed_in_and_refreshed(t: &crate::helpers::Target) -> (OAuthClient, Value, Value) {
    let oc = OAuthClient::public(t).await;
    let first = oc.sign_in(t, &Browser::new()).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let second: Value = refresh(t, &oc.id, r1).await.json().await.unwrap();
    (oc, first, second)
}

/// A rotated refresh token is kept for its grant's life (its reuse ends the family), but what
/// it answers within the grace period is kept apart and only for that period; a rotated
/// token written with its answer inside (by an older release) still answers within it.
#[tokio::test]
async fn a_rotated_refresh_tokens_answer_lives_only_for_the_grace_period() {
    use mcp_auth_proxy::store::{RotationAnswer, TokenHash, TokenRecord};
    let up = start_upstream().await;
    let (p, clock) = proxy_on_a_manual_clock(&up).await;
    let (t, repo) = (p.target(), p.repo());
    let (oc, first, second) = signed_in_and_refreshed(&t).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let r2 = second["refresh_token"].as_str().unwrap();

    let token = |r: &str| {
        let hash = TokenHash::of(r).0;
        async move { repo.get::<TokenRecord>(&hash).await.unwrap().unwrap() }
    };
    let rotated = token(r1).await;
    let rotation = rotated.rotation.clone().unwrap();
    assert!(
        rotation.sealed_response.is_empty(),
        "the answer is kept apart"
    );
    assert_eq!(rotation.successor_hash, TokenHash::of(r2).0);
    assert!(rotated.identity.is_none() && token(r2).await.identity.is_none());
    let answer = || async {
        repo.get::<RotationAnswer>(&rotation.successor_hash)
            .await
            .unwrap()
    };
    assert!(answer().await.is_some());
    // In the grace period's last second (`--refresh-grace 30s`), still the same pair.
    clock.advance(30);
    let again: Value = refresh(&t, &oc.id, r1).await.json().await.unwrap();
    assert_eq!(again, second, "the same pair within the grace period");
    clock.advance(1);
    assert!(answer().await.is_none(), "gone with the grace period");
    assert!(
        token(r1).await.rotation.is_some(),
        "the rotated token stays"
    );

    // An older release kept the answer in the rotated token: r2 rotated, then rewritten so.
    let third: Value = refresh(&t, &oc.id, r2).await.json().await.unwrap();
    let mut old_style = token(r2).await;
    let moved = old_style.rotation.as_mut().unwrap();
    moved.sealed_response = repo
        .remove::<RotationAnswer>(&moved.successor_hash)
        .await
        .unwrap()
        .unwrap()
        .sealed_response;
    let hash = TokenHash::of(r2).0;
    repo.put(&hash, &old_style, Some(old_style.expires_at))
        .await
        .unwrap();
    let again: Value = refresh(&t, &oc.id, r2).await.json().await.unwrap();
    assert_eq!(again, third);
}

/// In a rolling upgrade on a shared store, older proxies look for a rotated token's answer
/// inside its record. In its first hour on such a store a proxy writes it there too, so
/// a retry within the grace period that reaches an older proxy gets its pair, and takes it
/// out again at the first sweep after the grace period; after the hour it writes only its own
/// place, as on a store nobody shares (the test above).
#[tokio::test]
async fn in_a_rolling_upgrade_a_rotated_tokens_answer_is_also_where_older_proxies_look() {
    use mcp_auth_proxy::EnvSecrets;
    use mcp_auth_proxy::config::Secret;
    use mcp_auth_proxy::store::{RotationAnswer, TokenHash, TokenRecord};
    let pg = crate::pg::PgCluster::start().await;
    let dsn = pg.database("upgrade").await;
    let up = start_upstream().await;
    let clock = Clock::manual(START);
    let secrets = EnvSecrets {
        encryption_key: Some(Secret::new(crate::postgres::encryption_key())),
        ..EnvSecrets::default()
    };
    let args = [
        "--repository-backend",
        "postgres",
        "--repository-dsn",
        &dsn,
        &up.url("/mcp"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let p = start_proxy_with_secrets(&args, secrets, clock.clone(), dir).await;
    let (t, repo) = (p.target(), p.repo());
    let (oc, first, second) = signed_in_and_refreshed(&t).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let r2 = second["refresh_token"].as_str().unwrap();
    let inline = |r: &str| {
        let hash = TokenHash::of(r).0;
        async move {
            let record = repo.get::<TokenRecord>(&hash).await.unwrap().unwrap();
            record.rotation.unwrap().sealed_response
        }
    };

    let apart = repo
        .get::<RotationAnswer>(&TokenHash::of(r2).0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inline(r1).await, apart.sealed_response, "in both places");
    // Where an older proxy looks is enough: the retry's pair comes from there alone.
    repo.remove::<RotationAnswer>(&TokenHash::of(r2).0)
        .await
        .unwrap();
    let again: Value = refresh(&t, &oc.id, r1).await.json().await.unwrap();
    assert_eq!(again, second);

    clock.advance(30);
    repo.sweep().await.unwrap();
    assert!(
        !inline(r1).await.is_empty(),
        "kept through the grace period"
    );
    clock.advance(1);
    repo.sweep().await.unwrap();
    assert!(inline(r1).await.is_empty(), "taken out after it");

    clock.advance(3600);
    refresh(&t, &oc.id, r2).await.error_for_status().unwrap();
    assert!(inline(r2).await.is_empty(), "the hour is over");
}

#[tokio::test]
async fn confidential_clients_authenticate_only_as_registered() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let b = Browser::new();
    for method in ["client_secret_basic", "client_secret_post"] {
        let oc = OAuthClient::register(
            &t,
            json!({"client_name": "Conf", "redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": method}),
        )
        .await;
        let secret = oc.secret.clone().unwrap();
        let code = || async {
            let back = b
                .authorize(&t, &oc.auth_url(&t, &[]), TEST_PASSWORD, "approve")
                .await;
            query(&back, "code").unwrap()
        };
        let basic = |id: &str, s: &str| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{s}"))
            )
        };
        // The registered method works.
        let c1 = code().await;
        let resp = if method == "client_secret_basic" {
            client()
                .post(t.url("/token"))
                .header(header::AUTHORIZATION, basic(&oc.id, &secret))
                .form(&oc.code_params(&c1, &[("client_id", "")]))
                .send()
                .await
                .unwrap()
        } else {
            token(&t, &oc.code_params(&c1, &[("client_secret", &secret)])).await
        };
        assert_eq!(resp.status(), StatusCode::OK, "{method}");

        // Wrong secret, the other method, or none at all: invalid_client.
        let c2 = code().await;
        let wrong_basic = client()
            .post(t.url("/token"))
            .header(header::AUTHORIZATION, basic(&oc.id, "wrong"))
            .form(&oc.code_params(&c2, &[("client_id", "")]))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_basic.status(), StatusCode::UNAUTHORIZED);
        assert!(
            wrong_basic.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        let (_, e) =
            json_error(token(&t, &oc.code_params(&c2, &[("client_secret", "wrong")])).await).await;
        assert_eq!(e, "invalid_client");
        let (status, e) = json_error(token(&t, &oc.code_params(&c2, &[])).await).await;
        assert_eq!(
            (status, e.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_client")
        );
        let other_method = if method == "client_secret_basic" {
            token(&t, &oc.code_params(&c2, &[("client_secret", &secret)])).await
        } else {
            client()
                .post(t.url("/token"))
                .header(header::AUTHORIZATION, basic(&oc.id, &secret))
                .form(&oc.code_params(&c2, &[("client_id", "")]))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(
            json_error(other_method).await.1,
            "invalid_client",
            "{method}"
        );
    }
}

#[tokio::test]
async fn revocation_is_scoped_to_the_client_and_reaches_the_gate() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let other = OAuthClient::public(&t).await;
    let b = Browser::new();
    let tok = oc.sign_in(&t, &b).await;
    let access = tok["access_token"].as_str().unwrap();
    let c = client();
    let revoke = |token: &str, id: &str| {
        c.post(t.url("/revoke"))
            .form(&[("token", token.to_string()), ("client_id", id.to_string())])
            .send()
    };

    let resp = revoke(access, &other.id).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "not the owner");
    assert_eq!(
        c.post(t.url("/mcp"))
            .bearer_auth(access)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    assert_eq!(
        revoke("mcpat_unknown", &oc.id).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        revoke(access, &oc.id).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        c.post(t.url("/mcp"))
            .bearer_auth(access)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Revoking an access token leaves the refresh token working.
    assert_eq!(
        refresh(&t, &oc.id, tok["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let resp = c
        .post(t.url("/revoke"))
        .form(&[("client_id", oc.id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_error(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
}

#[tokio::test]
async fn login_wrong_password_lockout_and_csrf() {
    let p = start_proxy(&["--login-max-failures", "3"]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let b = Browser::new();
    let resp = b.http.get(oc.auth_url(&t, &[])).send().await.unwrap();
    let login_url = t.url(&location(&resp));
    let page = b.http.get(&login_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let h = page.headers().clone();
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    let cookie = h[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax")
            && !cookie.contains("__Host-"),
        "{cookie}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Test Client"),
        "the login page names the client"
    );

    // CSRF: a missing or forged token, or a foreign Origin, is refused.
    let no_csrf = b
        .http
        .post(t.url("/.auth/login"))
        .form(&[("password", TEST_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    let forged = b
        .http
        .post(t.url("/.auth/login"))
        .form(&[("password", TEST_PASSWORD), ("csrf", "AAAA")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let csrf = hidden(&html, "csrf").unwrap();
    let foreign = b
        .http
        .post(t.url("/.auth/login"))
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("password", TEST_PASSWORD), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let other_browser = Browser::new();
    let stolen = other_browser
        .http
        .post(t.url("/.auth/login"))
        .form(&[("password", TEST_PASSWORD), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        stolen.status(),
        StatusCode::FORBIDDEN,
        "a token is bound to its browser's cookie"
    );

    // Wrong password: 401 and the form again; the third failure locks the IP.
    for i in 1..=3 {
        let resp = b
            .post_form(&t, "/.auth/login", &html, &[("password", "wrong")])
            .await;
        if i < 3 {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            assert!(resp.text().await.unwrap().contains("not right"));
        } else {
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "120");
        }
    }
    let right = b
        .post_form(&t, "/.auth/login", &html, &[("password", TEST_PASSWORD)])
        .await;
    assert_eq!(
        right.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password while locked"
    );
    assert!(right.headers().get(header::RETRY_AFTER).is_some());
}

#[tokio::test]
async fn consent_deny_remember_and_prompt() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let b = Browser::new();
    let denied = b
        .authorize(&t, &oc.auth_url(&t, &[]), TEST_PASSWORD, "deny")
        .await;
    assert_eq!(query(&denied, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&denied, "state").as_deref(), Some("st-123"));
    assert_eq!(query(&denied, "iss").as_deref(), Some(t.origin.as_str()));

    // A public client answering on loopback: approved once, the page is shown again (any
    // local process could start a flow with its id and listen on another port).
    b.authorize(&t, &oc.auth_url(&t, &[]), TEST_PASSWORD, "approve")
        .await;
    let other_port = "http://127.0.0.1:40001/callback";
    for redirect in [REDIRECT, other_port] {
        let resp = b
            .http
            .get(oc.auth_url(&t, &[("redirect_uri", redirect)]))
            .send()
            .await
            .unwrap();
        let resp = b.http.get(t.url(&location(&resp))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{redirect}: the page again");
    }
    let resp = b
        .http
        .get(oc.auth_url(&t, &[("prompt", "none")]))
        .send()
        .await
        .unwrap();
    let back = url::Url::parse(&location(&resp)).unwrap();
    assert_eq!(query(&back, "error").as_deref(), Some("consent_required"));

    // A client answering at https addresses: approved once at one address, the next
    // authorization there skips the page; its other address still asks.
    let web = OAuthClient::register(
        &t,
        json!({"client_name": "Web App", "redirect_uris": ["https://app.example/cb", "https://app.example/other"]}),
    )
    .await;
    b.authorize(&t, &web.auth_url(&t, &[]), TEST_PASSWORD, "approve")
        .await;
    let resp = b.http.get(web.auth_url(&t, &[])).send().await.unwrap();
    let resp = b.http.get(t.url(&location(&resp))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(location(&resp).starts_with("https://app.example/cb?"));
    let other = web.auth_url(&t, &[("redirect_uri", "https://app.example/other")]);
    let resp = b.http.get(other).send().await.unwrap();
    let resp = b.http.get(t.url(&location(&resp))).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "another address: asked again"
    );
    // prompt=none works now too.
    let resp = b
        .http
        .get(web.auth_url(&t, &[("prompt", "none")]))
        .send()
        .await
        .unwrap();
    assert!(query(&url::Url::parse(&location(&resp)).unwrap(), "code").is_some());
    // prompt=consent asks again.
    let resp = b
        .http
        .get(oc.auth_url(&t, &[("prompt", "consent")]))
        .send()
        .await
        .unwrap();
    let resp = b.http.get(t.url(&location(&resp))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("Test Client") && html.contains("127.0.0.1:33418"),
        "{html}"
    );
    // The request is single use.
    let ok = b
        .post_form(&t, "/.auth/consent", &html, &[("decision", "approve")])
        .await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let again = b
        .post_form(&t, "/.auth/consent", &html, &[("decision", "approve")])
        .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    // A client whose name claims another site's host is flagged.
    let liar = OAuthClient::register(
        &t,
        json!({"client_name": "claude.ai", "redirect_uris": ["https://evil.example/cb"]}),
    )
    .await;
    let resp = b.http.get(liar.auth_url(&t, &[])).send().await.unwrap();
    let html = b.follow(&t, &resp).await;
    assert!(
        html.contains(
            "calls itself “claude.ai” but your authorization will be sent to evil.example"
        ),
        "{html}"
    );
}

/// A public client and a browser that signed in and approved it once.
async fn approved_once(t: &crate::helpers::Target) -> (OAuthClient, Browser) {
    let oc = OAuthClient::public(t).await;
    let b = Browser::new();
    b.authorize(t, &oc.auth_url(t, &[]), TEST_PASSWORD, "approve")
        .await;
    (oc, b)
}

#[tokio::test]
async fn the_login_page_shows_who_is_signed_in_and_logs_out() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let (oc, b) = approved_once(&t).await;
    let page = b
        .http
        .get(t.url("/.auth/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("You are signed in") && page.contains("admin"),
        "{page}"
    );
    let out = b.post_form(&t, "/.auth/logout", &page, &[]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let cleared = out.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let page = b
        .http
        .get(t.url("/.auth/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("name=\"password\""), "signed out: {page}");
    // Signed out, authorizing goes through the login page again.
    let resp = b.http.get(oc.auth_url(&t, &[])).send().await.unwrap();
    assert!(location(&resp).starts_with("/.auth/login"));
}

#[tokio::test]
async fn a_changed_password_ends_password_sign_ins() {
    let p = start_proxy(&["--password", "first password"]).await;
    let t = p.target();
    let oc = OAuthClient::public(&t).await;
    let back = Browser::new()
        .authorize(&t, &oc.auth_url(&t, &[]), "first password", "approve")
        .await;
    let tok: Value = token(&t, &oc.code_params(&query(&back, "code").unwrap(), &[]))
        .await
        .json()
        .await
        .unwrap();
    let dir = p.stop().await;

    let same = start_proxy_with(&["--password", "first password"], Clock::system(), dir).await;
    let t = same.target();
    let tok: Value = refresh(&t, &oc.id, tok["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        tok["access_token"].is_string(),
        "the same password keeps sign-ins: {tok}"
    );
    let dir = same.stop().await;

    let changed = start_proxy_with(&["--password", "second password"], Clock::system(), dir).await;
    let t = changed.target();
    let resp = refresh(&t, &oc.id, tok["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        json_error(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_sigkill_and_restart() {
    let up = start_upstream().await;
    let site = BinarySite::new().await;
    let upstream = up.url("/mcp");
    let bin = site.start(&[&upstream]).await;
    let t = bin.target(&site.origin);
    let oc = OAuthClient::public(&t).await;
    let tok = oc.sign_in(&t, &Browser::new()).await;
    bin.kill9().await;

    let bin = site.start(&[&upstream]).await;
    let c = client();
    let access = tok["access_token"].as_str().unwrap();
    assert_eq!(
        c.post(t.url("/mcp"))
            .bearer_auth(access)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let next = refresh(&t, &oc.id, tok["refresh_token"].as_str().unwrap()).await;
    assert_eq!(next.status(), StatusCode::OK);
    let next: Value = next.json().await.unwrap();
    // The rotation was answered: it too survives a SIGKILL.
    bin.kill9().await;
    let bin = site.start(&[&upstream]).await;
    let a2 = next["access_token"].as_str().unwrap();
    assert_eq!(
        c.post(t.url("/mcp"))
            .bearer_auth(a2)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        refresh(&t, &oc.id, next["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    bin.kill9().await;
}

/// A client-credentials token is the declared client's own grant: a restart keeps it while
/// the clients file still declares the client (people's sign-in settings do not govern it),
/// and ends it when the file no longer does.
#[tokio::test]
async fn a_declared_clients_token_outlives_a_restart_until_the_client_is_removed() {
    let up = crate::helpers::start_upstream().await;
    let upstream = up.url("/mcp");
    let declared = r#"
[[client]]
id = "ci-agent"
secret = "a-long-random-agent-secret"
grant_types = ["client_credentials"]
token_endpoint_auth_method = "client_secret_post"

[[client]]
id = "nightly-job"
secret = "another-long-random-secret"
grant_types = ["client_credentials"]
token_endpoint_auth_method = "client_secret_post"
"#;
    let (files, path) = clients_file(declared);
    // One origin across the restarts: a token is for this origin's resource.
    let listen = format!("127.0.0.1:{}", crate::helpers::unused_port());
    let args = ["--listen", &listen, "--clients-file", &path, &upstream];
    let p = start_proxy(&args).await;
    let t = p.target();
    let token_of = |id: &'static str, secret: &'static str| {
        let t = t.clone();
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()));
            let resp = token(&t, &form).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = resp.json().await.unwrap();
            body["access_token"].as_str().unwrap().to_string()
        }
    };
    let agent = token_of("ci-agent", "a-long-random-agent-secret").await;
    let job = token_of("nightly-job", "another-long-random-secret").await;
    let status = |p: &crate::helpers::TestProxy, access: &str| {
        let req = client()
            .post(p.url("/mcp"))
            .bearer_auth(access)
            .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status(&p, &agent).await, StatusCode::OK);

    // Restarted with the same file: both tokens still work.
    let dir = p.stop().await;
    let p =
        crate::helpers::start_proxy_with(&args, mcp_auth_proxy::clock::Clock::system(), dir).await;
    assert_eq!(status(&p, &agent).await, StatusCode::OK);
    assert_eq!(status(&p, &job).await, StatusCode::OK);

    // Restarted with `nightly-job` gone from the file: its token ends, the other's stays.
    let dir = p.stop().await;
    let kept = declared.split("[[client]]").nth(1).unwrap();
    std::fs::write(
        files.path().join("clients.toml"),
        format!("[[client]]{kept}"),
    )
    .unwrap();
    let p =
        crate::helpers::start_proxy_with(&args, mcp_auth_proxy::clock::Clock::system(), dir).await;
    assert_eq!(status(&p, &agent).await, StatusCode::OK);
    assert_eq!(status(&p, &job).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn declared_clients_and_the_client_credentials_grant() {
    let up = crate::helpers::start_upstream().await;
    let (dir, path) = clients_file(
        r#"
[[client]]
id = "ci-agent"
secret = "a-long-random-agent-secret"
name = "CI agent"
grant_types = ["client_credentials"]
token_endpoint_auth_method = "client_secret_post"

[[client]]
id = "desktop-app"
name = "Desktop App"
redirect_uris = ["http://127.0.0.1:33418/callback"]
"#,
    );
    let file = dir.path().join("clients.toml");
    let p = start_proxy(&["--clients-file", &path, &up.url("/mcp")]).await;
    let t = p.target();
    let meta: Value =
        crate::helpers::get_json(t.url("/.well-known/oauth-authorization-server")).await;
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials"))
    );
    let form = |id: &str, secret: Option<&str>| {
        let mut f = vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            ("client_id".to_string(), id.to_string()),
        ];
        if let Some(s) = secret {
            f.push(("client_secret".to_string(), s.to_string()));
        }
        f
    };
    let resp = token(&t, &form("ci-agent", Some("a-long-random-agent-secret"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token: {body}"
    );
    let access = body["access_token"].as_str().unwrap();
    let echoed =
        crate::helpers::echoed_ping(client().post(t.url("/mcp")).bearer_auth(access)).await;
    assert_eq!(
        echoed["headers"]["x-forwarded-user"], "ci-agent",
        "the service identity"
    );
    assert_eq!(echoed["headers"]["x-forwarded-name"], "CI agent");

    let wrong = token(&t, &form("ci-agent", Some("not-the-secret-at-all"))).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let public = token(&t, &form("desktop-app", None)).await;
    assert_eq!(public.status(), StatusCode::BAD_REQUEST);
    let e: Value = public.json().await.unwrap();
    assert_eq!(e["error"], "unauthorized_client");

    // The declared app goes through the usual authorization flow.
    let resp = crate::helpers::client()
        .get(t.url(
            "/authorize?response_type=code&client_id=desktop-app&redirect_uri=http%3A%2F%2F127.0.0.1%3A33418%2Fcallback&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(crate::flow::location(&resp).starts_with("/.auth/login?req="));

    // A removed client is gone after a restart; a bad file stops startup.
    std::fs::write(
        &file,
        "[[client]]\nid = \"desktop-app\"\nredirect_uris = [\"http://127.0.0.1:33418/callback\"]\n",
    )
    .unwrap();
    let data = p.stop().await;
    let p = crate::helpers::start_proxy_with(
        &["--clients-file", &path, &up.url("/mcp")],
        mcp_auth_proxy::clock::Clock::system(),
        data,
    )
    .await;
    let gone = token(
        &p.target(),
        &form("ci-agent", Some("a-long-random-agent-secret")),
    )
    .await;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn prompt_login_asks_a_signed_in_person_to_sign_in_again() {
    let p = start_proxy(&[]).await;
    let t = p.target();
    let (oc, b) = approved_once(&t).await;
    // Signed in; prompt=login: the password form, not the consent page.
    let resp = b
        .http
        .get(oc.auth_url(&t, &[("prompt", "login")]))
        .send()
        .await
        .unwrap();
    let login = t.url(&location(&resp));
    assert!(login.contains("/.auth/login?req="), "{login}");
    let page = b.http.get(&login).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"password\""), "{html}");
    // Going straight to the consent page with the old session is sent back to sign in.
    let consent = login.replace("/.auth/login", "/.auth/consent");
    let resp = b.http.get(&consent).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&resp).starts_with("/.auth/login"),
        "{}",
        location(&resp)
    );
    // A new sign-in answers it.
    let resp = b
        .post_form(&t, "/.auth/login", &html, &[("password", TEST_PASSWORD)])
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let html = b.follow(&t, &resp).await;
    assert!(html.contains("name=\"decision\""), "{html}");
}

#[tokio::test]
async fn introspection_answers_declared_confidential_clients_only() {
    let (_dir, path) = clients_file(
        r#"
[[client]]
id = "resource-server"
secret = "a-long-random-resource-server-secret"
grant_types = ["client_credentials"]

[[client]]
id = "desktop-app"
redirect_uris = ["http://127.0.0.1:33418/callback"]
"#,
    );
    let p = start_proxy(&["--clients-file", &path]).await;
    let t = p.target();
    let meta: Value =
        crate::helpers::get_json(t.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(
        meta["introspection_endpoint"],
        p.state.site().server.origin.join("/introspect")
    );

    let live = crate::helpers::token_for(&p, "password:alice").await;
    let expired = crate::helpers::mint(
        p.repo(),
        &p.state.site().server.resource,
        crate::helpers::Mint {
            subject: "password:alice",
            ttl: -1,
            ..Default::default()
        },
    )
    .await;
    let ask = |path: &str, id: &str, secret: &str, token: String| {
        let (url, id, secret) = (t.url(path), id.to_string(), secret.to_string());
        async move {
            client()
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
        }
    };
    let secret = "a-long-random-resource-server-secret";
    for path in ["/introspect", "/.idp/introspect"] {
        let resp = ask(path, "resource-server", secret, live.clone()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["active"], true, "{body}");
        assert_eq!(body["sub"], "password:alice");
        assert_eq!(body["client_id"], "client-1");
        assert_eq!(body["aud"], p.state.site().server.resource.as_str());
        assert_eq!(body["token_type"], "Bearer");
        assert!(
            body["scope"]
                .as_str()
                .unwrap()
                .split(' ')
                .any(|s| s == "mcp")
        );
        assert!(body["exp"].as_u64().unwrap() > body["iat"].as_u64().unwrap());
    }
    // A DPoP-bound token: its kind and key (RFC 9449 §6.2).
    let bound = crate::helpers::mint(
        p.repo(),
        &p.state.site().server.resource,
        crate::helpers::Mint {
            jkt: Some("a-key-thumbprint"),
            ..Default::default()
        },
    )
    .await;
    let body: Value = ask("/introspect", "resource-server", secret, bound)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["cnf"]["jkt"], "a-key-thumbprint");
    // Expired or unknown: only `active: false`.
    for token in [expired, "mcp_at_unknown".to_string()] {
        let body: Value = ask("/introspect", "resource-server", secret, token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body, json!({"active": false}));
    }

    // Nobody else may ask: a wrong secret, a public declared client, a registered
    // confidential client.
    let wrong = ask(
        "/introspect",
        "resource-server",
        "not-the-secret",
        live.clone(),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let public = client()
        .post(t.url("/introspect"))
        .form(&[("token", live.as_str()), ("client_id", "desktop-app")])
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::UNAUTHORIZED);
    let registered = OAuthClient::register(
        &t,
        json!({
            "redirect_uris": ["http://127.0.0.1:9/cb"],
            "token_endpoint_auth_method": "client_secret_basic",
        }),
    )
    .await;
    let secret = registered.secret.as_deref().unwrap();
    let resp = ask("/introspect", &registered.id, secret, live.clone()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("--clients-file")
    );
}

/// A `--clients-file` holding `toml`, in a directory of its own: the directory and the path.
fn clients_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.toml");
    std::fs::write(&file, toml).unwrap();
    (dir, file.display().to_string())
}
