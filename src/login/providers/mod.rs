//! Sign-in at Google, GitHub or an OpenID Connect provider.
//!
//! Every provider runs the authorization code flow with PKCE and a `state` (single use,
//! expiring, bound to the browser by a cookie; see [`super::upstream`]); OIDC adds a `nonce`.
//! Token requests go through the oauth2 crate over our reqwest client (no redirects,
//! timeouts). Who the user is comes from the provider: the validated ID token and userinfo
//! (OIDC), Google's userinfo (`email_verified` required), GitHub's API (a primary verified
//! email when the profile hides it; organisations and teams over every page). Allow-lists
//! compare normalised values and fail closed.

mod fetch;
mod github;
mod google;
mod oidc;

use jsonwebtoken::jwk::JwkSet;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::config::{GitHubConfig, GoogleConfig, ProvidersConfig, Site, normalize_user};
use crate::store::Identity;

use self::{
    fetch::{FetchError, get_document, get_json, http_client, send},
    github::{github_allows, github_identity},
    google::{google_allows, google_identity},
    oidc::{Oidc, discover, identity_of_claims, oidc_allows, oidc_identity},
};

/// The token answer: OAuth 2.0's plus the OIDC `id_token`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type TokenAnswer = StandardTokenResponse<IdTokenField, BasicTokenType>;

type OAuthClient = Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The providers could not be set up at startup.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the HTTP client could not be set up: {}", crate::error::chain(.0))]
    Client(reqwest::Error),
    #[error("{what}: {source}")]
    Url {
        what: String,
        source: url::ParseError,
    },
    #[error(
        "the OIDC discovery document at {url} could not be fetched after {attempts} attempts: {last}"
    )]
    Discovery {
        url: Url,
        attempts: u32,
        last: Box<FetchError>,
    },
}

impl ProviderError {
    fn url(what: impl Into<String>) -> impl FnOnce(url::ParseError) -> Self {
        let what = what.into();
        move |source| Self::Url { what, source }
    }
}

/// Why a sign-in at a provider failed (logged; people see a short page).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the provider refused the code: {0}")]
    Token(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the ID token is not valid: {0}")]
    IdToken(#[from] IdTokenError),
    #[error("the provider's answer could not be read: {0}")]
    Answer(#[from] AnswerError),
    #[error("the provider's answer could not be read: {0}")]
    Fetch(#[from] FetchError),
    #[error("the account has no verified email")]
    Unverified,
}

/// Why an OpenID Connect ID token was not believed.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("the provider sent none")]
    Missing,
    #[error("the provider's keys are unavailable: {0}")]
    Keys(#[source] FetchError),
    #[error("signed with an unknown key")]
    UnknownKey,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(jsonwebtoken::Algorithm),
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("the ID token was issued to another client (azp)")]
    OtherClient,
    #[error("the nonce does not match")]
    Nonce,
}

/// An authorization response that may come from another provider than ours (RFC 9207).
#[derive(Debug, thiserror::Error)]
pub enum MixUp {
    #[error("the answer names another issuer ({0})")]
    OtherIssuer(String),
    #[error("the answer names no issuer, though the provider always names itself")]
    NoIssuer,
}

/// Why a provider's answer (profile, userinfo, membership lists) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("more than {0} pages")]
    TooManyPages(usize),
    #[error("{url}: not a list")]
    NotAList { url: String },
    #[error("no login in the profile")]
    NoLogin,
    #[error("userinfo names another subject than the ID token")]
    OtherSubject,
    #[error("the provider has no userinfo endpoint to ask")]
    NoUserinfo,
    #[error("no user id at {0} in the claims")]
    NoUserId(String),
}

/// The user's tokens at the provider (sent upstream with `--pass-access-token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderTokens {
    pub access: String,
    #[serde(default)]
    pub refresh: Option<String>,
    /// Unix time; `None` when the provider did not say.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl ProviderTokens {
    fn from_answer(answer: &TokenAnswer, now: u64, previous_refresh: Option<String>) -> Self {
        Self {
            access: answer.access_token().secret().clone(),
            refresh: answer
                .refresh_token()
                .map(|r| r.secret().clone())
                .or(previous_refresh),
            expires_at: answer.expires_in().map(|d| now + d.as_secs()),
        }
    }
}

