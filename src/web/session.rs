//! Browser state: the sign-in session cookie, CSRF tokens, and the cookie rules of
//! docs/design.md "People's side" (https: `__Host-` prefix and `Secure`; always `HttpOnly`, `SameSite=Lax`,
//! `Path=/`).
//!
//! CSRF uses a signed double submit: a random cookie, and in each form the HMAC of that
//! cookie under the server's key, compared in constant time. A POST's `Origin`, when present,
//! must also be our own.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::backend::http::COOKIE_PREFIX;
use crate::config::{PublicOrigin, normalize_origin};
use crate::store::{Identity, Repo, SessionRecord, StoreError, TokenHash};
use crate::tokens;

/// Cookie names and attributes for this deployment.
#[derive(Debug, Clone)]
pub struct Cookies {
    pub session: String,
    pub csrf: String,
    /// Holds the `state` of a sign-in at a provider, binding it to this browser.
    pub signin: String,
    /// Names the passkey ceremony (registration or sign-in) this browser is in.
    pub passkey: String,
    secure: bool,
}

impl Cookies {
    pub fn for_origin(origin: &PublicOrigin) -> Self {
        let prefix = if origin.is_https() { "__Host-" } else { "" };
        Self {
            session: format!("{prefix}{COOKIE_PREFIX}session"),
            csrf: format!("{prefix}{COOKIE_PREFIX}csrf"),
            signin: format!("{prefix}{COOKIE_PREFIX}signin"),
            passkey: format!("{prefix}{COOKIE_PREFIX}passkey"),
            secure: origin.is_https(),
        }
    }

