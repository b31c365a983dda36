//! The authorization endpoint (OAuth 2.1 §4.1.1, RFC 7636, RFC 8707, RFC 9207).
//!
//! Until the client and its redirect URI are trusted, errors are a page for the person (the
//! URI could be an attacker's). After that, errors go back to the client on its redirect URI
//! with `state` and `iss`. A valid request is stored and the person continues to sign-in and
//! consent ([`super::consent`]).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::clients::{LookupError, find};
use super::pending::Refused;
use super::redirect_uri::find_match;
use super::{AuthServer, Served};
use super::{granted_scopes, pkce, resource};
use crate::error::OAuthErrorCode;
use crate::login::{self, site_name, unavailable};
use crate::store::{AuthRequestRecord, ClientRecord, CodeRecord, Identity, StoreError, TokenHash};
use crate::tokens;
use crate::web::flow::{CONSENT_PATH, REQUEST_TTL, sign_in_for, urlencode};
use crate::web::form::Params;
use crate::web::pages::{FormTarget, error_page, see_other};
use crate::web::redirect::ClientRedirect;
use crate::web::refusal::PageRefusal;

/// How long a redeemed code is remembered beyond its lifetime, to catch replays.
pub const CODE_REPLAY_WINDOW: u64 = 10 * 60;

fn person_error(app: &AuthServer, title: &'static str, message: &str) -> PageRefusal {
    PageRefusal::stated(site_name(app), StatusCode::BAD_REQUEST, title, message)
}

/// `GET /authorize`.
pub async fn authorize(
    State(app): State<AuthServer>,
    State(served): State<Served>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).map_err(|e| {
        let why = format!("The app's request cannot be used: {e}.");
        person_error(&app, "Invalid request", &why)
    })?;
    let Some(client_id) = params.get("client_id") else {
        return Err(person_error(
            &app,
            "Invalid request",
            "The app did not say who it is (client_id is missing).",
        ));
    };
    let client = match find(&app.repo, app.documents.as_ref(), client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(person_error(
                &app,
                "Unknown app",
                "This app is not registered here, or its registration expired. Reconnect it from the app.",
            ));
        }
        Err(LookupError::Document(e)) => {
            return Err(person_error(
                &app,
                "This app cannot be used",
                &format!(
                    "The app describes itself at {}, and that description cannot be used: {}. Nothing was sent to the app.",
                    e.url, e.why
                ),
            ));
        }
        Err(LookupError::Store(e)) => return Err(unavailable(&app)(e)),
    };
    let given_redirect = params.get("redirect_uri");
    let redirect_uri = match given_redirect {
        Some(r) => match find_match(&client.redirect_uris, r) {
            Some(_) => r.to_string(),
            None => {
                return Err(person_error(
                    &app,
                    "Invalid redirect",
                    "The app asked to send you to an address it did not register. Nothing was sent.",
                ));
            }
        },
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(person_error(
                &app,
                "Invalid request",
                "The app did not say where to send you back (redirect_uri).",
            ));
        }
    };

    // The redirect URI is trusted from here on: errors go back to the client.
    let back = ClientRedirect {
        uri: &redirect_uri,
        state: params.get("state"),
        issuer: &served.server.issuer,
    };
    if params.get("response_type") != Some("code") {
        return Ok(back.error(
            OAuthErrorCode::UnsupportedResponseType,
            "response_type must be code",
        ));
    }
    let Some(challenge) = params.get("code_challenge") else {
        return Ok(back.error(
            OAuthErrorCode::InvalidRequest,
            "code_challenge is required (PKCE with S256)",
        ));
    };
    if params.get("code_challenge_method") != Some(pkce::S256) {
        return Ok(back.error(
            OAuthErrorCode::InvalidRequest,
            "code_challenge_method must be S256",
        ));
    }
    if !pkce::valid_challenge(challenge) {
        return Ok(back.error(
            OAuthErrorCode::InvalidRequest,
            "code_challenge is not a valid S256 challenge",
        ));
    }
    if !served.serves() {
        return Ok(back.error(
            OAuthErrorCode::InvalidTarget,
            "this address serves several MCP servers: use the issuer of the one you want (its protected-resource metadata names it)",
        ));
    }
    if let Some(r) = params.get("resource")
        && !resource::matches(&served.server.resource, r)
    {
        return Ok(back.error(
            OAuthErrorCode::InvalidTarget,
            "this issuer only issues tokens for its MCP server's endpoint",
        ));
    }
    // RFC 9449 §10: the code is bound to this key. A thumbprint is 43 base64url characters.
    let dpop_jkt = params.get("dpop_jkt").map(str::to_string);
    if dpop_jkt.as_deref().is_some_and(|j| {
        j.len() != 43
            || !j
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return Ok(back.error(
            OAuthErrorCode::InvalidRequest,
            "dpop_jkt is not a JWK SHA-256 thumbprint",
        ));
    }
    let prompt = params.get("prompt").unwrap_or_default();
    let prompts: Vec<&str> = prompt.split(' ').collect();

    let record = AuthRequestRecord {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.clone(),
        redirect_uri_given: given_redirect.is_some(),
        state: params.get("state").map(str::to_string),
        code_challenge: challenge.to_string(),
        scopes: granted_scopes(
            params.get("scope"),
            &super::policy_scopes(&app, &served.server.resource),
        ),
        resource: served.server.resource.clone(),
        force_consent: prompts.contains(&"consent"),
        fresh_sign_in_since: prompts.contains(&"login").then(|| app.repo.clock().now()),
        created_at: app.repo.clock().now(),
        client_name: client.client_name.clone(),
        dpop_jkt,
    };

    let session = crate::web::session::current(&app.repo, &app.authn.cookies, &headers)
        .await
        .map_err(unavailable(&app))?;
    let session = match session {
        Some(s) if login::session_admitted(&app, &s).await => Some(s),
        _ => None,
    };
    if prompts.contains(&"none") {
        let Some(session) = session else {
            return Ok(back.error(OAuthErrorCode::LoginRequired, "the user is not signed in"));
        };
        if !app.site.admits(&record.resource, &session.identity) {
            return Ok(back.error(
                OAuthErrorCode::AccessDenied,
                "this account may not use this MCP server",
            ));
        }
        let remembered = super::consent::remembered(&app, &session.identity, &record, &client);
        if !remembered.await.map_err(unavailable(&app))? {
            return Ok(back.error(
                OAuthErrorCode::ConsentRequired,
                "the user has not approved this app",
            ));
        }
        let code = issue_code(&app, &record, session.identity).await;
        return Ok(back.code(&code.map_err(unavailable(&app))?));
    }

    let id = tokens::generate("");
    let expires = record.created_at + REQUEST_TTL;
    let client_ip = crate::client_addr::client_ip(&app.site.trusted_proxies, peer.ip(), &headers);
    if let Err(refused) = app.pending.admit(client_ip, record.created_at) {
        return Ok(too_many_pending(&app, client_ip, refused));
    }
    app.repo
        .put(id.as_bytes(), &record, Some(expires))
        .await
        .map_err(unavailable(&app))?;
    let next = if session.is_some() && !prompts.contains(&"login") {
        format!("{CONSENT_PATH}?req={}", urlencode(&id))
    } else {
        sign_in_for(&id)
    };
    Ok(see_other(&next, FormTarget::SelfOnly))
}

