//! MCP 2026-07-28 ("modern": stateless) in front of stdio servers that speak the 2025
//! revisions ("legacy"), on the same endpoint as the legacy transport.
//!
//! The era is decided per request, as the specification's versioning page says: a POST
//! without `Mcp-Session-Id` that names a modern protocol version (in `_meta`, or in
//! `MCP-Protocol-Version`) is modern; `initialize` and session traffic are legacy and work
//! exactly as before.
//!
//! A modern request is checked against the transport's header rules (streamable-http,
//! "Request Metadata" and "Server Validation"), then served from a child the bridge has
//! initialized itself: one per user, kept like a session (it counts against the session
//! limits, idles out, carries the user's identity variables), or the one child of
//! `--stdio-mode shared`. Each request is a short-lived session of that child, so its id and
//! progress token are the child's own and concurrent requests never mix; closing the
//! response stream ends that session, which cancels the request at the child.
//! `server/discover` is answered from the child's `initialize` result.
//!
//! The child's questions to its client (sampling, elicitation, roots) reach modern clients
//! as multi round-trip results ([`super::mrtr`]); its list changes and resource updates
//! through `subscriptions/listen` ([`super::listen`]).

use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use memchr::memmem::Finder;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use crate::single_header;

use super::super::framing::{
    Kind, MemberName, Message, ParamsAt, StrRef, may_name, offset_in, splice, value_span,
};

/// The modern revisions the bridge speaks.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// The headers a modern request mirrors its body in (streamable-http, "Standard MCP Request
/// Headers"), named once rather than parsed from text at every lookup.
static PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
static METHOD: HeaderName = HeaderName::from_static("mcp-method");
static NAME: HeaderName = HeaderName::from_static("mcp-name");

const VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";
const CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const LOG_LEVEL_KEY: &str = "io.modelcontextprotocol/logLevel";

/// The log levels (RFC 5424 severities), least severe first.
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

fn log_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

/// Methods of the 2025 revisions that 2026-07-28 removed (sessions, the ping handshake,
/// per-session log levels and subscriptions): a modern request for one is not found.
const REMOVED: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Results that carry caching hints (specification, server/utilities/caching).
const CACHEABLE: [&str; 6] = [
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// The caching hints the bridge puts on cacheable results: `ttlMs` from `--stdio-cache-ttl`
/// (0 by default: immediately stale, so clients refetch), and always `private`, since each
/// user's child may answer differently (identity variables).
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheHints {
    pub ttl_ms: u64,
}

/// A modern request that passed the header rules. The parts only some requests need are kept
/// as the request's own JSON text (slices of its body, not copies) and read when needed.
pub struct Modern {
    /// The request's id as JSON (`null` for a notification).
    pub id: Value,
    pub method: String,
    pub is_request: bool,
    /// `_meta`'s client capabilities: what the child may ask this request's client.
    capabilities: Option<Bytes>,
    /// The request as sent: its parameters are what a retry must repeat (see
    /// [`super::mrtr`]).
    body: Bytes,
    /// `_meta`'s log level: the lowest severity of the child's `notifications/message` this
    /// request's stream carries (none without it: logging is asked for per request).
    pub log_level: Option<usize>,
    /// A retry's `requestState` and `inputResponses`.
    pub request_state: Option<String>,
    input_responses: Option<Bytes>,
    /// Where `_meta` sits in the body, and what a 2025 server is sent in its place (see
    /// [`Modern::for_legacy_child`]); `None` when it is sent as it is.
    legacy_meta: Option<(std::ops::Range<usize>, Vec<u8>)>,
}

/// `params._meta` as written: its members in order, their values only delimited (one pass;
/// the envelope every modern request carries is read from it, specification
/// basic/versioning, and a 2025 server is sent it without that envelope).
struct Meta<'a> {
    /// Where it sits in the body.
    at: Range<usize>,
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Meta<'a> {
    /// `_meta` at `at` in `body`; `None` when it is not an object or names a member twice.
    fn read(body: &'a [u8], at: &Range<usize>) -> Option<Meta<'a>> {
        let members = meta_members(body.get(at.clone())?)?;
        Some(Meta {
            at: at.clone(),
            members,
        })
    }

    /// The JSON text of member `key` (a `null` one counts as absent).
    fn get(&self, key: &str) -> Option<&'a str> {
        self.members
            .iter()
            .find(|(k, v)| k == key && v.get() != "null")
            .map(|(_, v)| v.get())
    }

    /// `_meta` without this revision's envelope (the `io.modelcontextprotocol/…` members),
    /// when it has any; the other members as written.
    fn without_envelope(&self) -> Option<Vec<u8>> {
        if !self.members.iter().any(|(key, _)| is_envelope(key)) {
            return None;
        }
        let mut meta = Vec::with_capacity(self.at.len());
        meta.push(b'{');
        for (key, value) in self.members.iter().filter(|(k, _)| !is_envelope(k)) {
            if meta.len() > 1 {
                meta.push(b',');
            }
            meta.extend_from_slice(Value::from(key.as_ref()).to_string().as_bytes());
            meta.push(b':');
            meta.extend_from_slice(value.get().as_bytes());
        }
        meta.push(b'}');
        Some(meta)
    }

    /// What a 2025 server is sent in place of `_meta` (in `body`, at the span returned):
    /// `_meta` without the envelope, or no `_meta` member at all when nothing else was in
    /// it (measured, an empty one cost server-everything about 6% of its throughput,
    /// BENCHMARKS.md). `None`: sent as it is.
    fn for_legacy_child(&self, body: &[u8]) -> Option<(Range<usize>, Vec<u8>)> {
        let only_envelope =
            !self.members.is_empty() && self.members.iter().all(|(key, _)| is_envelope(key));
        if only_envelope && let Some(member) = member_with_comma(body, &self.at) {
            return Some((member, Vec::new()));
        }
        Some((self.at.clone(), self.without_envelope()?))
    }
}