/// One configured provider.
pub struct Provider {
    /// `google`, `github` or `oidc`: in paths and in subjects.
    pub id: &'static str,
    /// The button's label.
    pub label: String,
    oauth: OAuthClient,
    scopes: Vec<String>,
    kind: Kind,
}

enum Kind {
    Google(GoogleConfig),
    GitHub(GitHubConfig),
    Oidc(Box<Oidc>),
}

/// The configured providers and the HTTP client they use.
pub struct Providers {
    pub list: Vec<Provider>,
    http: reqwest::Client,
    /// With exactly one provider and no password, go straight to it.
    pub auto_select: bool,
}

fn oauth_client(
    client_id: &str,
    secret: Option<&str>,
    auth: &Url,
    token: &Url,
    redirect: Url,
    auth_type: AuthType,
) -> OAuthClient {
    let c = Client::new(ClientId::new(client_id.to_string()))
        .set_auth_uri(AuthUrl::from_url(auth.clone()))
        .set_token_uri(TokenUrl::from_url(token.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect))
        .set_auth_type(auth_type);
    match secret {
        Some(s) => c.set_client_secret(ClientSecret::new(s.to_string())),
        None => c,
    }
}

impl Providers {
    /// Sets up the configured providers; fetches the OIDC discovery document (retrying with
    /// backoff; startup fails with a clear error if it never answers).
    pub async fn new(cfg: &ProvidersConfig, site: &Site) -> Result<Self, ProviderError> {
        let http = http_client()?;
        let callback = |id: &str| {
            Url::parse(&format!("{}/.auth/{id}/callback", site.home.as_str()))
                .map_err(ProviderError::url("the callback URL"))
        };
        let mut list = Vec::new();
        if let Some(g) = &cfg.google {
            list.push(Provider {
                id: "google",
                label: "Google".into(),
                oauth: oauth_client(
                    &g.client_id,
                    Some(g.client_secret.expose()),
                    &g.auth_url,
                    &g.token_url,
                    callback("google")?,
                    AuthType::RequestBody,
                ),
                scopes: vec!["openid".into(), "email".into(), "profile".into()],
                kind: Kind::Google(g.clone()),
            });
        }
        if let Some(g) = &cfg.github {
            let join = |path: &str| {
                g.web_url
                    .join(path)
                    .map_err(ProviderError::url("--github-url"))
            };
            let mut scopes = vec!["read:user".to_string(), "user:email".to_string()];
            if !g.allowed_orgs.is_empty() {
                scopes.push("read:org".into());
            }
            list.push(Provider {
                id: "github",
                label: "GitHub".into(),
                oauth: oauth_client(
                    &g.client_id,
                    Some(g.client_secret.expose()),
                    &join("login/oauth/authorize")?,
                    &join("login/oauth/access_token")?,
                    callback("github")?,
                    AuthType::RequestBody,
                ),
                scopes,
                kind: Kind::GitHub(g.clone()),
            });
        }
        if let Some(o) = &cfg.oidc {
            let d = discover(&http, &o.configuration_url).await?;
            let url = |what: &str, v: &str| {
                Url::parse(v).map_err(ProviderError::url(format!(
                    "the discovery document's {what}"
                )))
            };
            let auth_type = if o.client_secret.is_some()
                && !d.token_endpoint_auth_methods_supported.is_empty()
                && !d
                    .token_endpoint_auth_methods_supported
                    .iter()
                    .any(|m| m == "client_secret_basic")
            {
                AuthType::RequestBody
            } else {
                AuthType::BasicAuth
            };
            let oidc = Oidc {
                cfg: o.clone(),
                issuer: d.issuer.clone(),
                iss_in_responses: d.authorization_response_iss_parameter_supported,
                userinfo: d
                    .userinfo_endpoint
                    .as_deref()
                    .map(|u| url("userinfo_endpoint", u))
                    .transpose()?,
                jwks_uri: url("jwks_uri", &d.jwks_uri)?,
                jwks: tokio::sync::RwLock::new(JwkSet { keys: Vec::new() }),
            };
            if let Err(e) = oidc.refresh_keys(&http).await {
                tracing::warn!(error = %e, "the OIDC provider's keys could not be fetched yet; retrying at the first sign-in");
            }
            list.push(Provider {
                id: "oidc",
                label: o.label.clone(),
                oauth: oauth_client(
                    &o.client_id,
                    o.client_secret.as_ref().map(|s| s.expose()),
                    &url("authorization_endpoint", &d.authorization_endpoint)?,
                    &url("token_endpoint", &d.token_endpoint)?,
                    callback("oidc")?,
                    auth_type,
                ),
                scopes: o.scopes.clone(),
                kind: Kind::Oidc(Box::new(oidc)),
            });
        }
        Ok(Self {
            list,
            http,
            auto_select: cfg.auto_select,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.id == id)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whether an identity from an earlier sign-in at a provider is allowed today.
    pub fn still_allowed(&self, identity: &Identity) -> bool {
        self.get(&identity.provider)
            .is_some_and(|p| p.allows(identity))
    }
}

impl Provider {
    /// Where the browser goes to sign in.
    pub fn authorize_url(&self, state: &str, verifier: &str, nonce: &str) -> Url {
        let challenge =
            PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.into()));
        let state = state.to_string();
        let mut req = self
            .oauth
            .authorize_url(move || CsrfToken::new(state))
            .set_pkce_challenge(challenge)
            .add_scopes(self.scopes.iter().cloned().map(Scope::new));
        if matches!(self.kind, Kind::Oidc(_) | Kind::Google(_)) {
            req = req.add_extra_param("nonce", nonce.to_string());
        }
        req.url().0
    }

