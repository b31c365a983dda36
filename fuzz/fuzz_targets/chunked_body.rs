//! A chunked request body, fed in pieces as it arrives: the fast lane's parser never panics,
//! never claims more bytes than it was given, and ends at most once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::backend::lane::chunked::Chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let mut body = Chunked::new();
    for piece in data.chunks(usize::from(cut).max(1)) {
        match body.feed(piece) {
            Ok(used) => {
                assert!(used <= piece.len());
                if body.done() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});
