//! The user's tokens at their sign-in provider, kept sealed in the store (encrypted with the
//! store's key) and refreshed shortly before they expire, so the upstream can act for the
//! user (`--pass-access-token` → `X-Forwarded-Access-Token`).

use zeroize::Zeroizing;

use super::providers::ProviderTokens;
use crate::login::SignIn;
use crate::store::{Identity, Repo, StoreError};

/// Refresh when less than this is left.
const REFRESH_AHEAD: u64 = 60;

fn key(subject: &str) -> String {
    format!("provider_tokens:{subject}")
}

/// Keeps the tokens of `subject`'s latest sign-in.
pub async fn save(repo: &Repo, subject: &str, tokens: &ProviderTokens) -> Result<(), StoreError> {
    let json = Zeroizing::new(serde_json::to_vec(tokens).unwrap_or_default());
    repo.put_secret(&key(subject), &json).await
}

/// A usable access token of the user at their provider: refreshed first when it is about
/// to expire; `None` when there is none (or it expired and cannot be refreshed).
pub async fn current(app: &SignIn, identity: &Identity) -> Option<String> {
    let subject = identity.subject();
    let stored = app.repo.get_secret(&key(&subject)).await.ok()??;
    let tokens: ProviderTokens = serde_json::from_slice(&stored).ok()?;
    let now = app.repo.clock().now();
    let fresh = tokens.expires_at.is_none_or(|e| e > now + REFRESH_AHEAD);
    if fresh {
        return Some(tokens.access);
    }
    let provider = app.authn.providers.get(&identity.provider)?;
    let Some(refresh) = tokens.refresh.as_deref() else {
        return tokens
            .expires_at
            .is_some_and(|e| e > now)
            .then_some(tokens.access);
    };
    match provider
        .refresh(app.authn.providers.http(), refresh, now)
        .await
    {
        Ok(new) => {
            if let Err(e) = save(&app.repo, &subject, &new).await {
                tracing::warn!(error = %e, "store failure keeping refreshed provider tokens");
            }
            Some(new.access)
        }
        Err(e) => {
            tracing::warn!(provider = %identity.provider, error = %e, "the provider token could not be refreshed");
            tokens
                .expires_at
                .is_some_and(|e| e > now)
                .then_some(tokens.access)
        }
    }
}