/// The span of the member of the object in `body` whose value sits at `value`: its name,
/// colon and value, with the comma that joins it to a neighbour, so that removing the span
/// leaves the object well formed. `None` when the text before the value is not a member's
/// name (the name must be one without a quote in it, such as `_meta`, in any spelling).
fn member_with_comma(body: &[u8], value: &Range<usize>) -> Option<Range<usize>> {
    let last_before = |end: usize| {
        let at = body
            .get(..end)?
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())?;
        Some((at, *body.get(at)?))
    };
    let (colon, b':') = last_before(value.start)? else {
        return None;
    };
    let (name_end, b'"') = last_before(colon)? else {
        return None;
    };
    // The name holds no quote, escaped or not: the one before its end is its start.
    let name = body.get(..name_end)?.iter().rposition(|b| *b == b'"')?;
    let after = body.get(value.end..)?;
    let next = after.iter().position(|b| !b.is_ascii_whitespace())? + value.end;
    if body.get(next) == Some(&b',') {
        return Some(name..next + 1);
    }
    match last_before(name)? {
        (comma, b',') => Some(comma..value.end),
        (_, b'{') => Some(name..value.end),
        _ => None,
    }
}

/// A request's `params` as [`Message::parse`] found it, and its `_meta` read; `None` when
/// it cannot be read that way (a member named twice, `params` or `_meta` not an object).
fn read_params(msg: &Message) -> Option<(&ParamsAt, Option<Meta<'_>>)> {
    let params = msg.params.as_ref()?;
    let meta = match &params.meta {
        Some(at) => Some(Meta::read(&msg.raw, at)?),
        None => None,
    };
    Some((params, meta))
}

/// A JSON string's text (`None` for any other JSON value); borrowed unless it has escapes.
fn text(raw: Option<&str>) -> Option<Cow<'_, str>> {
    serde_json::from_str::<StrRef>(raw?).ok().map(|text| text.0)
}

/// The part of `body` that `part` (borrowed from it) is, without copying.
fn part_of(body: &Bytes, part: Option<&str>) -> Option<Bytes> {
    Some(body.slice(offset_in(body, part?.as_bytes())?))
}

/// The JSON text at `at` in `body`.
fn at<'b>(body: &'b [u8], at: &Option<Range<usize>>) -> Option<&'b str> {
    std::str::from_utf8(body.get(at.clone()?)?).ok()
}

/// The JSON value at member `name` of the JSON object `text`.
fn member_value(text: Option<&Bytes>, name: &str) -> Option<Value> {
    let text = text?;
    serde_json::from_slice(text.get(value_span(text, &[name])?)?).ok()
}

impl Modern {
    /// The method and parameters, as a retry must repeat them.
    pub fn digest(&self) -> String {
        let params = value_span(&self.body, &["params"])
            .and_then(|span| serde_json::from_slice::<Value>(self.body.get(span)?).ok());
        super::mrtr::call_digest(&self.method, params.as_ref())
    }

    /// The request's parameter `name`.
    pub fn param(&self, name: &str) -> Option<Value> {
        let span = value_span(&self.body, &["params", name])?;
        serde_json::from_slice(self.body.get(span)?).ok()
    }

    /// A retry's answer under `key` of its `inputResponses`.
    pub fn input_response(&self, key: &str) -> Option<Value> {
        member_value(self.input_responses.as_ref(), key)
    }

    /// Whether a `notifications/message` of the child's belongs on this request's stream.
    pub fn wants_log(&self, notification: &Value) -> bool {
        let level = notification
            .get("params")
            .and_then(|p| p.get("level"))
            .and_then(Value::as_str)
            .and_then(log_rank);
        matches!((self.log_level, level), (Some(wanted), Some(level)) if level >= wanted)
    }

