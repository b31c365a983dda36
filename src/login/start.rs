//! Sign-in at startup: the password hashed (and the plaintext dropped), the providers set up,
//! and the grants today's configuration no longer admits revoked, before anyone connects: a
//! changed password ends the sign-ins made with the old one, and a person removed from an
//! allow-list loses access now, not when their tokens expire.

use super::Authn;
use super::passkey::Passkeys;
use super::password::{Lockout, PasswordError, PasswordVerifier};
use super::providers::ProviderError;
use crate::config::{AuthConfig, Site};
use crate::store::{GrantRecord, PasskeyRecord, Repo, StoreError};
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
    #[error(transparent)]
    Passkey(#[from] super::passkey::PasskeyError),
}

/// Sets up sign-in, and revokes the grants and passkeys today's configuration no longer
/// admits (every one made with a password since changed among them).
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
            tracing::warn!(
                "the password changed: sign-ins and passkeys made with the old one end now"
            );
        }
        repo.put_secret(PASSWORD_EPOCH, current.as_bytes()).await?;
        repo.flush().await?;
    }
    let providers = super::providers::Providers::new(&auth.providers, site).await?;
    let passkeys = Passkeys::new(&site.home, password.is_some(), auth.require_passkey)?;
    let authn = Authn {
        providers,
        lockout: Lockout::new(auth, repo),
        cookies: Cookies::for_origin(&site.home),
        password,
        passkeys,
        // The plaintext password was hashed above; this copy lives as long as the process.
        cfg: AuthConfig {
            password: None,
            ..auth.clone()
        },
    };
    // Grants and passkeys today's configuration no longer admits end now, not when their
    // tokens expire: those made with another password, people removed from an allow-list,
    // a provider no longer configured, (with `--require-passkey`) the password account's
    // grants made with the password alone, and grants for a server of `--config` whose
    // `users` no longer name the person.
    let mut revoked = 0;
    let mut kept = Vec::new();
    for (_, grant) in repo.scan::<GrantRecord>(b"").await? {
        if !authn.still_allowed(&grant.identity) || !site.admits(&grant.resource, &grant.identity) {
            repo.revoke_grant(&grant.grant_id).await?;
            revoked += 1;
        } else {
            kept.push(grant);
        }
    }
    // Grants and browser sessions stored before the index by person, or by an older proxy
    // on a shared store, are indexed now: each person's apps page lists them, and "sign out
    // everywhere" ends them.
    let indexed = repo.index_by_person(&kept).await?;
    if indexed > 0 {
        tracing::info!(indexed, "grants and browser sessions indexed by person");
        repo.flush().await?;
    }
    let epoch = authn.password.as_ref().map(|p| p.epoch());
    let mut passkeys = 0;
    for (key, passkey) in repo.scan::<PasskeyRecord>(b"").await? {
        if epoch != Some(passkey.epoch.as_str()) {
            repo.remove::<PasskeyRecord>(&key).await?;
            passkeys += 1;
        }
    }
    if revoked + passkeys > 0 {
        tracing::warn!(
            revoked,
            passkeys,
            "grants and passkeys today's configuration no longer admits were revoked"
        );
        repo.flush().await?;
    }
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
