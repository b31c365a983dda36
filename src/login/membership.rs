//! Whether a person admitted by a membership at their provider (a GitHub organisation or
//! team, a Google Workspace, an OIDC group or claim) is still a member. Memberships end at
//! the provider without any change here, so what was captured at sign-in cannot answer:
//! the provider is asked again, with the user's stored provider token, whenever a refresh
//! token is used or a browser session would approve a new app.

use crate::login::SignIn;
use crate::store::Identity;

/// What the provider says today.
#[derive(Debug, PartialEq, Eq)]
pub enum Membership {
    /// Admitted by the operator's own lists (users, or everyone): nothing to ask.
    NotAsked,
    /// Still admitted.
    Current,
    /// No longer admitted.
    Ended,
    /// The provider could not be asked (no stored token, or it failed): not admitted now.
    Unknown(String),
}

/// Asks `identity`'s provider whether its membership still admits it.
pub async fn recheck(app: &SignIn, identity: &Identity) -> Membership {
    let Some(provider) = app.authn.providers.get(&identity.provider) else {
        return Membership::NotAsked;
    };
    if !provider.admits_by_membership(identity) {
        return Membership::NotAsked;
    }
    let Some(access) = super::provider_tokens::current(app, identity).await else {
        return Membership::Unknown("no usable provider token is stored".into());
    };
    let http = app.authn.providers.http();
    match provider.current_identity(http, identity, &access).await {
        Ok(now) if now.subject() == identity.subject() && provider.allows(&now) => {
            Membership::Current
        }
        Ok(_) => Membership::Ended,
        Err(e) => Membership::Unknown(e.to_string()),
    }
}
