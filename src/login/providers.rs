//! Sign-in at Google, GitHub or an OpenID Connect provider.
//!
//! Every provider runs the authorization code flow with PKCE and a `state` (single use,
//! expiring, bound to the browser by a cookie; see [`super::upstream`]); OIDC adds a `nonce`.
//! Token requests go through the oauth2 crate over our reqwest client (no redirects,
//! timeouts). Who the user is comes from the provider: the validated ID token and userinfo
//! (OIDC), Google's userinfo (`email_verified` required), GitHub's API (a primary verified
//! email when the profile hides it; organisations and teams over every page). Allow-lists
//! compare normalised values and fail closed.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use url::Url;

use crate::config::{
    AttributeRule, GitHubConfig, GoogleConfig, OidcConfig, ProvidersConfig, Site, normalize_user,
};
use crate::store::Identity;

/// Longest answer read from a provider.
const MAX_ANSWER: usize = 1024 * 1024;

/// Pages of a GitHub membership list followed at most.
const MAX_PAGES: usize = 50;

/// How long and how often the OIDC discovery document is tried at startup.
const DISCOVERY_ATTEMPTS: u32 = 6;

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
#[error("{0}")]
pub struct ProviderError(String);

/// Why a sign-in at a provider failed (logged; people see a short page).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the provider refused the code: {0}")]
    Token(String),
    #[error("the ID token is not valid: {0}")]
    IdToken(String),
    #[error("the provider's answer could not be read: {0}")]
    Answer(String),
    #[error("the account has no verified email")]
    Unverified,
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

struct Oidc {
    cfg: OidcConfig,
    issuer: String,
    userinfo: Option<Url>,
    jwks_uri: Url,
    /// The provider's keys.
    jwks: tokio::sync::RwLock<JwkSet>,
}

/// The configured providers and the HTTP client they use.
pub struct Providers {
    pub list: Vec<Provider>,
    http: reqwest::Client,
    /// With exactly one provider and no password, go straight to it.
    pub auto_select: bool,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

fn bad(msg: impl Into<String>) -> ProviderError {
    ProviderError(msg.into())
}

/// The client every provider call goes through: no redirects, bounded time.
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("mcp-auth-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            bad(format!(
                "the HTTP client could not be set up: {}",
                crate::error::chain(&e)
            ))
        })
}

/// oauth2's HTTP calls over our reqwest client.
async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_bounded(resp).await.map_err(HttpError)?;
    let mut out = http::Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err("the answer is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GETs JSON with a bearer token; returns it and the `rel="next"` link, if any.
async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<(Value, Option<String>), SignInError> {
    let resp = http
        .get(url)
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| SignInError::Answer(format!("{url}: {e}")))?;
    let status = resp.status();
    let next = resp
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|l| l.to_str().ok())
        .and_then(next_link);
    let body = read_bounded(resp).await.map_err(SignInError::Answer)?;
    if !status.is_success() {
        return Err(SignInError::Answer(format!("{url} answered {status}")));
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| SignInError::Answer(format!("{url}: not JSON: {e}")))?;
    Ok((v, next))
}

/// The `rel="next"` target of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\""))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
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
            Url::parse(&format!("{}/.auth/{id}/callback", site.origin.as_str()))
                .map_err(|e| bad(e.to_string()))
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
                    .map_err(|e| bad(format!("--github-url: {e}")))
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
                Url::parse(v).map_err(|e| bad(format!("the discovery document's {what}: {e}")))
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

