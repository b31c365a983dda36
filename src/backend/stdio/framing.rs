//! Newline-delimited JSON-RPC as a stdio MCP server writes it (MCP transports, "stdio").
//!
//! A child may write anything: invalid UTF-8, non-JSON, or a line of 50 MB. The decoder never
//! panics and never holds more than `max_line` bytes of one line: an over-long line is
//! skipped to its end and reported once as [`Line::TooLong`]. Messages keep the child's exact
//! bytes (the relay forwards them untouched); [`Message::parse`] reads only what routing needs.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::codec::Decoder;

use crate::json_text;

/// One line of a child's stdout.
// A line is routed as soon as it is read, never queued: moving its message (about 260
// bytes) costs less than the allocation a boxed one would cost for every message.
#[allow(clippy::large_enum_variant)]
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
    /// Where the `id` sits in `raw`, when it was read there (its value replaced without
    /// reading the message again).
    pub id_at: Option<Range<usize>>,
    /// Where a response's `result` sits in `raw`, when it was read there.
    pub result_at: Option<Range<usize>>,
    /// The members of `params` the bridge reads, found in the same pass (`params` absent
    /// or `null`: all absent). `None`: not read that way (`params` is not an object or names
    /// one of them twice, or the message was rebuilt after its reading).
    pub params: Option<ParamsAt>,
}

/// A JSON string's text, borrowed from the message unless it has escapes (serde's own `Cow`
/// is always a copy, even where a field says to borrow it, and most are never kept).
pub struct StrRef<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for StrRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;

        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = StrRef<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<StrRef<'de>, E> {
                Ok(StrRef(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<StrRef<'de>, E> {
                Ok(StrRef(Cow::Owned(text.to_string())))
            }
        }

        d.deserialize_str(Text)
    }
}

/// Where the members of a request's `params` that the bridge reads (the 2026-07-28 envelope
/// in `_meta`, what the `Mcp-Name` header mirrors, a retry's state) sit in its text; the
/// other members are skipped, not read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamsAt {
    pub meta: Option<Range<usize>>,
    pub name: Option<Range<usize>>,
    pub uri: Option<Range<usize>>,
    pub request_state: Option<Range<usize>>,
    pub input_responses: Option<Range<usize>>,
}

/// `params` as the envelope's pass reads it: the members [`ParamsAt`] names, delimited and
/// borrowed. `None` when `params` is not an object or names one of them twice (which of the
/// two a reader takes is not ours to guess); never an error, so the message is still read.
struct ParamsSeen<'a>(Option<[Option<&'a RawValue>; 5]>);

impl ParamsSeen<'_> {
    const MEMBERS: [&'static str; 5] = ["_meta", "name", "uri", "requestState", "inputResponses"];
}

