//! Telling the MCP server who is calling: identity headers and `--header-mapping`, for
//! proxied requests and for the forward-auth answer.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::{IdentityPart, UpstreamOptions};
use crate::store::Identity;

/// Whether `name` (lowercase) is one of the headers only we may set (the identity names and
/// the `--header-mapping` targets): client copies of them are spoofing.
pub fn is_ours(opts: &UpstreamOptions, name: &str) -> bool {
    let i = &opts.identity;
    [&i.user, &i.email, &i.name, &i.groups]
        .into_iter()
        .chain(opts.mapping.iter().map(|(_, h)| h))
        .any(|h| h.as_str() == name)
}

/// `--stdio-identity-env`: which parts of the caller's identity go into which variables of
/// their child, and whether the user is provider-qualified there too.
#[derive(Debug, Clone, Default)]
pub struct IdentityEnv {
    pub vars: Vec<(IdentityPart, String)>,
    pub qualified_user: bool,
}

impl IdentityEnv {
    /// The variables for `id`; a part with no value is left out.
    pub fn values(&self, id: &Identity) -> Vec<(String, String)> {
        self.vars
            .iter()
            .filter_map(|(part, var)| Some((var.clone(), part.of(id, self.qualified_user)?)))
            .collect()
    }
}

impl IdentityPart {
    /// The value in `id`, if known and not empty; the user qualified by its provider when
    /// `qualified` ([`crate::config::IdentityHeaders::qualified_user`]).
    pub fn of(&self, id: &Identity, qualified: bool) -> Option<String> {
        let v = match self {
            IdentityPart::User => Some(user_value(id, qualified)),
            IdentityPart::Provider => Some(id.provider.clone()),
            IdentityPart::Email => id.email.clone(),
            IdentityPart::Name => id.name.clone(),
            IdentityPart::Groups => Some(groups_value(id)),
            IdentityPart::Claim(p) => claim_text(id.claims.pointer(p)),
        };
        v.filter(|v| !v.is_empty())
    }
}

/// The user as sent upstream: `provider:user id` when qualified, else the bare id.
fn user_value(id: &Identity, qualified: bool) -> String {
    if qualified {
        format!("{}:{}", id.provider, id.user_id)
    } else {
        id.user_id.clone()
    }
}

/// The groups, comma-separated. A group whose name holds a comma would read upstream as two
/// groups (one of which it is not): it is left out, and the others are sent. (Not logged
/// here: this runs on every proxied request.)
fn groups_value(id: &Identity) -> String {
    let kept: Vec<&str> = id
        .groups
        .iter()
        .map(String::as_str)
        .filter(|g| !g.contains(','))
        .collect();
    kept.join(",")
}

/// A claim as text: strings as they are, arrays joined with commas, other values as JSON.
fn claim_text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
}

/// Adds the caller's identity headers; a header is left out, not sent empty, when the value
/// is unknown (or cannot be a header value).
pub fn insert(opts: &UpstreamOptions, out: &mut HeaderMap, id: &Identity) {
    each(opts, id, |name, value| {
        out.insert(name.clone(), value);
    });
}

/// Calls `f` with each identity header the caller gets, in the order [`insert`] sets them
/// (a later one of the same name replaces an earlier one there).
pub fn each(opts: &UpstreamOptions, id: &Identity, mut f: impl FnMut(&HeaderName, HeaderValue)) {
    let i = &opts.identity;
    let mut set = |name: &HeaderName, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty())
            && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
        {
            f(name, v);
        }
    };
    set(
        &HeaderName::from_static(crate::config::PROVIDER_HEADER),
        Some(id.provider.clone()),
    );
    set(&i.user, Some(user_value(id, i.qualified_user)));
    set(&i.email, id.email.clone());
    set(&i.name, id.name.clone());
    set(&i.groups, Some(groups_value(id)));
    for (pointer, name) in &opts.mapping {
        set(name, claim_text(id.claims.pointer(pointer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(provider: &str, user: &str, groups: &[&str]) -> Identity {
        Identity {
            provider: provider.into(),
            user_id: user.into(),
            email: None,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: json!({}),
        }
    }

    #[test]
    fn the_user_is_qualified_by_its_provider_when_several_sign_ins_are_on() {
        let github_admin = id("github", "admin", &[]);
        let password_admin = id("password", "admin", &[]);
        assert_eq!(
            IdentityPart::User.of(&github_admin, false).as_deref(),
            Some("admin")
        );
        assert_ne!(
            IdentityPart::User.of(&github_admin, true),
            IdentityPart::User.of(&password_admin, true),
            "two people, two users upstream"
        );
        assert_eq!(
            IdentityPart::User.of(&github_admin, true).as_deref(),
            Some("github:admin")
        );
        assert_eq!(
            IdentityPart::Provider.of(&github_admin, false).as_deref(),
            Some("github")
        );
        let env = IdentityEnv {
            vars: vec![
                (IdentityPart::User, "MCP_USER".into()),
                (IdentityPart::Provider, "MCP_PROVIDER".into()),
            ],
            qualified_user: true,
        };
        assert_eq!(
            env.values(&password_admin),
            [
                ("MCP_USER".to_string(), "password:admin".to_string()),
                ("MCP_PROVIDER".to_string(), "password".to_string())
            ]
        );
    }

    #[test]
    fn a_group_with_a_comma_is_not_two_groups_upstream() {
        let who = id("oidc", "ann", &["dev", "admins,ops", "qa"]);
        assert_eq!(
            IdentityPart::Groups.of(&who, false).as_deref(),
            Some("dev,qa")
        );
    }
}
