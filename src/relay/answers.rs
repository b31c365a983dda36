//! The server's answers, watched on their way to the client: list results lose what the
//! caller may not use, and each call's answer closes its audit record. JSON answers are read
//! whole (at most [`MAX_ANSWER`]); SSE answers are read event by event, each at most
//! [`MAX_ANSWER`], and passed on as they come.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::{Context, Op, Read, Relay};
use crate::policy::{Decision, Kind, Policy, Who};

/// Largest answer (JSON) or event (SSE) the relay reads.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// What is still awaited in one exchange's answer.
pub(super) struct Watcher {
    relay: Arc<Relay>,
    who: Who,
    context: Context,
    policy: Option<Arc<Policy>>,
    pending: Vec<Op>,
    lists: Vec<(Value, Kind)>,
    /// A GET stream: list results are known by their shape, not their id.
    by_shape: bool,
    started: Instant,
}

impl Watcher {
    /// Nothing left to look for.
    fn idle(&self) -> bool {
        !self.by_shape && self.pending.is_empty() && !self.filters_lists()
    }

    /// Whether a list result may still come that the policy must filter: an answer not
    /// read then cannot be let through (it could list what the caller may not use).
    fn filters_lists(&self) -> bool {
        self.policy.is_some() && (self.by_shape || !self.lists.is_empty())
    }

    /// An answer or event read for the watcher, or what becomes of it when it cannot be
    /// read as every client reads it: not JSON serde_json reads (a client's reader may still
    /// take it, a lone surrogate for one), or an object in it naming a member twice (a
    /// client's reader may take the other value, src/json_names.rs). Such a text is
    /// withheld while it may hold a list the policy must filter; otherwise one serde_json
    /// cannot read passes as it came, and one with a repeated name is read as serde_json
    /// reads it.
    fn read(&self, text: &[u8]) -> Result<Value, Rewritten> {
        match crate::json_names::read(text) {
            Some(read) if !(read.names_twice && self.filters_lists()) => Ok(read.value),
            _ => Err(self.unreadable()),
        }
    }

    /// What becomes of a text that cannot be read as every client reads it ([`Self::read`]).
    fn unreadable(&self) -> Rewritten {
        if self.filters_lists() {
            Rewritten::Withheld
        } else {
            Rewritten::AsItCame
        }
    }

    /// Looks at one message of the answer; `true` when it was changed.
    fn message(&mut self, m: &mut Value) -> bool {
        let Some(id) = m.get("id").cloned() else {
            return false;
        };
        if m.get("method").is_some() {
            return false;
        }
        if let Some(at) = self.pending.iter().position(|op| op.id == id) {
            let op = self.pending.swap_remove(at);
            let outcome = match (m.get("error"), m.get("result")) {
                (Some(e), _) => format!(
                    "error {}",
                    e.get("code").and_then(Value::as_i64).unwrap_or_default()
                ),
                (None, Some(r)) if r.get("isError").and_then(Value::as_bool) == Some(true) => {
                    "tool_error".into()
                }
                _ => "ok".into(),
            };
            let ms = self.started.elapsed().as_millis() as u64;
            self.relay.record(&self.context, &op, ms, &outcome, None);
            return false;
        }
        let kind = match self.lists.iter().position(|(l, _)| *l == id) {
            Some(at) => Some(self.lists.swap_remove(at).1),
            None if self.by_shape => m.get("result").and_then(shape),
            None => None,
        };
        match (kind, m.get_mut("result")) {
            (Some(kind), Some(result)) => self.filter(kind, result),
            _ => false,
        }
    }

