//! An OAuth form body and the redirect URIs in it: parsed strictly without a panic; a
//! redirect URI that can be registered matches itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::oauth::redirect_uri::{check_registrable, matches};
use mcp_auth_proxy::web::form::Params;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = Params::parse(data) else {
        return;
    };
    if let Some(uri) = params.get("redirect_uri") {
        let schemes = ["com.example.app".to_string()];
        if check_registrable(uri, &schemes).is_ok() {
            assert!(matches(uri, uri), "{uri}");
        }
    }
});
