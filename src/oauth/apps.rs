//! "Your connected apps" (`/.auth/apps`): every app a signed-in person allowed to use the MCP
//! server as them — when, with which scopes, when it last got a token, where it sends them
//! back — with a way to take access back (after a confirmation: the grant, its access and
//! refresh tokens, and the remembered consent, so the app must ask again) and to sign out of
//! every browser at once. Every form carries the CSRF token; only the grant's own person may
//! revoke it.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AuthServer;
use super::consent::{consents_of, redirect_host};
use super::describe_scope;
use crate::login::passkey::manage::rows_for;
use crate::login::{display_name, form_csrf, form_post, site_name, unavailable};
use crate::store::{ClientRecord, ConsentRecord, GrantRecord, SessionRecord};
use crate::web::flow::{APPS_PATH, LOGIN_PATH};
use crate::web::form::Params;
use crate::web::pages::{
    AppsPage, ConnectedApp, FormTarget, PASSKEY_JS, RevokeAppPage, allow_passkey_script,
    page_with_cookie, see_other, when,
};
use crate::web::refusal::PageRefusal;

/// The confirmation page and the revocation.
pub const REVOKE_PATH: &str = "/.auth/apps/revoke";
/// Ending every browser session of the person.
pub const SIGN_OUT_EVERYWHERE_PATH: &str = "/.auth/apps/sign-out-everywhere";

/// The signed-in person of this browser (still admitted by today's configuration), or the
/// sign-in page.
pub(super) async fn signed_in(
    app: &AuthServer,
    headers: &HeaderMap,
) -> Result<SessionRecord, PageRefusal> {
    let session = crate::web::session::current(&app.repo, &app.authn.cookies, headers)
        .await
        .map_err(unavailable(app))?;
    match session {
        Some(s) if crate::login::session_admitted(app, &s).await => Ok(s),
        _ => Err(PageRefusal::sign_in_to_see(site_name(app))),
    }
}

/// The grants of `subject`, newest first.
async fn grants_of(app: &AuthServer, subject: &str) -> Result<Vec<GrantRecord>, PageRefusal> {
    let mut grants = app
        .repo
        .grants_of(subject)
        .await
        .map_err(unavailable(app))?;
    grants.sort_by_key(|g| std::cmp::Reverse(g.created_at));
    Ok(grants)
}

/// A client's name as the consent page showed it.
async fn client_name(app: &AuthServer, client_id: &str) -> String {
    match app.repo.get::<ClientRecord>(client_id.as_bytes()).await {
        Ok(Some(c)) => c.client_name.unwrap_or(c.client_id),
        _ => client_id.to_string(),
    }
}

/// `GET /.auth/apps`.
pub async fn apps_get(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let session = signed_in(&app, &headers).await?;
    let subject = session.identity.subject();
    let consents = consents_of(&app, &subject).await?;
    let mut apps = Vec::new();
    for grant in grants_of(&app, &subject).await? {
        let last = app
            .repo
            .grant_last_issued(&grant.grant_id)
            .await
            .map_err(unavailable(&app))?;
        let mut redirect_hosts: Vec<String> = consents
            .iter()
            .filter(|(_, client, _)| *client == grant.client_id)
            .map(|(_, _, uri)| redirect_host(uri))
            .collect();
        redirect_hosts.sort();
        redirect_hosts.dedup();
        apps.push(ConnectedApp {
            server: server_label(&app, &grant.resource),
            client_name: client_name(&app, &grant.client_id).await,
            granted: when(Some(grant.created_at)),
            last_active: when(last),
            scopes: grant
                .scopes
                .iter()
                .map(|s| describe_scope(&app, &grant.resource, s))
                .collect(),
            redirect_hosts,
            client_id: grant.client_id,
            grant_id: grant.grant_id,
        });
    }
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let notice = match params.get("done") {
        Some("revoked") => Some("Access revoked. The app must ask you again to connect."),
        Some("passkey-added") => Some("Passkey added. You can sign in with it now."),
        Some("passkey-removed") => Some("Passkey removed. It no longer signs anyone in."),
        _ => None,
    };
    let passkeys = rows_for(&app, &session).await?;
    let (csrf, set) = form_csrf(&app, &headers);
    let name = site_name(&app);
    let with_script = passkeys.is_some();
    let tpl = AppsPage {
        site_name: &name,
        user: display_name(&session.identity),
        apps,
        notice,
        csrf: &csrf,
        passkeys,
        next: "/.auth/apps?done=passkey-added#passkeys",
        script: PASSKEY_JS,
    };
    let resp = page_with_cookie(StatusCode::OK, &tpl, FormTarget::SelfOnly, set);
    Ok(if with_script {
        allow_passkey_script(resp)
    } else {
        resp
    })
}

