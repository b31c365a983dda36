//! Telling the MCP server who is calling: identity headers and `--header-mapping`, for
//! proxied requests and for the forward-auth answer.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::{IdentityPart, UpstreamOptions};
use crate::store::Identity;

/// The headers only we may set (the identity names and the `--header-mapping` targets),
/// lowercase: client copies of them are spoofing.
pub fn our_names(opts: &UpstreamOptions) -> impl Iterator<Item = &str> {
    let i = &opts.identity;
    [&i.user, &i.email, &i.name, &i.groups]
        .into_iter()
        .chain(opts.mapping.iter().map(|(_, h)| h))
        .map(HeaderName::as_str)
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
            IdentityPart::User => Some(user_value(id, qualified).into_owned()),
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
fn user_value(id: &Identity, qualified: bool) -> Cow<'_, str> {
    if qualified {
        Cow::Owned(format!("{}:{}", id.provider, id.user_id))
    } else {
        Cow::Borrowed(&id.user_id)
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
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(name.clone(), value);
        }
    });
}

/// Calls `f` with each identity header the caller gets, in the order [`insert`] sets them
/// (a later one of the same name replaces an earlier one there). A value that is unknown,
/// empty or cannot be a header value is left out. The values are lent, not copied: the lane
/// writes them straight into the upstream request, on every request.
pub fn each(opts: &UpstreamOptions, id: &Identity, mut f: impl FnMut(&HeaderName, &str)) {
    let i = &opts.identity;
    let mut set = |name: &HeaderName, value: &str| {
        if !value.is_empty() && is_header_value(value) {
            f(name, value);
        }
    };
    set(
        &HeaderName::from_static(crate::config::PROVIDER_HEADER),
        &id.provider,
    );
    set(&i.user, &user_value(id, i.qualified_user));
    set(&i.email, id.email.as_deref().unwrap_or_default());
    set(&i.name, id.name.as_deref().unwrap_or_default());
    set(&i.groups, &groups_value(id));
    for (pointer, name) in &opts.mapping {
        set(
            name,
            claim_text(id.claims.pointer(pointer))
                .as_deref()
                .unwrap_or_default(),
        );
    }
}

/// Whether `HeaderValue::from_str` takes `value`: tabs and visible bytes only (no other
/// control character, no DEL).
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_header_value_is_what_the_http_crate_takes() {
        for b in 0u8..=255 {
            let text = String::from_utf8_lossy(&[b'a', b, b'z']).into_owned();
            assert_eq!(
                is_header_value(&text),
                HeaderValue::from_str(&text).is_ok(),
                "byte {b:#04x}"
            );
        }
        assert!(is_header_value("caf\u{e9} \t 🦀"));
        assert!(!is_header_value("line\r\nInjected: 1"));
    }

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