    /// Drops from a list result what the caller may not use; `true` when something went.
    fn filter(&self, kind: Kind, result: &mut Value) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        let (member, key) = match kind {
            Kind::Tool => ("tools", "name"),
            Kind::Prompt => ("prompts", "name"),
            Kind::Resource => ("resources", "uri"),
        };
        let Some(items) = result.get_mut(member).and_then(Value::as_array_mut) else {
            return false;
        };
        if kind == Kind::Tool {
            self.relay.remember(&self.context.key, items);
        }
        let before = items.len();
        items.retain(|item| {
            let name = item.get(key).and_then(Value::as_str).unwrap_or_default();
            let annotations = item
                .get("annotations")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            let annotations = (kind == Kind::Tool).then_some(&annotations);
            !matches!(
                policy.decide(&self.who, kind, name, annotations),
                Decision::Deny(_)
            )
        });
        items.len() != before
    }

    /// Looks at a JSON-RPC payload (one message or a batch of them); `true` when changed.
    fn payload(&mut self, v: &mut Value) -> bool {
        match v {
            Value::Array(items) => items.iter_mut().fold(false, |c, m| self.message(m) | c),
            m => self.message(m),
        }
    }
}

impl Drop for Watcher {
    /// Calls the answer never answered (the stream ended or the client left) are recorded.
    fn drop(&mut self) {
        let ms = self.started.elapsed().as_millis() as u64;
        for op in std::mem::take(&mut self.pending) {
            self.relay.record(&self.context, &op, ms, "no_answer", None);
        }
    }
}

/// What a list result lists, by its shape (for results replayed without their request).
fn shape(result: &Value) -> Option<Kind> {
    if result.get("content").is_some() || result.get("contents").is_some() {
        return None;
    }
    [
        ("tools", Kind::Tool),
        ("prompts", Kind::Prompt),
        ("resources", Kind::Resource),
    ]
    .into_iter()
    .find(|(m, _)| result.get(*m).is_some_and(Value::is_array))
    .map(|(_, k)| k)
}

/// Watches `resp` (the backend's answer to the request `read`).
pub(super) async fn watch(
    relay: Arc<Relay>,
    who: Who,
    context: Context,
    read: Read,
    by_shape: bool,
    started: Instant,
    resp: Response,
) -> Response {
    let policy = relay.policy.as_ref().map(|f| f.current());
    let mut watcher = Watcher {
        relay,
        who,
        context,
        policy,
        pending: read.ops,
        lists: read.lists,
        by_shape,
        started,
    };
    let media = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !resp.status().is_success() || !(media == "application/json" || media == "text/event-stream")
    {
        // No JSON-RPC answer in it (202 for a notification, an HTTP error): the calls'
        // records say what HTTP said.
        let outcome = format!("http {}", resp.status().as_u16());
        let ms = watcher.started.elapsed().as_millis() as u64;
        for op in std::mem::take(&mut watcher.pending) {
            watcher
                .relay
                .record(&watcher.context, &op, ms, &outcome, None);
        }
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if media == "application/json" {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER).await else {
            return crate::error::jsonrpc_error(
                StatusCode::BAD_GATEWAY,
                "the MCP server's answer could not be read whole (at most 16 MiB) to check it",
            );
        };
        let bytes = match rewrite_json(&bytes, &mut watcher) {
            Rewritten::Changed(out) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                Bytes::from(out)
            }
            Rewritten::AsItCame => bytes,
            Rewritten::Withheld => return unreadable(),
        };
        return Response::from_parts(parts, Body::from(bytes));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(events(body, watcher)))
}

/// The SSE body, event by event through the watcher.
fn events(
    body: Body,
    watcher: Watcher,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send {
    struct State {
        inner: axum::body::BodyDataStream,
        buf: Vec<u8>,
        /// How much of `buf` is known to hold no event's end (so a long event arriving in
        /// many chunks is scanned once, not once per chunk).
        scanned: usize,
        watcher: Watcher,
        done: bool,
    }
    let state = State {
        inner: body.into_data_stream(),
        buf: Vec::new(),
        scanned: 0,
        watcher,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.watcher.idle() && !st.buf.is_empty() {
                // Nothing more to look for: the rest goes as it comes.
                st.scanned = 0;
                return Some((Ok(Bytes::from(std::mem::take(&mut st.buf))), st));
            }
            // An end straddling the last scan starts at most 3 bytes before its end.
            let from = st.scanned.saturating_sub(3).min(st.buf.len());
            if let Some(end) = event_end(&st.buf[from..]).map(|e| e + from) {
                st.scanned = 0;
                let event: Vec<u8> = st.buf.drain(..end).collect();
                let out = match rewrite(&event, &mut st.watcher) {
                    Rewritten::Changed(out) => out,
                    Rewritten::AsItCame => event,
                    Rewritten::Withheld => {
                        tracing::warn!(
                            "an event of the MCP server could not be read to check it against the policy; dropped"
                        );
                        continue;
                    }
                };
                return Some((Ok(Bytes::from(out)), st));
            }
            if st.done {
                if st.buf.is_empty() {
                    return None;
                }
                st.scanned = 0;
                return Some((Ok(Bytes::from(std::mem::take(&mut st.buf))), st));
            }
            if st.buf.len() > MAX_ANSWER {
                st.done = true;
                st.buf.clear();
                return Some((
                    Err(axum::Error::new(
                        "an event of the MCP server is over 16 MiB",
                    )),
                    st,
                ));
            }
            match st.inner.next().await {
                Some(Ok(chunk)) if st.watcher.idle() && st.buf.is_empty() => {
                    return Some((Ok(chunk), st));
                }
                Some(Ok(chunk)) => {
                    st.scanned = st.buf.len();
                    st.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => st.done = true,
            }
        }
    })
}

