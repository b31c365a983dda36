//! A child's stdout, cut anywhere: the line decoder never panics nor holds more than its
//! limit, and every message it yields can be read and rewritten member by member.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mcp_auth_proxy::backend::stdio::framing::{JsonLines, Line, splice_all, value_spans};
use tokio_util::codec::Decoder;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let mut codec = JsonLines::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    for piece in data.chunks(usize::from(cut).max(1)) {
        buf.extend_from_slice(piece);
        while let Ok(Some(line)) = codec.decode(&mut buf) {
            lines.push(line);
        }
        assert!(buf.len() <= LIMIT + piece.len());
    }
    while let Ok(Some(line)) = codec.decode_eof(&mut buf) {
        lines.push(line);
    }
    for line in lines {
        let Line::Message(m) = line else { continue };
        let spans = value_spans(
            &m.raw,
            [
                &["id"],
                &["params", "_meta", "progressToken"],
                &["params"],
                &["result"],
            ],
        );
        for span in spans.iter().flatten() {
            assert!(span.end <= m.raw.len());
        }
        let rewrites: Vec<_> = spans[..2]
            .iter()
            .flatten()
            .map(|s| (s.clone(), "\"x\"".to_string()))
            .collect();
        // Rewriting keeps a message readable. (A message can be well-formed JSON text that
        // a JSON value cannot hold, such as a number beyond f64: it is delimited, not read.)
        let readable = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).is_ok();
        if let Some(out) = splice_all(&m.raw, rewrites) {
            assert!(!readable(&m.raw) || readable(&out));
        }
    }
});
