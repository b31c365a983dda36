//! The browser's trip to a sign-in provider and back: `/.auth/{provider}/login` starts it,
//! `/.auth/{provider}/callback` (the address registered at the provider) ends it.
//!
//! The `state` is random, single use (its record is removed when it comes back), expires
//! after [`SIGN_IN_TTL`], and is bound to the browser that started: the same value travels
//! in a cookie, and a callback whose cookie does not match is refused. The PKCE verifier and
//! the OIDC nonce are HMACs of the state under our key, so the store holds nothing secret.

use axum::extract::{RawQuery, State};
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::providers::Provider;
use super::providers::SignInError;
use super::{display_name, pending, site_name, unavailable, with_cookie};
use crate::error::OAuthErrorCode;
use crate::login::SignIn;
use crate::store::{AuthRequestRecord, SignInRecord, TokenHash};
use crate::web::flow::{next_step, urlencode};
use crate::web::form::Params;
use crate::web::pages::{DeniedPage, FormTarget, page, see_other};
use crate::web::redirect::ClientRedirect;
use crate::web::refusal::PageRefusal;
use crate::web::session::read_cookie;

/// How long a sign-in at a provider may take.
pub const SIGN_IN_TTL: u64 = 10 * 60;

/// The path that starts a sign-in at `provider`, continuing request `req` afterwards.
pub fn start_path(provider: &str, req: Option<&str>) -> String {
    match req {
        Some(r) => format!("/.auth/{provider}/login?req={}", urlencode(r)),
        None => format!("/.auth/{provider}/login"),
    }
}

/// The provider a `/.auth/{provider}/…` path names.
fn provider_of(uri: &Uri) -> &str {
    uri.path()
        .trim_start_matches("/.auth/")
        .split('/')
        .next()
        .unwrap_or_default()
}

