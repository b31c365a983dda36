//! The consent step: who is asking, where the answer goes, approve or deny. Remembered per
//! user and client, so a reconnecting client does not ask again (unless `prompt=consent`).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use url::Url;

use super::AuthServer;
use super::authorize::issue_code;
use super::cimd::document_host;
use super::clients::{LookupError, find};
use super::describe_scope;
use crate::config::is_loopback_host;
use crate::error::OAuthErrorCode;
use crate::login::{display_name, form_csrf, form_post, site_name, unavailable};
use crate::store::{
    AuthRequestRecord, ClientRecord, ConsentRecord, Identity, SessionRecord, StoreError,
};
use crate::web::form::Params;
use crate::web::pages::{ConsentPage, DeniedPage, FormTarget, page_with_cookie};
use crate::web::redirect::ClientRedirect;
use crate::web::refusal::PageRefusal;

/// An approval is remembered for one user, one client and one exact redirect URI (port
/// included): approving an app that answers at one address approves no other address its
/// registration (or a changed metadata document) allows.
fn consent_key(subject: &str, client_id: &str, redirect_uri: &str) -> Vec<u8> {
    let mut k = subject.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(redirect_uri.as_bytes());
    k
}

/// Whether this user already approved this client, at this redirect URI, for at least these
/// scopes. Never for a public client answering on loopback: its id is no secret and any
/// local process can listen on a loopback port, so each sign-in shows the page.
pub async fn remembered(
    app: &AuthServer,
    identity: &Identity,
    req: &AuthRequestRecord,
    client: &ClientRecord,
) -> Result<bool, StoreError> {
    if req.force_consent {
        return Ok(false);
    }
    let public = client.token_endpoint_auth_method == super::clients::NONE;
    if public && super::redirect_uri::is_loopback_redirect(&req.redirect_uri) {
        return Ok(false);
    }
    let key = consent_key(&identity.subject(), &req.client_id, &req.redirect_uri);
    Ok(app.repo.get::<ConsentRecord>(&key).await?.is_some_and(|c| {
        c.resource == named_resource(app, &req.resource)
            && super::scopes_for(app, &req.resource, identity, &req.scopes)
                .iter()
                .all(|s| c.scopes.contains(s))
    }))
}

/// `resource` when it is a server of `--config`'s, as a consent records it.
fn named_resource(app: &AuthServer, resource: &str) -> Option<String> {
    app.site
        .server_of(resource)
        .filter(|s| s.name.is_some())
        .map(|s| s.resource.clone())
}

/// The remembered consents of `subject`: (key, client id, redirect URI), read back from
/// the keys [`consent_key`] makes.
pub(super) async fn consents_of(
    app: &AuthServer,
    subject: &str,
) -> Result<Vec<(Vec<u8>, String, String)>, PageRefusal> {
    let mut prefix = subject.as_bytes().to_vec();
    prefix.push(0);
    let found = app
        .repo
        .scan::<ConsentRecord>(&prefix)
        .await
        .map_err(unavailable(app))?;
    Ok(found
        .into_iter()
        .map(|(key, c)| {
            let uri = key
                .get(prefix.len() + c.client_id.len() + 1..)
                .map(|u| String::from_utf8_lossy(u).into_owned())
                .unwrap_or_default();
            (key, c.client_id, uri)
        })
        .collect())
}

/// Where the answer goes, as a person should read it.
pub fn redirect_host(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        },
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()),
        Err(_) => uri.to_string(),
    }
}

/// Warnings for the person: a name that claims another site, or an answer that goes to a
/// local program.
pub fn warnings(client_name: Option<&str>, redirect_uri: &str) -> Vec<String> {
    let mut out = Vec::new();
    let url = Url::parse(redirect_uri).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str())
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if let Some(name) = client_name {
        let claimed = name
            .split(|c: char| {
                c.is_whitespace() || matches!(c, ',' | '(' | ')' | '/' | ':' | '"' | '\'' | '@')
            })
            .map(|t| t.trim_matches('.').to_ascii_lowercase())
            .filter(|t| looks_like_host(t))
            .find(|t| host != *t && !host.ends_with(&format!(".{t}")));
        if let Some(t) = claimed {
            let looks = if t == name.trim().to_ascii_lowercase() {
                String::new()
            } else {
                format!(", which looks like {t},")
            };
            out.push(format!(
                "This app calls itself “{name}”{looks} but your authorization will be sent to {}. Only continue if you expected that.",
                redirect_host(redirect_uri)
            ));
        }
    }
    match url.as_ref().map(Url::scheme) {
        Some("http") if is_loopback_host(&host) => out.push(LOOPBACK_WARNING.to_string()),
        Some(s) if s != "https" && s != "http" => out.push(format!(
            "The authorization will be sent to the app that handles {s}:// links on this device."
        )),
        _ => {}
    }
    out
}

const LOOPBACK_WARNING: &str = "The authorization will be sent to a program running on this computer. Continue only if you just started it.";

