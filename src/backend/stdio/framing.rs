//! Newline-delimited JSON-RPC as a stdio MCP server writes it (MCP transports, "stdio").
//!
//! A child may write anything: invalid UTF-8, non-JSON, or a line of 50 MB. The decoder never
//! panics and never holds more than `max_line` bytes of one line: an over-long line is
//! skipped to its end and reported once as [`Line::TooLong`]. Messages keep the child's exact
//! bytes (the relay forwards them untouched); [`Message::parse`] reads only what routing needs.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::codec::Decoder;

/// One line of a child's stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A JSON-RPC message (or batch), its bytes exactly as written, without the newline.
    Message(Message),
    /// Not JSON-RPC: shown (shortened) in the log, otherwise dropped.
    Garbage(String),
    /// A line longer than the limit, skipped; how many bytes it had.
    TooLong(usize),
}

/// What a JSON-RPC message is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Batch,
}

/// A JSON-RPC message: the raw bytes and what routing needs from them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub raw: Bytes,
    pub kind: Kind,
    /// The `id`, as its exact JSON text (`1`, `"a"`), for requests and responses.
    pub id: Option<String>,
    /// The `method`, for requests and notifications.
    pub method: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(default)]
    jsonrpc: Option<std::borrow::Cow<'a, str>>,
}

impl Message {
    /// Classifies one line; `None` when it is not a JSON-RPC 2.0 message or batch.
    pub fn parse(raw: Bytes) -> Option<Message> {
        let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            let items: Vec<&RawValue> = serde_json::from_slice(&raw).ok()?;
            if items.is_empty() {
                return None;
            }
            return Some(Message {
                raw,
                kind: Kind::Batch,
                id: None,
                method: None,
            });
        }
        let env: Envelope<'_> = serde_json::from_slice(&raw).ok()?;
        if env.jsonrpc.as_deref() != Some("2.0") {
            return None;
        }
        // A null id is a response to a request whose id could not be read.
        let id = env.id.map(|i| i.get().to_string());
        let method = env.method.map(|m| m.into_owned());
        let kind = match (&method, &id) {
            (Some(_), Some(id)) if id != "null" => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if env.result.is_some() != env.error.is_some() => Kind::Response,
            _ => return None,
        };
        Some(Message {
            raw,
            kind,
            id,
            method,
        })
    }
}

/// A decoder of raw lines of at most `max_line` bytes; longer ones are skipped to their end
/// and reported by length. Never holds more than `max_line` bytes of one line.
#[derive(Debug)]
pub struct BoundedLines {
    max_line: usize,
    /// Bytes of an over-long line skipped so far (0 = not skipping).
    skipping: usize,
    /// Where to resume the search for `\n` in the buffer.
    scanned: usize,
}

/// A raw line (without `\r\n`) or the length of a skipped one.
#[derive(Debug, Clone, PartialEq)]
pub enum RawLine {
    Line(Bytes),
    TooLong(usize),
}

impl BoundedLines {
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            skipping: 0,
            scanned: 0,
        }
    }
}

impl Decoder for BoundedLines {
    type Item = RawLine;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawLine>, std::io::Error> {
        let newline = buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| self.scanned + i);
        let Some(end) = newline else {
            if self.skipping > 0 || buf.len() > self.max_line {
                // Drop what we have of the over-long line; keep skipping to its end.
                self.skipping += buf.len();
                buf.clear();
                self.scanned = 0;
            } else {
                self.scanned = buf.len();
            }
            return Ok(None);
        };
        let line = buf.split_to(end + 1);
        self.scanned = 0;
        if self.skipping > 0 || line.len() > self.max_line + 1 {
            let total = self.skipping + line.len() - 1;
            self.skipping = 0;
            return Ok(Some(RawLine::TooLong(total)));
        }
        let mut line = line.freeze();
        line.truncate(line.len() - 1);
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        Ok(Some(RawLine::Line(line)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<RawLine>, std::io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        if self.skipping > 0 {
            let total = self.skipping + buf.len();
            self.skipping = 0;
            buf.clear();
            return Ok(Some(RawLine::TooLong(total)));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // A last line without its newline still counts.
        buf.extend_from_slice(b"\n");
        self.decode(buf)
    }
}

/// A decoder of child stdout into [`Line`]s: bounded lines, blank ones skipped, each
/// classified as a message or garbage.
#[derive(Debug)]
pub struct JsonLines(BoundedLines);

impl JsonLines {
    pub fn new(max_line: usize) -> Self {
        Self(BoundedLines::new(max_line))
    }

    fn classify(raw: Option<RawLine>) -> Option<Option<Line>> {
        match raw? {
            RawLine::TooLong(n) => Some(Some(Line::TooLong(n))),
            RawLine::Line(l) if l.iter().all(u8::is_ascii_whitespace) => Some(None),
            RawLine::Line(l) => Some(Some(match Message::parse(l.clone()) {
                Some(m) => Line::Message(m),
                None => Line::Garbage(shown(&l)),
            })),
        }
    }
}

/// At most this much of a garbage line is kept for the log.
const GARBAGE_SHOWN: usize = 200;

impl Decoder for JsonLines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        loop {
            match Self::classify(self.0.decode(buf)?) {
                None => return Ok(None),
                Some(None) => continue,
                Some(line) => return Ok(line),
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        loop {
            match Self::classify(self.0.decode_eof(buf)?) {
                None => return Ok(None),
                Some(None) => continue,
                Some(line) => return Ok(line),
            }
        }
    }
}

/// A printable, shortened rendering of a line for the log.
pub fn shown(line: &Bytes) -> String {
    let cut = &line[..line.len().min(GARBAGE_SHOWN)];
    let mut s: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '·' } else { c })
        .collect();
    if line.len() > GARBAGE_SHOWN {
        s.push('…');
    }
    s
}

