//! CORS for browser-based MCP clients (docs/design.md, "MCP clients we answer") on the metadata, the OAuth API
//! (`/register`, `/token`, `/revoke`) and the MCP endpoint and proxied paths; never on the
//! sign-in pages. Only the external origin and `--allowed-origins` are granted (the same rule
//! as the `Origin` guard), never `*` and never credentials: these clients send bearer
//! tokens, not cookies.
//!
//! Done in the front middleware with precomputed headers rather than a tower layer, which
//! axum would clone with its lists on every request: a request without `Origin` costs one
//! header lookup.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::Site;
use crate::request_head::origin_allowed;

const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, POST, DELETE, OPTIONS");
const ALLOW_HEADERS: HeaderValue = HeaderValue::from_static(
    "authorization, content-type, mcp-protocol-version, mcp-session-id, last-event-id",
);
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static("mcp-session-id, www-authenticate");
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const VARY: HeaderValue = HeaderValue::from_static("origin");

/// Whether CORS applies to a path: everything but the pages people navigate to.
pub fn eligible(path: &str) -> bool {
    path != "/authorize" && !path.starts_with("/.auth/")
}

/// The request's `Origin` when it is granted.
pub fn granted(site: &Site, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    origin
        .to_str()
        .is_ok_and(|o| origin_allowed(site, o))
        .then(|| origin.clone())
}

/// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`), if this is
/// one: `204` with the grant for an allowed origin, `403` without any for another.
pub fn preflight(site: &Site, method: &Method, headers: &HeaderMap) -> Option<Response> {
    if method != Method::OPTIONS
        || !headers.contains_key(header::ORIGIN)
        || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let Some(origin) = granted(site, headers) else {
        let mut r = StatusCode::FORBIDDEN.into_response();
        r.headers_mut().insert(header::VARY, VARY);
        return Some(r);
    };
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
    h.insert(header::VARY, VARY);
    Some(r)
}

/// Adds the grant to an actual response (and `Vary: Origin` either way, so a shared cache
/// never serves one origin's answer to another).
pub fn decorate(resp: &mut Response, origin: Option<HeaderValue>) {
    let h = resp.headers_mut();
    h.append(header::VARY, VARY);
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            server: crate::config::ServerFace::new(
                &crate::config::PublicOrigin::parse("https://mcp.example.com").unwrap(),
                None,
                "/mcp",
                crate::config::Admission::everyone(),
            ),
            home: crate::config::PublicOrigin::parse("https://mcp.example.com").unwrap(),
            catalog: Default::default(),
            allowed_origins: vec!["https://app.example.org".into()],
            trusted_proxies: Vec::new(),
            require_dpop: false,
            dpop_nonces: false,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn preflights() {
        let s = site();
        let ok = preflight(
            &s,
            &Method::OPTIONS,
            &headers(&[
                ("origin", "https://app.example.org"),
                ("access-control-request-method", "POST"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            ok.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.org"
        );
        assert!(
            ok.headers()
                .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
                .is_none()
        );
        let refused = preflight(
            &s,
            &Method::OPTIONS,
            &headers(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ]),
        )
        .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(
            refused
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
        // Not a preflight: a plain OPTIONS, or no Origin.
        assert!(preflight(&s, &Method::OPTIONS, &headers(&[])).is_none());
        assert!(
            preflight(
                &s,
                &Method::POST,
                &headers(&[("origin", "https://app.example.org")])
            )
            .is_none()
        );
        assert!(eligible("/mcp") && eligible("/token") && eligible("/.well-known/x"));
        assert!(!eligible("/authorize") && !eligible("/.auth/login"));
    }
}
