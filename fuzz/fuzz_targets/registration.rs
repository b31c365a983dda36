//! A dynamic client registration body (RFC 7591), as anyone may post it: checking it never
//! panics, and a registration accepted names only redirect URIs that may be registered, within
//! the bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::oauth::redirect_uri::check_registrable;
use mcp_auth_proxy::oauth::register::validate;

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice(data) else {
        return;
    };
    let schemes = ["cursor".to_string()];
    if let Ok(client) = validate(&doc, &schemes) {
        assert!(!client.redirect_uris.is_empty());
        for uri in &client.redirect_uris {
            assert!(check_registrable(uri, &schemes).is_ok(), "{uri}");
        }
    }
});