/// Where the value at `path` (object keys from the top level) sits in the JSON text `raw`:
/// a byte range of `raw`, found by a borrowed parse. Rewriting a message by splicing a new
/// value into this range leaves every other byte as it was. A key that appears twice on the
/// path finds nothing: which of the two a reader takes is not ours to guess.
pub fn value_span(raw: &[u8], path: &[&str]) -> Option<std::ops::Range<usize>> {
    let mut range = 0..raw.len();
    for key in path {
        let text = raw.get(range.clone())?;
        let value = member(text, key)?;
        // The value borrows from `text`: its offset there is the pointers' difference.
        let start = (value.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        let end = start.checked_add(value.len())?;
        if text.get(start..end)? != value {
            return None;
        }
        range = range.start + start..range.start + end;
    }
    Some(range)
}

/// The exact text of member `key` of the JSON object `text`. The other members are skipped
/// as they are read (no map of them is built: this runs several times per message).
fn member<'a>(text: &'a [u8], key: &str) -> Option<&'a [u8]> {
    use serde::de::{IgnoredAny, MapAccess, Visitor};

    struct Find<'k>(&'k str);

    impl<'de> Visitor<'de> for Find<'_> {
        /// The member's text; `Err(())` when the key appears twice.
        type Value = Result<Option<&'de RawValue>, ()>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            let mut twice = false;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k == self.0 {
                    twice |= found.is_some();
                    found = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(if twice { Err(()) } else { Ok(found) })
        }
    }

    let mut de = serde_json::Deserializer::from_slice(text);
    let found = serde::Deserializer::deserialize_map(&mut de, Find(key)).ok()?;
    de.end().ok()?;
    found.ok()?.map(|v| v.get().as_bytes())
}

/// `raw` with the bytes in `span` replaced by `value`.
pub fn splice(raw: &[u8], span: std::ops::Range<usize>, value: &[u8]) -> Option<Bytes> {
    let (head, tail) = (raw.get(..span.start)?, raw.get(span.end..)?);
    let mut out = BytesMut::with_capacity(head.len() + value.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(value);
    out.extend_from_slice(tail);
    Some(out.freeze())
}

/// `raw` with the value at `path` replaced by `value` (exact JSON text); `None` when there
/// is no such value.
pub fn replace_value(raw: &[u8], path: &[&str], value: &str) -> Option<Bytes> {
    splice(raw, value_span(raw, path)?, value.as_bytes())
}

/// The exact JSON text of the value at `path`.
pub fn value_text<'a>(raw: &'a [u8], path: &[&str]) -> Option<&'a str> {
    std::str::from_utf8(raw.get(value_span(raw, path)?)?).ok()
}

