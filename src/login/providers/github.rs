//! GitHub: the identity from the API (the primary verified email when the profile hides
//! it) and the allow-lists (users, organisations, teams, over every page).

use serde_json::{Value, json};

use super::{AnswerError, SignInError, get_json, is_true, string_at};
use crate::config::{GitHubConfig, normalize_user};
use crate::store::Identity;

/// Pages of a GitHub membership list followed at most.
pub(super) const MAX_PAGES: usize = 50;

/// Every element of a paginated GitHub list (following `Link: rel="next"`).
pub(super) async fn github_all(
    http: &reqwest::Client,
    first: String,
    token: &str,
) -> Result<Vec<Value>, SignInError> {
    let mut out = Vec::new();
    let mut next = Some(first);
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(AnswerError::TooManyPages(MAX_PAGES).into());
        }
        let (v, n) = get_json(http, &url, token).await?;
        match v {
            Value::Array(items) => out.extend(items),
            _ => return Err(AnswerError::NotAList { url }.into()),
        }
        next = n;
    }
    Ok(out)
}

pub(super) async fn github_identity(
    http: &reqwest::Client,
    cfg: &GitHubConfig,
    access: &str,
) -> Result<Identity, SignInError> {
    let api = |path: &str| {
        let base = cfg.api_url.as_str().trim_end_matches('/');
        format!("{base}/{path}")
    };
    let (user, _) = get_json(http, &api("user"), access).await?;
    let login = string_at(&user, "/login")
        .ok_or(AnswerError::NoLogin)?
        .to_string();
    let mut email = string_at(&user, "/email").map(str::to_string);
    if email.is_none() {
        // The profile hides it: the primary verified address.
        let emails = github_all(http, api("user/emails?per_page=100"), access).await?;
        email = emails
            .iter()
            .find(|e| is_true(e.get("primary")) && is_true(e.get("verified")))
            .and_then(|e| string_at(e, "/email"))
            .map(str::to_string);
    }
    let mut groups = Vec::new();
    if !cfg.allowed_orgs.is_empty() {
        for org in github_all(http, api("user/orgs?per_page=100"), access).await? {
            if let Some(o) = string_at(&org, "/login") {
                groups.push(o.to_ascii_lowercase());
            }
        }
        if cfg.allowed_orgs.iter().any(|o| o.contains(':')) {
            for team in github_all(http, api("user/teams?per_page=100"), access).await? {
                if let (Some(o), Some(t)) = (
                    string_at(&team, "/organization/login"),
                    string_at(&team, "/slug"),
                ) {
                    groups.push(format!("{}:{}", o, t).to_ascii_lowercase());
                }
            }
        }
    }
    Ok(Identity {
        provider: "github".into(),
        user_id: login.clone(),
        email: email.and_then(|e| normalize_user(&e)),
        name: string_at(&user, "/name").map(str::to_string),
        groups,
        claims: json!({ "id": user.get("id"), "login": login }),
    })
}

pub(super) fn github_allows(g: &GitHubConfig, identity: &Identity) -> bool {
    let login = identity.user_id.to_ascii_lowercase();
    g.allow_all
        || g.allowed_users.contains(&login)
        || g.allowed_orgs
            .iter()
            .any(|rule| identity.groups.iter().any(|m| m == rule))
}
