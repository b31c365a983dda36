//! The password account's passkeys on its pages: the enrolment page a password-only sign-in
//! meets where a passkey is required (`/.auth/passkeys`), the rows the connected-apps page
//! lists, and their removal (after a confirmation, with the CSRF token, by the account only).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{PASSKEYS_PATH, Standing, of_password_account, on_account, standing};
use crate::login::{SignIn, display_name, form_csrf, form_post, site_name, unavailable};
use crate::store::{PasskeyRecord, SessionRecord};
use crate::web::flow::{APPS_PATH, LOGIN_PATH, urlencode};
use crate::web::form::Params;
use crate::web::pages::{
    FormTarget, PASSKEY_JS, PasskeyRow, PasskeysPage, RemovePasskeyPage, allow_passkey_script,
    page_with_cookie, see_other, when,
};
use crate::web::refusal::PageRefusal;

/// Where removing a passkey is confirmed and done.
pub const REMOVE_PATH: &str = "/.auth/passkeys/remove";

fn row(record: &PasskeyRecord) -> PasskeyRow {
    PasskeyRow {
        id: URL_SAFE_NO_PAD.encode(record.credential.cred_id().as_slice()),
        name: record.name.clone(),
        added: when(Some(record.created_at)),
        last_used: when(record.last_used),
    }
}

/// The rows the connected-apps page lists for `session`: `None` when it is not the password
/// account signed in with full standing (or passkeys are not offered).
pub async fn rows_for(
    app: &SignIn,
    session: &SessionRecord,
) -> Result<Option<Vec<PasskeyRow>>, PageRefusal> {
    if standing(app, session).await.map_err(unavailable(app))? != Some(Standing::Full) {
        return Ok(None);
    }
    all_rows(app).await.map(Some)
}

/// Every passkey of the password account, for the operator console.
pub async fn all_rows(app: &SignIn) -> Result<Vec<PasskeyRow>, PageRefusal> {
    let passkeys = of_password_account(app).await.map_err(unavailable(app))?;
    Ok(passkeys.iter().map(|(_, p)| row(p)).collect())
}

/// Removes the account's passkey named by `id` (its credential id, base64url), for its
/// person or an operator (`by`, logged); the refusal page when there is no such passkey.
pub async fn remove(app: &SignIn, id: Option<&str>, by: &str) -> Result<(), PageRefusal> {
    let (key, record) = own_passkey(app, id).await?;
    app.repo
        .remove::<PasskeyRecord>(&key)
        .await
        .map_err(unavailable(app))?;
    app.repo.flush().await.map_err(unavailable(app))?;
    app.metrics.sign_in("passkey", "removed");
    tracing::info!(user = %record.user, passkey = %record.name, by, "a passkey was removed from the password account");
    Ok(())
}

/// This browser's session and its standing with passkeys, or the refusal page.
async fn signed_in(
    app: &SignIn,
    headers: &HeaderMap,
) -> Result<(SessionRecord, Standing), PageRefusal> {
    let session = crate::web::session::current(&app.repo, &app.authn.cookies, headers)
        .await
        .map_err(unavailable(app))?
        .ok_or_else(|| PageRefusal::sign_in_to_see(site_name(app)))?;
    match standing(app, &session).await.map_err(unavailable(app))? {
        Some(s) => Ok((session, s)),
        None => Err(PageRefusal::stated(
            site_name(app),
            StatusCode::FORBIDDEN,
            "Passkeys are for the password account",
            "Passkeys here sign in the password account. Sign in with the password to add one.",
        )),
    }
}

/// `GET /.auth/passkeys?req=…`: the enrolment page of a password-only sign-in where a passkey
/// is required; a person signed in fully manages passkeys on the connected-apps page.
pub async fn passkeys_get(
    State(app): State<SignIn>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let (session, standing) = signed_in(&app, &headers).await?;
    if standing == Standing::Full {
        return Ok(see_other(
            &format!("{APPS_PATH}#passkeys"),
            FormTarget::SelfOnly,
        ));
    }
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    // Once added, the passkey signs in and the pending request goes on.
    let next = match params
        .get("req")
        .filter(|r| !r.is_empty() && r.len() <= 128)
    {
        Some(req) => format!("{LOGIN_PATH}?done=passkey-added&req={}", urlencode(req)),
        None => format!("{LOGIN_PATH}?done=passkey-added"),
    };
    let (csrf, set) = form_csrf(&app, &headers);
    let name = site_name(&app);
    let tpl = PasskeysPage {
        site_name: &name,
        user: display_name(&session.identity),
        csrf: &csrf,
        next: &next,
        script: PASSKEY_JS,
    };
    Ok(allow_passkey_script(page_with_cookie(
        StatusCode::OK,
        &tpl,
        FormTarget::SelfOnly,
        set,
    )))
}

/// The account's passkey named by `id` (its credential id, base64url); any other answer
/// reads the same.
async fn own_passkey(
    app: &SignIn,
    id: Option<&str>,
) -> Result<(Vec<u8>, PasskeyRecord), PageRefusal> {
    let not_found = || {
        PageRefusal::stated(
            site_name(app),
            StatusCode::NOT_FOUND,
            "No such passkey",
            "This passkey is not on the account (it may have been removed already).",
        )
    };
    let credential_id = id
        .filter(|i| !i.is_empty() && i.len() <= 1400)
        .and_then(|i| URL_SAFE_NO_PAD.decode(i).ok())
        .ok_or_else(not_found)?;
    on_account(app, &credential_id)
        .await
        .map_err(unavailable(app))?
        .ok_or_else(not_found)
}

/// The signed-in account, with full standing (an enrolment-only sign-in has no passkey to
/// remove).
async fn fully_signed_in(app: &SignIn, headers: &HeaderMap) -> Result<SessionRecord, PageRefusal> {
    match signed_in(app, headers).await? {
        (session, Standing::Full) => Ok(session),
        (_, Standing::EnrolOnly) => Err(PageRefusal::sign_in_to_see(site_name(app))),
    }
}

/// `GET /.auth/passkeys/remove?id=…`: the confirmation.
pub async fn remove_get(
    State(app): State<SignIn>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let session = fully_signed_in(&app, &headers).await?;
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let (_, record) = own_passkey(&app, params.get("id")).await?;
    let last_required = app.authn.passkey_required()
        && of_password_account(&app)
            .await
            .map_err(unavailable(&app))?
            .len()
            == 1;
    let (csrf, set) = form_csrf(&app, &headers);
    let name = site_name(&app);
    let row = row(&record);
    let tpl = RemovePasskeyPage {
        site_name: &name,
        user: display_name(&session.identity),
        passkey: &row,
        last_required,
        csrf: &csrf,
    };
    Ok(page_with_cookie(
        StatusCode::OK,
        &tpl,
        FormTarget::SelfOnly,
        set,
    ))
}

/// `POST /.auth/passkeys/remove`: the passkey no longer signs anyone in.
pub async fn remove_post(
    State(app): State<SignIn>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    let params = form_post(&app, &headers, &body)?;
    let session = fully_signed_in(&app, &headers).await?;
    remove(&app, params.get("id"), &session.identity.subject()).await?;
    Ok(see_other(
        &format!("{APPS_PATH}?done=passkey-removed#passkeys"),
        FormTarget::SelfOnly,
    ))
}

/// Where a password-only sign-in goes where a passkey is required and none exists yet.
pub fn enrolment_for(req: Option<&str>) -> String {
    match req {
        Some(r) => format!("{PASSKEYS_PATH}?req={}", urlencode(r)),
        None => PASSKEYS_PATH.to_string(),
    }
}
