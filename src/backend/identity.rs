//! Telling the MCP server who is calling: identity headers and `--header-mapping`, for
//! proxied requests and for the forward-auth answer.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::UpstreamOptions;
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

/// What part of the identity a header or variable carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    User,
    Email,
    Name,
    /// Comma-separated.
    Groups,
    /// A claim, by JSON Pointer.
    Claim(String),
}

impl Part {
    /// `user`, `email`, `name`, `groups` or a `/pointer`.
    pub fn parse(s: &str) -> Option<Part> {
        match s.trim() {
            "user" => Some(Part::User),
            "email" => Some(Part::Email),
            "name" => Some(Part::Name),
            "groups" => Some(Part::Groups),
            p if jsonptr::Pointer::parse(p).is_ok() && p.starts_with('/') => {
                Some(Part::Claim(p.to_string()))
            }
            _ => None,
        }
    }

    /// The value in `id`, if known and not empty.
    pub fn of(&self, id: &Identity) -> Option<String> {
        let v = match self {
            Part::User => Some(id.user_id.clone()),
            Part::Email => id.email.clone(),
            Part::Name => id.name.clone(),
            Part::Groups => Some(id.groups.join(",")),
            Part::Claim(p) => claim_text(id.claims.pointer(p)),
        };
        v.filter(|v| !v.is_empty())
    }
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
    set(&i.user, Some(id.user_id.clone()));
    set(&i.email, id.email.clone());
    set(&i.name, id.name.clone());
    set(&i.groups, Some(id.groups.join(",")));
    for (pointer, name) in &opts.mapping {
        set(name, claim_text(id.claims.pointer(pointer)));
    }
}