    /// The mix-up defence of RFC 9207 for an authorization response naming `iss`: an OpenID
    /// provider's answer must name its issuer when it names one, and must name one when the
    /// provider says it always does. (Each provider also has its own callback address and
    /// its state records which provider it was sent to: RFC 9700 §4.4.2.) Google and GitHub
    /// promise no `iss`, so theirs is not read.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), MixUp> {
        let Kind::Oidc(o) = &self.kind else {
            return Ok(());
        };
        match iss {
            Some(iss) if iss != o.issuer => Err(MixUp::OtherIssuer(iss.to_string())),
            None if o.iss_in_responses => Err(MixUp::NoIssuer),
            _ => Ok(()),
        }
    }

    /// Trades the code for tokens and finds out who signed in.
    pub async fn sign_in(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: u64,
    ) -> Result<(Identity, ProviderTokens), SignInError> {
        let client = http.clone();
        let send_fn = move |req| send(client.clone(), req);
        let answer = self
            .oauth
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&send_fn)
            .await
            .map_err(|e| SignInError::Token(e.into()))?;
        let access = answer.access_token().secret().clone();
        let identity = match &self.kind {
            Kind::Google(g) => google_identity(http, g.userinfo_url.as_str(), &access).await,
            Kind::GitHub(cfg) => github_identity(http, cfg, &access).await,
            Kind::Oidc(oidc) => {
                let id_token = answer
                    .extra_fields()
                    .id_token
                    .as_deref()
                    .ok_or(IdTokenError::Missing)?;
                oidc_identity(http, oidc, id_token, nonce, &access).await
            }
        }?;
        Ok((identity, ProviderTokens::from_answer(&answer, now, None)))
    }

    /// New tokens for a refresh token.
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        refresh: &str,
        now: u64,
    ) -> Result<ProviderTokens, SignInError> {
        let client = http.clone();
        let send_fn = move |req| send(client.clone(), req);
        let answer = self
            .oauth
            .exchange_refresh_token(&oauth2::RefreshToken::new(refresh.to_string()))
            .request_async(&send_fn)
            .await
            .map_err(|e| SignInError::Token(e.into()))?;
        Ok(ProviderTokens::from_answer(
            &answer,
            now,
            Some(refresh.to_string()),
        ))
    }

    /// Whether `identity` is admitted only by a membership the provider reports (a GitHub
    /// organisation or team, a Google Workspace, an OIDC group or other claim), which can
    /// end at the provider without any change here, rather than by the operator's list of
    /// users (or everyone being allowed).
    pub fn admits_by_membership(&self, identity: &Identity) -> bool {
        let user = normalize_user(&identity.user_id);
        match &self.kind {
            Kind::Google(g) => {
                let email = identity.email.as_deref().and_then(normalize_user);
                !g.allow_all && !email.is_some_and(|e| g.allowed_users.contains(&e))
            }
            Kind::GitHub(g) => {
                !g.allow_all
                    && !g
                        .allowed_users
                        .contains(&identity.user_id.to_ascii_lowercase())
            }
            Kind::Oidc(o) => {
                let c = &o.cfg;
                let listed = user.is_some_and(|u| {
                    c.allowed_users.contains(&u)
                        || c.allowed_globs
                            .iter()
                            .any(|g| wildmatch::WildMatch::new(g).matches(&u))
                });
                !c.allow_all && !listed
            }
        }
    }

    /// Who the provider says `identity` is today, asked with the user's stored provider
    /// access token: GitHub's and Google's user APIs; an OIDC provider's userinfo over the
    /// claims of the sign-in (without userinfo there is nothing to ask: an error).
    pub async fn current_identity(
        &self,
        http: &reqwest::Client,
        identity: &Identity,
        access: &str,
    ) -> Result<Identity, SignInError> {
        match &self.kind {
            Kind::Google(g) => google_identity(http, g.userinfo_url.as_str(), access).await,
            Kind::GitHub(cfg) => github_identity(http, cfg, access).await,
            Kind::Oidc(oidc) => {
                let Some(userinfo) = &oidc.userinfo else {
                    return Err(AnswerError::NoUserinfo.into());
                };
                let (info, _) = get_json(http, userinfo.as_str(), access).await?;
                if info.get("sub") != identity.claims.get("sub") {
                    return Err(AnswerError::OtherSubject.into());
                }
                let mut claims = identity.claims.clone();
                if let (Some(c), Value::Object(i)) = (claims.as_object_mut(), info) {
                    c.extend(i);
                }
                identity_of_claims(claims, &oidc.cfg.user_id_field)
            }
        }
    }

    /// Whether today's allow-lists admit `identity`.
    pub fn allows(&self, identity: &Identity) -> bool {
        if identity.provider != self.id {
            return false;
        }
        match &self.kind {
            Kind::Google(g) => google_allows(g, identity),
            Kind::GitHub(g) => github_allows(g, identity),
            Kind::Oidc(o) => oidc_allows(&o.cfg, identity),
        }
    }
}

