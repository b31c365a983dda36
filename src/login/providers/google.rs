//! Google: the identity from userinfo (a verified email required) and the allow-lists
//! (users, Workspace domains).

use serde_json::json;

use super::{SignInError, get_json, is_true, string_at};
use crate::config::{GoogleConfig, normalize_user};
use crate::store::Identity;

pub(super) async fn google_identity(
    http: &reqwest::Client,
    userinfo: &str,
    access: &str,
) -> Result<Identity, SignInError> {
    let (info, _) = get_json(http, userinfo, access).await?;
    if !is_true(info.get("email_verified")) {
        return Err(SignInError::Unverified);
    }
    let email = string_at(&info, "/email")
        .and_then(normalize_user)
        .filter(|e| e.contains('@'))
        .ok_or(SignInError::Unverified)?;
    Ok(Identity {
        provider: "google".into(),
        user_id: email.clone(),
        email: Some(email),
        name: string_at(&info, "/name").map(str::to_string),
        groups: Vec::new(),
        claims: json!({
            "sub": info.get("sub"),
            "hd": info.get("hd"),
            "email_verified": true,
        }),
    })
}

pub(super) fn google_allows(g: &GoogleConfig, identity: &Identity) -> bool {
    let Some(email) = identity.email.as_deref().and_then(normalize_user) else {
        return false;
    };
    if !is_true(identity.claims.get("email_verified")) {
        return false;
    }
    let hd = string_at(&identity.claims, "/hd").map(str::to_ascii_lowercase);
    g.allow_all
        || g.allowed_users.contains(&email)
        || hd.is_some_and(|hd| g.allowed_workspaces.contains(&hd))
}
