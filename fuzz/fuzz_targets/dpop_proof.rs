//! Whatever arrives in a `DPoP` header: read and checked without a panic, and never accepted
//! (nothing here is signed by a key the fuzzer holds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::dpop::{Expected, check};

fuzz_target!(|data: &[u8]| {
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    let expected = Expected {
        method: "POST",
        url: "https://mcp.example.com/mcp",
        access_token: Some("token"),
        key: None,
        now: 1_800_000_000,
    };
    assert!(check(proof, &expected).is_err());
});