/// The grant `grant_id` if it is `subject`'s; any other answer reads the same.
async fn own_grant(
    app: &AuthServer,
    subject: &str,
    grant_id: Option<&str>,
) -> Result<GrantRecord, PageRefusal> {
    let not_found = || {
        PageRefusal::stated(
            site_name(app),
            StatusCode::NOT_FOUND,
            "No such app",
            "This app is not connected to your account (it may have been revoked already).",
        )
    };
    let grant_id = grant_id
        .filter(|g| !g.is_empty() && g.len() <= 128)
        .ok_or_else(not_found)?;
    let grant = app
        .repo
        .get::<GrantRecord>(grant_id.as_bytes())
        .await
        .map_err(unavailable(app))?;
    grant
        .filter(|g| g.identity.subject() == subject)
        .ok_or_else(not_found)
}

/// `GET /.auth/apps/revoke?grant=…`: the confirmation.
pub async fn revoke_get(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let session = signed_in(&app, &headers).await?;
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let grant = own_grant(&app, &session.identity.subject(), params.get("grant")).await?;
    let (csrf, set) = form_csrf(&app, &headers);
    let name = site_name(&app);
    let client = client_name(&app, &grant.client_id).await;
    let tpl = RevokeAppPage {
        site_name: &name,
        user: display_name(&session.identity),
        client_name: &client,
        grant_id: &grant.grant_id,
        csrf: &csrf,
    };
    Ok(page_with_cookie(
        StatusCode::OK,
        &tpl,
        FormTarget::SelfOnly,
        set,
    ))
}

/// `POST /.auth/apps/revoke`: ends the grant, its tokens (at once, in the gate's cache too)
/// and the remembered consent of that app.
pub async fn revoke_post(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    let params = form_post(&app, &headers, &body)?;
    let session = signed_in(&app, &headers).await?;
    let subject = session.identity.subject();
    let grant = own_grant(&app, &subject, params.get("grant")).await?;
    let store_failed = |_| {
        PageRefusal::stated(
            site_name(&app),
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "The app's access could not be revoked. Please try again in a moment.",
        )
    };
    super::token::revoke_family(&app, &grant.grant_id)
        .await
        .map_err(store_failed)?;
    for (key, client, _) in consents_of(&app, &subject).await? {
        if client == grant.client_id {
            app.repo
                .remove::<ConsentRecord>(&key)
                .await
                .map_err(unavailable(&app))?;
        }
    }
    app.repo.flush().await.map_err(unavailable(&app))?;
    app.metrics.token("revoked");
    tracing::info!(subject = %subject, client_id = %grant.client_id, "a person revoked an app's access on the connected-apps page");
    Ok(see_other(
        &format!("{APPS_PATH}?done=revoked"),
        FormTarget::SelfOnly,
    ))
}

/// `POST /.auth/apps/sign-out-everywhere`: ends every browser session of the person.
pub async fn sign_out_everywhere(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    form_post(&app, &headers, &body)?;
    let session = signed_in(&app, &headers).await?;
    let subject = session.identity.subject();
    let sessions = app
        .repo
        .sessions_of(&subject)
        .await
        .map_err(unavailable(&app))?;
    let mut ended = 0;
    for (key, _) in sessions {
        app.repo
            .remove_session(&key)
            .await
            .map_err(unavailable(&app))?;
        ended += 1;
    }
    app.repo.flush().await.map_err(unavailable(&app))?;
    tracing::info!(subject = %subject, sessions = ended, "a person signed out everywhere");
    let mut resp = see_other(LOGIN_PATH, FormTarget::SelfOnly);
    let cleared = app
        .authn
        .cookies
        .set(&app.authn.cookies.session, "", Some(0));
    resp.headers_mut()
        .append(axum::http::header::SET_COOKIE, cleared);
    Ok(resp.into_response())
}

/// The name of the server of `--config` a grant is for; empty for the one server.
pub(super) fn server_label(app: &AuthServer, resource: &str) -> String {
    app.site
        .server_of(resource)
        .and_then(|s| s.name.clone())
        .unwrap_or_default()
}
