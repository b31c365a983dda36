//! The four requests of the two passkey ceremonies, called by the pages' script with JSON:
//! options then answer, to add a passkey and to sign in with one. Each is a POST from our own
//! page: our `Origin` (browsers always send it on such a fetch), a JSON body, and the CSRF
//! token in `X-CSRF-Token`. Each answer that fails says why in JSON the script shows.
//!
//! The options' challenge stays in the store under the hash of a cookie the browser holds for
//! the ceremony; the answer takes it (read and removed), so a challenge is answered once and
//! only by the browser it was given to.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::{
    CEREMONY_TTL, MAX_NAME_CHARS, MAX_PER_ACCOUNT, Standing, of_password_account, on_account,
    record_key, standing, user_handle,
};
use crate::budget::Refused;
use crate::config::normalize_origin;
use crate::login::password::{Attempt, PasswordVerifier, locked_message};
use crate::login::{SignIn, signed_in_for};
use crate::media_type::content_type_is;
use crate::store::{PasskeyCeremonyRecord, PasskeyRecord, SessionRecord, StoreError, TokenHash};
use crate::tokens;
use crate::web::flow::next_step;
use crate::web::session::{csrf_valid, current_keyed, read_cookie};

/// The ceremonies' paths (the pages' script, static/passkeys.js, names them too).
pub const REGISTER_OPTIONS_PATH: &str = "/.auth/passkeys/register/options";
pub const REGISTER_PATH: &str = "/.auth/passkeys/register";
pub const SIGN_IN_OPTIONS_PATH: &str = "/.auth/passkeys/sign-in/options";
pub const SIGN_IN_PATH: &str = "/.auth/passkeys/sign-in";

/// A ceremony request refused: the status, a code for scripts, a sentence for the person.
#[derive(Debug)]
pub struct CeremonyRefusal {
    status: StatusCode,
    error: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl CeremonyRefusal {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            retry_after: None,
        }
    }

    fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The passkey did not sign in (one answer for every reason, so that a caller learns
    /// nothing about which credentials exist).
    fn not_signed_in() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "passkey_refused",
            "That passkey did not sign you in. Try again, or use another passkey.",
        )
    }

    fn not_offered() -> Self {
        Self::forbidden("Passkeys are not offered here.")
    }

    fn too_many_passkeys() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "too_many_passkeys",
            format!(
                "This account has {MAX_PER_ACCOUNT} passkeys, the most it may hold. Remove one first."
            ),
        )
    }

    /// webauthn-rs could not make a ceremony's options (`what`: "Adding a passkey", …).
    fn could_not_start(what: &str, e: &webauthn_rs::prelude::WebauthnError) -> Self {
        tracing::error!(error = %e, "{what} could not start");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("{what} could not start."),
        )
    }

    fn expired() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ceremony_expired",
            "This passkey prompt expired or was already answered. Please try again.",
        )
    }
}

impl From<StoreError> for CeremonyRefusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "a passkey ceremony could not reach the store");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "Temporarily unavailable. Please try again in a moment.",
        )
    }
}

impl IntoResponse for CeremonyRefusal {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({ "error": self.error, "message": self.message })),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON answer that is never cached, with cookies to set.
fn answer(body: serde_json::Value, cookies: &[HeaderValue]) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    resp
}

/// What every ceremony request must be: a POST from our own page (our `Origin`, present),
/// JSON, with the CSRF token of this browser's CSRF cookie. Returns the parsed body.
fn from_our_page<T: serde::de::DeserializeOwned>(
    app: &SignIn,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, CeremonyRefusal> {
    let ours = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(normalize_origin)
        .is_some_and(|o| o == app.site.home.as_str());
    if !ours {
        return Err(CeremonyRefusal::forbidden(
            "Passkeys work only from this site's own pages.",
        ));
    }
    let cookie = read_cookie(headers, &app.authn.cookies.csrf);
    let field = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !csrf_valid(&app.repo.keys().hmac, cookie.as_deref(), field) {
        return Err(CeremonyRefusal::forbidden(
            "This page is out of date. Reload it and try again.",
        ));
    }
    if !content_type_is(headers, "application/json") {
        return Err(CeremonyRefusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "Expected JSON.",
        ));
    }
    serde_json::from_slice(body).map_err(|_| {
        CeremonyRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The browser's answer could not be read.",
        )
    })
}