/// Appends the newline framing to an outgoing message (messages must not contain one).
pub fn frame(raw: &[u8]) -> Option<Bytes> {
    if raw.contains(&b'\n') {
        return None;
    }
    let mut out = BytesMut::with_capacity(raw.len() + 1);
    out.extend_from_slice(raw);
    out.extend_from_slice(b"\n");
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_spliced_without_touching_other_bytes() {
        let raw = br#"{ "jsonrpc":"2.0", "id" : 7 ,"method":"tools/call","params":{"_meta":{"progressToken":"t\"1"},"x":  [1, 2 ]}}"#;
        assert_eq!(value_text(raw, &["id"]), Some("7"));
        assert_eq!(
            value_text(raw, &["params", "_meta", "progressToken"]),
            Some(r#""t\"1""#)
        );
        let out = replace_value(raw, &["id"], r#""s-1""#).unwrap();
        assert_eq!(
            &out[..],
            &br#"{ "jsonrpc":"2.0", "id" : "s-1" ,"method":"tools/call","params":{"_meta":{"progressToken":"t\"1"},"x":  [1, 2 ]}}"#[..]
        );
        let out = replace_value(&out, &["params", "_meta", "progressToken"], "9").unwrap();
        assert!(out.ends_with(br#"{"_meta":{"progressToken":9},"x":  [1, 2 ]}}"#));
        assert_eq!(value_span(raw, &["nope"]), None);
        assert_eq!(value_span(raw, &["id", "deeper"]), None);
        assert_eq!(value_span(b"[1]", &["id"]), None);
        // A key written with an escape still matches.
        assert_eq!(value_text(br#"{"\u0069d":3}"#, &["id"]), Some("3"));
        // A key given twice is read by nobody: JSON readers disagree on which one counts.
        assert_eq!(value_text(br#"{"id":1,"id":2}"#, &["id"]), None);
        assert_eq!(
            value_text(br#"{"id":1,"params":{"a":1,"a":2}}"#, &["params", "a"]),
            None
        );
        assert_eq!(value_text(br#"{"id":1,"x":{"id":2}}"#, &["id"]), Some("1"));
    }

    fn decode_all(input: &[u8], max: usize) -> Vec<Line> {
        let mut codec = JsonLines::new(max);
        let mut out = Vec::new();
        // Feed in small pieces, as a pipe would.
        let mut buf = BytesMut::new();
        for chunk in input.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(l) = codec.decode(&mut buf).unwrap() {
                out.push(l);
            }
        }
        while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn classifies_and_keeps_bytes() {
        let input = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n\
{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\
{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"x\":  1.50}}\n\n";
        let lines = decode_all(input, 1024);
        let kinds: Vec<_> = lines
            .iter()
            .map(|l| match l {
                Line::Message(m) => (m.kind, m.id.clone(), m.method.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Request, Some("1".into()), Some("tools/list".into())),
                (
                    Kind::Notification,
                    None,
                    Some("notifications/progress".into())
                ),
                (Kind::Response, Some("\"a\"".into()), None),
            ]
        );
        let Line::Message(m) = &lines[2] else {
            panic!()
        };
        assert_eq!(
            &m.raw[..],
            b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"x\":  1.50}}",
            "bytes untouched"
        );
    }

    #[test]
    fn garbage_invalid_utf8_and_huge_lines_are_reported_not_fatal() {
        let mut input = b"Server started on stdio\n\xff\xfe\x00bad\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend(b"\n{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n{\"jsonrpc\":\"1.0\",\"id\":3,\"result\":{}}\n[]\n");
        input.extend(std::iter::repeat_n(b'y', 3000));
        let lines = decode_all(&input, 1000);
        assert!(matches!(&lines[0], Line::Garbage(s) if s.starts_with("Server started")));
        assert!(matches!(&lines[1], Line::Garbage(_)));
        assert_eq!(lines[2], Line::TooLong(5000));
        assert!(matches!(&lines[3], Line::Message(m) if m.kind == Kind::Response));
        assert!(matches!(&lines[4], Line::Garbage(_)), "jsonrpc must be 2.0");
        assert!(
            matches!(&lines[5], Line::Garbage(_)),
            "an empty batch is not a message"
        );
        assert_eq!(
            lines[6],
            Line::TooLong(3000),
            "an unterminated huge last line"
        );
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn framing_refuses_embedded_newlines() {
        assert_eq!(frame(b"{}").as_deref(), Some(&b"{}\n"[..]));
        assert!(frame(b"{\n}").is_none());
    }

    proptest! {
        #[test]
        fn never_panics_and_never_grows_past_the_limit(data in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let mut codec = JsonLines::new(256);
            let mut buf = BytesMut::new();
            for chunk in data.chunks(13) {
                buf.extend_from_slice(chunk);
                while codec.decode(&mut buf).unwrap().is_some() {}
                prop_assert!(buf.len() <= 256 + 13);
            }
            while codec.decode_eof(&mut buf).unwrap().is_some() {}
        }

        #[test]
        fn messages_round_trip(id in 0u64..1_000_000, method in "[a-z/]{1,20}") {
            let raw = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{}}}}"#);
            let lines = decode_all(format!("{raw}\n").as_bytes(), 4096);
            prop_assert_eq!(lines.len(), 1);
            let Line::Message(m) = &lines[0] else { panic!() };
            prop_assert_eq!(&m.raw[..], raw.as_bytes());
            prop_assert_eq!(m.id.clone(), Some(id.to_string()));
        }
    }
}
