//! A request head as every request meets it before anything else (`request_head`: repeated
//! single-valued headers, `Host` and `X-Forwarded-Host`, `Origin`): never a panic, and what
//! is let through names our origin.
#![no_main]

use std::sync::OnceLock;

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::cli::Cli;
use mcp_auth_proxy::config::{Config, Site};
use mcp_auth_proxy::request_head::{
    host_allowed, malformed_head, origin_allowed, requested_authority,
};

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let cli = Cli::try_parse_from([
            "mcp-auth-proxy",
            "--external-url",
            "https://mcp.example.com",
            "--no-auto-tls",
            "--password",
            "a password for the fuzz target",
            "http://127.0.0.1:9/mcp",
        ])
        .expect("flags");
        Config::from_cli(cli).expect("config").site(443).expect("site")
    })
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
    if let Some(authority) = requested_authority(&headers, &uri, flags & 1 == 1)
        && host_allowed(site, &authority)
    {
        let a: http::uri::Authority = authority.parse().expect("an allowed authority parses");
        assert_eq!(
            a.host().trim_end_matches('.').to_ascii_lowercase(),
            "mcp.example.com",
            "{authority}"
        );
        assert!(a.port_u16().is_none_or(|p| p == 443), "{authority}");
    }
    for origin in headers.get_all(http::header::ORIGIN) {
        if let Ok(o) = origin.to_str()
            && origin_allowed(site, o)
        {
            assert!(
                o.trim().to_ascii_lowercase().starts_with("https://mcp.example.com"),
                "{o}"
            );
        }
    }
});