async fn discover(http: &reqwest::Client, url: &Url) -> Result<Discovery, ProviderError> {
    let mut wait = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=DISCOVERY_ATTEMPTS {
        match fetch_discovery(http, url).await {
            Ok(d) => return Ok(d),
            Err(e) => {
                tracing::warn!(attempt, url = %url, error = %e, "the OIDC discovery document could not be fetched");
                last = e;
            }
        }
        if attempt < DISCOVERY_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(bad(format!(
        "the OIDC discovery document at {url} could not be fetched after {DISCOVERY_ATTEMPTS} attempts: {last}"
    )))
}

/// GETs a public document (no credentials), bounded; any status but 2xx is an error.
async fn get_document(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    // The whole chain: reqwest's own message ("error sending request") hides the cause
    // (refused, no such host, certificate) in its sources.
    let resp = http
        .get(url.as_str())
        .send()
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let status = resp.status();
    let body = read_bounded(resp).await?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    Ok(body)
}

async fn fetch_discovery(http: &reqwest::Client, url: &Url) -> Result<Discovery, String> {
    let body = get_document(http, url).await?;
    serde_json::from_slice(&body).map_err(|e| format!("it is not a discovery document: {e}"))
}

impl Oidc {
    async fn refresh_keys(&self, http: &reqwest::Client) -> Result<(), String> {
        let body = get_document(http, &self.jwks_uri).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        *self.jwks.write().await = set;
        Ok(())
    }

    /// The key for `kid` (or the only key), refetching the set once if it is not known:
    /// providers rotate keys. (ID tokens arrive only in the provider's own answer to our
    /// token request, so nobody else can make us refetch.)
    async fn key(
        &self,
        http: &reqwest::Client,
        kid: Option<&str>,
    ) -> Result<jsonwebtoken::jwk::Jwk, SignInError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some(k) = find(&*self.jwks.read().await) {
            return Ok(k);
        }
        self.refresh_keys(http)
            .await
            .map_err(|e| SignInError::IdToken(format!("keys unavailable: {e}")))?;
        find(&*self.jwks.read().await)
            .ok_or_else(|| SignInError::IdToken("signed with an unknown key".into()))
    }

    /// Validates an ID token: signature (asymmetric algorithms only), `iss`, `aud`, `exp`,
    /// `nonce`. Returns its claims.
    async fn validate(
        &self,
        http: &reqwest::Client,
        token: &str,
        nonce: &str,
    ) -> Result<Value, SignInError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| SignInError::IdToken(e.to_string()))?;
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        if !allowed.contains(&header.alg) {
            return Err(SignInError::IdToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let jwk = self.key(http, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| SignInError::IdToken(e.to_string()))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 60;
        let data = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|e| SignInError::IdToken(e.to_string()))?;
        let claims = data.claims;
        if !authorized_party_ok(&claims, &self.cfg.client_id) {
            return Err(SignInError::IdToken(
                "the ID token was issued to another client (azp)".into(),
            ));
        }
        let got = claims
            .get("nonce")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bool::from(got.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(SignInError::IdToken("the nonce does not match".into()));
        }
        Ok(claims)
    }
}