    /// The request as a server of the 2025 revisions is sent it: `params._meta` without this
    /// revision's envelope (the `io.modelcontextprotocol/…` members), which such a server does
    /// not read (the bridge's `initialize` told it what the bridge relays) yet still parses:
    /// measured, they cost server-everything a sixth of its throughput (BENCHMARKS.md). Other
    /// members of `_meta` (a progress token) stay as written; a `_meta` with nothing else in
    /// it is not sent at all. `None`: sent as it is.
    pub fn for_legacy_child(&self, msg: &Message) -> Option<Message> {
        let (span, meta) = self.legacy_meta.as_ref()?;
        Some(Message {
            raw: splice(&self.body, span.clone(), meta)?,
            kind: msg.kind,
            id: msg.id.clone(),
            method: msg.method.clone(),
            id_at: msg.id_at.clone().and_then(|at| moved(at, span, meta.len())),
            result_at: None,
            // Not read again: a child is sent it as it is.
            params: None,
        })
    }

    /// Whether the client declared `capability`.
    pub fn declared(&self, capability: &str) -> bool {
        member_value(self.capabilities.as_ref(), capability).is_some_and(|c| !c.is_null())
    }
}

/// Where `at` is after `span` was replaced by `len` bytes (`None`: it was inside `span`).
fn moved(at: Range<usize>, span: &Range<usize>, len: usize) -> Option<Range<usize>> {
    if at.end <= span.start {
        Some(at)
    } else if at.start >= span.end {
        let shift = |i: usize| (i + len).checked_sub(span.len());
        Some(shift(at.start)?..shift(at.end)?)
    } else {
        None
    }
}

/// Why a modern request is answered by the bridge with an error before any child sees it.
#[derive(Debug)]
pub enum ModernRefusal {
    /// `-32020`: a required header is missing, repeated or unreadable, or does not match the
    /// body.
    HeaderMismatch { id: Value, why: String },
    /// `-32022`: a version the bridge does not speak.
    UnsupportedVersion { id: Value, requested: String },
    /// `-32602`: the request's `_meta` lacks what every request carries, or a retry's
    /// `requestState` cannot be used.
    InvalidParams { id: Value, why: String },
    /// `-32601` (HTTP 404): a method this revision removed.
    MethodNotFound { id: Value, method: String },
}

impl IntoResponse for ModernRefusal {
    fn into_response(self) -> Response {
        let body = match self {
            Self::HeaderMismatch { id, why } => json!({
                "jsonrpc": "2.0", "id": id,
                "error": {"code": -32020, "message": format!("Header mismatch: {why}")},
            }),
            Self::InvalidParams { id, why } => json!({
                "jsonrpc": "2.0", "id": id,
                "error": {"code": -32602, "message": format!("Invalid params: {why}")},
            }),
            Self::MethodNotFound { id, method } => {
                let body = json!({
                    "jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": format!("Method not found: {method} is not part of protocol 2026-07-28")},
                });
                return super::json_response(StatusCode::NOT_FOUND, body.to_string());
            }
            Self::UnsupportedVersion { id, requested } => json!({
                "jsonrpc": "2.0", "id": id,
                "error": {
                    "code": -32022,
                    "message": "Unsupported protocol version",
                    "data": {"supported": supported_versions(), "requested": requested},
                },
            }),
        };
        super::json_response(StatusCode::BAD_REQUEST, body.to_string())
    }
}

/// Every version this endpoint speaks, newest first.
pub fn supported_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .chain(super::SUPPORTED_VERSIONS.iter())
        .copied()
        .collect()
}

/// Whether `headers` name a protocol version that only the modern era has.
fn header_modern(headers: &HeaderMap) -> bool {
    headers.get_all(&PROTOCOL_VERSION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| !super::SUPPORTED_VERSIONS.contains(&v.trim()))
    })
}

/// What a POST without a session is: `None` for the legacy era, else the modern request
/// checked against the header rules. A request is modern when it names a modern version in
/// `MCP-Protocol-Version` or in `_meta` (a legacy `initialize` names its version in
/// `params.protocolVersion`, never in `_meta`). Public for the fuzz target.
pub fn read(headers: &HeaderMap, msg: &Message) -> Option<Result<Modern, ModernRefusal>> {
    let header_modern = header_modern(headers);
    let Some((fields, meta)) = read_params(msg) else {
        let id = message_id(msg);
        let why =
            "params could not be read (a member named twice, or params or _meta not an object)";
        return header_modern.then(|| {
            Err(ModernRefusal::InvalidParams {
                id,
                why: why.into(),
            })
        });
    };
    let named_modern = msg.method.as_deref() != Some("initialize")
        && text(meta.as_ref().and_then(|m| m.get(VERSION_KEY))).is_some();
    (header_modern || named_modern).then(|| check(headers, msg, fields, meta.as_ref()))
}