/// The page's warnings: the client's name and redirect, and for a metadata document that
/// only names programs on this computer, that warning instead of the general loopback one.
fn all_warnings(client: &ClientRecord, redirect_uri: &str) -> Vec<String> {
    let mut out = warnings(client.client_name.as_deref(), redirect_uri);
    if let Some(w) = document_warning(client) {
        out.retain(|x| x != LOOPBACK_WARNING);
        out.push(w);
    }
    out
}

/// A metadata document anyone could publish that only names programs on this computer:
/// nothing ties the app to its description's host.
fn document_warning(client: &ClientRecord) -> Option<String> {
    let host = document_host(&client.client_id)?;
    let all_loopback = client.redirect_uris.iter().all(|r| {
        Url::parse(r)
            .ok()
            .and_then(|u| u.host_str().map(is_loopback_host))
            .unwrap_or(false)
    });
    all_loopback.then(|| {
        format!(
            "This app is described by {host}, but it only returns to programs on this computer, so anyone could have started it under that name. Continue only if you just started it yourself."
        )
    })
}

fn looks_like_host(t: &str) -> bool {
    let labels: Vec<&str> = t.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

/// The request, its client and the signed-in session, or why the consent page cannot go on.
async fn context(
    app: &AuthServer,
    headers: &HeaderMap,
    req_id: Option<&str>,
) -> Result<(String, AuthRequestRecord, ClientRecord, SessionRecord), PageRefusal> {
    let name = site_name(app);
    let expired = || {
        PageRefusal::stated(
            name.clone(),
            StatusCode::BAD_REQUEST,
            "This sign-in request expired",
            "Go back to your app and connect again.",
        )
    };
    let req_id = req_id.ok_or_else(expired)?;
    let req = app
        .repo
        .get::<AuthRequestRecord>(req_id.as_bytes())
        .await
        .map_err(unavailable(app))?
        .ok_or_else(expired)?;
    let client = match find(&app.repo, app.documents.as_ref(), &req.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(expired()),
        Err(LookupError::Store(e)) => return Err(unavailable(app)(e)),
        Err(LookupError::Document(e)) => {
            return Err(PageRefusal::stated(
                name,
                StatusCode::BAD_GATEWAY,
                "This app cannot be used",
                format!(
                    "Its description at {} cannot be used now: {}.",
                    e.url, e.why
                ),
            ));
        }
    };
    let session = crate::web::session::current(&app.repo, &app.authn.cookies, headers)
        .await
        .map_err(unavailable(app))?
        .filter(|s| req.accepts(s));
    let session = match session {
        Some(s) if crate::login::session_admitted(app, &s).await => Some(s),
        _ => None,
    };
    let Some(session) = session else {
        return Err(PageRefusal::sign_in_first(name, req_id));
    };
    Ok((req_id.to_string(), req, client, session))
}

/// `GET /.auth/consent?req=…`.
pub async fn consent_get(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let (req_id, req, client, session) = context(&app, &headers, params.get("req")).await?;
    if !app.site.admits(&req.resource, &session.identity) {
        return not_admitted(&app, &headers, &req_id, &req, &session.identity).await;
    }
    match remembered(&app, &session.identity, &req, &client).await {
        Ok(true) => return finish(&app, &req_id, &req, session.identity, true).await,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "store failure reading consent");
        }
    }
    let (csrf, set) = form_csrf(&app, &headers);
    let name = site_name(&app);
    let client_name = client
        .client_name
        .clone()
        .unwrap_or_else(|| "An unnamed app".to_string());
    let server = app
        .site
        .server_of(&req.resource)
        .and_then(|s| s.name.as_deref());
    let tpl = ConsentPage {
        site_name: &name,
        server,
        client_name: &client_name,
        client_id: &client.client_id,
        redirect_host: &redirect_host(&req.redirect_uri),
        user: display_name(&session.identity),
        scopes: super::scopes_for(&app, &req.resource, &session.identity, &req.scopes)
            .iter()
            .map(|s| describe_scope(&app, &req.resource, s))
            .collect(),
        document_host: document_host(&client.client_id),
        warnings: all_warnings(&client, &req.redirect_uri),
        csrf: &csrf,
        req: &req_id,
    };
    Ok(page_with_cookie(
        StatusCode::OK,
        &tpl,
        FormTarget::Client,
        set,
    ))
}

/// `POST /.auth/consent`: approve or deny.
pub async fn consent_post(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    let params = form_post(&app, &headers, &body)?;
    let (req_id, req, _client, session) = context(&app, &headers, params.get("req")).await?;
    if !app.site.admits(&req.resource, &session.identity) {
        return not_admitted(&app, &headers, &req_id, &req, &session.identity).await;
    }
    match params.get("decision") {
        Some("approve") => finish(&app, &req_id, &req, session.identity, true).await,
        Some("deny") => finish(&app, &req_id, &req, session.identity, false).await,
        _ => Err(PageRefusal::stated(
            site_name(&app),
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Choose Allow or Deny.",
        )),
    }
}

