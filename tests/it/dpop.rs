//! DPoP (RFC 9449): tokens bound to a client's key at the token endpoint, accepted at the
//! gate only with a fresh proof made with that key, for that request, once.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::flow::{Browser, OAuthClient, query, token};
use crate::helpers::{Target, client, start_proxy, start_upstream};

/// A client's P-256 key.
pub struct Key {
    signing: EncodingKey,
    jwk: Value,
}

impl Key {
    pub fn new() -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        Key {
            signing: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    /// A proof for `method` `url`, made at `iat`, with the hash of `token` when given.
    pub fn proof(&self, method: &str, url: &str, token: Option<&str>, iat: u64) -> String {
        self.proof_with_nonce(method, url, token, iat, None)
    }

    /// [`Key::proof`] carrying a server nonce.
    pub fn proof_with_nonce(
        &self,
        method: &str,
        url: &str,
        token: Option<&str>,
        iat: u64,
        nonce: Option<&str>,
    ) -> String {
        let mut claims = json!({
            "jti": mcp_auth_proxy::tokens::generate_id(),
            "htm": method, "htu": url, "iat": iat,
        });
        if let Some(t) = token {
            claims["ath"] = json!(mcp_auth_proxy::dpop::token_hash(t));
        }
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk});
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.signing, Algorithm::ES256)
                .unwrap();
        format!("{message}.{signature}")
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `POST /token` with `params` and, when given, a DPoP proof.
pub async fn token_with(
    t: &Target,
    params: &[(String, String)],
    proof: Option<String>,
) -> reqwest::Response {
    let mut req = client().post(t.url("/token")).form(params);
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    req.send().await.unwrap()
}

/// A call to the MCP endpoint with `authorization` and, when given, a DPoP proof.
async fn call(t: &Target, authorization: &str, proof: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(t.url("/mcp"))
        .header(header::AUTHORIZATION, authorization)
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    req.send().await.unwrap()
}

