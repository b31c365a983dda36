//! Clients an operator declares in a TOML file (`--clients-file`), for apps that cannot
//! register themselves and for headless agents (`client_credentials`):
//!
//! ```toml
//! [[client]]
//! id = "ci-agent"
//! secret = "a long random secret"      # optional: without it a public client
//! name = "CI agent"
//! redirect_uris = []                     # exact URIs, for the code flow
//! grant_types = ["client_credentials"]   # default: authorization_code, refresh_token
//! token_endpoint_auth_method = "client_secret_post"   # default: client_secret_basic
//! ```
//!
//! They are validated at startup (the same redirect rules as registration) and written to
//! the store as never-expiring records; a client removed from the file is removed from the
//! store at the next start.

use std::path::Path;

use serde::Deserialize;

use crate::oauth::redirect_uri::{Unregistrable, check_registrable};
use crate::store::{ClientRecord, GrantRecord, Repo, StoreError, TokenHash};

/// Marks a client record as coming from the file.
pub const STATIC_MARK: &str = "static_client";

#[derive(Debug, thiserror::Error)]
pub enum StaticClientError {
    #[error("--clients-file {path}: {problem}")]
    Invalid { path: String, problem: Problem },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What is wrong with the clients file (the client named where it is one client's fault).
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Unreadable(#[from] std::io::Error),
    #[error("{0}")]
    NotToml(#[from] toml::de::Error),
    #[error("client id {0:?} is not usable")]
    UnusableId(String),
    #[error("client {0:?} is declared twice")]
    Twice(String),
    #[error("client {id:?}: grant type {grant:?} is not supported")]
    Grant { id: String, grant: String },
    #[error("client {0:?}: the code flow needs redirect_uris")]
    NoRedirectUris(String),
    #[error("client {id:?}: redirect URI {why}")]
    RedirectUri { id: String, why: Unregistrable },
    #[error("client {0:?}: client_credentials needs a secret")]
    CredentialsWithoutSecret(String),
    #[error("client {0:?}: the secret is too short (16 characters at least)")]
    ShortSecret(String),
    #[error("client {id:?}: {method} needs a secret")]
    MethodWithoutSecret { id: String, method: String },
    #[error("client {id:?}: auth method {method:?} is not supported")]
    Method { id: String, method: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    client: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
}

/// Whether a stored client came from the file.
pub fn is_static(c: &ClientRecord) -> bool {
    c.extra.get(STATIC_MARK).is_some_and(|v| v == true)
}

/// Reads and checks the file; the records to store.
pub fn load(
    path: &Path,
    private_schemes: &[String],
    now: u64,
) -> Result<Vec<ClientRecord>, StaticClientError> {
    let bad = |problem: Problem| StaticClientError::Invalid {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.into()))?;
    let file: File = toml::from_str(&text).map_err(|e| bad(e.into()))?;
    let mut out: Vec<ClientRecord> = Vec::new();
    for e in file.client {
        let id = e.id.trim().to_string();
        if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad(Problem::UnusableId(id)));
        }
        if out.iter().any(|c| c.client_id == id) {
            return Err(bad(Problem::Twice(id)));
        }
        let grant_types = e
            .grant_types
            .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
        for g in &grant_types {
            if !matches!(
                g.as_str(),
                "authorization_code" | "refresh_token" | "client_credentials"
            ) {
                let grant = g.clone();
                return Err(bad(Problem::Grant { id, grant }));
            }
        }
        let code_flow = grant_types.iter().any(|g| g == "authorization_code");
        if code_flow && e.redirect_uris.is_empty() {
            return Err(bad(Problem::NoRedirectUris(id)));
        }
        for uri in &e.redirect_uris {
            check_registrable(uri, private_schemes).map_err(|why| {
                let id = id.clone();
                bad(Problem::RedirectUri { id, why })
            })?;
        }
        let secret = e.secret.filter(|s| !s.is_empty());
        if grant_types.iter().any(|g| g == "client_credentials") && secret.is_none() {
            return Err(bad(Problem::CredentialsWithoutSecret(id)));
        }
        if secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(bad(Problem::ShortSecret(id)));
        }
        let method = match (&secret, e.token_endpoint_auth_method.as_deref()) {
            (None, None | Some("none")) => "none",
            (None, Some(m)) => {
                let method = m.to_string();
                return Err(bad(Problem::MethodWithoutSecret { id, method }));
            }
            (Some(_), None | Some("client_secret_basic")) => "client_secret_basic",
            (Some(_), Some("client_secret_post")) => "client_secret_post",
            (Some(_), Some(m)) => {
                let method = m.to_string();
                return Err(bad(Problem::Method { id, method }));
            }
        };
        let mut extra = serde_json::Map::new();
        extra.insert(STATIC_MARK.into(), serde_json::Value::Bool(true));
        out.push(ClientRecord {
            client_id: id,
            client_name: e.name,
            redirect_uris: e.redirect_uris,
            token_endpoint_auth_method: method.into(),
            response_types: if code_flow {
                vec!["code".into()]
            } else {
                Vec::new()
            },
            grant_types,
            secret_hash: secret.map(|s| TokenHash::of(&s).0),
            client_secret_expires_at: 0,
            registration_token_hash: None,
            issued_at: now,
            used: true,
            extra,
        });
    }
    Ok(out)
}

/// Writes the file's clients to the store and removes static clients no longer in it, with
/// every grant made to them (their tokens end now, not when they expire).
pub async fn sync(repo: &Repo, clients: &[ClientRecord]) -> Result<(), StaticClientError> {
    let mut removed = Vec::new();
    for (key, old) in repo.scan::<ClientRecord>(b"").await? {
        if is_static(&old) && !clients.iter().any(|c| c.client_id == old.client_id) {
            repo.remove::<ClientRecord>(&key).await?;
            removed.push(old.client_id);
        }
    }
    if !removed.is_empty() {
        for (_, grant) in repo.scan::<GrantRecord>(b"").await? {
            if removed.contains(&grant.client_id) {
                repo.revoke_grant(&grant.grant_id).await?;
            }
        }
    }
    for c in clients {
        repo.put(c.client_id.as_bytes(), c, None).await?;
    }
    repo.flush().await?;
    Ok(())
}
