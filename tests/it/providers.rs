//! Sign-in at upstream providers against a local fake of them: an OpenID provider (discovery,
//! JWKS with an ES256 key, PKCE-checking token endpoint, userinfo), Google's userinfo and
//! GitHub's API (orgs over two pages, teams, hidden emails, an Enterprise-style base path).
//! Google and GitHub are SaaS: these fakes stand in for them through the documented endpoint
//! flags. A real OpenID provider (npm `oidc-provider`) runs in the e2e suite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode as S;
use serde_json::{Value, json};
use url::Url;

use crate::flow::{Browser, OAuthClient, REDIRECT, hidden, location, query, refresh, token};
use crate::helpers::{TestProxy, start_proxy};

/// How the fake's next ID token is spoiled.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Spoil {
    None,
    Signature,
    Audience,
    Expired,
    Nonce,
    /// `aud` lists the proxy beside the client the token was issued to (`azp`).
    OtherParty,
    /// The ID token names another issuer.
    Issuer,
    /// The ID token of the previous sign-in is sent again (its nonce is another sign-in's).
    Replayed,
    /// The authorization response names another issuer (`iss`, RFC 9207): a mix-up.
    ResponseIssuer,
    /// The authorization response names no issuer, though the discovery document promises.
    NoResponseIssuer,
}

/// The account the fake signs in next, and what it says about it.
#[derive(Clone)]
pub struct Account {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub hd: Option<String>,
    pub groups: Vec<String>,
    pub login: String,
    /// GitHub's numeric user id (a login can be renamed and taken by another; this cannot).
    pub github_id: u64,
    pub public_email: bool,
    pub orgs: Vec<String>,
    pub teams: Vec<(String, String)>,
}

impl Account {
    pub fn new(sub: &str, email: &str) -> Self {
        Self {
            sub: sub.into(),
            email: email.into(),
            email_verified: true,
            hd: None,
            groups: Vec::new(),
            login: sub.into(),
            github_id: 42,
            public_email: true,
            orgs: Vec::new(),
            teams: Vec::new(),
        }
    }
}

struct Fake {
    base: String,
    key: EcdsaKeyPair,
    kid: String,
    other_key: EcdsaKeyPair,
    account: Account,
    spoil: Spoil,
    /// code → (nonce, PKCE challenge, account)
    codes: HashMap<String, (String, String, Account)>,
    /// access token → account
    tokens: HashMap<String, Account>,
    /// refresh token → account
    refresh: HashMap<String, Account>,
    /// Lifetime of the access tokens issued.
    expires_in: u64,
    /// The last ID token issued (for [`Spoil::Replayed`]).
    last_id_token: Option<String>,
}

type Shared = Arc<Mutex<Fake>>;

pub struct FakeIdp {
    pub base: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIdp {
    pub fn sign_in_as(&self, a: Account) {
        self.state.lock().unwrap().account = a;
    }
    pub fn spoil(&self, s: Spoil) {
        self.state.lock().unwrap().spoil = s;
    }
    /// Replaces the signing key (a new key id), as providers rotate keys.
    pub fn rotate(&self) {
        let mut f = self.state.lock().unwrap();
        f.key = key();
        f.kid = format!("k{}", f.kid.len() + 1);
    }
    /// Changes an account at the provider (as an organisation removing a member would):
    /// every token already issued to it answers with the change.
    pub fn change(&self, login: &str, f: impl Fn(&mut Account)) {
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        for a in s.tokens.values_mut().chain(s.refresh.values_mut()) {
            if a.login == login {
                f(a);
            }
        }
    }
    pub fn discovery(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base)
    }
}

fn key() -> EcdsaKeyPair {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap()
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// An ES256 JWT of `claims` signed by `key`.
fn jwt(key: &EcdsaKeyPair, kid: &str, claims: &Value) -> String {
    let head = b64(json!({"alg":"ES256","typ":"JWT","kid":kid})
        .to_string()
        .as_bytes());
    let body = b64(claims.to_string().as_bytes());
    let input = format!("{head}.{body}");
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

pub async fn start_fake() -> FakeIdp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state: Shared = Arc::new(Mutex::new(Fake {
        base: base.clone(),
        key: key(),
        kid: "k1".into(),
        other_key: key(),
        account: Account::new("ann", "ann@example.com"),
        spoil: Spoil::None,
        codes: HashMap::new(),
        tokens: HashMap::new(),
        refresh: HashMap::new(),
        expires_in: 300,
        last_id_token: None,
    }));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/login/oauth/authorize", get(authorize))
        .route("/token", post(token_endpoint))
        .route("/login/oauth/access_token", post(token_endpoint))
        .route("/userinfo", get(userinfo))
        .route("/api/v3/user", get(gh_user))
        .route("/api/v3/user/emails", get(gh_emails))
        .route("/api/v3/user/orgs", get(gh_orgs))
        .route("/api/v3/user/teams", get(gh_teams))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeIdp { base, state, task }
}

async fn discovery(State(s): State<Shared>) -> Json<Value> {
    let base = s.lock().unwrap().base.clone();
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "authorization_response_iss_parameter_supported": true,
    }))
}

async fn jwks(State(s): State<Shared>) -> Json<Value> {
    let f = s.lock().unwrap();
    let point = f.key.public_key().as_ref();
    Json(json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": f.kid, "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]}))
}

