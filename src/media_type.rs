//! Media types in `Content-Type` headers, compared as RFC 9110 section 8.3.1 says: the type
//! and subtype case-insensitively, parameters aside. A leaf: anything may use it.

use axum::http::header;

/// Whether the request or response's `Content-Type` is `mime` (parameters ignored, any case).
pub fn content_type_is(headers: &axum::http::HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| mime_is(ct, mime))
}

/// Whether a `Content-Type` value is `mime` (parameters ignored, any case).
pub fn mime_is(content_type: &str, mime: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|ct| ct.trim().eq_ignore_ascii_case(mime))
}
