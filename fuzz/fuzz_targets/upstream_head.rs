//! An upstream's response head, as the fast lane reads it (a hostile or broken MCP server
//! writes it): never a panic, and a head that is complete in a prefix is read the same
//! from the whole buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::backend::lane::upstream::parse_head;

fuzz_target!(|data: &[u8]| {
    let whole = parse_head(data);
    if let Ok(Some(head)) = &whole {
        assert!(head.len <= data.len());
        // The same bytes and anything after them: the same head.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"trailing body bytes");
        let again = parse_head(&longer).expect("a complete head stays valid");
        assert_eq!(again.map(|h| h.len), Some(head.len));
    }
});