/// The page for a person whose account may not use the server the app asked for (its
/// `users` in `--config`): the request ends, and the page links back to the app with
/// `access_denied`.
async fn not_admitted(
    app: &AuthServer,
    headers: &HeaderMap,
    req_id: &str,
    req: &AuthRequestRecord,
    identity: &Identity,
) -> Result<Response, PageRefusal> {
    let removed = app.repo.remove::<AuthRequestRecord>(req_id.as_bytes());
    removed.await.map_err(unavailable(app))?;
    let server = app.site.server_of(&req.resource);
    tracing::info!(subject = %identity.subject(), server = server.map_or("", |s| s.label()), "consent refused: the server does not admit this account");
    let return_url = ClientRedirect {
        uri: &req.redirect_uri,
        state: req.state.as_deref(),
        issuer: app.site.issuer_of(&req.resource),
    }
    .error_url(
        OAuthErrorCode::AccessDenied,
        "this account may not use this MCP server",
    );
    let (csrf, set) = form_csrf(app, headers);
    let tpl = DeniedPage {
        site_name: &site_name(app),
        provider: &identity.provider,
        user: display_name(identity),
        csrf: &csrf,
        return_url: return_url.as_deref(),
        client_name: req.client_label(),
        server: server.and_then(|s| s.name.as_deref()),
    };
    Ok(page_with_cookie(
        StatusCode::FORBIDDEN,
        &tpl,
        FormTarget::Client,
        set,
    ))
}

/// Ends the pending request: remembers an approval and sends a code, or sends `access_denied`.
async fn finish(
    app: &AuthServer,
    req_id: &str,
    req: &AuthRequestRecord,
    identity: Identity,
    approve: bool,
) -> Result<Response, PageRefusal> {
    let back = ClientRedirect {
        uri: &req.redirect_uri,
        state: req.state.as_deref(),
        issuer: app.site.issuer_of(&req.resource),
    };
    // The request is single use, approved or not.
    // Fail closed: a request that could not be marked answered is not answered.
    let removed = app.repo.remove::<AuthRequestRecord>(req_id.as_bytes());
    if removed.await.map_err(unavailable(app))?.is_none() {
        return Err(PageRefusal::stated(
            site_name(app),
            StatusCode::BAD_REQUEST,
            "Already answered",
            "Go back to your app.",
        ));
    }
    if !approve {
        tracing::info!(client_id = %req.client_id, "consent denied");
        return Ok(back.error(OAuthErrorCode::AccessDenied, "the user denied access"));
    }
    let now = app.repo.clock().now();
    let consent = ConsentRecord {
        subject: identity.subject(),
        client_id: req.client_id.clone(),
        scopes: super::scopes_for(app, &req.resource, &identity, &req.scopes),
        granted_at: now,
        resource: named_resource(app, &req.resource),
    };
    let keep = now + app.authn.cfg.refresh_token_ttl.as_secs();
    let result = async {
        app.repo
            .put(
                &consent_key(&consent.subject, &req.client_id, &req.redirect_uri),
                &consent,
                Some(keep),
            )
            .await?;
        issue_code(app, req, identity).await
    }
    .await;
    Ok(match result {
        Ok(code) => back.code(&code),
        Err(e) => {
            tracing::error!(error = %e, "store failure issuing a code");
            back.error(
                OAuthErrorCode::ServerError,
                "the authorization could not be stored",
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_claim_another_host_are_flagged() {
        assert!(warnings(Some("Claude"), "https://claude.ai/api/mcp/auth_callback").is_empty());
        assert!(warnings(Some("claude.ai"), "https://claude.ai/api/mcp/auth_callback").is_empty());
        assert!(
            warnings(
                Some("ChatGPT (chatgpt.com)"),
                "https://chatgpt.com/connector/oauth/x"
            )
            .is_empty()
        );
        let w = warnings(Some("claude.ai"), "https://evil.example/cb");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("evil.example"));
        assert_eq!(
            warnings(
                Some("Login for github.com"),
                "https://github.com.evil.io/cb"
            )
            .len(),
            1
        );
        assert!(
            warnings(Some("v1.2"), "https://a.example/cb").is_empty(),
            "version numbers are not hosts"
        );
        assert_eq!(
            warnings(None, "http://127.0.0.1:33418/").len(),
            1,
            "loopback is noted"
        );
        assert_eq!(
            warnings(None, "cursor://anysphere.cursor-mcp/oauth/callback").len(),
            1
        );
        assert_eq!(redirect_host("http://127.0.0.1:33418/"), "127.0.0.1:33418");
        assert_eq!(
            redirect_host("cursor://anysphere.cursor-mcp/oauth/callback"),
            "cursor://anysphere.cursor-mcp"
        );
    }
}