/// 429 with `Retry-After`: too many sign-ins are waiting, from this client or from all.
fn too_many_pending(app: &AuthServer, client: std::net::IpAddr, refused: Refused) -> Response {
    app.metrics.client("authorize_pending_full");
    let (secs, message) = match refused {
        Refused::ThisKey(s) => {
            tracing::warn!(%client, "too many pending authorization requests from one client");
            (
                s,
                "Too many sign-ins were started from your network and not finished.",
            )
        }
        Refused::Everyone(s) => {
            tracing::warn!("the pending authorization requests are at their limit");
            (s, "Too many sign-ins are waiting to be finished right now.")
        }
    };
    let secs = secs.max(1);
    let mut resp = error_page(
        &site_name(app),
        StatusCode::TOO_MANY_REQUESTS,
        "Too many sign-ins",
        &format!(
            "{message} Please try again in {} minutes.",
            secs.div_ceil(60)
        ),
    );
    resp.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, secs.into());
    resp
}

/// Issues a code for an approved request; marks the client as used so it does not expire
/// as an abandoned registration.
pub async fn issue_code(
    app: &AuthServer,
    req: &AuthRequestRecord,
    identity: Identity,
) -> Result<String, StoreError> {
    let now = app.repo.clock().now();
    let code = tokens::generate(tokens::CODE_PREFIX);
    let ttl = app.authn.cfg.auth_code_ttl.as_secs();
    let rec = CodeRecord {
        client_id: req.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        redirect_uri_given: req.redirect_uri_given,
        code_challenge: req.code_challenge.clone(),
        resource: req.resource.clone(),
        scopes: super::scopes_for(app, &req.resource, &identity, &req.scopes),
        identity,
        issued_at: now,
        expires_at: now + ttl,
        redeemed_grant: None,
        dpop_jkt: req.dpop_jkt.clone(),
    };
    app.repo
        .put(
            &TokenHash::of(&code).0,
            &rec,
            Some(now + ttl + CODE_REPLAY_WINDOW),
        )
        .await?;
    if let Some(mut client) = app
        .repo
        .get::<ClientRecord>(req.client_id.as_bytes())
        .await?
        .filter(|c| !crate::oauth::static_clients::is_static(c))
    {
        client.used = true;
        // Outlive every grant made now, so a dead refresh token gets `invalid_grant` (which
        // clients handle by signing in again) rather than `invalid_client`.
        let keep_until =
            now + app.authn.cfg.refresh_token_ttl.as_secs() + app.authn.cfg.client_ttl.as_secs();
        app.repo
            .put(client.client_id.as_bytes(), &client, Some(keep_until))
            .await?;
    }
    app.repo.flush().await?;
    Ok(code)
}