/// Signs the current account in at once and sends the browser back with a code.
async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut f = s.lock().unwrap();
    let code = format!("code-{}", f.codes.len() + 1);
    let account = f.account.clone();
    f.codes.insert(
        code.clone(),
        (
            q.get("nonce").cloned().unwrap_or_default(),
            q.get("code_challenge").cloned().unwrap_or_default(),
            account,
        ),
    );
    let mut back = Url::parse(&q["redirect_uri"]).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"]);
    match f.spoil {
        Spoil::ResponseIssuer => {
            back.query_pairs_mut()
                .append_pair("iss", "https://attacker.example");
        }
        Spoil::NoResponseIssuer => {}
        _ => {
            let base = f.base.clone();
            back.query_pairs_mut().append_pair("iss", &base);
        }
    }
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, back.to_string())],
    )
        .into_response()
}

async fn token_endpoint(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut f = s.lock().unwrap();
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        let Some(account) = f
            .refresh
            .get(form.get("refresh_token").map_or("", |r| r))
            .cloned()
        else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        };
        let access = format!("at-{}-{}", account.sub, f.tokens.len());
        f.tokens.insert(access.clone(), account);
        return Json(
            json!({"access_token": access, "token_type": "bearer", "expires_in": f.expires_in}),
        )
        .into_response();
    }
    let Some((nonce, challenge, account)) = f.codes.remove(form.get("code").map_or("", |c| c))
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    if b64(digest.as_ref()) != challenge {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "PKCE"})),
        )
            .into_response();
    }
    let now = mcp_auth_proxy::clock::Clock::system().now();
    // The client authenticates in the body or with HTTP Basic.
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|b| b.split_once(':').map(|(id, _)| id.to_string()));
    let client_id = form.get("client_id").cloned().or(basic).unwrap_or_default();
    let mut claims = json!({
        "iss": f.base, "aud": client_id, "sub": account.sub, "iat": now, "exp": now + 300,
        "nonce": nonce, "email": account.email, "groups": account.groups,
    });
    match f.spoil {
        Spoil::Audience => claims["aud"] = json!("someone-else"),
        Spoil::Expired => claims["exp"] = json!(now - 3600),
        Spoil::Nonce => claims["nonce"] = json!("not-the-nonce"),
        Spoil::Issuer => claims["iss"] = json!("https://attacker.example"),
        Spoil::OtherParty => {
            claims["aud"] = json!([client_id, "another-client"]);
            claims["azp"] = json!("another-client");
        }
        _ => {}
    }
    let signer = if f.spoil == Spoil::Signature {
        &f.other_key
    } else {
        &f.key
    };
    let fresh = jwt(signer, &f.kid, &claims);
    let id_token = match (&f.spoil, &f.last_id_token) {
        (Spoil::Replayed, Some(last)) => last.clone(),
        _ => fresh.clone(),
    };
    if f.spoil == Spoil::None {
        f.last_id_token = Some(fresh);
    }
    let access = format!("at-{}-{}", account.sub, f.tokens.len());
    let refresh = format!("rt-{}-{}", account.sub, f.refresh.len());
    f.tokens.insert(access.clone(), account.clone());
    f.refresh.insert(refresh.clone(), account);
    Json(
        json!({"access_token": access, "token_type": "bearer", "id_token": id_token,
        "expires_in": f.expires_in, "refresh_token": refresh}),
    )
    .into_response()
}

fn account_of(s: &Shared, headers: &HeaderMap) -> Option<Account> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))?;
    s.lock().unwrap().tokens.get(token).cloned()
}