/// WebAuthn and the password account, when passkeys are offered here (they are only with a
/// password account).
fn offered(app: &SignIn) -> Result<(&super::Passkeys, &PasswordVerifier), CeremonyRefusal> {
    match (&app.authn.passkeys, &app.authn.password) {
        (Some(passkeys), Some(password)) => Ok((passkeys, password)),
        _ => Err(CeremonyRefusal::not_offered()),
    }
}

/// Stores a ceremony of the client at `ip` under a new cookie, within the ceremonies' budget;
/// returns the `Set-Cookie` for it.
async fn begin(
    app: &SignIn,
    passkeys: &super::Passkeys,
    ip: IpAddr,
    ceremony: &PasskeyCeremonyRecord,
) -> Result<HeaderValue, CeremonyRefusal> {
    let now = app.repo.clock().now();
    if let Err(refused) = passkeys
        .ceremonies
        .admit(&crate::client_addr::client_key(ip), now)
    {
        let secs = match refused {
            Refused::ThisKey(s) | Refused::Everyone(s) => s,
        };
        let mut refusal = CeremonyRefusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_ceremonies",
            "Too many passkey prompts are open. Please try again in a few minutes.",
        );
        refusal.retry_after = Some(secs.max(1));
        return Err(refusal);
    }
    let id = tokens::generate("");
    let expires = now + CEREMONY_TTL;
    app.repo
        .put(&TokenHash::of(&id).0, ceremony, Some(expires))
        .await?;
    app.repo.flush().await?;
    let cookies = &app.authn.cookies;
    Ok(cookies.set(&cookies.passkey, &id, Some(CEREMONY_TTL)))
}

/// Takes this browser's ceremony (it can be answered once), and the `Set-Cookie` that
/// forgets it.
async fn take(
    app: &SignIn,
    headers: &HeaderMap,
) -> Result<(Option<PasskeyCeremonyRecord>, HeaderValue), StoreError> {
    let cookies = &app.authn.cookies;
    let forget = cookies.set(&cookies.passkey, "", Some(0));
    let Some(id) = read_cookie(headers, &cookies.passkey).filter(|c| !c.is_empty()) else {
        return Ok((None, forget));
    };
    let ceremony = app
        .repo
        .remove::<PasskeyCeremonyRecord>(&TokenHash::of(&id).0)
        .await?;
    Ok((ceremony, forget))
}

/// The session that may add a passkey to the password account, or why not.
async fn enrolling(
    app: &SignIn,
    headers: &HeaderMap,
) -> Result<(SessionRecord, [u8; 32], Standing), CeremonyRefusal> {
    let signed_in = current_keyed(&app.repo, &app.authn.cookies, headers).await?;
    let Some((session, hash)) = signed_in else {
        return Err(CeremonyRefusal::new(
            StatusCode::UNAUTHORIZED,
            "sign_in_first",
            "Sign in with the password first.",
        ));
    };
    match standing(app, &session).await? {
        Some(s) => Ok((session, hash, s)),
        None => Err(CeremonyRefusal::forbidden(
            "Only the password account, signed in, can add passkeys here.",
        )),
    }
}

/// What the page sends to start adding a passkey.
#[derive(Deserialize)]
pub struct AddOptions {
    #[serde(default)]
    name: String,
}