/// The PKCE verifier and nonce of a sign-in, derived from its state.
fn derived(key: &[u8; 32], state: &str) -> Option<(String, String)> {
    let mac = |what: &[u8]| {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        m.update(what);
        m.update(state.as_bytes());
        Some(URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
    };
    Some((mac(b"pkce\0")?, mac(b"nonce\0")?))
}

fn signin_cookie(app: &SignIn) -> &str {
    &app.authn.cookies.signin
}

/// `GET /.auth/{provider}/login`: records the state and sends the browser to the provider.
pub async fn start(
    State(app): State<SignIn>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let Some(p) = app.authn.providers.get(provider_of(&uri)) else {
        return Ok(super::not_found(State(app)).await);
    };
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let req = params.get("req");
    let req = pending(&app, req).await.and(req).map(str::to_string);
    let state = crate::tokens::generate("");
    let now = app.repo.clock().now();
    let rec = SignInRecord {
        provider: p.id.to_string(),
        req,
        expires_at: now + SIGN_IN_TTL,
    };
    app.repo
        .put(&TokenHash::of(&state).0, &rec, Some(rec.expires_at))
        .await
        .map_err(unavailable(&app))?;
    let Some((verifier, nonce)) = derived(&app.repo.keys().hmac, &state) else {
        return Err(PageRefusal::stated(
            site_name(&app),
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in failed",
            "Please try again.",
        ));
    };
    let url = p.authorize_url(&state, &verifier, &nonce);
    let mut resp = see_other(url.as_str(), FormTarget::SelfOnly);
    let cookie = app
        .authn
        .cookies
        .set(signin_cookie(&app), &state, Some(SIGN_IN_TTL));
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `GET /.auth/{provider}/callback`: checks the state, trades the code, applies the
/// allow-lists, starts a session and continues the pending authorization.
pub async fn callback(
    State(app): State<SignIn>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(p) = app.authn.providers.get(provider_of(&uri)) else {
        return super::not_found(State(app)).await;
    };
    match come_back(&app, p, query, &headers).await {
        Ok(resp) => resp,
        Err(refused) => {
            // A sign-in that failed is over: its cookie goes with it.
            let mut resp = refused.into_response();
            let clear = app.authn.cookies.set(signin_cookie(&app), "", Some(0));
            resp.headers_mut().append(header::SET_COOKIE, clear);
            resp
        }
    }
}

/// The callback once its provider is known; every refusal ends the sign-in.
async fn come_back(
    app: &SignIn,
    p: &Provider,
    query: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, PageRefusal> {
    let name = site_name(app);
    let fail =
        |status, title, message: &str| PageRefusal::stated(name.clone(), status, title, message);
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let Some(state) = params.get("state").filter(|s| !s.is_empty()) else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Sign-in incomplete",
            "The provider sent you back without the sign-in's details.",
        ));
    };
    let cookie = read_cookie(headers, signin_cookie(app)).unwrap_or_default();
    if !bool::from(cookie.as_bytes().ct_eq(state.as_bytes())) {
        tracing::warn!(
            provider = p.id,
            "a sign-in came back to a browser that did not start it"
        );
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Sign-in not started here",
            "This sign-in was started in another browser or has expired. Start again from your app.",
        ));
    }
    // Single use: the record goes whatever happens next.
    let rec = match app
        .repo
        .remove::<SignInRecord>(&TokenHash::of(state).0)
        .await
    {
        Ok(Some(r)) if r.provider == p.id && r.expires_at > app.repo.clock().now() => r,
        Ok(_) => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "Sign-in expired",
                "This sign-in expired or was already used. Start again from your app.",
            ));
        }
        Err(e) => return Err(unavailable(app)(e)),
    };
    // Before anything else the answer says, errors included (RFC 9207 §2.4).
    if let Err(e) = p.check_response_issuer(params.get("iss")) {
        tracing::warn!(provider = p.id, error = %e, "a sign-in answer from another provider was refused");
        app.metrics.sign_in(p.id, "error");
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            &format!(
                "The answer did not come from {}. Start again from your app.",
                p.label
            ),
        ));
    }
    if let Some(error) = params.get("error") {
        tracing::info!(
            provider = p.id,
            error,
            "the provider did not sign the user in"
        );
        app.metrics.sign_in(p.id, "cancelled");
        return Err(fail(
            StatusCode::FORBIDDEN,
            "Sign-in cancelled",
            &format!("{} did not sign you in ({error}).", p.label),
        ));
    }
    let Some(code) = params.get("code") else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "Sign-in incomplete",
            "The provider sent you back without a code.",
        ));
    };
    let Some((verifier, nonce)) = derived(&app.repo.keys().hmac, state) else {
        return Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in failed",
            "Please try again.",
        ));
    };
    let now = app.repo.clock().now();
    let (identity, provider_tokens) = match p
        .sign_in(app.authn.providers.http(), code, &verifier, &nonce, now)
        .await
    {
        Ok(i) => i,
        Err(SignInError::Unverified) => {
            tracing::info!(provider = p.id, "sign-in refused: no verified email");
            app.metrics.sign_in(p.id, "denied");
            return Err(fail(
                StatusCode::FORBIDDEN,
                "Email not verified",
                &format!("Your {} account has no verified email address.", p.label),
            ));
        }
        Err(e) => {
            tracing::warn!(provider = p.id, error = %e, "sign-in at the provider failed");
            app.metrics.sign_in(p.id, "error");
            return Err(fail(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                &format!(
                    "Signing you in at {} did not work. Please try again.",
                    p.label
                ),
            ));
        }
    };
    if !p.allows(&identity) {
        tracing::info!(provider = p.id, user = %identity.user_id, "sign-in refused: not on the allow-list");
        app.metrics.sign_in(p.id, "denied");
        let label = p.label.as_str();
        return denied(app, headers, label, &identity, rec.req.as_deref()).await;
    }
    super::provider_tokens::save(&app.repo, &identity.subject(), &provider_tokens)
        .await
        .map_err(unavailable(app))?;
    let ttl = app.authn.cfg.login_session_ttl.as_secs();
    tracing::info!(provider = p.id, user = %identity.user_id, "signed in");
    app.metrics.sign_in(p.id, "success");
    let token = crate::web::session::create(&app.repo, identity, ttl)
        .await
        .map_err(unavailable(app))?;
    super::signed_in_for(app, rec.req.as_deref())
        .await
        .map_err(unavailable(app))?;
    let mut resp = see_other(&next_step(rec.req.as_deref()), FormTarget::SelfOnly);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        app.authn
            .cookies
            .set(&app.authn.cookies.session, &token, Some(ttl)),
    );
    h.append(
        header::SET_COOKIE,
        app.authn.cookies.set(signin_cookie(app), "", Some(0)),
    );
    Ok(resp)
}

/// The 403 page for a signed-in account the allow-lists refuse; a waiting client's request
/// is ended, and the page links back to the client with `access_denied`.
async fn denied(
    app: &SignIn,
    headers: &HeaderMap,
    provider: &str,
    identity: &crate::store::Identity,
    req: Option<&str>,
) -> Result<Response, PageRefusal> {
    let name = site_name(app);
    let waiting = pending(app, req).await;
    if let Some(r) = req {
        let removed = app.repo.remove::<AuthRequestRecord>(r.as_bytes()).await;
        removed.map_err(unavailable(app))?;
    }
    let return_url = waiting.as_ref().and_then(|rec| {
        ClientRedirect {
            uri: &rec.redirect_uri,
            state: rec.state.as_deref(),
            issuer: app.site.issuer_of(&rec.resource),
        }
        .error_url(
            OAuthErrorCode::AccessDenied,
            "this account is not allowed to sign in",
        )
    });
    let client_name = waiting
        .as_ref()
        .map(|r| r.client_label().to_string())
        .unwrap_or_default();
    let (csrf, set) = super::form_csrf(app, headers);
    let tpl = DeniedPage {
        site_name: &name,
        provider,
        user: display_name(identity),
        csrf: &csrf,
        return_url: return_url.as_deref(),
        client_name: &client_name,
        server: None,
    };
    let mut resp = with_cookie(page(StatusCode::FORBIDDEN, &tpl, FormTarget::Client), set);
    resp.headers_mut().append(
        header::SET_COOKIE,
        app.authn.cookies.set(signin_cookie(app), "", Some(0)),
    );
    Ok(resp)
}