/// The id of `msg` as JSON (`null` for a notification).
fn message_id(msg: &Message) -> Value {
    msg.id
        .as_deref()
        .and_then(|id| serde_json::from_str(id).ok())
        .unwrap_or(Value::Null)
}

/// The one value of `name`, if present; a repeated or unreadable one is refused (a load
/// balancer and the bridge must not read different values).
fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    id: &Value,
) -> Result<Option<&'h str>, ModernRefusal> {
    let mismatch = |why: String| ModernRefusal::HeaderMismatch {
        id: id.clone(),
        why,
    };
    let Some(first) =
        single_header::value(headers, name).map_err(|_| mismatch(format!("{name} is repeated")))?
    else {
        return Ok(None);
    };
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| mismatch(format!("{name} has characters a header may not carry")))
}

/// `=?base64?…?=` (streamable-http, "Value Encoding") decoded; other values as they are.
fn decoded(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_string()),
    }
}

/// Checks a modern request's headers against its body.
fn check(
    headers: &HeaderMap,
    msg: &Message,
    fields: &ParamsAt,
    meta: Option<&Meta<'_>>,
) -> Result<Modern, ModernRefusal> {
    let id = message_id(msg);
    let mismatch = |why: String| ModernRefusal::HeaderMismatch {
        id: id.clone(),
        why,
    };
    let method = msg
        .method
        .as_deref()
        .ok_or_else(|| mismatch("the body is not a request or notification".into()))?;
    let header_version = single(headers, &PROTOCOL_VERSION, &id)?
        .ok_or_else(|| mismatch("MCP-Protocol-Version is missing".into()))?;
    let invalid = |why: &str| ModernRefusal::InvalidParams {
        id: id.clone(),
        why: why.to_string(),
    };
    let is_request = msg.kind == Kind::Request;
    let Some(version) = text(meta.and_then(|m| m.get(VERSION_KEY))) else {
        return Err(invalid(
            "params._meta must name io.modelcontextprotocol/protocolVersion",
        ));
    };
    let capabilities = meta.and_then(|m| m.get(CAPABILITIES_KEY));
    if is_request && capabilities.is_none() {
        return Err(invalid(
            "params._meta must carry io.modelcontextprotocol/clientCapabilities",
        ));
    }
    if header_version != version {
        return Err(mismatch(format!(
            "MCP-Protocol-Version header value '{header_version}' does not match body value '{version}'"
        )));
    }
    if !MODERN_VERSIONS.contains(&version.as_ref()) {
        return Err(ModernRefusal::UnsupportedVersion {
            id,
            requested: version.into_owned(),
        });
    }
    if REMOVED.contains(&method) {
        return Err(ModernRefusal::MethodNotFound {
            id,
            method: method.to_string(),
        });
    }
    if is_request {
        match single(headers, &METHOD, &id)? {
            Some(m) if m == method => {}
            Some(m) => {
                return Err(mismatch(format!(
                    "Mcp-Method header value '{m}' does not match body value '{method}'"
                )));
            }
            None => return Err(mismatch("Mcp-Method is missing".into())),
        }
        let named = match method {
            "tools/call" | "prompts/get" => Some(&fields.name),
            "resources/read" => Some(&fields.uri),
            _ => None,
        };
        if let Some(named) = named.and_then(|named| at(&msg.raw, named)) {
            let named = text(Some(named)).unwrap_or_default();
            let header = single(headers, &NAME, &id)?
                .ok_or_else(|| mismatch("Mcp-Name is missing".into()))?;
            if decoded(header).as_deref() != Some(named.as_ref()) {
                return Err(mismatch(format!(
                    "Mcp-Name header value '{header}' does not match body value '{named}'"
                )));
            }
        }
    }
    let log_level = match meta.and_then(|m| m.get(LOG_LEVEL_KEY)) {
        None => None,
        Some(level) => Some(
            text(Some(level))
                .as_deref()
                .and_then(log_rank)
                .ok_or_else(|| invalid("io.modelcontextprotocol/logLevel is not a log level"))?,
        ),
    };
    Ok(Modern {
        log_level,
        capabilities: part_of(&msg.raw, capabilities),
        request_state: text(at(&msg.raw, &fields.request_state)).map(Cow::into_owned),
        input_responses: fields
            .input_responses
            .clone()
            .map(|span| msg.raw.slice(span)),
        body: msg.raw.clone(),
        legacy_meta: meta.and_then(|m| m.for_legacy_child(&msg.raw)),
        id,
        method: method.to_string(),
        is_request,
    })
}