async fn userinfo(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(a) = account_of(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let mut v = json!({"sub": a.sub, "email": a.email, "email_verified": a.email_verified, "name": format!("{} Name", a.sub)});
    if let Some(hd) = a.hd {
        v["hd"] = json!(hd);
    }
    Json(v).into_response()
}

async fn gh_user(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(a) = account_of(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let email = if a.public_email {
        json!(a.email)
    } else {
        Value::Null
    };
    Json(json!({"login": a.login, "id": a.github_id, "name": "Octo Cat", "email": email}))
        .into_response()
}

async fn gh_emails(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(a) = account_of(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(json!([
        {"email": "old@example.com", "primary": false, "verified": true},
        {"email": "unverified@example.com", "primary": true, "verified": false},
        {"email": a.email, "primary": true, "verified": true},
    ]))
    .into_response()
}

/// Orgs in pages of two, linked with `rel="next"`.
async fn gh_orgs(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(a) = account_of(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let base = s.lock().unwrap().base.clone();
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let items: Vec<Value> = a
        .orgs
        .iter()
        .skip((page - 1) * 2)
        .take(2)
        .map(|o| json!({"login": o}))
        .collect();
    let mut resp = Json(items).into_response();
    if a.orgs.len() > page * 2 {
        let link = format!(
            "<{base}/api/v3/user/orgs?per_page=100&page={}>; rel=\"next\"",
            page + 1
        );
        resp.headers_mut()
            .insert(header::LINK, link.parse().unwrap());
    }
    resp
}

async fn gh_teams(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(a) = account_of(&s, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let items: Vec<Value> = a
        .teams
        .iter()
        .map(|(o, t)| json!({"slug": t, "organization": {"login": o}}))
        .collect();
    Json(items).into_response()
}

/// Where a browser's trip through the proxy and the provider ends.
#[derive(Debug)]
pub enum End {
    /// Back at the client's redirect URI.
    Client(Url),
    /// A page of ours that is not a step of the flow.
    Page(S, String),
}

/// `loc` as the test reaches it: our paths and our external origin go to where the proxy
/// listens (the browser's cookies are kept by that address).
fn ours(t: &crate::helpers::Target, loc: &str) -> String {
    if loc.starts_with('/') {
        t.url(loc)
    } else if let Some(rest) = loc.strip_prefix(t.origin.as_str()) {
        t.url(rest)
    } else {
        loc.to_string()
    }
}

/// Follows the authorization URL through the provider and our consent (approving).
pub async fn through(p: &TestProxy, browser: &Browser, auth_url: &str) -> End {
    let t = p.target();
    let mut url = auth_url.to_string();
    for _ in 0..15 {
        let resp = browser.http.get(&url).send().await.unwrap();
        let status = resp.status();
        if status == S::SEE_OTHER {
            let loc = location(&resp);
            if loc.starts_with(REDIRECT) {
                return End::Client(Url::parse(&loc).unwrap());
            }
            url = ours(&t, &loc);
            continue;
        }
        let html = resp.text().await.unwrap();
        if status == S::OK && html.contains("name=\"decision\"") {
            let r = browser
                .post_form(&t, "/.auth/consent", &html, &[("decision", "approve")])
                .await;
            let loc = location(&r);
            assert!(loc.starts_with(REDIRECT), "{loc}");
            return End::Client(Url::parse(&loc).unwrap());
        }
        return End::Page(status, html);
    }
    panic!("the flow did not end");
}

/// Registers a client and runs the flow; returns where it ended.
async fn flow(p: &TestProxy) -> (OAuthClient, End) {
    let t = p.target();
    let client = OAuthClient::public(&t).await;
    let end = through(p, &Browser::new(), &client.auth_url(&t, &[])).await;
    (client, end)
}

/// Signs in through the provider and returns our access token.
async fn signed_in_token(p: &TestProxy) -> String {
    let (_, _, tokens) = signed_in(p).await;
    tokens["access_token"].as_str().unwrap().to_string()
}

/// Signs in through the provider (the account the fake signs in next); the client, its
/// browser and our token answer.
async fn signed_in(p: &TestProxy) -> (OAuthClient, Browser, Value) {
    let t = p.target();
    let client = OAuthClient::public(&t).await;
    let browser = Browser::new();
    let end = through(p, &browser, &client.auth_url(&t, &[])).await;
    let End::Client(back) = end else {
        panic!("{end:?}")
    };
    let code = query(&back, "code").unwrap();
    let tokens: Value = token(&t, &client.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    (client, browser, tokens)
}

fn oidc_args(idp: &FakeIdp) -> Vec<String> {
    vec![
        "--no-password".into(),
        "--oidc-configuration-url".into(),
        idp.discovery(),
        "--oidc-client-id".into(),
        "proxy-client".into(),
        "--oidc-client-secret".into(),
        "proxy-secret".into(),
        "--oidc-allowed-users".into(),
        "ann@example.com".into(),
        "--oidc-allowed-attributes".into(),
        "/groups=admins".into(),
        "--oidc-provider-name".into(),
        "Example SSO".into(),
    ]
}

/// A proxy signing in with the fake IdP, on `clock`, with `extra` arguments after ours.
async fn oidc_proxy_on(
    idp: &FakeIdp,
    clock: &mcp_auth_proxy::clock::Clock,
    extra: &[&str],
) -> TestProxy {
    let mut args = oidc_args(idp);
    args.extend(extra.iter().map(|a| a.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::helpers::start_proxy_with(&a, clock.clone(), tempfile::tempdir().unwrap()).await
}

async fn proxy_with(args: &[String]) -> TestProxy {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    start_proxy(&a).await
}

#[tokio::test]
async fn oidc_sign_in_checks_the_id_token_and_the_allow_lists() {
    let idp = start_fake().await;
    let p = proxy_with(&oidc_args(&idp)).await;
    let t = p.target();

    // An allowed user: through the provider (one provider, no password: no login page),
    // our consent, a code, tokens.
    let (client, end) = flow(&p).await;
    let End::Client(back) = end else {
        panic!("{end:?}")
    };
    let code = query(&back, "code").expect("a code");
    let resp = token(&t, &client.code_params(&code, &[])).await;
    assert_eq!(resp.status(), S::OK);
    let grant = p
        .repo()
        .scan::<mcp_auth_proxy::store::GrantRecord>(b"")
        .await
        .unwrap();
    let identity = &grant[0].1.identity;
    assert_eq!(
        (identity.provider.as_str(), identity.user_id.as_str()),
        ("oidc", "ann@example.com")
    );
    assert_eq!(
        identity.name.as_deref(),
        Some("ann Name"),
        "userinfo merged"
    );

    // Someone else: 403 page, and the client gets access_denied from its link.
    idp.sign_in_as(Account::new("eve", "eve@example.com"));
    let (_, end) = flow(&p).await;
    let End::Page(status, html) = end else {
        panic!("{end:?}")
    };
    assert_eq!(status, S::FORBIDDEN);
    assert!(
        html.contains("eve@example.com") && html.contains("Not allowed"),
        "{html}"
    );
    let back = html
        .split("href=\"")
        .find(|s| s.starts_with(REDIRECT))
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert_eq!(
        query(&Url::parse(&back).unwrap(), "error").as_deref(),
        Some("access_denied")
    );

    // A group member is admitted by the attribute rule.
    let mut admin = Account::new("root", "root@elsewhere.example");
    admin.groups = vec!["staff".into(), "admins".into()];
    idp.sign_in_as(admin);
    assert!(matches!(flow(&p).await.1, End::Client(_)));

    // ann's address, but the provider says it is not verified: nobody.
    let mut unverified = Account::new("mallory", "ann@example.com");
    unverified.email_verified = false;
    idp.sign_in_as(unverified);
    let End::Page(status, html) = flow(&p).await.1 else {
        panic!()
    };
    assert_eq!(status, S::FORBIDDEN);
    assert!(html.contains("verified"), "{html}");

    // Spoiled ID tokens never sign anyone in.
    idp.sign_in_as(Account::new("ann", "ann@example.com"));
    for spoil in [
        Spoil::Signature,
        Spoil::Audience,
        Spoil::Expired,
        Spoil::Nonce,
        Spoil::OtherParty,
        Spoil::Issuer,
    ] {
        idp.spoil(spoil);
        let (_, end) = flow(&p).await;
        let End::Page(status, _) = end else {
            panic!("{spoil:?}: {end:?}")
        };
        assert_eq!(status, S::BAD_GATEWAY, "{spoil:?}");
    }
    // ann's own, valid ID token from her last sign-in, replayed into a new one: its nonce
    // belongs to the old sign-in.
    idp.spoil(Spoil::None);
    assert!(matches!(flow(&p).await.1, End::Client(_)));
    idp.spoil(Spoil::Replayed);
    let End::Page(status, _) = flow(&p).await.1 else {
        panic!("a replayed ID token signed someone in")
    };
    assert_eq!(status, S::BAD_GATEWAY);
}

#[tokio::test]
async fn a_callback_must_come_back_to_the_browser_that_started_once() {
    let idp = start_fake().await;
    let p = proxy_with(&oidc_args(&idp)).await;
    let t = p.target();
    let client = OAuthClient::public(&t).await;
    let browser = Browser::new();
    // Walk to the provider's redirect back, but stop before the callback.
    let mut url = client.auth_url(&t, &[]);
    let callback = loop {
        let resp = browser.http.get(&url).send().await.unwrap();
        let loc = location(&resp);
        if loc.contains("/.auth/oidc/callback") {
            break loc;
        }
        url = ours(&t, &loc);
    };
    let callback = ours(&t, &callback);
    // Another browser (no cookie) is refused.
    let other = Browser::new().http.get(&callback).send().await.unwrap();
    assert_eq!(other.status(), S::BAD_REQUEST);
    // The right browser gets in once; a replay is refused.
    let first = browser.http.get(&callback).send().await.unwrap();
    assert_eq!(first.status(), S::SEE_OTHER);
    assert!(location(&first).starts_with("/.auth/consent"));
    let replay = browser.http.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), S::BAD_REQUEST);
}

/// Mix-up (RFC 9700 §4.4): an answer meant for one provider's sign-in is refused when it
/// names another issuer, names none though its provider always does, or arrives at another
/// provider's callback; each refusal uses up the sign-in.
#[tokio::test]
async fn a_sign_in_answer_from_another_provider_is_refused() {
    let idp = start_fake().await;
    let p = proxy_with(&oidc_args(&idp)).await;
    // The honest answer names the provider's issuer and signs in.
    assert!(matches!(flow(&p).await.1, End::Client(_)));

    for spoil in [Spoil::ResponseIssuer, Spoil::NoResponseIssuer] {
        idp.spoil(spoil);
        let (_, end) = flow(&p).await;
        let End::Page(status, html) = end else {
            panic!("{spoil:?}: {end:?}")
        };
        assert_eq!(status, S::BAD_REQUEST, "{spoil:?}");
        assert!(html.contains("did not come from Example SSO"), "{html}");
    }
    idp.spoil(Spoil::None);

    // Two providers: a sign-in sent to the OpenID provider, whose answer is brought to
    // Google's callback.
    let mut args = oidc_args(&idp);
    args.extend(google_args(&idp));
    let p = proxy_with(&args).await;
    let t = p.target();
    let browser = Browser::new();
    let mut url = t.url("/.auth/oidc/login");
    let callback = loop {
        let resp = browser.http.get(&url).send().await.unwrap();
        let loc = location(&resp);
        if loc.contains("/.auth/oidc/callback") {
            break loc;
        }
        url = ours(&t, &loc);
    };
    let swapped = ours(&t, &callback).replace("/.auth/oidc/callback", "/.auth/google/callback");
    let refused = browser.http.get(&swapped).send().await.unwrap();
    assert_eq!(refused.status(), S::BAD_REQUEST);
    // And the sign-in is used up: its own callback no longer works either.
    let late = browser.http.get(ours(&t, &callback)).send().await.unwrap();
    assert_eq!(late.status(), S::BAD_REQUEST);
}

/// The flags that point Google's sign-in at the fake.
fn google_args(idp: &FakeIdp) -> Vec<String> {
    vec![
        "--google-client-id".into(),
        "g-id".into(),
        "--google-client-secret".into(),
        "g-secret".into(),
        "--google-allowed-users".into(),
        "ann@example.com".into(),
        "--google-auth-url".into(),
        format!("{}/authorize", idp.base),
        "--google-token-url".into(),
        format!("{}/token", idp.base),
        "--google-userinfo-url".into(),
        format!("{}/userinfo", idp.base),
    ]
}

#[tokio::test]
async fn google_needs_a_verified_email_and_an_allowed_workspace() {
    let idp = start_fake().await;
    let p = proxy_with(&[
        "--no-password".into(),
        "--google-client-id".into(),
        "g-id".into(),
        "--google-client-secret".into(),
        "g-secret".into(),
        "--google-allowed-workspaces".into(),
        "corp.example".into(),
        "--google-auth-url".into(),
        format!("{}/authorize", idp.base),
        "--google-token-url".into(),
        format!("{}/token", idp.base),
        "--google-userinfo-url".into(),
        format!("{}/userinfo", idp.base),
    ])
    .await;
    let mut worker = Account::new("w", "Worker@Corp.Example");
    worker.hd = Some("corp.example".into());
    idp.sign_in_as(worker.clone());
    assert!(matches!(flow(&p).await.1, End::Client(_)));

    worker.email_verified = false;
    idp.sign_in_as(worker);
    let End::Page(status, html) = flow(&p).await.1 else {
        panic!()
    };
    assert_eq!(status, S::FORBIDDEN);
    assert!(html.contains("verified"), "{html}");

    // Same domain in the address, but not a workspace account (no hd): refused.
    idp.sign_in_as(Account::new("x", "x@corp.example"));
    let End::Page(status, _) = flow(&p).await.1 else {
        panic!()
    };
    assert_eq!(status, S::FORBIDDEN);
}

#[tokio::test]
async fn github_teams_over_pages_and_the_hidden_primary_email() {
    let idp = start_fake().await;
    let api = format!("{}/api/v3", idp.base);
    let p = proxy_with(&[
        "--no-password".into(),
        "--github-client-id".into(),
        "gh-id".into(),
        "--github-client-secret".into(),
        "gh-secret".into(),
        "--github-allowed-orgs".into(),
        "late-org,acme:platform".into(),
        "--github-url".into(),
        format!("{}/", idp.base),
        "--github-api-url".into(),
        api,
    ])
    .await;
    // The allowed org is on the second page of the membership list.
    let mut octo = Account::new("octo", "octo@example.com");
    octo.public_email = false;
    octo.orgs = vec!["a".into(), "b".into(), "Late-Org".into()];
    idp.sign_in_as(octo.clone());
    let (client, end) = flow(&p).await;
    let End::Client(back) = end else {
        panic!("{end:?}")
    };
    let code = query(&back, "code").unwrap();
    let resp = token(&p.target(), &client.code_params(&code, &[])).await;
    assert_eq!(resp.status(), S::OK);
    let grants = p
        .repo()
        .scan::<mcp_auth_proxy::store::GrantRecord>(b"")
        .await
        .unwrap();
    let id = &grants[0].1.identity;
    assert_eq!(id.user_id, "octo");
    assert_eq!(
        id.subject(),
        "github:#42",
        "keyed on the numeric id, not the login"
    );
    assert_eq!(
        id.email.as_deref(),
        Some("octo@example.com"),
        "the primary verified one"
    );
    assert!(id.groups.contains(&"late-org".to_string()));

    // The login renamed and taken by another account: the allow-list still matches the
    // login, but it is another user, with nothing of the first one's.
    let mut taken = octo.clone();
    taken.github_id = 4242;
    idp.sign_in_as(taken);
    let (_, end) = flow(&p).await;
    assert!(matches!(end, End::Client(_)), "{end:?}");
    let subjects: Vec<String> = p
        .repo()
        .scan::<mcp_auth_proxy::store::SessionRecord>(b"")
        .await
        .unwrap()
        .iter()
        .map(|(_, s)| s.identity.subject())
        .collect();
    assert!(
        subjects.contains(&"github:#4242".to_string()),
        "{subjects:?}"
    );

    // A team rule admits a member of that team only.
    let mut dev = Account::new("dev", "dev@example.com");
    dev.orgs = vec!["acme".into()];
    dev.teams = vec![("acme".into(), "platform".into())];
    idp.sign_in_as(dev.clone());
    assert!(matches!(flow(&p).await.1, End::Client(_)));
    dev.teams = vec![("acme".into(), "sales".into())];
    idp.sign_in_as(dev);
    let End::Page(status, _) = flow(&p).await.1 else {
        panic!()
    };
    assert_eq!(status, S::FORBIDDEN);
}

#[tokio::test]
async fn the_login_page_offers_every_method_and_refreshes_recheck_the_lists() {
    let idp = start_fake().await;
    let mut args = oidc_args(&idp);
    args.retain(|a| a != "--no-password");
    let p = proxy_with(&args).await;
    let t = p.target();
    let client = OAuthClient::public(&t).await;
    let browser = Browser::new();
    let resp = browser
        .http
        .get(client.auth_url(&t, &[]))
        .send()
        .await
        .unwrap();
    let login = t.url(&location(&resp));
    let html = browser
        .http
        .get(&login)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Sign in with Example SSO"), "{html}");
    assert!(html.contains("name=\"password\""));
    assert!(hidden(&html, "req").is_some());
    // Through the provider from the button.
    let start = html
        .split("href=\"")
        .find(|s| s.starts_with("/.auth/oidc/login"))
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let End::Client(back) = through(&p, &browser, &t.url(&start)).await else {
        panic!()
    };
    let code = query(&back, "code").unwrap();
    let tokens: Value = token(&t, &client.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_string();

    // The same store under a configuration that no longer lists ann: the refresh fails.
    let dir = p.stop().await;
    let mut args = oidc_args(&idp);
    for a in args.iter_mut() {
        if a == "ann@example.com" {
            *a = "someone@example.com".into();
        }
    }
    args.retain(|a| a != "--no-password");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let p2 =
        crate::helpers::start_proxy_with(&a, mcp_auth_proxy::clock::Clock::system(), dir).await;
    let resp = crate::flow::refresh(&p2.target(), &client.id, &refresh_token).await;
    assert_eq!(resp.status(), S::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn a_provider_without_an_allow_list_refuses_to_start() {
    use clap::Parser;
    let cli = mcp_auth_proxy::cli::Cli::try_parse_from([
        "mcp-auth-proxy",
        "--github-client-id",
        "x",
        "--github-client-secret",
        "y",
        "--password",
        "pw",
    ])
    .unwrap();
    let err = mcp_auth_proxy::config::Config::from_cli(cli)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--github-allowed-users"), "{err}");
    let cli = mcp_auth_proxy::cli::Cli::try_parse_from([
        "mcp-auth-proxy",
        "--github-client-id",
        "x",
        "--github-client-secret",
        "y",
        "--github-allow-all-users",
    ])
    .unwrap();
    assert!(mcp_auth_proxy::config::Config::from_cli(cli).is_ok());
}

#[tokio::test]
async fn a_public_oidc_client_follows_key_rotation() {
    let idp = start_fake().await;
    let mut args = oidc_args(&idp);
    // No client secret: a public client.
    let i = args
        .iter()
        .position(|a| a == "--oidc-client-secret")
        .unwrap();
    args.drain(i..i + 2);
    let p = proxy_with(&args).await;
    assert!(matches!(flow(&p).await.1, End::Client(_)));
    // The provider rotates its key: the proxy fetches the new set for the unknown key id.
    idp.rotate();
    let (_, end) = flow(&p).await;
    assert!(matches!(end, End::Client(_)), "{end:?}");
}

#[tokio::test]
async fn the_upstream_learns_who_signed_in_and_nothing_spoofed() {
    let idp = start_fake().await;
    let up = crate::helpers::start_upstream().await;
    let mut args = oidc_args(&idp);
    args.extend([
        "--header-mapping".to_string(),
        "/sub:X-User-Sub,/groups:X-Teams".to_string(),
        "--proxy-headers".to_string(),
        "X-Static:static-value".to_string(),
        up.url("/mcp"),
    ]);
    let p = proxy_with(&args).await;
    let access = &signed_in_token(&p).await;
    let echoed = crate::helpers::echoed_ping(
        crate::helpers::client()
            .post(p.url("/mcp"))
            .bearer_auth(access)
            .header("x-forwarded-user", "root@evil.example")
            .header("x-forwarded-provider", "password")
            .header("X-Forwarded-Email", "root@evil.example")
            .header("x-forwarded-groups", "admins")
            .header("x-user-sub", "root")
            .header("x-teams", "admins"),
    )
    .await;
    let h = &echoed["headers"];
    // One sign-in method: the bare user, as sigbit sends it; the provider always.
    assert_eq!(h["x-forwarded-user"], "ann@example.com");
    assert_eq!(h["x-forwarded-provider"], "oidc");
    assert_eq!(h["x-forwarded-email"], "ann@example.com");
    assert_eq!(h["x-forwarded-name"], "ann Name");
    assert_eq!(h["x-user-sub"], "ann", "mapped from the claims");
    assert!(
        h.get("x-forwarded-groups").is_none(),
        "no groups: no header, {h}"
    );
    assert!(h.get("x-teams").is_none(), "an empty claim: no header");
    assert_eq!(h["x-static"], "static-value");
    assert!(
        h.get("authorization").is_none(),
        "the client's token never goes upstream"
    );

    // The forward-auth endpoint answers the same identity to a front proxy.
    let ok = crate::helpers::client()
        .get(p.url("/authenticate"))
        .bearer_auth(access)
        .header("x-forwarded-uri", "/mcp")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), S::OK);
    assert_eq!(ok.headers()["x-forwarded-user"], "ann@example.com");
    assert_eq!(ok.headers()["x-user-sub"], "ann");
    // Its query is the front proxy's (Caddy's `uri`, nginx's `auth_request` location), not
    // the client's: a token-looking parameter there is not the client's doing.
    let with_query = crate::helpers::client()
        .get(p.url("/authenticate?access_token=from-the-front-proxy-config"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(with_query.status(), S::OK);
    for bad in [None, Some("not-a-token")] {
        let mut req = crate::helpers::client().get(p.url("/authenticate"));
        if let Some(b) = bad {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), S::UNAUTHORIZED);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("resource_metadata=\"http"),
            "{challenge}"
        );
    }
}

/// Checks an assertion with jsonwebtoken against a JWKS: its claims, or why not (the error
/// kind, or that its key is not published).
fn checked(jwt: &str, jwks: &Value, issuer: &str, audience: &str) -> Result<Value, String> {
    checked_later(jwt, jwks, issuer, audience, 0)
}

/// [`checked`] as a verifier checks it `later` seconds from now, with no leeway.
fn checked_later(
    jwt: &str,
    jwks: &Value,
    issuer: &str,
    audience: &str,
    later: u64,
) -> Result<Value, String> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let kid = jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
    let Some(jwk) = set.find(&kid) else {
        return Err("its key is not published".to_string());
    };
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.leeway = 0;
    v.reject_tokens_expiring_in_less_than = later;
    jsonwebtoken::decode::<Value>(jwt, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| format!("{:?}", e.kind()))
}

/// Verifies an assertion with jsonwebtoken against a JWKS; returns its claims.
fn verify(jwt: &str, jwks: &Value, issuer: &str, audience: &str) -> Value {
    checked(jwt, jwks, issuer, audience).unwrap()
}

/// A proxy signing identity assertions for its upstream (keys rotating hourly) on a manual
/// clock, and a signed-in user's access token.
struct Asserting {
    _idp: FakeIdp,
    up: crate::helpers::Upstream,
    clock: mcp_auth_proxy::clock::Clock,
    p: TestProxy,
    access: String,
}

impl Asserting {
    async fn start() -> Self {
        let idp = start_fake().await;
        let up = crate::helpers::start_upstream().await;
        let clock =
            mcp_auth_proxy::clock::Clock::manual(mcp_auth_proxy::clock::Clock::system().now());
        let upstream = up.url("/mcp");
        let p = oidc_proxy_on(
            &idp,
            &clock,
            &[
                "--proxy-forward-authorization",
                "--jwt-key-rotation",
                "1h",
                "--access-token-ttl",
                "1d",
                &upstream,
            ],
        )
        .await;
        let access = signed_in_token(&p).await;
        Self {
            _idp: idp,
            up,
            clock,
            p,
            access,
        }
    }

    /// The assertion the upstream gets with a call made with `access`.
    async fn assertion(&self, access: &str) -> String {
        let echoed = crate::helpers::echoed_ping(
            crate::helpers::client()
                .post(self.p.url("/mcp"))
                .bearer_auth(access),
        )
        .await;
        let auth = echoed["headers"]["authorization"].as_str().unwrap();
        assert!(!auth.contains(access), "never the client's token");
        auth.strip_prefix("Bearer ").unwrap().to_string()
    }

    async fn jwks(&self) -> Value {
        crate::helpers::get_json(self.p.url("/.well-known/jwks.json")).await
    }

    fn issuer(&self) -> String {
        self.p.state.site().server.origin.as_str().to_string()
    }

    fn audience(&self) -> String {
        format!("http://{}", self.up.addr)
    }
}

#[tokio::test]
async fn the_upstream_gets_a_signed_assertion_that_survives_key_rotation() {
    let a = Asserting::start().await;
    let meta: Value =
        crate::helpers::get_json(a.p.url("/.well-known/oauth-authorization-server")).await;
    let jwks_uri = meta["jwks_uri"].as_str().unwrap().to_string();
    assert!(jwks_uri.ends_with("/.well-known/jwks.json"));
    let (issuer, audience) = (a.issuer(), a.audience());
    let first = a.assertion(&a.access).await;
    let claims = verify(&first, &a.jwks().await, &issuer, &audience);
    assert_eq!(claims["sub"], "oidc:ann@example.com");
    assert_eq!(claims["email"], "ann@example.com");
    assert!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 300);

    // Two hours on: a new key signs; the old one is still published, both verify.
    a.clock.advance(2 * 3600);
    let second = a.assertion(&a.access).await;
    let (h1, h2) = (
        jsonwebtoken::decode_header(&first).unwrap(),
        jsonwebtoken::decode_header(&second).unwrap(),
    );
    assert_ne!(h1.kid, h2.kid, "rotated");
    let set = a.jwks().await;
    assert_eq!(set["keys"].as_array().unwrap().len(), 2);
    verify(&first, &set, &issuer, &audience);
    verify(&second, &set, &issuer, &audience);
}

/// What an upstream checking our identity assertion must refuse, and does with a stock JWT
/// library: another audience, an assertion whose five minutes have passed, a key we no
/// longer publish (its assertions have expired), and our own gate refuses the assertion as
/// an access token (no token confusion). The published keys hold no private part.
#[tokio::test]
async fn an_identity_assertion_is_good_for_one_audience_five_minutes_and_a_published_key() {
    let a = Asserting::start().await;
    let (issuer, audience) = (a.issuer(), a.audience());
    let checked = |jwt: &str, set: &Value, aud: &str| checked(jwt, set, &issuer, aud);
    let (p, clock) = (&a.p, &a.clock);
    let assertion = || a.assertion(&a.access);
    let jwks = || a.jwks();
    let first = assertion().await;
    let set = jwks().await;
    for key in set["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none(), "{key}");
        }
    }
    assert!(checked(&first, &set, &audience).is_ok());
    assert_eq!(
        checked(&first, &set, "https://other-upstream.example").unwrap_err(),
        "InvalidAudience"
    );
    // It lives five minutes: a verifier takes it near their end and refuses it after.
    assert!(checked_later(&first, &set, &issuer, &audience, 290).is_ok());
    assert_eq!(
        checked_later(&first, &set, &issuer, &audience, 301).unwrap_err(),
        "ExpiredSignature"
    );
    // Our gate knows it for what it is: not one of our access tokens.
    let confused = crate::helpers::client()
        .post(p.url("/mcp"))
        .bearer_auth(&first)
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(confused.status(), S::UNAUTHORIZED);

    // Rotated: the old key stays published while its assertions may live (5 minutes and a
    // minute's grace), and is gone after, long before the next rotation.
    clock.advance(2 * 3600);
    let second = assertion().await;
    assert!(checked(&first, &jwks().await, &audience).is_ok());
    clock.advance(6 * 60 + 1);
    let third = assertion().await;
    let set = jwks().await;
    assert_eq!(
        checked(&first, &set, &audience).unwrap_err(),
        "its key is not published"
    );
    assert!(checked(&second, &set, &audience).is_ok());
    assert!(checked(&third, &set, &audience).is_ok());
}

#[tokio::test]
async fn the_provider_token_goes_upstream_sealed_at_rest_and_refreshed() {
    let idp = start_fake().await;
    let up = crate::helpers::start_upstream().await;
    let clock = mcp_auth_proxy::clock::Clock::manual(mcp_auth_proxy::clock::Clock::system().now());
    let upstream = up.url("/mcp");
    let p = oidc_proxy_on(
        &idp,
        &clock,
        &["--pass-access-token", "--access-token-ttl", "1d", &upstream],
    )
    .await;
    let access = signed_in_token(&p).await;
    let upstream_token = || {
        let (url, access) = (p.url("/mcp"), access.clone());
        async move {
            let echoed = crate::helpers::echoed_ping(
                crate::helpers::client()
                    .post(url)
                    .bearer_auth(access)
                    .header("x-forwarded-access-token", "spoofed"),
            )
            .await;
            echoed["headers"]["x-forwarded-access-token"]
                .as_str()
                .map(str::to_string)
        }
    };
    let first = upstream_token().await.expect("the provider token");
    assert!(first.starts_with("at-ann-"), "{first}");
    // Close to its expiry the token is refreshed at the provider before it goes upstream.
    clock.advance(280);
    let second = upstream_token().await.expect("a refreshed token");
    assert!(second.starts_with("at-ann-") && second != first, "{second}");

    // At rest the provider's tokens are sealed: no plaintext in the store's files.
    let dir = p.stop().await;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                for needle in [first.as_bytes(), second.as_bytes(), b"rt-ann-".as_slice()] {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "plaintext in {}",
                        path.display()
                    );
                }
            }
        }
    }
}

