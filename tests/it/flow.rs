//! A cookie-keeping "browser" and an OAuth client, for driving the whole sign-in flow.

use mcp_auth_proxy::oauth::pkce;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use url::Url;

use crate::helpers::{TEST_PASSWORD, Target};

/// A browser: keeps cookies, does not follow redirects (the tests look at each hop).
pub struct Browser {
    pub http: reqwest::Client,
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// Follows the authorization URL through login and consent with `password` and
    /// `decision`; returns the URL the browser is finally sent to (the client's redirect).
    pub async fn authorize(
        &self,
        p: &Target,
        auth_url: &str,
        password: &str,
        decision: &str,
    ) -> Url {
        let mut url = auth_url.to_string();
        for _ in 0..10 {
            let resp = self.http.get(&url).send().await.unwrap();
            let status = resp.status();
            if status == StatusCode::SEE_OTHER {
                let loc = location(&resp);
                if !loc.starts_with(&p.origin.clone()) && !loc.starts_with('/') {
                    return Url::parse(&loc).unwrap();
                }
                url = absolute(p, &loc);
                continue;
            }
            assert_eq!(status, StatusCode::OK, "GET {url}");
            let html = resp.text().await.unwrap();
            let resp = if html.contains("name=\"password\"") {
                self.post_form(p, "/.auth/login", &html, &[("password", password)])
                    .await
            } else if html.contains("name=\"decision\"") {
                self.post_form(p, "/.auth/consent", &html, &[("decision", decision)])
                    .await
            } else {
                panic!("unexpected page at {url}: {html}");
            };
            assert_eq!(
                resp.status(),
                StatusCode::SEE_OTHER,
                "{:?}",
                resp.text().await
            );
            let loc = location(&resp);
            if loc.starts_with('/') || loc.starts_with(p.origin.as_str()) {
                url = absolute(p, &loc);
            } else {
                return Url::parse(&loc).unwrap();
            }
        }
        panic!("the flow did not end");
    }

    /// The text of `url`, fetched with this browser's cookies.
    pub async fn text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The page a `303` answer sends the browser to, on the proxy.
    pub async fn follow(&self, p: &Target, resp: &reqwest::Response) -> String {
        self.text(&p.url(&location(resp))).await
    }

    /// Posts a page's form with its hidden fields plus `fields`.
    pub async fn post_form(
        &self,
        p: &Target,
        path: &str,
        html: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form: Vec<(String, String)> = Vec::new();
        for name in ["csrf", "req"] {
            if let Some(v) = hidden(html, name) {
                form.push((name.into(), v));
            }
        }
        form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.http
            .post(p.url(path))
            .form(&form)
            .send()
            .await
            .unwrap()
    }
}

pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string()
}

fn absolute(p: &Target, loc: &str) -> String {
    if loc.starts_with('/') {
        p.url(loc)
    } else {
        // Our own absolute URLs use the external origin; go to the bound address instead.
        let u = Url::parse(loc).unwrap();
        p.url(&format!(
            "{}{}",
            u.path(),
            u.query().map(|q| format!("?{q}")).unwrap_or_default()
        ))
    }
}

/// The value of a hidden input.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(
        html[start..start + end]
            .replace("&#43;", "+")
            .replace("&amp;", "&"),
    )
}

/// A registered client and its PKCE pair.
#[derive(Clone)]
pub struct OAuthClient {
    pub id: String,
    pub secret: Option<String>,
    pub redirect_uri: String,
    pub registration: Value,
    pub verifier: String,
    pub challenge: String,
}

pub const REDIRECT: &str = "http://127.0.0.1:33418/callback";

impl OAuthClient {
    /// Registers a client through `POST /register`.
    pub async fn register(p: &Target, doc: Value) -> OAuthClient {
        let resp = crate::helpers::client()
            .post(p.url("/register"))
            .json(&doc)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let reg: Value = resp.json().await.unwrap();
        let verifier = mcp_auth_proxy::tokens::generate("v").replace('_', "-");
        OAuthClient {
            id: reg["client_id"].as_str().unwrap().to_string(),
            secret: reg["client_secret"].as_str().map(str::to_string),
            redirect_uri: doc["redirect_uris"][0].as_str().unwrap().to_string(),
            challenge: pkce::s256(&verifier),
            verifier,
            registration: reg,
        }
    }

    /// A public client with one loopback redirect URI.
    pub async fn public(p: &Target) -> OAuthClient {
        Self::register(
            p,
            json!({"client_name": "Test Client", "redirect_uris": [REDIRECT]}),
        )
        .await
    }

    /// An authorization URL with the usual parameters, overridden or removed by `changes`
    /// (an empty value removes the parameter).
    pub fn auth_url(&self, p: &Target, changes: &[(&str, &str)]) -> String {
        let resource = p.resource.clone();
        let mut params: Vec<(String, String)> = vec![
            ("response_type".into(), "code".into()),
            ("client_id".into(), self.id.clone()),
            ("redirect_uri".into(), self.redirect_uri.clone()),
            ("code_challenge".into(), self.challenge.clone()),
            ("code_challenge_method".into(), "S256".into()),
            ("state".into(), "st-123".into()),
            ("scope".into(), "mcp offline_access".into()),
            ("resource".into(), resource),
        ];
        for (k, v) in changes {
            params.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                params.push((k.to_string(), v.to_string()));
            }
        }
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        p.url(&format!("/authorize?{q}"))
    }

    /// Token request parameters for a code, overridden or removed by `changes`.
    pub fn code_params(&self, code: &str, changes: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = vec![
            ("grant_type".into(), "authorization_code".into()),
            ("code".into(), code.into()),
            ("redirect_uri".into(), self.redirect_uri.clone()),
            ("code_verifier".into(), self.verifier.clone()),
            ("client_id".into(), self.id.clone()),
        ];
        for (k, v) in changes {
            params.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                params.push((k.to_string(), v.to_string()));
            }
        }
        params
    }

    /// The whole flow for this client; returns the token response.
    pub async fn sign_in(&self, p: &Target, browser: &Browser) -> Value {
        let back = browser
            .authorize(p, &self.auth_url(p, &[]), TEST_PASSWORD, "approve")
            .await;
        let code = query(&back, "code").expect("a code");
        let resp = token(p, &self.code_params(&code, &[])).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }
}

/// A parameter of a URL's query.
pub fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `POST /token` with form parameters.
pub async fn token(p: &Target, params: &[(String, String)]) -> reqwest::Response {
    crate::helpers::client()
        .post(p.url("/token"))
        .form(params)
        .send()
        .await
        .unwrap()
}

/// `POST /token` for a refresh.
pub async fn refresh(p: &Target, client_id: &str, refresh_token: &str) -> reqwest::Response {
    let params = vec![
        ("grant_type".to_string(), "refresh_token".to_string()),
        ("refresh_token".to_string(), refresh_token.to_string()),
        ("client_id".to_string(), client_id.to_string()),
    ];
    token(p, &params).await
}
