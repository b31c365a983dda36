//! The client quirks of docs/design.md ("MCP clients we answer"): each popular MCP client's requests replayed as
//! that client sends them (registration body, authorization parameters, token requests),
//! through the real login and consent pages, ending with its token opening `/mcp`.
//! Metadata documents are served from a local HTTPS server under the clients' real paths.

use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

use crate::cimd::DocServer;
use crate::flow::{Browser, query, token};
use crate::helpers::{TEST_PASSWORD, Target, TestProxy, client, start_proxy, start_upstream};

/// One client's conversation with the proxy.
struct Replay {
    t: Target,
    browser: Browser,
    verifier: String,
    challenge: String,
}

impl Replay {
    fn new(p: &TestProxy) -> Self {
        let verifier = mcp_auth_proxy::tokens::generate("v").replace('_', "-");
        Self {
            t: p.target(),
            browser: Browser::new(),
            challenge: mcp_auth_proxy::oauth::pkce::s256(&verifier),
            verifier,
        }
    }

    /// `POST /register` with the client's own body; the 201 answer.
    async fn register(&self, body: Value) -> Value {
        let resp = client()
            .post(self.t.url("/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{body}");
        let reg: Value = resp.json().await.unwrap();
        assert!(reg["client_id_issued_at"].is_u64());
        assert_eq!(reg["redirect_uris"], body["redirect_uris"]);
        assert!(
            reg["registration_client_uri"]
                .as_str()
                .is_some_and(|u| u.starts_with(&self.t.origin)),
            "Claude abandons the flow without registration_client_uri"
        );
        reg
    }

    /// Sends the browser to `/authorize` with exactly `params` (plus PKCE and state), signs
    /// in and approves; returns where the client gets the answer.
    async fn authorize(&self, client_id: &str, params: &[(&str, &str)]) -> Url {
        let mut all = vec![
            ("response_type", "code"),
            ("client_id", client_id),
            ("code_challenge", self.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "quirk-state"),
        ];
        all.extend(params);
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(all)
            .finish();
        let back = self
            .browser
            .authorize(
                &self.t,
                &self.t.url(&format!("/authorize?{q}")),
                TEST_PASSWORD,
                "approve",
            )
            .await;
        assert_eq!(query(&back, "state").as_deref(), Some("quirk-state"));
        assert_eq!(query(&back, "iss").as_deref(), Some(self.t.origin.as_str()));
        back
    }

    /// Exchanges the code in `back` with the client's token request fields.
    async fn exchange(&self, back: &Url, fields: &[(&str, &str)]) -> Value {
        let code = query(back, "code").expect("a code");
        let mut form = vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".to_string(), code),
            ("code_verifier".to_string(), self.verifier.clone()),
        ];
        form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let resp = token(&self.t, &form).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    async fn refresh(&self, fields: &[(&str, &str)]) -> Value {
        let form: Vec<(String, String)> = [("grant_type", "refresh_token")]
            .iter()
            .chain(fields)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let resp = token(&self.t, &form).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// A public client's whole flow: [`Replay::flow`] with nothing more at the token endpoint.
    async fn public_flow(&self, id: &str, redirect: &str, params: &[(&str, &str)]) -> Value {
        self.flow(id, redirect, params, &[]).await
    }

    /// A whole flow: authorization with `redirect` and `params`, the code exchanged with the
    /// client's id, `redirect` and `token_fields`, the token tried at the gate.
    async fn flow(
        &self,
        id: &str,
        redirect: &str,
        params: &[(&str, &str)],
        token_fields: &[(&str, &str)],
    ) -> Value {
        let mut all = vec![("redirect_uri", redirect)];
        all.extend(params);
        let back = self.authorize(id, &all).await;
        assert!(back.as_str().starts_with(redirect), "{back}");
        let mut fields = vec![("client_id", id), ("redirect_uri", redirect)];
        fields.extend(token_fields);
        let tokens = self.exchange(&back, &fields).await;
        self.opens_the_gate(&tokens).await;
        tokens
    }

    /// The access token opens `/mcp` (the test upstream echoes the request).
    async fn opens_the_gate(&self, tokens: &Value) {
        let resp = client()
            .post(self.t.url("/mcp"))
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// A proxy in front of the echo upstream, with metadata documents served from `docs`.
async fn proxy(docs: &DocServer) -> (TestProxy, crate::helpers::Upstream) {
    let up = start_upstream().await;
    let p = docs.proxy_with(true, &[&up.url("/mcp")]).await;
    (p, up)
}

/// The documents the clients publish, at their real paths on the local server.
fn published(origin: &str) -> Vec<(&'static str, Value)> {
    let doc = |path: &str, name: &str, uris: Value| {
        json!({
            "client_id": format!("{origin}{path}"),
            "client_name": name,
            "redirect_uris": uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })
    };
    vec![
        (
            "/oauth/mcp-oauth-client-metadata",
            doc(
                "/oauth/mcp-oauth-client-metadata",
                "Claude",
                json!([
                    "https://claude.ai/api/mcp/auth_callback",
                    "https://claude.com/api/mcp/auth_callback"
                ]),
            ),
        ),
        (
            "/oauth/claude-code-client-metadata",
            doc(
                "/oauth/claude-code-client-metadata",
                "Claude Code",
                json!(["http://localhost/callback", "http://127.0.0.1/callback"]),
            ),
        ),
        (
            "/oauth/client-metadata.json",
            doc(
                "/oauth/client-metadata.json",
                "Visual Studio Code",
                json!(["http://127.0.0.1:33418/", "https://vscode.dev/redirect"]),
            ),
        ),
    ]
}

#[tokio::test]
async fn claude_ai_probes_both_metadata_paths_registers_confidential_and_refreshes_without_scope() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);

    // Claude probes the root and the path-suffixed forms of both documents.
    let get = |path: &str| {
        let url = r.t.url(path);
        async move {
            let resp = client().get(url).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    let prm = get("/.well-known/oauth-protected-resource").await;
    assert_eq!(prm, get("/.well-known/oauth-protected-resource/mcp").await);
    assert_eq!(prm["resource"], r.t.resource);
    let asm = get("/.well-known/oauth-authorization-server").await;
    assert_eq!(
        asm,
        get("/.well-known/oauth-authorization-server/mcp").await
    );
    // Claude uses a metadata document only when `none` is listed.
    assert_eq!(asm["client_id_metadata_document_supported"], true);
    assert!(
        asm["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("none"))
    );

    // Registration with client_secret_post; a new one on every connection.
    let callback = "https://claude.ai/api/mcp/auth_callback";
    let reg = r
        .register(json!({
            "client_name": "Claude",
            "redirect_uris": [callback],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_post",
        }))
        .await;
    let id = reg["client_id"].as_str().unwrap();
    let secret = reg["client_secret"].as_str().expect("a secret");
    assert!(reg["client_secret_expires_at"].is_u64());

    // No offline_access asked; the resource named.
    let tokens = r
        .flow(
            id,
            callback,
            &[("scope", "mcp"), ("resource", &r.t.resource)],
            &[("client_secret", secret), ("resource", &r.t.resource)],
        )
        .await;
    // A refresh token anyway, and a refresh without `scope` works.
    let rt = tokens["refresh_token"].as_str().expect("a refresh token");
    let again = r
        .refresh(&[
            ("refresh_token", rt),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .await;
    assert_ne!(again["refresh_token"], tokens["refresh_token"]);
    r.opens_the_gate(&again).await;

    // Claude.ai by its metadata document (public, callback on claude.com too).
    let id = docs.id("/oauth/mcp-oauth-client-metadata");
    let callback = "https://claude.com/api/mcp/auth_callback";
    r.public_flow(&id, callback, &[("resource", &r.t.resource)])
        .await;
}

#[tokio::test]
async fn claude_code_uses_port_less_loopback_uris_with_a_port_and_a_loose_resource() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);

    // Its metadata document lists port-less loopback URIs; it listens on a random port and
    // sends no `resource`.
    let id = docs.id("/oauth/claude-code-client-metadata");
    let redirect = "http://localhost:49152/callback";
    r.public_flow(&id, redirect, &[("scope", "mcp offline_access")])
        .await;

    // Registered instead, with `resource` carrying a trailing slash on both requests.
    let reg = r
        .register(json!({
            "client_name": "Claude Code (quirks)",
            "redirect_uris": ["http://localhost:54545/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    let id = reg["client_id"].as_str().unwrap();
    let slashed = format!("{}/", r.t.resource);
    let redirect = "http://localhost:54545/callback";
    let tokens = r
        .flow(
            id,
            redirect,
            &[("resource", slashed.as_str())],
            &[("resource", slashed.as_str())],
        )
        .await;
    let again = r
        .refresh(&[
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", id),
            ("resource", slashed.as_str()),
        ])
        .await;
    r.opens_the_gate(&again).await;
}

#[tokio::test]
async fn chatgpt_registers_its_per_app_connector_callback() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);
    for callback in [
        "https://chatgpt.com/connector/oauth/c7K2pQ9xLm",
        "https://chatgpt.com/connector_platform_oauth_redirect",
    ] {
        let reg = r
            .register(json!({
                "client_name": "ChatGPT",
                "redirect_uris": [callback],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_post",
                "scope": "mcp",
            }))
            .await;
        let id = reg["client_id"].as_str().unwrap();
        let secret = reg["client_secret"].as_str().unwrap();
        r.flow(
            id,
            callback,
            &[("scope", "mcp"), ("resource", &r.t.resource)],
            &[("client_secret", secret)],
        )
        .await;
    }
}

#[tokio::test]
async fn vs_code_omits_the_auth_method_and_falls_back_to_a_random_loopback_port() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);
    let reg = r
        .register(json!({
            "client_name": "Visual Studio Code",
            "redirect_uris": ["http://127.0.0.1:33418/", "https://vscode.dev/redirect"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }))
        .await;
    assert_eq!(reg["token_endpoint_auth_method"], "none");
    assert!(reg.get("client_secret").is_none());
    let id = reg["client_id"].as_str().unwrap();
    // Port 33418 was taken: VS Code listens on another one.
    let redirect = "http://127.0.0.1:51234/";
    r.public_flow(
        id,
        redirect,
        &[("scope", "mcp"), ("resource", &r.t.resource)],
    )
    .await;

    // And by its metadata document, through vscode.dev's redirect.
    let id = docs.id("/oauth/client-metadata.json");
    r.public_flow(
        &id,
        "https://vscode.dev/redirect",
        &[("resource", &r.t.resource)],
    )
    .await;
}

#[tokio::test]
async fn cursor_registers_three_redirect_uris_including_its_own_scheme() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);
    let uris = [
        "cursor://anysphere.cursor-mcp/oauth/callback",
        "https://www.cursor.com/agents/mcp/oauth/callback",
        "http://localhost:8787/callback",
    ];
    let reg = r
        .register(json!({
            "client_name": "Cursor",
            "redirect_uris": uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    let id = reg["client_id"].as_str().unwrap();
    // The answer goes to cursor://… (the flow checks where it was sent).
    r.public_flow(id, uris[0], &[("resource", &r.t.resource)])
        .await;
}

#[tokio::test]
async fn mcp_remote_asks_offline_access_with_prompt_consent() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);
    let redirect = "http://localhost:13579/oauth/callback";
    let reg = r
        .register(json!({
            "redirect_uris": [redirect],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "MCP CLI Proxy",
            "client_uri": "https://github.com/modelcontextprotocol/mcp-cli",
            "software_id": "2e6dc280-f3c3-4e01-99a7-8181dbd1d23d",
            "software_version": "0.1.29",
        }))
        .await;
    let id = reg["client_id"].as_str().unwrap();
    for round in 0..2 {
        if round == 1 {
            // Approved once and signed in: a public client answering on loopback is shown
            // the consent page every time (any local process could use its id), with or
            // without prompt=consent.
            for (prompt, asks_again) in [("", true), ("consent", true)] {
                let q = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs([
                        ("response_type", "code"),
                        ("client_id", id),
                        ("redirect_uri", redirect),
                        ("code_challenge", r.challenge.as_str()),
                        ("code_challenge_method", "S256"),
                        ("scope", "offline_access"),
                        ("prompt", prompt),
                    ])
                    .finish();
                let resp = r
                    .browser
                    .http
                    .get(r.t.url(&format!("/authorize?{q}")))
                    .send()
                    .await
                    .unwrap();
                let consent = r
                    .browser
                    .http
                    .get(r.t.url(&crate::flow::location(&resp)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    consent.status() == StatusCode::OK,
                    asks_again,
                    "prompt={prompt:?}"
                );
                if !asks_again {
                    assert!(crate::flow::location(&consent).starts_with(redirect));
                }
            }
        }
        // prompt=consent: the consent page every time, even though it was approved once.
        let tokens = r
            .public_flow(
                id,
                redirect,
                &[
                    ("scope", "offline_access"),
                    ("prompt", "consent"),
                    ("resource", &r.t.resource),
                ],
            )
            .await;
        assert_eq!(tokens["scope"], "mcp offline_access");
        assert!(tokens["refresh_token"].is_string());
    }
}

#[tokio::test]
async fn the_inspector_registers_its_two_callbacks() {
    let docs = DocServer::start_with(published).await;
    let (p, _up) = proxy(&docs).await;
    let r = Replay::new(&p);
    let uris = [
        "http://localhost:6274/oauth/callback",
        "http://localhost:6274/oauth/callback/debug",
    ];
    let reg = r
        .register(json!({
            "redirect_uris": uris,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "MCP Inspector",
            "client_uri": "https://github.com/modelcontextprotocol/inspector",
        }))
        .await;
    let id = reg["client_id"].as_str().unwrap();
    for redirect in uris {
        r.public_flow(
            id,
            redirect,
            &[("scope", "mcp"), ("resource", &r.t.resource)],
        )
        .await;
    }
}

#[tokio::test]
async fn a_wrong_resource_is_invalid_target_not_a_silent_rebind() {
    let p = start_proxy(&[]).await;
    let r = Replay::new(&p);
    let reg = r
        .register(json!({"client_name": "x", "redirect_uris": ["http://localhost/cb"]}))
        .await;
    let id = reg["client_id"].as_str().unwrap();
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", id),
            ("redirect_uri", "http://localhost:9/cb"),
            ("code_challenge", r.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", "https://elsewhere.example/mcp"),
        ])
        .finish();
    let resp = client()
        .get(r.t.url(&format!("/authorize?{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let back = Url::parse(&crate::flow::location(&resp)).unwrap();
    assert_eq!(query(&back, "error").as_deref(), Some("invalid_target"));
}
