//! The rules a request's head must meet before anything reads it: is it addressed to us
//! (`Host`, or `X-Forwarded-Host` from a trusted proxy), may a browser origin call (`Origin`,
//! the MCP transport spec's DNS-rebinding defence), and does it repeat a header that has one
//! meaning. Pure functions, shared by the server's guard (`server::guard`) and the fast lane,
//! which answer a request that breaks them.

use axum::http::{HeaderMap, Uri, header};

use crate::config::{Site, is_loopback_host, normalize_origin};
use crate::single_header::{self, Repeated};

/// The MCP session header (Streamable HTTP): single-valued, visible ASCII.
pub const MCP_SESSION_ID: &str = "mcp-session-id";

/// The host a trusted proxy in front says the client addressed.
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// A raw header value as `HeaderValue::to_str` accepts it: visible ASCII, spaces and tabs
/// (for heads read with httparse, before any `HeaderMap`).
pub fn visible_ascii(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// The authority the client addressed: `X-Forwarded-Host` from a trusted proxy, else `Host`,
/// else the request URI's authority (HTTP/2). `None` when a trusted proxy's
/// `X-Forwarded-Host` does not name one host ([`forwarded_host_refusal`]).
pub fn requested_authority(headers: &HeaderMap, uri: &Uri, trusted: bool) -> Option<String> {
    if forwarded_host_refusal(headers, trusted).is_some() {
        return None;
    }
    let text = |name| single_header::text(headers, name);
    let host = text(header::HOST.as_str()).or_else(|| uri.authority().map(|a| a.as_str()));
    authority_of(text(X_FORWARDED_HOST), host, trusted).map(str::to_string)
}

/// [`requested_authority`] given the `X-Forwarded-Host` and `Host` values. A list in
/// `X-Forwarded-Host` (a proxy that appended to what the client sent) addresses nothing:
/// which host the client used is not ours to guess, and the first is the client's own.
pub fn authority_of<'a>(
    forwarded_host: Option<&'a str>,
    host: Option<&'a str>,
    trusted: bool,
) -> Option<&'a str> {
    match forwarded_host.filter(|_| trusted) {
        Some(list) if list.contains(',') => None,
        Some(one) => Some(one.trim()),
        None => host,
    }
}

/// Why a trusted proxy's `X-Forwarded-Host` cannot be read: given twice, as a list, or not
/// text. Its one value decides whether a request is addressed to us, and which server of
/// `--config` serves it; it is read only from `--trusted-proxies`.
pub fn forwarded_host_refusal(headers: &HeaderMap, trusted: bool) -> Option<&'static str> {
    if !trusted {
        return None;
    }
    let one_host = match single_header::value(headers, X_FORWARDED_HOST) {
        Err(Repeated) => false,
        Ok(None) => true,
        Ok(Some(v)) => v.to_str().is_ok_and(|v| !v.contains(',')),
    };
    (!one_host).then_some("X-Forwarded-Host must name one host")
}

/// Whether an authority (`host[:port]`) names our external origin. A loopback origin accepts
/// any loopback name for the same port: DNS rebinding needs a non-loopback name.
pub fn host_allowed(site: &Site, authority: &str) -> bool {
    // The common case, our authority as the origin writes it, needs no parse (the parse
    // and the comparisons below cost some 1 400 instructions a request, callgrind).
    if authority == site.server.origin.authority() {
        return true;
    }
    let Ok(auth) = authority.parse::<http::uri::Authority>() else {
        return false;
    };
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let port = auth.port_u16().unwrap_or(if site.server.origin.is_https() {
        443
    } else {
        80
    });
    port == site.server.origin.port()
        && (site.server.origin.names_host(host)
            || site
                .catalog
                .iter()
                .any(|s| s.host.is_some() && s.origin.names_host(host)))
}

/// Whether a browser `Origin` may call: ours, or listed in `--allowed-origins`. A loopback
/// origin also accepts its other loopback names on the same scheme and port (as the `Host`
/// rule does: a page there is served by us).
pub fn origin_allowed(site: &Site, origin: &str) -> bool {
    let Some(o) = normalize_origin(origin) else {
        return false;
    };
    if o == site.server.origin.as_str()
        || site.allowed_origins.contains(&o)
        || site
            .catalog
            .iter()
            .any(|s| s.host.is_some() && s.origin.as_str() == o)
    {
        return true;
    }
    site.server.origin.is_loopback()
        && url::Url::parse(&o).is_ok_and(|u| {
            u.scheme() == site.server.origin.scheme()
                && u.port_or_known_default() == Some(site.server.origin.port())
                && u.host_str().is_some_and(is_loopback_host)
        })
}

/// Headers whose meaning is one value: a request repeating one is refused (400), never read
/// as "the first wins". Two `Mcp-Session-Id` lines would have the proxy check one session's
/// owner and the upstream act in the other's; two `Host` lines are a 400 by RFC 9112 §3.2.
/// `Cookie` (HTTP/2 splits it, RFC 9113 §8.2.3) and `X-Forwarded-For` (a list) may repeat.
pub const SINGLE_VALUED: [&str; 10] = [
    "host",
    "authorization",
    MCP_SESSION_ID,
    "mcp-protocol-version",
    "origin",
    "last-event-id",
    "content-type",
    "mcp-method",
    "mcp-name",
    "x-csrf-token",
];