/// `POST /.auth/passkeys/register/options`: the options for `navigator.credentials.create`.
pub async fn register_options(
    State(app): State<SignIn>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CeremonyRefusal> {
    let ip = crate::client_addr::client_ip(&app.site.trusted_proxies, peer.ip(), &headers);
    let asked: AddOptions = from_our_page(&app, &headers, &body)?;
    let (passkeys, password) = offered(&app)?;
    let (_, session_hash, _) = enrolling(&app, &headers).await?;
    let name = asked.name.trim();
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(CeremonyRefusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("A passkey's name is at most {MAX_NAME_CHARS} characters, on one line."),
        ));
    }
    let existing = of_password_account(&app).await?;
    if existing.len() >= MAX_PER_ACCOUNT {
        return Err(CeremonyRefusal::too_many_passkeys());
    }
    let exclude = existing
        .iter()
        .map(|(_, p)| p.credential.cred_id().clone())
        .collect();
    let user = password.user();
    let (options, state) = passkeys
        .webauthn()
        .start_passkey_registration(user_handle(user), user, user, Some(exclude))
        .map_err(|e| CeremonyRefusal::could_not_start("Adding a passkey", &e))?;
    let name = if name.is_empty() {
        format!("Passkey {}", existing.len() + 1)
    } else {
        name.to_string()
    };
    let ceremony = PasskeyCeremonyRecord::Registration {
        user: user.to_string(),
        session: session_hash,
        name,
        state,
    };
    let cookie = begin(&app, passkeys, ip, &ceremony).await?;
    Ok(answer(json!(options), &[cookie]))
}

