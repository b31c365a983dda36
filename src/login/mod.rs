//! Signing people in: the login page, password verification with lockout, browser
//! sessions, logout. Paths are sigbit's: `/.auth/login`, `/.auth/logout`.

pub mod membership;
pub mod passkey;
pub mod password;
pub mod provider_tokens;
pub mod providers;
pub mod start;
pub mod upstream;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use zeroize::Zeroizing;

use self::password::{Lockout, PasswordVerifier};
use crate::config::AuthConfig;
use crate::media_type::content_type_is;
use crate::store::{AuthRequestRecord, Identity, StoreError};
use crate::web::flow::{LOGIN_PATH, next_step};
use crate::web::form::Params;
use crate::web::pages::{
    FormTarget, LoginPage, ProviderButton, SignedInPage, error_page, page, see_other,
};
use crate::web::refusal::PageRefusal;
use crate::web::session::{
    Cookies, csrf_cookie, csrf_token, csrf_valid, post_origin_ok, read_cookie,
};

/// What sign-in needs of the running proxy. Handlers receive it through axum's `FromRef`
/// from the application's state, which sits above and is never named here; one pointer is
/// cloned per request.
#[derive(Clone)]
pub struct SignIn(std::sync::Arc<SignInParts>);

pub struct SignInParts {
    pub site: crate::config::Site,
    pub repo: crate::store::Repo,
    pub authn: Authn,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl SignIn {
    pub fn new(parts: SignInParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for SignIn {
    type Target = SignInParts;
    fn deref(&self) -> &SignInParts {
        &self.0
    }
}

/// The `provider` of the identity a client signs in as with its own credentials (the
/// client credentials grant): the client itself, never a person.
pub const CLIENT_PROVIDER: &str = "client";

/// Everything about authenticating people.
pub struct Authn {
    pub cfg: AuthConfig,
    pub password: Option<PasswordVerifier>,
    /// Google, GitHub, OIDC.
    pub providers: providers::Providers,
    pub lockout: Lockout,
    pub cookies: Cookies,
    /// Passkeys for the password account, where this deployment's origin allows them.
    pub passkeys: Option<passkey::Passkeys>,
}

impl Authn {
    /// The ways to sign in, in the order the login page shows them.
    pub fn methods(&self) -> Vec<&str> {
        let mut methods = Vec::new();
        if self.password.is_some() {
            methods.push("password");
        }
        methods.extend(self.providers.list.iter().map(|p| p.label.as_str()));
        methods
    }

    /// The identity a password sign-in gets.
    pub fn password_identity(&self, verifier: &PasswordVerifier) -> Identity {
        Identity {
            provider: "password".into(),
            user_id: verifier.user().to_string(),
            email: None,
            name: Some(verifier.user().to_string()),
            groups: Vec::new(),
            claims: json!({ "pwd_epoch": verifier.epoch() }),
        }
    }

    /// Whether an identity signed in earlier is still allowed by today's configuration. With
    /// `--require-passkey`, a password-account sign-in counts only when a passkey made it.
    pub fn still_allowed(&self, identity: &Identity) -> bool {
        match identity.provider.as_str() {
            "password" => {
                self.password_current(identity)
                    && (!self.passkey_required() || passkey::signed_in_with_passkey(identity))
            }
            // A declared client's own grant (client credentials). Sign-in settings do not
            // govern it; the clients file does, and a client it no longer declares loses its
            // grants when the file is read (`oauth::static_clients::sync`).
            CLIENT_PROVIDER => true,
            _ => self.providers.still_allowed(identity),
        }
    }

    /// `--require-passkey`, where passkeys are offered.
    pub fn passkey_required(&self) -> bool {
        self.passkeys.as_ref().is_some_and(|p| p.required)
    }

    /// Whether a password-account identity was signed in under today's password.
    pub fn password_current(&self, identity: &Identity) -> bool {
        identity.provider == "password"
            && self.password.as_ref().is_some_and(|p| {
                identity.user_id == p.user()
                    && identity.claims.get("pwd_epoch").and_then(|e| e.as_str()) == Some(p.epoch())
            })
    }
}

/// Whether a browser session may still approve apps: today's configuration admits its
/// identity and, when a provider membership admitted it, the provider says it still does.
pub async fn session_admitted(app: &SignIn, session: &crate::store::SessionRecord) -> bool {
    use membership::Membership;
    if !app.authn.still_allowed(&session.identity) {
        return false;
    }
    match membership::recheck(app, &session.identity).await {
        Membership::NotAsked | Membership::Current => true,
        Membership::Ended => false,
        Membership::Unknown(why) => {
            tracing::warn!(subject = %session.identity.subject(), why, "a session's membership could not be re-checked; signing in again");
            false
        }
    }
}

/// The user's display name on pages.
pub fn display_name(identity: &Identity) -> &str {
    identity
        .email
        .as_deref()
        .or(identity.name.as_deref())
        .unwrap_or(&identity.user_id)
}

/// The site name shown on pages: the external host.
pub fn site_name(app: &SignIn) -> String {
    app.site.home.host()
}

pub(crate) fn with_cookie(mut resp: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The pending authorization request `req` names, when it is live.
pub(crate) async fn pending(app: &SignIn, req: Option<&str>) -> Option<AuthRequestRecord> {
    app.repo
        .get::<AuthRequestRecord>(req?.as_bytes())
        .await
        .ok()?
}

/// Where a signed-in person goes next: the pending consent, or the signed-in page.
/// After a sign-in made while `req` was pending: a `prompt=login` request is answered by it
/// (its mark is cleared, so a sign-in in the same second as the request counts).
pub(crate) async fn signed_in_for(
    app: &SignIn,
    req: Option<&str>,
) -> Result<(), crate::store::StoreError> {
    let Some(req) = req else {
        return Ok(());
    };
    let Some(mut rec) = app.repo.get::<AuthRequestRecord>(req.as_bytes()).await? else {
        return Ok(());
    };
    if rec.fresh_sign_in_since.take().is_some() {
        let expires = rec.created_at + crate::web::flow::REQUEST_TTL;
        app.repo.put(req.as_bytes(), &rec, Some(expires)).await?;
    }
    Ok(())
}

/// Renders the login form.
async fn login_form(
    app: &SignIn,
    headers: &HeaderMap,
    status: StatusCode,
    req: Option<&str>,
    error: Option<&str>,
    locked: bool,
) -> Response {
    let pending = pending(app, req).await;
    let form = LoginForm {
        status,
        error,
        notice: None,
        locked,
    };
    login_form_for(app, headers, req, pending.as_ref(), form).await
}

/// What the login form says besides its fields.
struct LoginForm<'a> {
    status: StatusCode,
    error: Option<&'a str>,
    notice: Option<&'a str>,
    locked: bool,
}

/// Whether the password account has a passkey (a store failure reads as none: the password
/// form is then shown, and a required passkey is still enforced when it is used).
async fn has_passkey(app: &SignIn) -> bool {
    if app.authn.passkeys.is_none() {
        return false;
    }
    match passkey::of_password_account(app).await {
        Ok(keys) => !keys.is_empty(),
        Err(e) => {
            tracing::warn!(error = %e, "the account's passkeys could not be read for the login page");
            false
        }
    }
}

/// [`login_form`] for the pending request already read.
async fn login_form_for(
    app: &SignIn,
    headers: &HeaderMap,
    req: Option<&str>,
    pending: Option<&AuthRequestRecord>,
    form: LoginForm<'_>,
) -> Response {
    let LoginForm {
        status,
        error,
        notice,
        locked,
    } = form;
    let passkey = has_passkey(app).await;
    let (csrf, set) = form_csrf(app, headers);
    let name = site_name(app);
    let client_name = pending.as_ref().map(|r| r.client_label().to_string());
    let req = pending.and(req);
    let providers = app
        .authn
        .providers
        .list
        .iter()
        .map(|p| ProviderButton {
            label: p.label.clone(),
            href: upstream::start_path(p.id, req),
        })
        .collect();
    let tpl = LoginPage {
        site_name: &name,
        client_name: client_name.as_deref(),
        error,
        csrf: &csrf,
        req,
        locked,
        // Once a required passkey exists, the password no longer signs in.
        password: app.authn.password.is_some() && !(app.authn.passkey_required() && passkey),
        providers,
        passkey,
        notice,
        script: crate::web::pages::PASSKEY_JS,
    };
    let resp = with_cookie(page(status, &tpl, FormTarget::SelfOnly), set);
    if passkey && !locked {
        crate::web::pages::allow_passkey_script(resp)
    } else {
        resp
    }
}

/// `GET /.auth/login`: the form, or where a signed-in person goes next.
pub async fn login_get(
    State(app): State<SignIn>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let req = params.get("req");
    // Read once: the form names its client, and a request made with `prompt=login` is
    // answered only by a sign-in made after it.
    let request = pending(&app, req).await;
    let current = crate::web::session::current(&app.repo, &app.authn.cookies, &headers)
        .await
        .map_err(unavailable(&app))?
        .filter(|s| request.as_ref().is_none_or(|r| r.accepts(s)));
    Ok(match current {
        Some(s) if app.authn.still_allowed(&s.identity) => {
            if req.is_some() {
                return Ok(see_other(&next_step(req), FormTarget::SelfOnly));
            }
            let (csrf, set) = form_csrf(&app, &headers);
            let name = site_name(&app);
            let tpl = SignedInPage {
                site_name: &name,
                user: display_name(&s.identity),
                csrf: &csrf,
            };
            with_cookie(page(StatusCode::OK, &tpl, FormTarget::SelfOnly), set)
        }
        _ => {
            // With one provider and no password there is nothing to choose.
            let only = match app.authn.providers.list.as_slice() {
                [only] if app.authn.password.is_none() && app.authn.providers.auto_select => {
                    Some(only)
                }
                _ => None,
            };
            if let Some(p) = only {
                let req = request.as_ref().and(req);
                return Ok(see_other(
                    &upstream::start_path(p.id, req),
                    FormTarget::SelfOnly,
                ));
            }
            let notice = match params.get("done") {
                Some("passkey-added") => Some("Passkey added. Sign in with it now."),
                _ => None,
            };
            let form = LoginForm {
                status: StatusCode::OK,
                error: None,
                notice,
                locked: false,
            };
            login_form_for(&app, &headers, req, request.as_ref(), form).await
        }
    })
}

/// Turns a store failure on a page into its refusal (503, fail closed):
/// `.map_err(unavailable(&app))?`.
pub fn unavailable(app: &SignIn) -> impl Fn(StoreError) -> PageRefusal + '_ {
    |e| PageRefusal::unavailable(site_name(app), e)
}

/// The CSRF token a page's form carries, and the cookie to set when this browser has none
/// yet ([`form_post`] checks the two against each other).
pub fn form_csrf(app: &SignIn, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    let (cookie, set) = csrf_cookie(&app.authn.cookies, headers);
    (csrf_token(&app.repo.keys().hmac, &cookie), set)
}

/// Checks what every form POST must carry: our Origin (or none), a form body, a valid CSRF
/// token. Returns the parsed form.
pub fn form_post(app: &SignIn, headers: &HeaderMap, body: &[u8]) -> Result<Params, PageRefusal> {
    if !post_origin_ok(&app.site.home, headers) {
        return Err(PageRefusal::foreign_origin(site_name(app)));
    }
    let is_form = content_type_is(headers, "application/x-www-form-urlencoded");
    let params = match (is_form, Params::parse(body)) {
        (true, Ok(p)) => p,
        _ => return Err(PageRefusal::unreadable(site_name(app))),
    };
    let cookie = read_cookie(headers, &app.authn.cookies.csrf);
    if !csrf_valid(&app.repo.keys().hmac, cookie.as_deref(), params.get("csrf")) {
        return Err(PageRefusal::expired_form(site_name(app)));
    }
    Ok(params)
}

/// `POST /.auth/login`: checks the password, starts a session, continues the flow.
pub async fn login_post(
    State(app): State<SignIn>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    let params = form_post(&app, &headers, &body)?;
    let req = params.get("req").map(str::to_string);
    let req = req.as_deref();
    let ip = crate::client_addr::client_ip(&app.site.trusted_proxies, peer.ip(), &headers);
    let now = app.repo.clock().now();
    let attempt = app.authn.lockout.attempt(ip, now).await;
    let last_allowed = match attempt.map_err(unavailable(&app))? {
        password::Attempt::Allowed => None,
        password::Attempt::LastAllowed(secs) => Some(secs),
        password::Attempt::Locked(secs) => {
            app.metrics.sign_in("password", "locked_out");
            return Ok(locked_out(&app, &headers, req, secs).await);
        }
    };
    let Some(verifier) = &app.authn.password else {
        let form = login_form(
            &app,
            &headers,
            StatusCode::BAD_REQUEST,
            req,
            Some("Password sign-in is not enabled."),
            false,
        );
        return Ok(form.await);
    };
    let candidate = Zeroizing::new(params.get("password").unwrap_or_default().to_string());
    if !verifier.verify(candidate).await {
        tracing::info!(client_ip = %ip, "failed password sign-in");
        app.metrics.sign_in("password", "failure");
        if let Some(secs) = last_allowed {
            tracing::warn!(client_ip = %ip, seconds = secs, "too many failed passwords: locked");
            return Ok(locked_out(&app, &headers, req, secs).await);
        }
        let form = login_form(
            &app,
            &headers,
            StatusCode::UNAUTHORIZED,
            req,
            Some("That password is not right."),
            false,
        );
        return Ok(form.await);
    }
    app.authn.lockout.succeed(ip).await;
    // Where a passkey is required, the password signs in only to add the first one.
    let enrol_only = app.authn.passkey_required();
    if enrol_only
        && !passkey::of_password_account(&app)
            .await
            .map_err(unavailable(&app))?
            .is_empty()
    {
        app.metrics.sign_in("password", "passkey_required");
        let form = login_form(
            &app,
            &headers,
            StatusCode::FORBIDDEN,
            req,
            Some("This account signs in with its passkey, not the password."),
            false,
        );
        return Ok(form.await);
    }
    app.metrics.sign_in("password", "success");
    let identity = app.authn.password_identity(verifier);
    let ttl = app.authn.cfg.login_session_ttl.as_secs();
    let token = crate::web::session::create(&app.repo, identity, ttl)
        .await
        .map_err(unavailable(&app))?;
    tracing::info!(client_ip = %ip, provider = "password", user = verifier.user(), enrol_only, "signed in");
    let next = if enrol_only {
        passkey::manage::enrolment_for(req)
    } else {
        signed_in_for(&app, req).await.map_err(unavailable(&app))?;
        next_step(req)
    };
    let mut resp = see_other(&next, FormTarget::SelfOnly);
    let cookie = app
        .authn
        .cookies
        .set(&app.authn.cookies.session, &token, Some(ttl));
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

async fn locked_out(app: &SignIn, headers: &HeaderMap, req: Option<&str>, secs: u64) -> Response {
    let msg = password::locked_message(secs);
    let mut resp = login_form(
        app,
        headers,
        StatusCode::TOO_MANY_REQUESTS,
        req,
        Some(&msg),
        true,
    )
    .await;
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// `GET /.auth/logout`: a page with the sign-out button (sign-out itself is a POST).
pub async fn logout_get(state: State<SignIn>, headers: HeaderMap) -> Result<Response, PageRefusal> {
    login_get(state, headers, RawQuery(None)).await
}

/// `POST /.auth/logout`: ends the session.
pub async fn logout_post(
    State(app): State<SignIn>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    form_post(&app, &headers, &body)?;
    crate::web::session::end(&app.repo, &app.authn.cookies, &headers)
        .await
        .map_err(unavailable(&app))?;
    let mut resp = see_other(LOGIN_PATH, FormTarget::SelfOnly);
    let clear = app
        .authn
        .cookies
        .set(&app.authn.cookies.session, "", Some(0));
    resp.headers_mut().append(header::SET_COOKIE, clear);
    Ok(resp)
}

/// Any other `/.auth/` path: ours, and not there (never proxied).
pub async fn not_found(State(app): State<SignIn>) -> Response {
    error_page(
        &site_name(&app),
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page at this address.",
    )
}

/// `GET /` for a person in a browser: what this address is, the URL to give an MCP client and
/// how, and whether this browser is signed in.
pub async fn home(app: &SignIn, headers: &HeaderMap) -> Response {
    let signed_in = crate::web::session::current(&app.repo, &app.authn.cookies, headers)
        .await
        .ok()
        .flatten()
        .filter(|s| app.authn.still_allowed(&s.identity));
    let name = site_name(app);
    let servers: Vec<(String, String)> = app
        .site
        .catalog
        .iter()
        .filter_map(|s| Some((s.name.clone()?, s.resource.clone())))
        .collect();
    // The example URL: the default server's, else the first one's.
    let mcp_url = match servers.first() {
        Some((_, first)) if !app.site.serves() => first.clone(),
        _ => app.site.server.resource.clone(),
    };
    let tpl = crate::web::pages::HomePage {
        site_name: &name,
        mcp_url: &mcp_url,
        servers,
        user: signed_in.as_ref().map(|s| display_name(&s.identity)),
    };
    page(StatusCode::OK, &tpl, FormTarget::SelfOnly)
}