/// The prefix of the `_meta` keys MCP reserves for itself (basic, "General fields").
const RESERVED_PREFIX: &str = "io.modelcontextprotocol/";

/// Whether a `_meta` key is one of this revision's envelope (the `io.modelcontextprotocol/…`
/// members a 2025 server is not sent).
fn is_envelope(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// The members of the JSON object `text` as written (values not read, only delimited);
/// `None` when it is not an object or names a member twice.
fn meta_members(text: &[u8]) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    use serde::Deserialize;
    use serde::de::{MapAccess, Visitor};

    /// `None`: a member named twice.
    struct Members<'de>(Option<Vec<(Cow<'de, str>, &'de RawValue)>>);

    impl<'de> Deserialize<'de> for Members<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Members(None))
        }
    }

    impl<'de> Visitor<'de> for Members<'de> {
        type Value = Members<'de>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(StrRef(key)) = map.next_key()? {
                let value: &'de RawValue = map.next_value()?;
                members.push((key, value));
            }
            let twice = crate::json_names::repeated(members.iter().map(|(k, _)| k.as_ref()));
            Ok(Members((!twice).then_some(members)))
        }
    }

    crate::json_text::read::<Members>(text)?.0
}

pub(super) fn discover(id: &Value, init: &Value, hints: CacheHints) -> Bytes {
    let capabilities = init
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut result = Map::new();
    result.insert("resultType".into(), json!("complete"));
    result.insert("supportedVersions".into(), json!(supported_versions()));
    result.insert("capabilities".into(), capabilities);
    if let Some(info) = init.get("serverInfo") {
        result.insert("_meta".into(), json!({ SERVER_INFO_KEY: info }));
    }
    if let Some(instructions) = init.get("instructions") {
        result.insert("instructions".into(), instructions.clone());
    }
    add_hints(&mut result, "server/discover", hints);
    Bytes::from(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
}

fn add_hints(result: &mut Map<String, Value>, method: &str, hints: CacheHints) {
    // Interim (`input_required`) results are not cacheable (the caching page).
    let complete = result
        .get("resultType")
        .is_none_or(|t| t.as_str() == Some("complete"));
    if complete && CACHEABLE.contains(&method) {
        result.entry("ttlMs").or_insert_with(|| json!(hints.ttl_ms));
        result
            .entry("cacheScope")
            .or_insert_with(|| json!("private"));
    }
}

/// A legacy child's answer (as [`Message::parse`] read it) as a modern result to request
/// `id` (a retry's id differs from the call the child answers): `resultType` (absent in the
/// 2025 revisions) and the caching hints of cacheable methods. Errors keep their content;
/// anything unreadable passes as it is. `id` is `None` when the answer already carries the
/// request's id (the child's routes restored it), as every answer but a retry's does.
pub(super) fn modernized(
    answer: Message,
    id: Option<&Value>,
    method: &str,
    hints: CacheHints,
) -> Bytes {
    let raw = answer.raw;
    if id.is_none() && !CACHEABLE.contains(&method) {
        // The common case (a call answered): only `resultType` to add, spliced in without
        // re-encoding the answer.
        if let Some(spliced) = answer.result_at.and_then(|at| with_result_type(&raw, at)) {
            return spliced;
        }
    }
    let Ok(mut answer) = serde_json::from_slice::<Value>(&raw) else {
        return raw;
    };
    if let Some(id) = id {
        answer["id"] = id.clone();
    }
    let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) else {
        return serde_json::to_vec(&answer).map(Bytes::from).unwrap_or(raw);
    };
    result
        .entry("resultType")
        .or_insert_with(|| json!("complete"));
    add_hints(result, method, hints);
    serde_json::to_vec(&answer).map(Bytes::from).unwrap_or(raw)
}

static RESULT_TYPE: MemberName = LazyLock::new(|| Finder::new("resultType"));

/// `raw` with `"resultType":"complete"` first in its `result` object (at `span`), when that
/// object has none (`None`: the result is not an object, or it has one already).
fn with_result_type(raw: &Bytes, span: Range<usize>) -> Option<Bytes> {
    let result = raw.get(span.clone())?;
    if result.first() != Some(&b'{') {
        return None;
    }
    // Looked for in the result alone, and only when it may be there.
    if may_name(result, &RESULT_TYPE) && value_span(result, &["resultType"]).is_some() {
        return Some(raw.clone());
    }
    let empty = result[1..]
        .iter()
        .all(|b| b.is_ascii_whitespace() || *b == b'}');
    let field: &[u8] = if empty {
        br#""resultType":"complete""#
    } else {
        br#""resultType":"complete","#
    };
    let at = span.start + 1;
    splice(raw, at..at, field)
}

