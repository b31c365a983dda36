//! A request head as every request meets it before anything else (`request_head`: repeated
//! single-valued headers, `Host` and `X-Forwarded-Host`, `Origin`): never a panic, and what
//! is let through names our origin.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::config::Site;
use mcp_auth_proxy::request_head::{
    forwarded_host_refusal, host_allowed, malformed_head, origin_allowed, requested_authority,
};

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| common::config().site(443).expect("site"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let Ok(uri) = req.path.unwrap_or("/").parse::<http::Uri>() else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            headers.append(n, v);
        }
    }
    let site = site();
    let _ = malformed_head(&headers);
    let trusted = flags & 1 == 1;
    // A forwarded host that names no one host addresses nothing: never the first of a list.
    if forwarded_host_refusal(&headers, trusted).is_some() {
        assert!(requested_authority(&headers, &uri, trusted).is_none());
    }
    if let Some(authority) = requested_authority(&headers, &uri, trusted)
        && host_allowed(site, &authority)
    {
        let a: http::uri::Authority = authority.parse().expect("an allowed authority parses");
        assert_eq!(
            a.host().trim_end_matches('.').to_ascii_lowercase(),
            common::HOST,
            "{authority}"
        );
        assert!(a.port_u16().is_none_or(|p| p == 443), "{authority}");
    }
    for origin in headers.get_all(http::header::ORIGIN) {
        if let Ok(o) = origin.to_str()
            && origin_allowed(site, o)
        {
            assert!(
                o.trim()
                    .to_ascii_lowercase()
                    .starts_with("https://mcp.example.com"),
                "{o}"
            );
        }
    }
});