/// OpenID Connect Core §2 and §3.1.3.7: when the ID token has several audiences, or names
/// an authorized party, that party (`azp`) must be us; a token whose `aud` lists us beside
/// the client it was really issued to is that client's, not ours.
fn authorized_party_ok(claims: &Value, client_id: &str) -> bool {
    let several = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(azp) => azp.as_str() == Some(client_id),
        None => !several,
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
            .map_err(|e| SignInError::Token(describe_token_error(&e)))?;
        let access = answer.access_token().secret().clone();
        let identity = match &self.kind {
            Kind::Google(g) => google_identity(http, g.userinfo_url.as_str(), &access).await,
            Kind::GitHub(cfg) => github_identity(http, cfg, &access).await,
            Kind::Oidc(oidc) => {
                let id_token = answer
                    .extra_fields()
                    .id_token
                    .as_deref()
                    .ok_or_else(|| SignInError::IdToken("the provider sent none".into()))?;
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
            .map_err(|e| SignInError::Token(describe_token_error(&e)))?;
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
                    return Err(SignInError::Answer(
                        "the provider has no userinfo endpoint to ask".into(),
                    ));
                };
                let (info, _) = get_json(http, userinfo.as_str(), access).await?;
                if info.get("sub") != identity.claims.get("sub") {
                    return Err(SignInError::Answer("userinfo names another subject".into()));
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

fn describe_token_error<RE: std::error::Error + 'static>(
    e: &oauth2::RequestTokenError<RE, BasicErrorResponse>,
) -> String {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => format!(
            "{}{}",
            r.error(),
            r.error_description()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        other => other.to_string(),
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

async fn google_identity(
    http: &reqwest::Client,
    userinfo: &str,
    access: &str,
) -> Result<Identity, SignInError> {
    let (info, _) = get_json(http, userinfo, access).await?;
    if !is_true(info.get("email_verified")) {
        return Err(SignInError::Unverified);
    }
    let email = string_at(&info, "/email")
        .and_then(normalize_user)
        .filter(|e| e.contains('@'))
        .ok_or(SignInError::Unverified)?;
    Ok(Identity {
        provider: "google".into(),
        user_id: email.clone(),
        email: Some(email),
        name: string_at(&info, "/name").map(str::to_string),
        groups: Vec::new(),
        claims: json!({
            "sub": info.get("sub"),
            "hd": info.get("hd"),
            "email_verified": true,
        }),
    })
}

fn google_allows(g: &GoogleConfig, identity: &Identity) -> bool {
    let Some(email) = identity.email.as_deref().and_then(normalize_user) else {
        return false;
    };
    if !is_true(identity.claims.get("email_verified")) {
        return false;
    }
    let hd = string_at(&identity.claims, "/hd").map(str::to_ascii_lowercase);
    g.allow_all
        || g.allowed_users.contains(&email)
        || hd.is_some_and(|hd| g.allowed_workspaces.contains(&hd))
}

/// Every element of a paginated GitHub list (following `Link: rel="next"`).
async fn github_all(
    http: &reqwest::Client,
    first: String,
    token: &str,
) -> Result<Vec<Value>, SignInError> {
    let mut out = Vec::new();
    let mut next = Some(first);
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(SignInError::Answer("too many pages".into()));
        }
        let (v, n) = get_json(http, &url, token).await?;
        match v {
            Value::Array(items) => out.extend(items),
            _ => return Err(SignInError::Answer(format!("{url}: not a list"))),
        }
        next = n;
    }
    Ok(out)
}

async fn github_identity(
    http: &reqwest::Client,
    cfg: &GitHubConfig,
    access: &str,
) -> Result<Identity, SignInError> {
    let api = |path: &str| {
        let base = cfg.api_url.as_str().trim_end_matches('/');
        format!("{base}/{path}")
    };
    let (user, _) = get_json(http, &api("user"), access).await?;
    let login = string_at(&user, "/login")
        .ok_or_else(|| SignInError::Answer("no login in the profile".into()))?
        .to_string();
    let mut email = string_at(&user, "/email").map(str::to_string);
    if email.is_none() {
        // The profile hides it: the primary verified address.
        let emails = github_all(http, api("user/emails?per_page=100"), access).await?;
        email = emails
            .iter()
            .find(|e| is_true(e.get("primary")) && is_true(e.get("verified")))
            .and_then(|e| string_at(e, "/email"))
            .map(str::to_string);
    }
    let mut groups = Vec::new();
    if !cfg.allowed_orgs.is_empty() {
        for org in github_all(http, api("user/orgs?per_page=100"), access).await? {
            if let Some(o) = string_at(&org, "/login") {
                groups.push(o.to_ascii_lowercase());
            }
        }
        if cfg.allowed_orgs.iter().any(|o| o.contains(':')) {
            for team in github_all(http, api("user/teams?per_page=100"), access).await? {
                if let (Some(o), Some(t)) = (
                    string_at(&team, "/organization/login"),
                    string_at(&team, "/slug"),
                ) {
                    groups.push(format!("{}:{}", o, t).to_ascii_lowercase());
                }
            }
        }
    }
    Ok(Identity {
        provider: "github".into(),
        user_id: login.clone(),
        email: email.and_then(|e| normalize_user(&e)),
        name: string_at(&user, "/name").map(str::to_string),
        groups,
        claims: json!({ "id": user.get("id"), "login": login }),
    })
}

fn github_allows(g: &GitHubConfig, identity: &Identity) -> bool {
    let login = identity.user_id.to_ascii_lowercase();
    g.allow_all
        || g.allowed_users.contains(&login)
        || g.allowed_orgs
            .iter()
            .any(|rule| identity.groups.iter().any(|m| m == rule))
}

async fn oidc_identity(
    http: &reqwest::Client,
    oidc: &Oidc,
    id_token: &str,
    nonce: &str,
    access: &str,
) -> Result<Identity, SignInError> {
    let mut claims = oidc.validate(http, id_token, nonce).await?;
    if let Some(userinfo) = &oidc.userinfo {
        let (info, _) = get_json(http, userinfo.as_str(), access).await?;
        if info.get("sub") != claims.get("sub") {
            return Err(SignInError::Answer(
                "userinfo names another subject than the ID token".into(),
            ));
        }
        // Userinfo wins over the ID token.
        if let (Some(c), Value::Object(i)) = (claims.as_object_mut(), info) {
            c.extend(i);
        }
    }
    identity_of_claims(claims, &oidc.cfg.user_id_field)
}

/// Who the OIDC claims name. An email counts only when the provider says it is verified
/// (`email_verified` true; absent is not verified, OpenID Connect Core §5.1): otherwise it
/// is removed from the claims, so it is neither the user id, nor matched by an allow-list
/// or attribute rule, nor sent upstream.
fn identity_of_claims(mut claims: Value, user_id_field: &str) -> Result<Identity, SignInError> {
    if !is_true(claims.get("email_verified"))
        && let Some(c) = claims.as_object_mut()
    {
        c.remove("email");
    }
    if user_id_field == "/email" && claims.get("email").is_none() {
        return Err(SignInError::Unverified);
    }
    let user_id = match claims.pointer(user_id_field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(SignInError::Answer(format!(
                "no user id at {user_id_field} in the claims"
            )));
        }
    };
    let groups = match claims.get("groups") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity {
        provider: "oidc".into(),
        user_id,
        email: string_at(&claims, "/email").and_then(normalize_user),
        name: string_at(&claims, "/name").map(str::to_string),
        groups,
        claims,
    })
}

/// Whether the claim at `rule.pointer` is (or, for an array, contains) a value that
/// `matches`.
fn attribute_matches(claims: &Value, rule: &AttributeRule, matches: impl Fn(&str) -> bool) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match claims.pointer(&rule.pointer) {
        Some(Value::Array(items)) => items.iter().filter_map(text).any(|v| matches(&v)),
        Some(v) => text(v).is_some_and(|v| matches(&v)),
        None => false,
    }
}

fn oidc_allows(o: &OidcConfig, identity: &Identity) -> bool {
    if o.allow_all {
        return true;
    }
    let user = normalize_user(&identity.user_id);
    if let Some(user) = &user {
        if o.allowed_users.contains(user) {
            return true;
        }
        if o.allowed_globs
            .iter()
            .any(|g| wildmatch::WildMatch::new(g).matches(user))
        {
            return true;
        }
    }
    o.attributes
        .iter()
        .any(|r| attribute_matches(&identity.claims, r, |v| v == r.value))
        || o.attribute_globs.iter().any(|r| {
            let pattern = wildmatch::WildMatch::new(&r.value);
            attribute_matches(&identity.claims, r, |v| pattern.matches(v))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let why = get_document(&reqwest::Client::new(), &url)
            .await
            .unwrap_err();
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