/// A proxy signing in with the fake's GitHub, with `extra` arguments.
async fn github_proxy(idp: &FakeIdp, extra: &[&str], dir: tempfile::TempDir) -> TestProxy {
    let (url, api) = (format!("{}/", idp.base), format!("{}/api/v3", idp.base));
    let mut args = vec![
        "--no-password",
        "--github-client-id",
        "gh-id",
        "--github-client-secret",
        "gh-secret",
        "--github-url",
        &url,
        "--github-api-url",
        &api,
    ];
    args.extend_from_slice(extra);
    crate::helpers::start_proxy_with(&args, mcp_auth_proxy::clock::Clock::system(), dir).await
}

#[tokio::test]
async fn a_membership_that_ends_at_the_provider_ends_refreshes_and_sessions() {
    let idp = start_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let p = github_proxy(&idp, &["--github-allowed-orgs", "acme"], dir).await;
    let t = p.target();
    let mut octo = Account::new("octo", "octo@example.com");
    octo.orgs = vec!["acme".into()];
    idp.sign_in_as(octo);
    let (client, browser, tokens) = signed_in(&p).await;
    // Still a member: the refresh works (the provider was asked).
    let resp = refresh(&t, &client.id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), S::OK);
    let renewed: Value = resp.json().await.unwrap();

    // Removed from the organisation at GitHub; nothing changed here.
    idp.change("octo", |a| a.orgs.clear());
    let resp = refresh(&t, &client.id, renewed["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), S::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("no longer a member"),
        "{body}"
    );
    // The browser session no longer approves apps: /authorize goes to sign-in, not consent.
    let resp = browser
        .http
        .get(client.auth_url(&t, &[]))
        .send()
        .await
        .unwrap();
    assert!(
        location(&resp).starts_with("/.auth/login"),
        "{}",
        location(&resp)
    );
}

#[tokio::test]
async fn a_user_taken_off_the_list_loses_their_grants_at_the_next_start() {
    let idp = start_fake().await;
    let p = github_proxy(
        &idp,
        &["--github-allowed-users", "octo"],
        tempfile::tempdir().unwrap(),
    )
    .await;
    idp.sign_in_as(Account::new("octo", "octo@example.com"));
    let (_, _, tokens) = signed_in(&p).await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let dir = p.stop().await;
    let p = github_proxy(&idp, &["--github-allowed-users", "someone-else"], dir).await;
    // Revoked at startup: the access token, not only the refresh, is dead at once.
    let hash = mcp_auth_proxy::store::TokenHash::of(&access);
    let left = p
        .repo()
        .get::<mcp_auth_proxy::store::TokenRecord>(&hash.0)
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "the access token outlived its user's removal"
    );
}