    /// A `Set-Cookie` value; `max_age` of 0 deletes the cookie, `None` makes it last for the
    /// browser session.
    pub fn set(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut cookie = Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure);
        if let Some(age) = max_age {
            let secs = i64::try_from(age).unwrap_or(i64::MAX);
            cookie = cookie.max_age(cookie::time::Duration::seconds(secs));
        }
        HeaderValue::from_str(&cookie.build().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The value of cookie `name`, if sent once. Sent twice (in one `Cookie` header or across
/// several), neither is believed: a cookie set for another path, or by a sibling host over
/// plain http, must not stand in for ours.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    let sent = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .flatten();
    for cookie in sent.filter(|c| c.name() == name) {
        if found.is_some() {
            return None;
        }
        found = Some(cookie.value().to_string());
    }
    found
}

/// The CSRF token for a form, given the CSRF cookie.
pub fn csrf_token(key: &[u8; 32], cookie: &str) -> String {
    URL_SAFE_NO_PAD.encode(csrf_mac(key, cookie))
}

fn csrf_mac(key: &[u8; 32], cookie: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC never verifies.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(b"csrf\0");
    mac.update(cookie.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Whether a submitted CSRF field belongs to the browser's CSRF cookie.
pub fn csrf_valid(key: &[u8; 32], cookie: Option<&str>, field: Option<&str>) -> bool {
    let (Some(cookie), Some(field)) = (cookie, field) else {
        return false;
    };
    let Ok(given) = URL_SAFE_NO_PAD.decode(field) else {
        return false;
    };
    let expected = csrf_mac(key, cookie);
    !cookie.is_empty() && !expected.is_empty() && bool::from(expected.as_slice().ct_eq(&given))
}

/// The browser's CSRF cookie, or a new one (with the `Set-Cookie` to send).
pub fn csrf_cookie(cookies: &Cookies, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match read_cookie(headers, &cookies.csrf).filter(|c| c.len() >= 32) {
        Some(c) => (c, None),
        None => {
            let c = tokens::generate("");
            let set = cookies.set(&cookies.csrf, &c, None);
            (c, Some(set))
        }
    }
}

/// A form POST's `Origin`, when present, must be ours.
pub fn post_origin_ok(origin: &PublicOrigin, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(normalize_origin)
            .is_some_and(|o| o == origin.as_str()),
    }
}

/// Starts a browser session for `identity`; returns the cookie value.
pub async fn create(repo: &Repo, identity: Identity, ttl_secs: u64) -> Result<String, StoreError> {
    let token = tokens::generate("");
    let now = repo.clock().now();
    let rec = SessionRecord {
        identity,
        created_at: now,
        expires_at: now + ttl_secs,
    };
    repo.put_session(&TokenHash::of(&token).0, &rec).await?;
    repo.flush().await?;
    Ok(token)
}

/// The live session of this browser, if any.
pub async fn current(
    repo: &Repo,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<Option<SessionRecord>, StoreError> {
    Ok(current_keyed(repo, cookies, headers).await?.map(|(s, _)| s))
}

/// [`current`] with the key it is stored under (the hash of its cookie), which names the
/// session without its secret.
pub async fn current_keyed(
    repo: &Repo,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<Option<(SessionRecord, [u8; 32])>, StoreError> {
    let Some(token) = read_cookie(headers, &cookies.session).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let key = TokenHash::of(&token).0;
    Ok(repo.get::<SessionRecord>(&key).await?.map(|s| (s, key)))
}

/// Ends this browser's session.
pub async fn end(repo: &Repo, cookies: &Cookies, headers: &HeaderMap) -> Result<(), StoreError> {
    if let Some(token) = read_cookie(headers, &cookies.session) {
        repo.remove_session(&TokenHash::of(&token).0).await?;
        repo.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_attributes_follow_the_scheme() {
        let https = Cookies::for_origin(&PublicOrigin::parse("https://mcp.example.com").unwrap());
        assert_eq!(https.session, "__Host-mcp_proxy_session");
        let v = https.set(&https.session, "v", Some(60));
        let c = Cookie::parse(v.to_str().unwrap()).unwrap();
        assert_eq!((c.name(), c.value()), ("__Host-mcp_proxy_session", "v"));
        assert_eq!(c.path(), Some("/"));
        assert_eq!(c.http_only(), Some(true));
        assert_eq!(c.same_site(), Some(SameSite::Lax));
        assert_eq!(c.secure(), Some(true));
        assert_eq!(c.max_age(), Some(cookie::time::Duration::seconds(60)));
        assert_eq!(c.domain(), None, "__Host- cookies name no domain");

        let http = Cookies::for_origin(&PublicOrigin::parse("http://localhost:8080").unwrap());
        assert_eq!(http.csrf, "mcp_proxy_csrf");
        let v = http.set(&http.csrf, "c", None);
        assert!(!v.to_str().unwrap().contains("Secure"), "{v:?}");
        let c = Cookie::parse(v.to_str().unwrap()).unwrap();
        assert_eq!(c.max_age(), None, "lasts for the browser session");
        assert_eq!(c.same_site(), Some(SameSite::Lax));
    }

    #[test]
    fn a_cookie_sent_twice_is_not_believed() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let read = |values: &[&str]| read_cookie(&headers(values), "s");
        assert_eq!(read(&["a=1; s=ok; b=2"]).as_deref(), Some("ok"));
        assert_eq!(
            read(&["a=1", "s=ok"]).as_deref(),
            Some("ok"),
            "HTTP/2 splits"
        );
        assert_eq!(read(&["s=one; s=two"]), None);
        assert_eq!(read(&["s=one", "s=two"]), None);
        assert_eq!(read(&["ss=x; s2=y"]), None, "names match whole");
        assert_eq!(read(&[]), None);
    }

    #[test]
    fn csrf_binds_field_to_cookie_and_key() {
        let key = [7u8; 32];
        let t = csrf_token(&key, "cookie-value");
        assert!(csrf_valid(&key, Some("cookie-value"), Some(&t)));
        assert!(!csrf_valid(&key, Some("other-cookie"), Some(&t)));
        assert!(!csrf_valid(&[8u8; 32], Some("cookie-value"), Some(&t)));
        assert!(!csrf_valid(&key, None, Some(&t)));
        assert!(!csrf_valid(&key, Some("cookie-value"), None));
        assert!(!csrf_valid(&key, Some(""), Some(&csrf_token(&key, ""))));
    }

    #[test]
    fn post_origin() {
        let o = PublicOrigin::parse("https://mcp.example.com").unwrap();
        let mut h = HeaderMap::new();
        assert!(post_origin_ok(&o, &h));
        h.insert(header::ORIGIN, "https://mcp.example.com".parse().unwrap());
        assert!(post_origin_ok(&o, &h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!post_origin_ok(&o, &h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!post_origin_ok(&o, &h));
    }
}
