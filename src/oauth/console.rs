//! The operator console (`/.auth/admin`), for the users `--admin-users` names: live MCP
//! sessions and their children, grants by user, clients, recent sign-in failures and
//! lockouts, the password account's passkeys; and what an operator may do about them (end a
//! session, revoke a grant, delete a client, unlock an address, remove a passkey: a lost
//! passkey's recovery without a restart). Anyone else gets a 403 page, on every URL and
//! action. Every action carries the CSRF token and is written to the main log, and to the
//! audit log when one is on.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::AuthServer;
use super::apps::signed_in;
use super::static_clients::is_static;
use crate::audit::Record;
use crate::login::{display_name, form_csrf, form_post, site_name, unavailable};
use crate::store::{ClientRecord, GrantRecord, Identity, McpSessionRecord, SessionRecord};
use crate::web::form::Params;
use crate::web::pages::{
    AdminPage, ClientRow, FormTarget, GrantRow, LockoutRow, ServerRow, SessionRow,
    page_with_cookie, see_other, when,
};
use crate::web::refusal::PageRefusal;

/// The console.
pub const ADMIN_PATH: &str = "/.auth/admin";

/// Most rows of a kind shown.
const MAX_ROWS: usize = 500;

/// Whether `identity` is one of the `--admin-users` (named as a policy names users).
fn is_admin(app: &AuthServer, identity: &Identity) -> bool {
    let who = crate::policy::Who::from_identity(identity, &[]);
    app.admin_users.iter().any(|a| who.is_named(a))
}

/// The signed-in operator, or the sign-in page (nobody signed in) or a 403 page.
async fn operator(app: &AuthServer, headers: &HeaderMap) -> Result<SessionRecord, PageRefusal> {
    let session = signed_in(app, headers).await?;
    if is_admin(app, &session.identity) {
        return Ok(session);
    }
    tracing::warn!(subject = %session.identity.subject(), "the operator console was refused to a user who is not an operator");
    Err(PageRefusal::stated(
        site_name(app),
        StatusCode::FORBIDDEN,
        "Not allowed",
        "This page is for the proxy's operators.",
    ))
}

/// A duration as people read it: `42 s`, `7 min`, `3 h 5 min`, `2 d`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d", s / 86_400),
    }
}

/// The prefix of a console target that names an HTTP upstream's session by the hash the
/// proxy keeps of its id (the id itself is never stored).
const UPSTREAM: &str = "upstream:";

/// The sessions an HTTP upstream issued, by the bindings the proxy keeps of them (who may use
/// each): their user and age. Their process is the upstream's own.
async fn upstream_sessions(app: &AuthServer) -> Result<Vec<SessionRow>, PageRefusal> {
    let now = app.repo.clock().now();
    let mut bindings = app
        .repo
        .scan::<McpSessionRecord>(b"")
        .await
        .map_err(unavailable(app))?;
    bindings.sort_by_key(|(_, b)| std::cmp::Reverse(b.created_at));
    Ok(bindings
        .into_iter()
        .map(|(key, b)| SessionRow {
            server: String::new(),
            id: format!("{UPSTREAM}{}", hex::encode(key)),
            user: b.subject,
            process: "the HTTP upstream's".into(),
            age: span(Duration::from_secs(now.saturating_sub(b.created_at))),
            idle: "—".into(),
            memory: "—".into(),
        })
        .collect())
}

/// Ends an HTTP upstream's session at the proxy: its binding goes, so the next request with
/// its id gets 404 and the client starts a new session. Whether there was one.
async fn end_upstream_session(app: &AuthServer, hash_hex: &str) -> Result<bool, PageRefusal> {
    let Some(key) = hex::decode(hash_hex).ok().filter(|k| k.len() == 32) else {
        return Ok(false);
    };
    let ended = app
        .repo
        .remove::<McpSessionRecord>(&key)
        .await
        .map_err(unavailable(app))?
        .is_some();
    app.repo.flush().await.map_err(unavailable(app))?;
    Ok(ended)
}