impl<'de: 'a, 'a> Deserialize<'de> for ParamsSeen<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        /// Which of [`ParamsSeen::MEMBERS`] a key is (its unescaped text compared).
        struct Member(Option<usize>);

        impl<'de> Deserialize<'de> for Member {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Key;
                impl Visitor<'_> for Key {
                    type Value = Member;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a member name")
                    }
                    fn visit_str<E>(self, key: &str) -> Result<Member, E> {
                        Ok(Member(ParamsSeen::MEMBERS.iter().position(|m| *m == key)))
                    }
                }
                d.deserialize_identifier(Key)
            }
        }

        struct Seen;

        impl<'de> Visitor<'de> for Seen {
            type Value = ParamsSeen<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = [None; 5];
                let mut twice = false;
                while let Some(Member(at)) = map.next_key()? {
                    match at.and_then(|at| found.get_mut(at)) {
                        Some(slot) => twice |= slot.replace(map.next_value()?).is_some(),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(ParamsSeen((!twice).then_some(found)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ParamsSeen(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ParamsSeen(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ParamsSeen(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ParamsSeen(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ParamsSeen(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ParamsSeen(None))
            }
        }

        d.deserialize_any(Seen)
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<StrRef<'a>>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    jsonrpc: Option<StrRef<'a>>,
    /// Read in this pass so that no reader of `params` reads the message again.
    #[serde(borrow, default)]
    params: Option<ParamsSeen<'a>>,
}

impl Message {
    /// Classifies one line; `None` when it is not a JSON-RPC 2.0 message or batch.
    pub fn parse(raw: Bytes) -> Option<Message> {
        let first = raw.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            let items: Vec<&RawValue> = json_text::read(&raw)?;
            if items.is_empty() {
                return None;
            }
            return Some(Message {
                raw,
                kind: Kind::Batch,
                id: None,
                method: None,
                id_at: None,
                result_at: None,
                params: None,
            });
        }
        let env: Envelope<'_> = json_text::read(&raw)?;
        if env.jsonrpc.as_ref().map(|v| v.0.as_ref()) != Some("2.0") {
            return None;
        }
        // A null id is a response to a request whose id could not be read.
        let id_at = env.id.and_then(|i| offset_in(&raw, i.get().as_bytes()));
        let result_at = env.result.and_then(|r| offset_in(&raw, r.get().as_bytes()));
        let params = match env.params {
            None => Some(ParamsAt::default()),
            Some(ParamsSeen(seen)) => seen.and_then(|[meta, name, uri, state, responses]| {
                let at = |part: Option<&RawValue>| match part {
                    None => Some(None),
                    Some(part) => offset_in(&raw, part.get().as_bytes()).map(Some),
                };
                Some(ParamsAt {
                    meta: at(meta)?,
                    name: at(name)?,
                    uri: at(uri)?,
                    request_state: at(state)?,
                    input_responses: at(responses)?,
                })
            }),
        };
        let id = env.id.map(|i| i.get().to_string());
        let method = env.method.map(|m| m.0.into_owned());
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
            id_at,
            result_at,
            params,
        })
    }

    /// The message with its `id` replaced by `id` (JSON text).
    pub fn with_id(&self, id: &str) -> Option<Bytes> {
        match &self.id_at {
            Some(at) => splice(&self.raw, at.clone(), id.as_bytes()),
            None => replace_value(&self.raw, &["id"], id),
        }
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
pub fn value_span(raw: &[u8], path: &[&str]) -> Option<Range<usize>> {
    let [span] = value_spans(raw, [path]);
    span
}

/// [`value_span`] for several paths, found in one pass over `raw` (a message is read once
/// however many of its members routing needs). Nothing is found in text that is not JSON.
pub fn value_spans<const N: usize>(raw: &[u8], paths: [&[&str]; N]) -> [Option<Range<usize>>; N] {
    let mut spans = [const { None }; N];
    let mut found = [Found::Nothing; N];
    let followed = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    if N > 64 || walk(raw, &paths, 0, followed, &mut found).is_none() {
        return spans;
    }
    for ((span, found), path) in spans.iter_mut().zip(found).zip(paths) {
        *span = match found {
            _ if path.is_empty() => Some(0..raw.len()),
            Found::Once(value) => offset_in(raw, value.get().as_bytes()),
            Found::Nothing | Found::Twice => None,
        };
    }
    spans
}

/// Where `part` (borrowed from `raw`) sits in `raw`.
pub fn offset_in(raw: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (raw.get(start..end)? == part).then_some(start..end)
}

/// What one pass found at a path.
#[derive(Debug, Clone, Copy)]
enum Found<'de> {
    Nothing,
    Once(&'de RawValue),
    Twice,
}

/// Reads `text` once, following the paths in `followed` (a bit per path) from `depth` on.
/// `None` when `text` is not JSON.
fn walk<'de>(
    text: &'de [u8],
    paths: &[&[&str]],
    depth: usize,
    followed: u64,
    found: &mut [Found<'de>],
) -> Option<()> {
    json_text::read_seed(
        text,
        Walk {
            paths,
            depth,
            followed,
            found,
        },
    )
}

/// One level of [`walk`]: the members of an object whose keys lead along a followed path
/// are read (the others skipped as they are read, no map of them built); any other value
/// is skipped.
struct Walk<'w, 'p, 'de> {
    paths: &'p [&'p [&'p str]],
    depth: usize,
    followed: u64,
    found: &'w mut [Found<'de>],
}

/// The paths (a bit per path) whose key at `depth` a member's key is: compared where it is
/// read, never copied.
struct KeyOf<'p> {
    paths: &'p [&'p [&'p str]],
    depth: usize,
    followed: u64,
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf<'_> {
    type Value = u64;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyOf<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<u64, E> {
        Ok(self
            .paths
            .iter()
            .enumerate()
            .filter(|(i, p)| self.followed & 1 << i != 0 && p.get(self.depth) == Some(&key))
            .fold(0, |mask, (i, _)| mask | 1 << i))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Walk<'_, '_, 'de> {
    /// The paths (a bit per path) that end at this depth.
    fn ending_here(&self) -> u64 {
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.len() == self.depth + 1)
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    fn mark(&mut self, paths: u64, as_found: Found<'de>) {
        for (i, found) in self.found.iter_mut().enumerate() {
            if paths & 1 << i != 0 {
                *found = as_found;
            }
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        use serde::de::IgnoredAny;
        let ending_here = self.ending_here();
        let mut seen = 0u64;
        while let Some(along) = map.next_key_seed(KeyOf {
            paths: self.paths,
            depth: self.depth,
            followed: self.followed,
        })? {
            let repeated = along & seen != 0;
            seen |= along;
            let (ending, deeper) = (along & ending_here, along & !ending_here);
            if along == 0 {
                map.next_value::<IgnoredAny>()?;
            } else if repeated {
                self.mark(along, Found::Twice);
                map.next_value::<IgnoredAny>()?;
            } else if ending != 0 {
                let value: &'de RawValue = map.next_value()?;
                self.mark(ending, Found::Once(value));
                // A path that goes on through a value another path ends at: read it again.
                if deeper != 0 {
                    let text = value.get().as_bytes();
                    if walk(text, self.paths, self.depth + 1, deeper, self.found).is_none() {
                        self.mark(deeper, Found::Nothing);
                    }
                }
            } else {
                map.next_value_seed(Walk {
                    paths: self.paths,
                    depth: self.depth + 1,
                    followed: deeper,
                    found: &mut *self.found,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A member name that [`may_name`] looks for (plain ASCII), with its searcher built once
/// (a `static`: building one at each search cost about as much as the search).
pub type MemberName = LazyLock<memchr::memmem::Finder<'static>>;

/// Whether the JSON text `raw` may have a member named `key` anywhere in it: `false` only
/// when neither the key's bytes nor a `\u` escape (the one way to spell a letter of it
/// differently) appear. A search that can only find nothing is skipped with this: a few
/// dozen instructions instead of a parse of the whole message.
pub fn may_name(raw: &[u8], key: &memchr::memmem::Finder<'_>) -> bool {
    let escape = memchr::memchr_iter(b'\\', raw).any(|at| raw.get(at + 1) == Some(&b'u'));
    escape || key.find(raw).is_some()
}

/// `raw` with the bytes in `span` replaced by `value`.
pub fn splice(raw: &[u8], span: Range<usize>, value: &[u8]) -> Option<Bytes> {
    let (head, tail) = (raw.get(..span.start)?, raw.get(span.end..)?);
    let mut out = BytesMut::with_capacity(head.len() + value.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(value);
    out.extend_from_slice(tail);
    Some(out.freeze())
}

/// `raw` with each span replaced by its text (spans that do not overlap, in any order).
pub fn splice_all(raw: &[u8], mut rewrites: Vec<(Range<usize>, String)>) -> Option<Bytes> {
    rewrites.sort_by_key(|(span, _)| span.start);
    let added: usize = rewrites.iter().map(|(_, text)| text.len()).sum();
    let mut out = BytesMut::with_capacity(raw.len() + added);
    let mut at = 0;
    for (span, text) in rewrites {
        out.extend_from_slice(raw.get(at..span.start)?);
        out.extend_from_slice(text.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(raw.get(at..)?);
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

    fn name(key: &str) -> memchr::memmem::Finder<'_> {
        memchr::memmem::Finder::new(key)
    }

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
        assert!(!may_name(raw, &name("requestId")));
        assert!(may_name(raw, &name("progressToken")));
        assert!(may_name(
            br#"{"\u0070rogressToken":1}"#,
            &name("progressToken")
        ));
    }

    #[test]
    fn the_members_of_params_the_bridge_reads_are_found_in_the_envelopes_pass() {
        let read = |raw: &'static str| Message::parse(Bytes::from(raw)).unwrap();
        let text = |m: &Message, at: &Option<Range<usize>>| {
            at.clone()
                .map(|at| String::from_utf8_lossy(&m.raw[at]).into_owned())
        };
        let m = read(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"x":[1,{"name":2}],"\u006eame":"e\"cho","_meta":{"a":{}} ,"uri":null,"inputResponses":{"k":1},"requestState":"s"}}"#,
        );
        let at = m.params.clone().expect("read");
        assert_eq!(text(&m, &at.name).as_deref(), Some(r#""e\"cho""#));
        assert_eq!(text(&m, &at.meta).as_deref(), Some(r#"{"a":{}}"#));
        assert_eq!(text(&m, &at.uri).as_deref(), Some("null"));
        assert_eq!(text(&m, &at.input_responses).as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(text(&m, &at.request_state).as_deref(), Some(r#""s""#));
        // Absent or null: nothing there, which is not unreadable.
        for raw in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
        ] {
            assert_eq!(read(raw).params, Some(ParamsAt::default()));
        }
        // Not an object, or one of its members named twice (an escaped spelling counts):
        // not read, and the message itself still is.
        for raw in [
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1,{"name":"a"}]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":"name"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":true}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"name":"a","\u006eame":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{},"_meta":{}}}"#,
        ] {
            let m = read(raw);
            assert_eq!((m.kind, m.params), (Kind::Request, None), "{raw}");
        }
        // `params` itself named twice: the message is not read at all, as with `id` or
        // `method` named twice (which one a server takes is not ours to guess).
        let twice = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{},"params":{"name":"a"}}"#;
        assert_eq!(Message::parse(Bytes::from(twice)), None);
        // A repeat among the members it skips is not its concern.
        let m = read(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"x":1,"x":2}}"#);
        assert_eq!(m.params, Some(ParamsAt::default()));
    }

    /// A line that is not UTF-8 is read as bytes, as before the text was checked whole: a
    /// string serde_json only skips may hold anything, one it reads may not.
    #[test]
    fn a_line_that_is_not_utf8_reads_as_it_did() {
        let line = |arguments: &[u8]| {
            let mut raw =
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":"#.to_vec();
            raw.extend_from_slice(arguments);
            raw.extend_from_slice(b"}}");
            Bytes::from(raw)
        };
        let skipped = Message::parse(line(b"\"\xff\xfe\"")).expect("read");
        assert_eq!(
            (skipped.kind, skipped.method.as_deref()),
            (Kind::Request, Some("tools/call"))
        );
        let mut method = br#"{"jsonrpc":"2.0","id":1,"method":"tools/"#.to_vec();
        method.extend_from_slice(b"\xff\"}");
        assert_eq!(Message::parse(Bytes::from(method)), None);
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

    #[test]
    fn several_members_are_found_in_one_pass() {
        let raw =
            br#"{"id":"a","params":{"_meta":{"progressToken":7},"name":"x"},"tail":[1,{"id":2}]}"#;
        let text = |span: Option<Range<usize>>| span.map(|r| &raw[r]);
        let [id, token, name, params] = value_spans(
            raw,
            [
                &["id"],
                &["params", "_meta", "progressToken"],
                &["params", "name"],
                &["params"],
            ],
        );
        assert_eq!(text(id), Some(&br#""a""#[..]));
        assert_eq!(text(token), Some(&b"7"[..]));
        assert_eq!(text(name), Some(&br#""x""#[..]));
        assert_eq!(
            text(params),
            Some(&br#"{"_meta":{"progressToken":7},"name":"x"}"#[..])
        );
        // Positional parameters, a missing member, a value that is not an object.
        let raw = br#"{"id":1,"params":[1,2],"x":null}"#;
        let [id, token, x] = value_spans(raw, [&["id"], &["params", "_meta"], &["x", "y"]]);
        assert_eq!((text_of(raw, id), token, x), (Some("1"), None, None));
        // Named twice anywhere on its path: nothing, for that path only.
        let raw = br#"{"id":1,"params":{"a":1},"params":{"a":2}}"#;
        let [id, a] = value_spans(raw, [&["id"], &["params", "a"]]);
        assert_eq!((text_of(raw, id), a), (Some("1"), None));
        let raw = br#"{"id":1,"id":2}"#;
        assert_eq!(value_span(raw, &["id"]), None);
        // Not JSON, or JSON with something after it: nothing.
        assert_eq!(value_span(br#"{"id":1"#, &["id"]), None);
        assert_eq!(value_span(br#"{"id":1} x"#, &["id"]), None);
    }

    fn text_of(raw: &[u8], span: Option<Range<usize>>) -> Option<&str> {
        std::str::from_utf8(&raw[span?]).ok()
    }

    /// Arbitrary JSON, with keys from a small set so that paths hit.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            "[a-z\\\"é]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[abc]", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
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
        fn one_pass_finds_what_navigating_the_value_finds(
            value in json(),
            paths in proptest::collection::vec(proptest::collection::vec("[abc]", 1..4), 3),
        ) {
            let raw = serde_json::to_vec_pretty(&value).unwrap();
            let path = |i: usize| paths[i].iter().map(String::as_str).collect::<Vec<_>>();
            let (p0, p1, p2) = (path(0), path(1), path(2));
            let spans = value_spans(&raw, [&p0[..], &p1[..], &p2[..]]);
            for (span, p) in spans.into_iter().zip([&p0, &p1, &p2]) {
                let expected = p.iter().try_fold(&value, |v, k| v.get(k));
                let found = span.map(|r| serde_json::from_slice::<serde_json::Value>(&raw[r]).unwrap());
                prop_assert_eq!(found.as_ref(), expected, "{:?}", p);
            }
        }

        /// An answer's id replaced where `Message::parse` saw it is the same message as the
        /// id replaced by looking for it again, wherever the id stands among the members.
        #[test]
        fn an_id_is_replaced_where_it_was_read(
            value in json(),
            id in prop_oneof![any::<u32>().prop_map(|n| n.to_string()), "\"[a-z\\\\\"]{0,8}\"".prop_map(String::from)],
            first in any::<bool>(),
        ) {
            let result = serde_json::to_string(&value).unwrap();
            let raw = if first {
                format!(r#"{{ "id" : {id}, "jsonrpc":"2.0","result":{result}}}"#)
            } else {
                format!(r#"{{"jsonrpc":"2.0","result":{result},"id":{id} }}"#)
            };
            let Some(m) = Message::parse(Bytes::from(raw.clone())) else {
                return Err(TestCaseError::reject("not a message"));
            };
            prop_assert!(m.id_at.is_some());
            let replaced = m.with_id(r#""mcp-proxy-1-2""#);
            prop_assert_eq!(&replaced, &replace_value(raw.as_bytes(), &["id"], r#""mcp-proxy-1-2""#));
            let back = Message::parse(replaced.unwrap()).unwrap();
            prop_assert_eq!(back.id.as_deref(), Some(r#""mcp-proxy-1-2""#));
        }

        /// `may_name` is never wrong: a key it rules out is found by no reading, whether
        /// written plainly or with escapes.
        #[test]
        fn a_key_ruled_out_is_never_there(
            value in json(),
            path in proptest::collection::vec("[abc]", 1..4),
            escaped in any::<bool>(),
        ) {
            let mut raw = serde_json::to_string(&value).unwrap();
            if escaped {
                raw = raw.replace("\"b\"", "\"\\u0062\"");
            }
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let key = path[path.len() - 1];
            let named = name(key);
            if !may_name(raw.as_bytes(), &named) {
                prop_assert_eq!(value_span(raw.as_bytes(), &path), None);
            }
            let expected = path.iter().try_fold(&value, |v, k| v.get(k));
            if expected.is_some() {
                prop_assert!(may_name(raw.as_bytes(), &named));
            }
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