/// One SSE event of a modern response stream (not resumable: no id).
pub(super) fn sse_event(raw: &[u8]) -> Bytes {
    let mut ev = Vec::with_capacity(raw.len() + 24);
    ev.extend_from_slice(b"event: message\ndata: ");
    ev.extend_from_slice(raw);
    ev.extend_from_slice(b"\n\n");
    Bytes::from(ev)
}

/// The `server/discover` the bridge asks a new child first, to learn whether it speaks
/// 2026-07-28 itself.
pub(super) fn discover_request() -> Bytes {
    Bytes::from(
        json!({
            "jsonrpc": "2.0",
            "id": "mcp-auth-proxy-discover",
            "method": "server/discover",
            "params": {"_meta": {
                VERSION_KEY: MODERN_VERSIONS[0],
                "io.modelcontextprotocol/clientInfo": {"name": "mcp-auth-proxy", "version": env!("CARGO_PKG_VERSION")},
                CAPABILITIES_KEY: {},
            }},
        })
        .to_string(),
    )
}

/// The `initialize` the bridge sends a child it serves modern requests from: the newest
/// legacy version, and the client capabilities the bridge can relay (as multi round-trip
/// requests, when it `relays` them; each request's own client must still have declared the
/// capability, or the child's question gets an error).
pub(super) fn initialize_request(relays: bool) -> Bytes {
    let capabilities = if relays {
        json!({"sampling": {}, "elicitation": {}, "roots": {}})
    } else {
        json!({})
    };
    Bytes::from(
        json!({
            "jsonrpc": "2.0",
            "id": "mcp-auth-proxy-initialize",
            "method": "initialize",
            "params": {
                "protocolVersion": super::SUPPORTED_VERSIONS[0],
                "capabilities": capabilities,
                "clientInfo": {"name": "mcp-auth-proxy", "version": env!("CARGO_PKG_VERSION")},
            },
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn call(name: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": name, "arguments": {},
            "_meta": {VERSION_KEY: "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}},
        }})
    }

    fn checked(h: &HeaderMap, body: Value) -> Result<Modern, ModernRefusal> {
        let msg = Message::parse(Bytes::from(body.to_string())).unwrap();
        read(h, &msg).expect("a modern request")
    }

    fn code(r: Result<Modern, ModernRefusal>) -> i64 {
        match r {
            Ok(_) => 0,
            Err(ModernRefusal::HeaderMismatch { .. }) => -32020,
            Err(ModernRefusal::UnsupportedVersion { .. }) => -32022,
            Err(ModernRefusal::InvalidParams { .. }) => -32602,
            Err(ModernRefusal::MethodNotFound { .. }) => -32601,
        }
    }

    #[test]
    fn headers_must_mirror_the_body() {
        let good = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ];
        assert_eq!(code(checked(&headers(&good), call("echo"))), 0);
        // Each rule, broken once.
        for broken in [
            vec![("mcp-method", "tools/call"), ("mcp-name", "echo")],
            vec![("mcp-protocol-version", "2026-07-28"), ("mcp-name", "echo")],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "echo"),
            ],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "other"),
            ],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            vec![
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
            vec![
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
        ] {
            assert_eq!(
                code(checked(&headers(&broken), call("echo"))),
                -32020,
                "{broken:?}"
            );
        }
    }

    #[test]
    fn a_name_outside_the_header_set_travels_base64() {
        let name = "héllo wörld";
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name)
        );
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", &encoded),
        ]);
        assert_eq!(code(checked(&h, call(name))), 0);
        assert_eq!(code(checked(&h, call("hello world"))), -32020);
    }

    #[test]
    fn a_parameter_named_twice_is_refused_not_guessed() {
        let twice = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"rm","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
        let msg = Message::parse(Bytes::from(twice)).unwrap();
        let modern = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert_eq!(
            code(read(&modern, &msg).expect("modern by its header")),
            -32602
        );
        // Without the header nothing says it is modern: the legacy rules refuse it (no session).
        assert!(read(&HeaderMap::new(), &msg).is_none());
    }

    #[test]
    fn an_unknown_version_gets_the_supported_list() {
        let mut body = call("echo");
        body["params"]["_meta"][VERSION_KEY] = json!("2099-01-01");
        let h = headers(&[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert_eq!(code(checked(&h, body.clone())), -32022);
    }

    #[test]
    fn a_legacy_answer_becomes_a_modern_result() {
        let raw = Bytes::from(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#);
        let out: Value = serde_json::from_slice(&modernized(
            Message::parse(raw).unwrap(),
            None,
            "tools/list",
            CacheHints { ttl_ms: 5 },
        ))
        .unwrap();
        assert_eq!(out["result"]["resultType"], "complete");
        assert_eq!(out["result"]["ttlMs"], 5);
        assert_eq!(out["result"]["cacheScope"], "private");
        // A retry's answer carries the retry's id; an error keeps its content.
        let err = Bytes::from(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#);
        let out: Value = serde_json::from_slice(&modernized(
            Message::parse(err).unwrap(),
            Some(&json!("retry")),
            "tools/call",
            CacheHints::default(),
        ))
        .unwrap();
        assert_eq!(out["id"], "retry");
        assert_eq!(out["error"]["message"], "x");
    }

    #[test]
    fn log_messages_reach_only_a_request_that_asked_for_them_at_their_level() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        let log =
            |level: &str| json!({"method": "notifications/message", "params": {"level": level}});
        let plain = checked(&h, call("echo")).ok().unwrap();
        assert!(!plain.wants_log(&log("emergency")), "not asked: none");
        let mut body = call("echo");
        body["params"]["_meta"][LOG_LEVEL_KEY] = json!("warning");
        let asked = checked(&h, body.clone()).ok().unwrap();
        assert!(asked.wants_log(&log("error")));
        assert!(asked.wants_log(&log("warning")));
        assert!(!asked.wants_log(&log("info")));
        body["params"]["_meta"][LOG_LEVEL_KEY] = json!("loud");
        assert_eq!(code(checked(&h, body.clone())), -32602);
    }

    #[test]
    fn a_call_answer_gets_its_result_type_spliced_in() {
        for (raw, expected) in [
            (
                r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
                r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"complete","content":[]}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
                r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"complete"}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"input_required"}}"#,
                r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"input_required"}}"#,
            ),
            // Written with an escape, it is still there.
            (
                r#"{"jsonrpc":"2.0","id":3,"result":{"\u0072esultType":"input_required"}}"#,
                r#"{"jsonrpc":"2.0","id":3,"result":{"\u0072esultType":"input_required"}}"#,
            ),
            // Deeper in the result, it is not the result's.
            (
                r#"{"result":{"content":[{"resultType":"x"}]},"jsonrpc":"2.0","id":3}"#,
                r#"{"result":{"resultType":"complete","content":[{"resultType":"x"}]},"jsonrpc":"2.0","id":3}"#,
            ),
        ] {
            let answer = Message::parse(Bytes::from(raw)).unwrap();
            let out = modernized(answer, None, "tools/call", CacheHints::default());
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        }
    }

    #[test]
    fn a_2025_server_is_sent_the_request_without_the_envelope() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        let raw = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"p","io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"sampling":{}}},"arguments":{"a":1}}}"#;
        let msg = Message::parse(Bytes::from(raw)).unwrap();
        let request = read(&h, &msg).unwrap().ok().unwrap();
        let out = request.for_legacy_child(&msg).unwrap();
        assert_eq!(
            std::str::from_utf8(&out.raw).unwrap(),
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","_meta":{"progressToken":"p"},"arguments":{"a":1}}}"#
        );
        assert_eq!((out.kind, out.id.as_deref()), (Kind::Request, Some("4")));
        assert_eq!(out.id_at.map(|at| &out.raw[at]), Some(&b"4"[..]));
        assert!(request.declared("sampling"));
        // A member of _meta named twice: refused, not guessed.
        let twice = raw.replace(
            r#""progressToken":"p""#,
            r#""progressToken":"p","progressToken":"q""#,
        );
        let twice = Message::parse(Bytes::from(twice)).unwrap();
        assert_eq!(code(read(&h, &twice).unwrap()), -32602);
    }

    #[test]
    fn a_meta_left_empty_is_not_sent_at_all() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        let envelope = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
        // What the child is sent for `raw`; its id (4) is still found where it was read.
        let relayed = |raw: String| {
            let msg = Message::parse(Bytes::from(raw)).unwrap();
            let request = read(&h, &msg).unwrap().ok().unwrap();
            let out = request.for_legacy_child(&msg).unwrap();
            assert_eq!(out.id_at.map(|at| &out.raw[at]), Some(&b"4"[..]));
            String::from_utf8(out.raw.to_vec()).unwrap()
        };
        let call = |params: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{params}}}"#)
        };
        // First, last, between others, alone, spaced, and spelled with an escape.
        for (params, expected) in [
            (r#"{"_meta":ENV,"name":"echo"}"#, r#"{"name":"echo"}"#),
            (r#"{"name":"echo","_meta":ENV}"#, r#"{"name":"echo"}"#),
            (
                r#"{"name":"echo", "_meta" : ENV , "arguments":{}}"#,
                r#"{"name":"echo",  "arguments":{}}"#,
            ),
            (
                r#"{ "\u005fmeta" :ENV , "name":"echo"}"#,
                r#"{  "name":"echo"}"#,
            ),
            (r#"{ "_meta":ENV }"#, r#"{  }"#),
        ] {
            let sent = relayed(call(&params.replace("ENV", envelope)));
            assert_eq!(sent, call(expected), "{params}");
        }
        // What else _meta holds is kept.
        let kept = envelope.replacen('{', r#"{"progressToken":1,"#, 1);
        assert_eq!(
            relayed(call(&format!(r#"{{"name":"echo","_meta":{kept}}}"#))),
            call(r#"{"name":"echo","_meta":{"progressToken":1}}"#)
        );
        // An id after params is found where it moved to.
        let raw = format!(
            r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"echo","_meta":{envelope}}},"id":4}}"#
        );
        assert_eq!(
            relayed(raw),
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo"},"id":4}"#
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a client sends, reading it never panics; what is read as a valid
        /// request has headers that mirror its body, and a 2025 server is sent a body
        /// without the envelope and otherwise as it was.
        #[test]
        fn what_is_read_is_what_the_headers_and_body_agree_on(
            method in proptest::sample::select(vec!["tools/call", "tools/list", "prompts/get", "resources/read", "initialize"]),
            header_method in proptest::sample::select(vec!["tools/call", "tools/list", "prompts/get", "resources/read", ""]),
            name in "[a-zé ]{0,6}",
            header_name in "[a-z]{0,6}",
            version in proptest::sample::select(vec!["2026-07-28", "2025-11-25", "2099-01-01", ""]),
            extra_meta in proptest::collection::vec(("[a-z/.]{1,12}", 0i32..3), 0..4),
            twice in proptest::bool::ANY,
            id_last in proptest::bool::ANY,
        ) {
            let mut meta = serde_json::Map::new();
            if !version.is_empty() {
                meta.insert(VERSION_KEY.into(), json!(version));
            }
            meta.insert(CAPABILITIES_KEY.into(), json!({}));
            for (k, v) in &extra_meta {
                meta.insert(k.clone(), json!(v));
            }
            let mut body = json!({"jsonrpc": "2.0", "id": 1, "method": method,
                "params": {"name": name, "uri": name, "_meta": meta}}).to_string();
            if twice {
                body = body.replacen("\"name\":", "\"name\":\"x\",\"name\":", 1);
            }
            if id_last {
                // After params, so that removing the envelope moves it.
                body = body.replacen("\"id\":1,", "", 1);
                body.insert_str(body.len() - 1, ",\"id\":1");
            }
            let mut pairs = vec![("mcp-protocol-version", version)];
            if !header_method.is_empty() {
                pairs.push(("mcp-method", header_method));
            }
            if !header_name.is_empty() {
                pairs.push(("mcp-name", header_name.as_str()));
            }
            let pairs: Vec<_> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let Some(msg) = Message::parse(Bytes::from(body)) else {
                return Ok(());
            };
            if let Some(Ok(request)) = read(&headers(&pairs), &msg) {
                proptest::prop_assert!(!twice, "a member named twice was read");
                proptest::prop_assert_eq!(request.method.as_str(), header_method);
                proptest::prop_assert_eq!(version, "2026-07-28");
                if matches!(method, "tools/call" | "prompts/get" | "resources/read") {
                    proptest::prop_assert_eq!(name.as_str(), header_name.as_str());
                }
                if let Some(out) = request.for_legacy_child(&msg) {
                    let sent: Value = serde_json::from_slice(&out.raw).unwrap();
                    // Without the envelope, and gone when nothing else was in it.
                    match sent["params"].get("_meta") {
                        Some(meta) => {
                            let meta = meta.as_object().unwrap();
                            proptest::prop_assert!(meta.keys().all(|k| !k.starts_with(RESERVED_PREFIX)));
                            proptest::prop_assert!(!meta.is_empty());
                        }
                        None => proptest::prop_assert!(extra_meta.is_empty()),
                    }
                    proptest::prop_assert_eq!(&sent["params"]["name"], &json!(name));
                    // Where the id was read still holds it.
                    let at = out.id_at.clone();
                    proptest::prop_assert_eq!(at.and_then(|at| out.raw.get(at)), Some(&b"1"[..]));
                }
            }
        }
    }

    #[test]
    fn discover_offers_what_the_child_offers() {
        let init = json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true}, "logging": {}},
            "serverInfo": {"name": "everything", "version": "1"},
            "instructions": "hi",
        });
        let out: Value =
            serde_json::from_slice(&discover(&json!("d"), &init, CacheHints::default())).unwrap();
        let r = &out["result"];
        assert_eq!(r["supportedVersions"][0], "2026-07-28");
        assert_eq!(r["capabilities"], init["capabilities"]);
        assert_eq!(r["_meta"][SERVER_INFO_KEY]["name"], "everything");
        assert_eq!(r["instructions"], "hi");
        assert_eq!(r["ttlMs"], 0);
    }
}
