//! What the MCP server behind the proxy receives: identity headers, `--header-mapping`,
//! static headers, and the parts of an identity they carry.

use std::time::Duration;

use http::HeaderName;
use http::HeaderValue;

use super::{ConfigError, bad};

/// What part of the identity a header or variable carries.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityPart {
    User,
    /// The sign-in method: `password`, `google`, `github`, `oidc`.
    Provider,
    Email,
    Name,
    /// Comma-separated.
    Groups,
    /// A claim, by JSON Pointer.
    Claim(String),
}

impl IdentityPart {
    /// `user`, `email`, `name`, `groups` or a `/pointer`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "user" => Some(IdentityPart::User),
            "provider" => Some(IdentityPart::Provider),
            "email" => Some(IdentityPart::Email),
            "name" => Some(IdentityPart::Name),
            "groups" => Some(IdentityPart::Groups),
            p if jsonptr::Pointer::parse(p).is_ok() && p.starts_with('/') => {
                Some(IdentityPart::Claim(p.to_string()))
            }
            _ => None,
        }
    }
}

/// How requests are sent to an HTTP upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Static headers, `--proxy-bearer-token` already folded in as `Authorization`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub connect_timeout: Duration,
    /// Until the upstream's response headers (`--upstream-timeout`).
    pub response_timeout: Duration,
    /// Answer 405 to GET on the MCP path.
    pub streaming_only: bool,
    /// The identity headers' names.
    pub identity: IdentityHeaders,
    /// `--header-mapping`: claim pointer → header.
    pub mapping: Vec<(String, HeaderName)>,
    /// `--proxy-forward-authorization`: a signed assertion as the upstream's `Authorization`.
    pub forward_authorization: bool,
    /// How long a generated assertion key signs.
    pub jwt_key_rotation: Duration,
    /// `--pass-access-token`: the user's provider token as `X-Forwarded-Access-Token`.
    pub pass_access_token: bool,
}

/// Names of the headers that tell the upstream who is calling.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub email: HeaderName,
    pub name: HeaderName,
    pub groups: HeaderName,
    /// With more than one sign-in method, the user is sent as `provider:user id` (as the
    /// proxy itself keys users): a GitHub login `admin` is not the password user `admin`.
    /// With one, the bare id, as upstreams written for sigbit's proxy expect.
    pub qualified_user: bool,
}

/// The header that names the sign-in method of the caller (`password`, `google`, `github`,
/// `oidc`), always sent.
pub const PROVIDER_HEADER: &str = "x-forwarded-provider";

pub(super) fn header_name(flag: &str, v: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(v.trim().as_bytes())
        .map_err(|_| bad(format!("{flag}: {v:?} is not a header name")))
}

/// `--header-mapping /pointer:Header-Name,…`.
pub fn parse_header_mapping(s: &str) -> Result<Vec<(String, HeaderName)>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (pointer, name) = m.rsplit_once(':').ok_or_else(|| {
                bad(format!(
                    "--header-mapping: {m:?} is not /pointer:Header-Name"
                ))
            })?;
            jsonptr::Pointer::parse(pointer.trim()).map_err(|e| {
                bad(format!(
                    "--header-mapping: {pointer:?} is not a JSON Pointer: {e}"
                ))
            })?;
            Ok((
                pointer.trim().to_string(),
                header_name("--header-mapping", name)?,
            ))
        })
        .collect()
}

/// Parses `Name:Value,Name2:Value2` (sigbit's `--proxy-headers`).
pub fn parse_proxy_headers(s: &str) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once(':')
            .ok_or_else(|| bad(format!("--proxy-headers entry {item:?} is not Name:Value")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            bad(format!(
                "--proxy-headers: {:?} is not a header name",
                name.trim()
            ))
        })?;
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
            bad(format!(
                "--proxy-headers: the value of {name} is not a valid header value"
            ))
        })?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}