/// The `error` of a response's `WWW-Authenticate` DPoP challenge.
fn dpop_error(resp: &reqwest::Response) -> String {
    let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    challenge
        .split("error=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_dpop_token_works_only_with_fresh_proofs_of_its_key() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let now = p.repo().clock().now();
    let meta: Value =
        crate::helpers::get_json(t.url("/.well-known/oauth-authorization-server")).await;
    assert!(
        meta["dpop_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("ES256"))
    );

    let (key, other) = (Key::new(), Key::new());
    let oc = OAuthClient::public(&t).await;
    let code = code_for(&t, &Browser::new(), &oc.auth_url(&t, &[])).await;
    let token_url = format!("{}/token", t.origin);
    let issued = bound_tokens(&t, &oc, &code, &key, now).await;
    let access = issued["access_token"].as_str().unwrap();
    let mcp = format!("{}/mcp", t.origin);

    // With a fresh proof of its key for this request: through.
    let proof = key.proof("POST", &mcp, Some(access), now);
    let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The same proof again: a replay.
    let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(dpop_error(&resp), "invalid_dpop_proof");
    // As a bearer token (on the fast lane's path too): refused.
    let resp = call(&t, &format!("Bearer {access}"), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(dpop_error(&resp), "invalid_token");
    // Proofs that do not hold.
    for (why, proof) in [
        ("another key", other.proof("POST", &mcp, Some(access), now)),
        ("another method", key.proof("GET", &mcp, Some(access), now)),
        (
            "another URL",
            key.proof("POST", &format!("{}/other", t.origin), Some(access), now),
        ),
        ("stale", key.proof("POST", &mcp, Some(access), now - 300)),
        ("no ath", key.proof("POST", &mcp, None, now)),
        (
            "another token's ath",
            key.proof("POST", &mcp, Some("other"), now),
        ),
    ] {
        let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(dpop_error(&resp), "invalid_dpop_proof", "{why}");
    }
    let resp = call(&t, &format!("DPoP {access}"), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "no proof");

    // Refreshing needs a proof of the same key.
    let refresh = issued["refresh_token"].as_str().unwrap();
    let params = vec![
        ("grant_type".to_string(), "refresh_token".to_string()),
        ("refresh_token".to_string(), refresh.to_string()),
        ("client_id".to_string(), oc.id.clone()),
    ];
    for proof in [None, Some(other.proof("POST", &token_url, None, now))] {
        let resp = token_with(&t, &params, proof).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"], "invalid_dpop_proof");
    }
    let resp = token_with(&t, &params, Some(key.proof("POST", &token_url, None, now))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let refreshed: Value = resp.json().await.unwrap();
    assert_eq!(refreshed["token_type"], "DPoP");
}

#[tokio::test]
async fn a_client_without_dpop_gets_bearer_tokens_and_dpop_jkt_binds_the_code() {
    let up = start_upstream().await;
    let p = start_proxy(&[&up.url("/mcp")]).await;
    let t = p.target();
    let now = p.repo().clock().now();
    let oc = OAuthClient::public(&t).await;
    let issued = oc.sign_in(&t, &Browser::new()).await;
    assert_eq!(issued["token_type"], "Bearer");
    let access = issued["access_token"].as_str().unwrap();
    assert_eq!(
        call(&t, &format!("Bearer {access}"), None).await.status(),
        StatusCode::OK
    );
    // An unbound token sent as DPoP is refused.
    let key = Key::new();
    let proof = key.proof("POST", &format!("{}/mcp", t.origin), Some(access), now);
    let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // dpop_jkt at /authorize: the code is redeemed only with that key's proof.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
    let jkt = jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .unwrap();
    let browser = Browser::new();
    let token_url = format!("{}/token", t.origin);
    let url = oc.auth_url(&t, &[("dpop_jkt", jkt.as_str())]);
    let code = code_for(&t, &browser, &url).await;
    let resp = token(&t, &oc.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "no proof");
    let code = code_for(&t, &browser, &url).await;
    let other = Key::new();
    let resp = token_with(
        &t,
        &oc.code_params(&code, &[]),
        Some(other.proof("POST", &token_url, None, now)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "another key");
    let code = code_for(&t, &browser, &url).await;
    bound_tokens(&t, &oc, &code, &key, now).await;
}

/// The code an authorization URL ends with.
pub async fn code_for(t: &Target, browser: &Browser, url: &str) -> String {
    let back = browser
        .authorize(t, url, crate::helpers::TEST_PASSWORD, "approve")
        .await;
    query(&back, "code").unwrap()
}

/// `--require-dpop`: a token request without a proof and a bearer token are refused; a
/// client with DPoP works as before.
#[tokio::test]
async fn require_dpop_refuses_bearer_tokens() {
    let up = start_upstream().await;
    let p = start_proxy(&["--require-dpop", &up.url("/mcp")]).await;
    let t = p.target();
    let now = p.repo().clock().now();
    let oc = OAuthClient::public(&t).await;
    let browser = Browser::new();
    let url = oc.auth_url(&t, &[]);
    let code = code_for(&t, &browser, &url).await;
    let resp = token(&t, &oc.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "invalid_dpop_proof");
    // A bearer token issued before the flag was set (minted here): refused at the gate.
    let bearer = crate::helpers::token_for(&p, "password:admin").await;
    let resp = call(&t, &format!("Bearer {bearer}"), None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(dpop_error(&resp), "invalid_token");
    // With DPoP: through.
    let key = Key::new();
    let code = code_for(&t, &browser, &url).await;
    let issued = bound_tokens(&t, &oc, &code, &key, now).await;
    let access = issued["access_token"].as_str().unwrap();
    let proof = key.proof("POST", &format!("{}/mcp", t.origin), Some(access), now);
    let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Revoked: refused at once, as a bearer token would be.
    let resp = client()
        .post(t.url("/revoke"))
        .form(&[("token", access), ("client_id", oc.id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let proof = key.proof("POST", &format!("{}/mcp", t.origin), Some(access), now);
    let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// Redeems `code` with a proof of `key`: the token response (asserted 200, DPoP).
pub async fn bound_tokens(t: &Target, oc: &OAuthClient, code: &str, key: &Key, now: u64) -> Value {
    let token_url = format!("{}/token", t.origin);
    let proof = key.proof("POST", &token_url, None, now);
    let resp = token_with(t, &oc.code_params(code, &[]), Some(proof)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let issued: Value = resp.json().await.unwrap();
    assert_eq!(issued["token_type"], "DPoP");
    issued
}

/// `--dpop-nonces`: a proof without a fresh nonce of ours gets `use_dpop_nonce` and the nonce
/// to use, at the token endpoint (400) and at the MCP endpoint (401).
#[tokio::test]
async fn with_nonces_a_proof_carries_the_servers_nonce() {
    let up = start_upstream().await;
    let p = start_proxy(&["--dpop-nonces", &up.url("/mcp")]).await;
    let t = p.target();
    let now = p.repo().clock().now();
    let key = Key::new();
    let oc = OAuthClient::public(&t).await;
    let code = code_for(&t, &Browser::new(), &oc.auth_url(&t, &[])).await;
    let token_url = format!("{}/token", t.origin);
    let params = oc.code_params(&code, &[]);
    let resp = token_with(&t, &params, Some(key.proof("POST", &token_url, None, now))).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let nonce = resp.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "use_dpop_nonce");
    let made_up = key.proof_with_nonce("POST", &token_url, None, now, Some("made-up"));
    let resp = token_with(&t, &params, Some(made_up)).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "a nonce that is not ours"
    );
    let proof = key.proof_with_nonce("POST", &token_url, None, now, Some(&nonce));
    let resp = token_with(&t, &params, Some(proof)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let issued: Value = resp.json().await.unwrap();
    let access = issued["access_token"].as_str().unwrap();

    let mcp = format!("{}/mcp", t.origin);
    let resp = call(
        &t,
        &format!("DPoP {access}"),
        Some(&key.proof("POST", &mcp, Some(access), now)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(dpop_error(&resp), "use_dpop_nonce");
    let fresh = resp.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let proof = key.proof_with_nonce("POST", &mcp, Some(access), now, Some(&fresh));
    let resp = call(&t, &format!("DPoP {access}"), Some(&proof)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