/// Why a request's head is refused before anything reads it: a repeated single-valued
/// header ([`SINGLE_VALUED`]), or an `Mcp-Session-Id` that is not visible ASCII (the
/// transport spec's range; such a value could not be checked for its owner).
pub fn malformed_head(headers: &HeaderMap) -> Option<String> {
    if let Some(name) = single_header::first_repeated(headers, SINGLE_VALUED) {
        return Some(format!("the {name} header must appear at most once"));
    }
    let session = headers.get(MCP_SESSION_ID)?;
    let visible =
        !session.is_empty() && session.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b));
    (!visible).then(|| "Mcp-Session-Id must be visible ASCII".to_string())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::PublicOrigin;
    use proptest::prelude::*;

    fn site(origin: &str, trusted: &[&str], allowed: &[&str]) -> Site {
        Site {
            server: crate::config::ServerFace::new(
                &PublicOrigin::parse(origin).unwrap(),
                None,
                "/mcp",
                crate::config::Admission::everyone(),
            ),
            home: PublicOrigin::parse(origin).unwrap(),
            catalog: Default::default(),
            allowed_origins: allowed
                .iter()
                .map(|s| normalize_origin(s).unwrap())
                .collect(),
            trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            require_dpop: false,
            dpop_nonces: false,
        }
    }

    #[test]
    fn host_rules() {
        let s = site("https://mcp.example.com", &[], &[]);
        assert!(host_allowed(&s, "mcp.example.com"));
        assert!(host_allowed(&s, "MCP.Example.com:443"));
        assert!(host_allowed(&s, "mcp.example.com."));
        assert!(!host_allowed(&s, "mcp.example.com:8443"));
        assert!(!host_allowed(&s, "evil.example.com"));
        assert!(!host_allowed(&s, "localhost"));
        assert!(!host_allowed(&s, ""));
        // The origin's own authority, matched before any parse; a default port is not part
        // of it, an explicit other one is.
        assert_eq!(s.server.origin.authority(), "mcp.example.com");
        let p = site("https://mcp.example.com:443", &[], &[]);
        assert_eq!(p.server.origin.authority(), "mcp.example.com");
        assert!(host_allowed(&p, "mcp.example.com:443"));
        let l = site("http://localhost:8080", &[], &[]);
        assert_eq!(l.server.origin.authority(), "localhost:8080");
        assert!(host_allowed(&l, "127.0.0.1:8080"));
        assert!(host_allowed(&l, "[::1]:8080"));
        assert!(host_allowed(&l, "localhost:8080"));
        assert!(!host_allowed(&l, "localhost:8081"));
        assert!(!host_allowed(&l, "rebind.attacker.com:8080"));
    }

    #[test]
    fn origin_rules() {
        let s = site("https://mcp.example.com", &[], &["https://app.example.org"]);
        assert!(origin_allowed(&s, "https://mcp.example.com"));
        assert!(origin_allowed(&s, "https://MCP.example.com:443"));
        assert!(origin_allowed(&s, "https://app.example.org"));
        assert!(!origin_allowed(&s, "http://mcp.example.com"));
        assert!(!origin_allowed(&s, "null"));
        assert!(!origin_allowed(&s, "https://mcp.example.com.evil.com"));

        let l = site("http://127.0.0.1:8080", &[], &[]);
        assert!(origin_allowed(&l, "http://localhost:8080"));
        assert!(origin_allowed(&l, "http://[::1]:8080"));
        assert!(!origin_allowed(&l, "http://localhost:8081"));
        assert!(!origin_allowed(&l, "https://localhost:8080"));
        assert!(!origin_allowed(&l, "http://evil.example.com:8080"));
        assert!(
            !origin_allowed(&s, "https://localhost"),
            "only for a loopback site"
        );
    }

    #[test]
    fn forwarded_for_only_from_trusted() {
        let s = site("https://h", &["10.0.0.0/8"], &[]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        assert_eq!(
            crate::client_addr::client_ip(&s.trusted_proxies, "10.0.0.1".parse().unwrap(), &h),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            crate::client_addr::client_ip(&s.trusted_proxies, "5.6.7.8".parse().unwrap(), &h),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            crate::client_addr::client_ip(
                &s.trusted_proxies,
                "::ffff:10.0.0.1".parse().unwrap(),
                &h
            ),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let uri: Uri = "/x".parse().unwrap();
        h.insert("x-forwarded-host", "public.example".parse().unwrap());
        h.insert(header::HOST, "internal:8080".parse().unwrap());
        assert_eq!(
            requested_authority(&h, &uri, true).as_deref(),
            Some("public.example")
        );
        assert_eq!(
            requested_authority(&h, &uri, false).as_deref(),
            Some("internal:8080")
        );
        // A trusted proxy's list, or two copies, name no one host; from anyone else they are
        // not read.
        for second in ["public.example, evil.example", "evil.example"] {
            let mut h = h.clone();
            h.append(X_FORWARDED_HOST, second.parse().unwrap());
            assert_eq!(requested_authority(&h, &uri, true), None, "{h:?}");
            assert!(forwarded_host_refusal(&h, true).is_some());
            assert_eq!(forwarded_host_refusal(&h, false), None);
            assert_eq!(
                requested_authority(&h, &uri, false).as_deref(),
                Some("internal:8080")
            );
        }
    }

    proptest! {
        #[test]
        fn only_our_host_passes(host in "[a-z0-9.-]{1,30}", port in 1u16..) {
            let s = site("https://mcp.example.com", &[], &[]);
            let ok = host_allowed(&s, &format!("{host}:{port}"));
            prop_assert_eq!(ok, host.trim_end_matches('.') == "mcp.example.com" && port == 443);
        }

        #[test]
        fn foreign_origins_refused(origin in "https?://[a-z0-9.-]{1,30}(:[0-9]{1,5})?") {
            let s = site("https://mcp.example.com", &[], &[]);
            let expected = normalize_origin(&origin).as_deref() == Some("https://mcp.example.com");
            prop_assert_eq!(origin_allowed(&s, &origin), expected);
        }
    }
}