/// `POST /.auth/passkeys/register`: the authenticator's new credential, checked and kept.
pub async fn register(
    State(app): State<SignIn>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CeremonyRefusal> {
    let credential: RegisterPublicKeyCredential = from_our_page(&app, &headers, &body)?;
    let (passkeys, password) = offered(&app)?;
    let (ceremony, forget) = take(&app, &headers).await?;
    let Some(PasskeyCeremonyRecord::Registration {
        user,
        session,
        name,
        state,
    }) = ceremony
    else {
        return Err(CeremonyRefusal::expired());
    };
    let (_, session_hash, _) = enrolling(&app, &headers).await?;
    if session != session_hash || user != password.user() {
        return Err(CeremonyRefusal::expired());
    }
    let passkey = passkeys
        .webauthn()
        .finish_passkey_registration(&credential, &state)
        .map_err(|e| {
            tracing::info!(error = %e, "a passkey registration was refused");
            CeremonyRefusal::new(
                StatusCode::BAD_REQUEST,
                "passkey_refused",
                "The passkey could not be added. Please try again.",
            )
        })?;
    if of_password_account(&app).await?.len() >= MAX_PER_ACCOUNT {
        return Err(CeremonyRefusal::too_many_passkeys());
    }
    let record = PasskeyRecord {
        user: user.clone(),
        name,
        epoch: password.epoch().to_string(),
        created_at: app.repo.clock().now(),
        last_used: None,
        credential: passkey,
    };
    let key = record_key(&user, record.credential.cred_id());
    if !app.repo.create(&key, &record, None).await? {
        return Err(CeremonyRefusal::new(
            StatusCode::CONFLICT,
            "already_registered",
            "This passkey is already on the account.",
        ));
    }
    app.repo.flush().await?;
    app.metrics.sign_in("passkey", "added");
    tracing::info!(user = %user, passkey = %record.name, "a passkey was added to the password account");
    Ok(answer(json!({ "added": record.name }), &[forget]))
}

/// What the sign-in page sends to start signing in with a passkey.
#[derive(Deserialize)]
pub struct SignInOptions {
    /// The pending authorization request to continue.
    #[serde(default)]
    req: Option<String>,
}

/// `POST /.auth/passkeys/sign-in/options`: the options for `navigator.credentials.get`.
pub async fn sign_in_options(
    State(app): State<SignIn>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CeremonyRefusal> {
    let ip = crate::client_addr::client_ip(&app.site.trusted_proxies, peer.ip(), &headers);
    let asked: SignInOptions = from_our_page(&app, &headers, &body)?;
    let (passkeys, _) = offered(&app)?;
    let credentials: Vec<_> = of_password_account(&app)
        .await?
        .into_iter()
        .map(|(_, p)| p.credential)
        .collect();
    if credentials.is_empty() {
        return Err(CeremonyRefusal::new(
            StatusCode::NOT_FOUND,
            "no_passkey",
            "No passkey has been added here yet. Sign in with the password, then add one.",
        ));
    }
    let (options, state) = passkeys
        .webauthn()
        .start_passkey_authentication(&credentials)
        .map_err(|e| CeremonyRefusal::could_not_start("Signing in with a passkey", &e))?;
    // Only a live request is carried on (the answer goes to its consent page).
    let req = match asked.req.filter(|r| !r.is_empty() && r.len() <= 128) {
        Some(r) => crate::login::pending(&app, Some(&r)).await.map(|_| r),
        None => None,
    };
    let ceremony = PasskeyCeremonyRecord::SignIn { req, state };
    let cookie = begin(&app, passkeys, ip, &ceremony).await?;
    Ok(answer(json!(options), &[cookie]))
}

/// `POST /.auth/passkeys/sign-in`: the authenticator's assertion, checked; a browser session
/// for the password account on success. Failures count toward the client's lockout, as wrong
/// passwords do.
pub async fn sign_in(
    State(app): State<SignIn>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CeremonyRefusal> {
    let assertion: PublicKeyCredential = from_our_page(&app, &headers, &body)?;
    let (passkeys, password) = offered(&app)?;
    let ip = crate::client_addr::client_ip(&app.site.trusted_proxies, peer.ip(), &headers);
    let last_allowed = match app
        .authn
        .lockout
        .attempt(ip, app.repo.clock().now())
        .await?
    {
        Attempt::Allowed => false,
        Attempt::LastAllowed(_) => true,
        Attempt::Locked(secs) => {
            app.metrics.sign_in("passkey", "locked_out");
            let mut refusal = CeremonyRefusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "locked_out",
                locked_message(secs),
            );
            refusal.retry_after = Some(secs);
            return Err(refusal);
        }
    };
    let (ceremony, forget) = take(&app, &headers).await?;
    let Some(PasskeyCeremonyRecord::SignIn { req, state }) = ceremony else {
        return Err(CeremonyRefusal::expired());
    };
    let failed = |why: String| {
        tracing::info!(client_ip = %ip, why, last_allowed, "failed passkey sign-in");
        app.metrics.sign_in("passkey", "failure");
        CeremonyRefusal::not_signed_in()
    };
    let result = passkeys
        .webauthn()
        .finish_passkey_authentication(&assertion, &state)
        .map_err(|e| failed(e.to_string()))?;
    // The passkey must still be on the account now, not only when the options were made.
    let Some((key, mut record)) = on_account(&app, result.cred_id()).await? else {
        return Err(failed(
            "the passkey was removed (or added under another password)".into(),
        ));
    };
    record.credential.update_credential(&result);
    record.last_used = Some(app.repo.clock().now());
    app.repo.put(&key, &record, None).await?;
    app.authn.lockout.succeed(ip).await;
    app.metrics.sign_in("passkey", "success");
    let mut identity = app.authn.password_identity(password);
    super::mark_signed_in_with_passkey(&mut identity);
    let ttl = app.authn.cfg.login_session_ttl.as_secs();
    let token = crate::web::session::create(&app.repo, identity, ttl).await?;
    tracing::info!(client_ip = %ip, provider = "passkey", user = password.user(), passkey = %record.name, "signed in");
    signed_in_for(&app, req.as_deref()).await?;
    let cookies = &app.authn.cookies;
    let session = cookies.set(&cookies.session, &token, Some(ttl));
    Ok(answer(
        json!({ "next": next_step(req.as_deref()) }),
        &[session, forget],
    ))
}
