//! A 2026-07-28 request: headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) and a
//! body, as a client sends them. Reading it never panics; a request read as valid, relayed to
//! a 2025 server, is still a JSON-RPC message with the same method and id.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::backend::stdio::bridge::modern::read;
use mcp_auth_proxy::backend::stdio::framing::Message;

fuzz_target!(|data: &[u8]| {
    // Header lines, an empty line, then the body.
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&b""[..], data),
    };
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    let Some(msg) = Message::parse(Bytes::copy_from_slice(body)) else {
        return;
    };
    let Some(Ok(modern)) = read(&headers, &msg) else {
        return;
    };
    if let Some(relayed) = modern.for_legacy_child(&msg) {
        let again = Message::parse(relayed.raw.clone()).expect("the relayed request parses");
        assert_eq!(again.method, msg.method);
        assert_eq!(again.id, msg.id);
    }
});