fn string_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn is_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::fetch::next_link;
    use super::oidc::authorized_party_ok;
    use super::*;
    use crate::config::{AttributeRule, OidcConfig};
    use serde_json::json;

    #[tokio::test]
    async fn an_unreachable_provider_is_named_with_the_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!(
            "http://127.0.0.1:{port}/.well-known/openid-configuration"
        ))
        .unwrap();
        let why = get_document::<Value>(&reqwest::Client::new(), &url, "a document")
            .await
            .unwrap_err()
            .to_string();
        assert!(why.contains("Connection refused"), "{why}");
    }

    fn oidc_cfg() -> OidcConfig {
        OidcConfig {
            configuration_url: Url::parse("https://idp.example/.well-known/openid-configuration")
                .unwrap(),
            client_id: "c".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            user_id_field: "/email".into(),
            label: "IdP".into(),
            allowed_users: vec!["ann@example.com".into()],
            allowed_globs: vec!["*@team.example".into()],
            attributes: vec![AttributeRule {
                pointer: "/groups".into(),
                value: "admins".into(),
            }],
            attribute_globs: vec![AttributeRule {
                pointer: "/org/role".into(),
                value: "lead-*".into(),
            }],
            allow_all: false,
        }
    }

    fn who(user: &str, claims: Value) -> Identity {
        Identity {
            provider: "oidc".into(),
            user_id: user.into(),
            email: None,
            name: None,
            groups: Vec::new(),
            claims,
        }
    }

    #[test]
    fn oidc_allow_lists_are_exact_on_normalised_values() {
        let o = oidc_cfg();
        assert!(oidc_allows(&o, &who("Ann@Example.COM", json!({}))));
        assert!(!oidc_allows(&o, &who("ann@example.com.evil", json!({}))));
        assert!(oidc_allows(&o, &who("bob@team.example", json!({}))));
        assert!(
            !oidc_allows(&o, &who("bob@evil.example@team.example", json!({}))),
            "several @ never match"
        );
        assert!(!oidc_allows(&o, &who("bob@team.example.evil", json!({}))));
        assert!(oidc_allows(
            &o,
            &who("x", json!({"groups": ["users", "admins"]}))
        ));
        assert!(!oidc_allows(
            &o,
            &who("x", json!({"groups": ["admins-not"]}))
        ));
        assert!(oidc_allows(
            &o,
            &who("x", json!({"org": {"role": "lead-ops"}}))
        ));
        assert!(!oidc_allows(&o, &who("x", json!({"org": {"role": "ops"}}))));
    }

    #[test]
    fn the_authorized_party_must_be_us() {
        let ok = |c: Value| authorized_party_ok(&c, "us");
        assert!(ok(json!({"aud": "us"})));
        assert!(ok(json!({"aud": ["us"]})));
        assert!(ok(json!({"aud": ["us", "them"], "azp": "us"})));
        assert!(ok(json!({"aud": "us", "azp": "us"})));
        assert!(!ok(json!({"aud": ["us", "them"], "azp": "them"})));
        assert!(
            !ok(json!({"aud": ["us", "them"]})),
            "several audiences need azp"
        );
        assert!(!ok(json!({"aud": "us", "azp": "them"})));
    }

    #[test]
    fn an_oidc_email_counts_only_when_verified() {
        let named = |claims: Value, field: &str| identity_of_claims(claims, field);
        let by_email = named(
            json!({"sub": "1", "email": "Ann@Example.com", "email_verified": true}),
            "/email",
        )
        .unwrap();
        assert_eq!(by_email.email.as_deref(), Some("ann@example.com"));
        for verified in [json!(false), json!("no"), Value::Null] {
            let mut claims = json!({"sub": "1", "email": "ann@example.com"});
            if !verified.is_null() {
                claims["email_verified"] = verified.clone();
            }
            assert!(
                matches!(
                    named(claims.clone(), "/email"),
                    Err(SignInError::Unverified)
                ),
                "{verified}"
            );
            let by_sub = named(claims, "/sub").unwrap();
            assert_eq!(by_sub.user_id, "1");
            assert_eq!(by_sub.email, None, "{verified}: not sent upstream");
            assert!(
                by_sub.claims.get("email").is_none(),
                "{verified}: not matched"
            );
        }
    }

    #[test]
    fn google_needs_a_verified_email_on_the_list_or_workspace() {
        let g = GoogleConfig {
            client_id: "c".into(),
            client_secret: crate::config::Secret::new("s"),
            allowed_users: vec!["ann@gmail.com".into()],
            allowed_workspaces: vec!["corp.example".into()],
            allow_all: false,
            auth_url: Url::parse("https://a.example").unwrap(),
            token_url: Url::parse("https://a.example").unwrap(),
            userinfo_url: Url::parse("https://a.example").unwrap(),
        };
        let id = |email: &str, claims: Value| Identity {
            provider: "google".into(),
            user_id: email.into(),
            email: Some(email.into()),
            name: None,
            groups: Vec::new(),
            claims,
        };
        assert!(google_allows(
            &g,
            &id("ANN@gmail.com", json!({"email_verified": true}))
        ));
        assert!(google_allows(
            &g,
            &id(
                "x@corp.example",
                json!({"email_verified": true, "hd": "Corp.Example"})
            )
        ));
        assert!(
            !google_allows(&g, &id("x@corp.example", json!({"email_verified": true}))),
            "the domain alone is not the workspace"
        );
        assert!(!google_allows(
            &g,
            &id("ann@gmail.com", json!({"email_verified": false}))
        ));
    }

    #[test]
    fn github_admits_logins_any_case_and_exact_org_rules() {
        let g = GitHubConfig {
            client_id: "c".into(),
            client_secret: crate::config::Secret::new("s"),
            allowed_users: vec!["octocat".into()],
            allowed_orgs: vec!["acme:platform".into()],
            allow_all: false,
            web_url: Url::parse("https://github.com").unwrap(),
            api_url: Url::parse("https://api.github.com").unwrap(),
        };
        let id = |login: &str, groups: &[&str]| Identity {
            provider: "github".into(),
            user_id: login.into(),
            email: None,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: Value::Null,
        };
        assert!(github_allows(&g, &id("OctoCat", &[])));
        assert!(!github_allows(&g, &id("octocat2", &[])));
        assert!(github_allows(&g, &id("dev", &["acme", "acme:platform"])));
        assert!(!github_allows(
            &g,
            &id("dev", &["acme", "acme:platform-ops"])
        ));
        assert!(
            !github_allows(&g, &id("dev", &["acme"])),
            "the org alone is not the team"
        );
    }

    #[test]
    fn github_link_headers_give_the_next_page() {
        let link = r#"<https://api.example/user/orgs?page=2>; rel="next", <https://api.example/user/orgs?page=3>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.example/user/orgs?page=2")
        );
        assert_eq!(next_link(r#"<https://x>; rel="prev""#), None);
    }
}