/// Where the first complete event of `buf` ends (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to a JSON answer that could not be read to check it against the policy.
fn unreadable() -> Response {
    crate::error::jsonrpc_error(
        StatusCode::BAD_GATEWAY,
        "the MCP server's answer could not be read to check it against the policy",
    )
}

/// What became of a JSON answer.
fn rewrite_json(answer: &[u8], watcher: &mut Watcher) -> Rewritten {
    let mut v = match watcher.read(answer) {
        Ok(v) => v,
        Err(unread) => return unread,
    };
    if watcher.payload(&mut v) {
        Rewritten::Changed(v.to_string().into_bytes())
    } else {
        Rewritten::AsItCame
    }
}

/// What became of one SSE event (or of a JSON answer, [`rewrite_json`]).
enum Rewritten {
    AsItCame,
    /// The watcher changed its data: the event as it goes on.
    Changed(Vec<u8>),
    /// Not passed on: it could not be read as every client reads it ([`Watcher::read`]).
    Withheld,
}

fn rewrite(event: &[u8], watcher: &mut Watcher) -> Rewritten {
    let Ok(text) = std::str::from_utf8(event) else {
        return watcher.unreadable();
    };
    let mut data = String::new();
    let mut other = Vec::new();
    let mut has_data = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        match line.strip_prefix("data") {
            Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                let value = rest.strip_prefix(':').unwrap_or(rest);
                if has_data {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
                has_data = true;
            }
            _ => other.push(line),
        }
    }
    // Data that is not a JSON object or array (the old transport's `endpoint` event) holds
    // no message a client reads as one.
    let json_like = data.trim_start().starts_with(['{', '[']);
    if !has_data || !json_like {
        return Rewritten::AsItCame;
    }
    let mut v = match watcher.read(data.as_bytes()) {
        Ok(v) => v,
        Err(unread) => return unread,
    };
    if !watcher.payload(&mut v) {
        return Rewritten::AsItCame;
    }
    let mut out = String::with_capacity(event.len());
    for line in other {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
    Rewritten::Changed(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(event_end(b"id: 3\r\ndata: 1\r\n\r\n"), Some(18));
        assert_eq!(event_end(b"data: 1\n"), None);
    }

    /// An SSE answer cut into one-byte chunks: the list event is found across them, filtered,
    /// and everything around it passes unchanged.
    /// A watcher awaiting the tools list of request 7 under a policy that hides
    /// `secret_*`, and the directory its policy file lives in.
    fn watching_list_7() -> (tempfile::TempDir, Watcher) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[[rule]]\nusers = [\"*\"]\ntools = [\"secret_*\"]\neffect = \"deny\"\n[[rule]]\nusers = [\"*\"]\neffect = \"allow\"\n",
        )
        .unwrap();
        let policy = crate::policy::PolicyFile::load(&path).unwrap();
        let relay = Relay::new(
            Some(policy.clone()),
            None,
            crate::clock::Clock::system(),
            Default::default(),
        )
        .unwrap();
        let watcher = Watcher {
            relay,
            who: Who::default(),
            context: Context {
                who: "password:admin".into(),
                client_id: "c".into(),
                client_name: None,
                session: None,
                era: "2025",
                server: None,
                key: "k".into(),
            },
            policy: Some(policy.current()),
            pending: Vec::new(),
            lists: vec![(serde_json::json!(7), Kind::Tool)],
            by_shape: false,
            started: Instant::now(),
        };
        (dir, watcher)
    }

    /// What `events` passes on of `body`, cut into one-byte chunks.
    async fn passed(body: &[u8], watcher: Watcher) -> String {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            body.iter().map(|b| Ok(Bytes::from(vec![*b]))).collect();
        let out: Vec<Bytes> = events(
            Body::from_stream(futures_util::stream::iter(chunks)),
            watcher,
        )
        .map(|c| c.unwrap())
        .collect()
        .await;
        String::from_utf8(out.concat()).unwrap()
    }

    #[tokio::test]
    async fn an_sse_list_answer_is_filtered_however_it_is_cut() {
        use serde_json::json;
        let (_dir, watcher) = watching_list_7();
        let list = json!({"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo"},{"name":"secret_sauce"}]}});
        let body = format!(
            ": comment\n\nevent: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}}\r\n\r\nid: 3\nevent: message\ndata: {list}\n\ndata: after\n\n"
        );
        let out = passed(body.as_bytes(), watcher).await;
        let filtered = json!({"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo"}]}});
        assert_eq!(
            out,
            format!(
                ": comment\n\nevent: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}}\r\n\r\nid: 3\nevent: message\ndata: {filtered}\n\ndata: after\n\n"
            )
        );
    }

    /// A list event the policy cannot read (a lone surrogate, which `JSON.parse` takes) is
    /// not passed on, and neither is one that is not UTF-8, nor one whose `tools` is named
    /// twice (a reader that takes the first sees the secret); what follows still is.
    #[tokio::test]
    async fn a_list_event_that_cannot_be_read_is_not_passed_on() {
        let surrogate = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret_sauce","description":"\ud800"}]}}"#;
        let not_utf8 =
            b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"tools\":[{\"name\":\"secret_\xff\"}]}}";
        for data in [&surrogate[..], &not_utf8[..], TWICE] {
            let (_dir, watcher) = watching_list_7();
            let body = [&b": hi\n\ndata: "[..], data, b"\n\n"].concat();
            assert_eq!(passed(&body, watcher).await, ": hi\n\n");
        }
    }

    /// A JSON list answer is filtered; one the policy cannot read is not passed on.
    #[test]
    fn a_json_list_answer_is_filtered_or_refused() {
        let (_dir, mut watcher) = watching_list_7();
        let list = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"echo"},{"name":"secret_sauce"}]}}"#;
        let Rewritten::Changed(out) = rewrite_json(list, &mut watcher) else {
            panic!("not filtered");
        };
        assert!(!String::from_utf8(out).unwrap().contains("secret_sauce"));
        let (_dir, mut watcher) = watching_list_7();
        let surrogate =
            br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret_\ud800"}]}}"#;
        assert!(matches!(
            rewrite_json(surrogate, &mut watcher),
            Rewritten::Withheld
        ));
        assert!(watcher.filters_lists());
        let (_dir, mut watcher) = watching_list_7();
        assert!(matches!(
            rewrite_json(TWICE, &mut watcher),
            Rewritten::Withheld
        ));
    }

    /// A list answer whose `tools` is named twice: serde_json reads the last, clean one.
    const TWICE: &[u8] = br#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret_sauce"}],"tools":[{"name":"echo"}]}}"#;

    #[test]
    fn list_results_are_known_by_shape() {
        use serde_json::json;
        assert_eq!(shape(&json!({"tools": []})), Some(Kind::Tool));
        assert_eq!(
            shape(&json!({"prompts": [], "nextCursor": "x"})),
            Some(Kind::Prompt)
        );
        assert_eq!(shape(&json!({"resources": []})), Some(Kind::Resource));
        assert_eq!(
            shape(&json!({"content": [], "tools": []})),
            None,
            "a call's result"
        );
        assert_eq!(shape(&json!({"tools": "x"})), None);
    }
}