/// `GET /.auth/admin`.
pub async fn admin_get(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageRefusal> {
    let session = operator(&app, &headers).await?;
    let upstream = upstream_sessions(&app).await?;
    let servers = app
        .backends
        .iter()
        .filter_map(|(name, b)| {
            let face = app.site.server_named(name.as_deref()?)?;
            Some(ServerRow {
                name: face.label().to_string(),
                url: face.resource.clone(),
                backend: b.kind().to_string(),
                sessions: b.live_sessions(),
                users: if face.admits.is_everyone() {
                    "everyone who may sign in".into()
                } else {
                    "its users list".into()
                },
            })
        })
        .collect();
    let sessions = app
        .backends
        .iter()
        .flat_map(|(name, b)| {
            let server = name.clone().unwrap_or_default();
            b.sessions().into_iter().map(move |s| (server.clone(), s))
        })
        .map(|(server, s)| SessionRow {
            server,
            process: match (s.pid, s.shared_child, s.stateless) {
                (Some(pid), true, _) => format!("pid {pid} (shared by every session)"),
                (Some(pid), false, true) => format!("pid {pid} (the user's 2026-07-28 requests)"),
                (Some(pid), false, false) => format!("pid {pid}"),
                (None, _, _) => "—".into(),
            },
            memory: s
                .rss_kib
                .map_or_else(|| "—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            age: span(s.age),
            idle: span(s.idle),
            id: s.id,
            user: s.user,
        })
        .chain(upstream)
        .take(MAX_ROWS)
        .collect();
    let mut grants: Vec<GrantRecord> = app
        .repo
        .scan::<GrantRecord>(b"")
        .await
        .map_err(unavailable(&app))?
        .into_iter()
        .map(|(_, g)| g)
        .collect();
    grants.sort_by_cached_key(|g| (g.identity.subject(), std::cmp::Reverse(g.created_at)));
    let mut clients: Vec<ClientRecord> = app
        .repo
        .scan::<ClientRecord>(b"")
        .await
        .map_err(unavailable(&app))?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    clients.sort_by_key(|c| std::cmp::Reverse(c.issued_at));
    let name_of = |id: &str| {
        clients
            .iter()
            .find(|c| c.client_id == id)
            .and_then(|c| c.client_name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let grants = grants
        .iter()
        .take(MAX_ROWS)
        .map(|g| GrantRow {
            server: super::apps::server_label(&app, &g.resource),
            id: g.grant_id.clone(),
            user: g.identity.subject(),
            client: name_of(&g.client_id),
            granted: when(Some(g.created_at)),
            scopes: g.scopes.join(" "),
        })
        .collect();
    let clients = clients
        .iter()
        .take(MAX_ROWS)
        .map(|c| ClientRow {
            id: c.client_id.clone(),
            name: c.client_name.clone().unwrap_or_else(|| "(unnamed)".into()),
            kind: if is_static(c) {
                "declared (--clients-file)"
            } else {
                "registered"
            },
            issued: when(Some(c.issued_at)),
            redirects: c.redirect_uris.join(", "),
        })
        .collect();
    let now = app.repo.clock().now();
    let lockouts = app
        .authn
        .lockout
        .recent(now, MAX_ROWS)
        .await
        .map_err(unavailable(&app))?
        .into_iter()
        .map(|(ip, attempts, until)| LockoutRow {
            address: ip.to_string(),
            attempts,
            locked_until: if until > now {
                when(Some(until))
            } else {
                "not locked".into()
            },
        })
        .collect();
    let passkeys = crate::login::passkey::manage::all_rows(&app).await?;
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let notice = match params.get("done") {
        Some("end-session") => Some("The session was ended (a stdio session's process stopped)."),
        Some("revoke-grant") => Some("The grant was revoked; its tokens no longer work."),
        Some("delete-client") => Some("The client was deleted, with every grant it held."),
        Some("unlock-ip") => Some("The address may sign in again."),
        Some("remove-passkey") => Some("The passkey was removed; it signs nobody in."),
        _ => None,
    };
    let (csrf, set) = form_csrf(&app, &headers);
    let name = site_name(&app);
    let tpl = AdminPage {
        site_name: &name,
        user: display_name(&session.identity),
        notice,
        csrf: &csrf,
        servers,
        sessions,
        grants,
        clients,
        lockouts,
        passkeys,
    };
    Ok(page_with_cookie(
        StatusCode::OK,
        &tpl,
        FormTarget::SelfOnly,
        set,
    ))
}

/// `POST /.auth/admin`: one action (`action`, `target`).
pub async fn admin_post(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageRefusal> {
    let params = form_post(&app, &headers, &body)?;
    let session = operator(&app, &headers).await?;
    let operator_subject = session.identity.subject();
    let target = params.get("target").unwrap_or_default();
    let not_found = || {
        PageRefusal::stated(
            site_name(&app),
            StatusCode::NOT_FOUND,
            "Nothing to do",
            "It is gone already (or never was): reload the console.",
        )
    };
    let store = unavailable(&app);
    let action = match params.get("action") {
        Some("end-session") => {
            let ended = match target.strip_prefix(UPSTREAM) {
                Some(hash) => end_upstream_session(&app, hash).await?,
                None => app.backends.iter().any(|(_, b)| b.end_session(target)),
            };
            if !ended {
                return Err(not_found());
            }
            "end-session"
        }
        Some("revoke-grant") => {
            let grant = app
                .repo
                .get::<GrantRecord>(target.as_bytes())
                .await
                .map_err(&store)?;
            if grant.is_none() {
                return Err(not_found());
            }
            super::token::revoke_family(&app, target)
                .await
                .map_err(|_| not_found())?;
            app.metrics.token("revoked");
            "revoke-grant"
        }
        Some("delete-client") => {
            let client = app
                .repo
                .remove::<ClientRecord>(target.as_bytes())
                .await
                .map_err(&store)?;
            if client.is_none() {
                return Err(not_found());
            }
            for (_, g) in app.repo.scan::<GrantRecord>(b"").await.map_err(&store)? {
                if g.client_id == target {
                    super::token::revoke_family(&app, &g.grant_id)
                        .await
                        .map_err(|_| not_found())?;
                }
            }
            app.repo.flush().await.map_err(&store)?;
            "delete-client"
        }
        Some("remove-passkey") => {
            crate::login::passkey::manage::remove(&app, Some(target), &operator_subject).await?;
            "remove-passkey"
        }
        Some("unlock-ip") => {
            let ip: IpAddr = target.parse().map_err(|_| not_found())?;
            app.authn.lockout.succeed(ip).await;
            "unlock-ip"
        }
        _ => {
            return Err(PageRefusal::stated(
                site_name(&app),
                StatusCode::BAD_REQUEST,
                "Bad request",
                "No such action.",
            ));
        }
    };
    tracing::warn!(operator = %operator_subject, action, target, "operator action");
    if let Some(audit) = &app.audit {
        audit.write(&Record {
            server: None,
            time: app.repo.clock().now(),
            user: &operator_subject,
            client_id: "",
            client_name: None,
            session: None,
            era: "console",
            method: &format!("admin/{action}"),
            name: target,
            duration_ms: 0,
            outcome: "ok",
            rule: None,
            arguments: serde_json::Value::Null,
        });
    }
    Ok(see_other(
        &format!("{ADMIN_PATH}?done={action}"),
        FormTarget::SelfOnly,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(Duration::from_secs(42)), "42 s");
        assert_eq!(span(Duration::from_secs(7 * 60 + 5)), "7 min");
        assert_eq!(span(Duration::from_secs(3 * 3600 + 5 * 60)), "3 h 5 min");
        assert_eq!(span(Duration::from_secs(2 * 86_400 + 1)), "2 d");
    }
}
