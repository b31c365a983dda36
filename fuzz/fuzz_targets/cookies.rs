//! `Cookie` headers, one or several, as a browser (or anyone) sends them: reading ours never
//! panics, believes a cookie only when it is sent once, and a CSRF field is accepted only
//! for the cookie it was made for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::web::session::{csrf_token, csrf_valid, read_cookie};

const NAME: &str = "__Host-mcp-auth-proxy-session";

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            headers.append(http::header::COOKIE, v);
        }
    }
    let Some(value) = read_cookie(&headers, NAME) else {
        return;
    };
    // Sent once, by that name, somewhere in the headers.
    let text: Vec<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(text.iter().any(|t| t.contains(NAME)), "{value}");
    let key = [7u8; 32];
    let field = csrf_token(&key, &value);
    assert_eq!(
        csrf_valid(&key, Some(&value), Some(&field)),
        !value.is_empty()
    );
    assert!(!csrf_valid(&key, Some(&format!("{value}x")), Some(&field)));
    assert!(!csrf_valid(&[8u8; 32], Some(&value), Some(&field)));
});
