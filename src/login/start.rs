//! Sign-in at startup: the password hashed (and the plaintext dropped), the providers set up,
//! and the grants today's configuration no longer admits revoked, before anyone connects: a
//! changed password ends the sign-ins made with the old one, and a person removed from an
//! allow-list loses access now, not when their tokens expire.

use super::Authn;
use super::password::{Lockout, PasswordError, PasswordVerifier};
use super::providers::ProviderError;
use crate::config::{AuthConfig, Site};
use crate::store::{GrantRecord, Repo, StoreError};
use crate::web::session::Cookies;

/// Store key of the fingerprint of the passwords grants were made under.
const PASSWORD_EPOCH: &str = "password_epoch";

/// Why sign-in could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sets up sign-in; when the configured passwords changed since the last start, revokes
/// every grant made with the old ones.
pub async fn authn(auth: &AuthConfig, site: &Site, repo: &Repo) -> Result<Authn, StartError> {
    let password = PasswordVerifier::new(auth, repo.keys().hmac.as_ref()).await?;
    if let Some(p) = &auth.password
        && super::password::weak(p.expose())
    {
        tracing::warn!(
            "the password is weak (under 12 characters, or one every guesser tries first): choose a long passphrase"
        );
    }
    let current = password
        .as_ref()
        .map(|p| p.epoch().to_string())
        .unwrap_or_default();
    let previous = repo.get_secret(PASSWORD_EPOCH).await.ok().flatten();
    if previous.as_deref().map(Vec::as_slice) != Some(current.as_bytes()) {
        if previous.is_some() {
            let mut revoked = 0;
            for (_, grant) in repo.scan::<GrantRecord>(b"").await? {
                if grant.identity.provider == "password" {
                    repo.revoke_grant(&grant.grant_id).await?;
                    revoked += 1;
                }
            }
            tracing::warn!(
                revoked,
                "the password changed: sign-ins made with the old one are revoked"
            );
        }
        repo.put_secret(PASSWORD_EPOCH, current.as_bytes()).await?;
        repo.flush().await?;
    }
    let providers = super::providers::Providers::new(&auth.providers, site).await?;
    // Grants of people today's allow-lists no longer admit (a user removed from a list, a
    // provider no longer configured) end now, not when their tokens expire.
    let mut revoked = 0;
    for (_, grant) in repo.scan::<GrantRecord>(b"").await? {
        if grant.identity.provider != "password" && !providers.still_allowed(&grant.identity) {
            repo.revoke_grant(&grant.grant_id).await?;
            revoked += 1;
        }
    }
    if revoked > 0 {
        tracing::warn!(
            revoked,
            "grants of users the allow-lists no longer admit were revoked"
        );
        repo.flush().await?;
    }
    let authn = Authn {
        providers,
        lockout: Lockout::new(auth, repo),
        cookies: Cookies::for_origin(&site.origin),
        password,
        // The plaintext password was hashed above; this copy lives as long as the process.
        cfg: AuthConfig {
            password: None,
            ..auth.clone()
        },
    };
    let methods = authn.methods();
    if methods.is_empty() {
        tracing::warn!(
            "no sign-in method is configured: nobody can sign in (set --password or a provider)"
        );
    } else {
        let methods = methods.join(", ");
        tracing::info!(methods, "sign-in with {methods}");
    }
    Ok(authn)
}
