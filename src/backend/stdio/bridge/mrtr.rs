//! Multi round-trip requests (MCP 2026-07-28, basic/patterns/mrtr) for legacy children.
//!
//! A 2025 child asks its client things (`sampling/createMessage`, `elicitation/create`,
//! `roots/list`) as requests of its own while it serves a call. A modern client cannot
//! receive those: it gets an `InputRequiredResult` instead, and retries its call with the
//! answers. So when the child asks during a modern `tools/call`, `prompts/get` or
//! `resources/read` whose client declared the capability, the bridge:
//!
//! - keeps the child's call waiting (a *held call*: the request's session stays open), and
//!   answers the HTTP request with `inputRequests` (the child's question) and a
//!   `requestState` sealed with the store's key;
//! - on the retry, opens the state and checks it: not altered, not expired, this user's,
//!   this replica's, the same method and parameters, and not used before (a held call is
//!   taken once); then gives the child the client's answer and streams the rest of the
//!   original call as the retry's response.
//!
//! Anything else the child asks is answered with an error (the client declared no such
//! capability, or the call cannot carry questions). Held calls are bounded per user and in
//! all, and end (cancelled at the child) after [`HOLD_FOR`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::backend::stdio::session::{Session, StreamTx};
use crate::store::SecretBox;

/// How long a held call waits for the client's retry.
pub const HOLD_FOR: Duration = Duration::from_secs(300);

/// Held calls per user, and in all.
const MAX_HELD_PER_USER: usize = 16;
const MAX_HELD: usize = 1024;

/// The longest `requestState` opened.
const MAX_STATE_LEN: usize = 4096;

/// The associated data of every sealed state, so no other sealed value of ours opens as one.
const STATE_AAD: &[u8] = b"mcp-auth-proxy 2026-07-28 requestState";

/// The key of the one input request in an `InputRequiredResult` of ours.
pub(super) const INPUT_KEY: &str = "input";

/// The methods that may answer with an `InputRequiredResult`.
pub(super) fn may_ask(method: &str) -> bool {
    matches!(method, "tools/call" | "prompts/get" | "resources/read")
}

/// The client capability a child's question needs (`None`: not one a client answers).
pub(super) fn capability_for(question: &str) -> Option<&'static str> {
    match question {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// Whether a child asks `question` for the call in flight. Sampling and elicitation are
/// asked by a tool, prompt or resource as it runs. `roots/list` is asked for the connection:
/// a server of the 2025 revisions asks it once initialized and whenever the roots change
/// (specification client/roots), so on a child that serves many requests it arrives while
/// any of them is in flight, and is not that call's need.
pub(super) fn asked_for_the_call(question: &str) -> bool {
    question != "roots/list"
}

/// What a retry must match: the method and a digest of its parameters, without the
/// fields MRTR adds (`_meta`, `inputResponses`, `requestState`), keys sorted.
pub(super) fn call_digest(method: &str, params: Option<&Value>) -> String {
    let mut params = params.cloned().unwrap_or(Value::Null);
    if let Some(p) = params.as_object_mut() {
        for added in ["_meta", "inputResponses", "requestState"] {
            p.remove(added);
        }
    }
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(canonical(&params).as_bytes());
    hex::encode(h.finalize())
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A child's call waiting for its client's answer.
pub(super) struct Held {
    /// The call's session: closing it cancels the call at the child.
    pub session: Arc<Session>,
    /// Where the rest of the call goes: re-attached to the retry's response.
    pub stream: StreamTx,
    /// The child's question: its id (JSON text) and what the client was asked.
    pub asked_id: String,
    pub question: Value,
    owner: String,
    until: tokio::time::Instant,
}

/// What a sealed `requestState` says.
#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    /// The held call.
    h: String,
    /// The replica holding it.
    r: String,
    /// The user.
    s: String,
    /// The call's digest.
    d: String,
    /// Unix seconds after which it is refused.
    e: u64,
}

/// Why a retry's `requestState` is refused (each a JSON-RPC "Invalid params" to the client).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateRefusal {
    #[error("requestState was altered or was not made by this server")]
    Unreadable,
    #[error("requestState has expired: call again without it")]
    Expired,
    #[error("requestState belongs to another user")]
    OtherUser,
    #[error("requestState belongs to another request (its method or parameters differ)")]
    OtherRequest,
    #[error(
        "requestState is held by replica {0}: the retry must reach that replica (README, \"Running several replicas\"); call again without it to start over"
    )]
    OtherReplica(String),
    #[error("requestState was already used, or its call has ended: call again without it")]
    Used,
    #[error("too many calls wait for their clients' answers; try again shortly")]
    Full,
}

/// Every held call of this process.
pub(super) struct HeldCalls {
    calls: Mutex<HashMap<String, Held>>,
    sealer: SecretBox,
    replica: String,
}

impl HeldCalls {
    pub(super) fn new(sealer: SecretBox, replica: String) -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
            sealer,
            replica,
        }
    }

    /// Holds a call; returns its sealed `requestState`.
    pub(super) fn hold(
        &self,
        session: Arc<Session>,
        stream: StreamTx,
        asked_id: String,
        question: Value,
        digest: String,
        now_unix: u64,
    ) -> Result<String, StateRefusal> {
        let owner = session.owner().to_string();
        let mut calls = self.calls.lock().map_err(|_| StateRefusal::Full)?;
        end_expired(&mut calls);
        let now = tokio::time::Instant::now();
        let mine = calls.values().filter(|h| h.owner == owner).count();
        if mine >= MAX_HELD_PER_USER || calls.len() >= MAX_HELD {
            return Err(StateRefusal::Full);
        }
        let id = crate::tokens::generate_id();
        let state = State {
            h: id.clone(),
            r: self.replica.clone(),
            s: owner.clone(),
            d: digest.clone(),
            e: now_unix + HOLD_FOR.as_secs(),
        };
        let plain = serde_json::to_vec(&state).map_err(|_| StateRefusal::Full)?;
        let sealed = self
            .sealer
            .seal(STATE_AAD, &plain)
            .map_err(|_| StateRefusal::Full)?;
        calls.insert(
            id,
            Held {
                session,
                stream,
                asked_id,
                question,
                owner,
                until: now + HOLD_FOR,
            },
        );
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Takes the call a retry's `requestState` names, once.
    pub(super) fn take(
        &self,
        request_state: &str,
        subject: &str,
        digest: &str,
        now_unix: u64,
    ) -> Result<Held, StateRefusal> {
        if request_state.len() > MAX_STATE_LEN {
            return Err(StateRefusal::Unreadable);
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(request_state)
            .map_err(|_| StateRefusal::Unreadable)?;
        let plain = self
            .sealer
            .open(STATE_AAD, &sealed)
            .map_err(|_| StateRefusal::Unreadable)?;
        let state: State = serde_json::from_slice(&plain).map_err(|_| StateRefusal::Unreadable)?;
        if state.r != self.replica {
            return Err(StateRefusal::OtherReplica(state.r));
        }
        if state.s != subject {
            return Err(StateRefusal::OtherUser);
        }
        if state.e < now_unix {
            return Err(StateRefusal::Expired);
        }
        if state.d != digest {
            return Err(StateRefusal::OtherRequest);
        }
        let mut calls = self.calls.lock().map_err(|_| StateRefusal::Used)?;
        let held = calls.remove(&state.h).ok_or(StateRefusal::Used)?;
        if held.session.is_closed() {
            return Err(StateRefusal::Used);
        }
        Ok(held)
    }

    /// Ends the calls whose clients did not come back in time.
    pub(super) fn sweep(&self) {
        if let Ok(mut calls) = self.calls.lock() {
            end_expired(&mut calls);
        }
    }
}

/// Ends (cancels at the child) and forgets the calls whose clients did not come back in
/// time.
fn end_expired(calls: &mut HashMap<String, Held>) {
    let now = tokio::time::Instant::now();
    calls.retain(|_, h| {
        let live = h.until > now;
        if !live {
            h.session
                .close("the client did not answer the server's question in time");
        }
        live
    });
}

/// The `InputRequiredResult` answering request `id` with the child's question.
pub(super) fn input_required(id: &Value, question: &Value, request_state: &str) -> Bytes {
    Bytes::from(
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "resultType": "input_required",
                "inputRequests": { INPUT_KEY: question },
                "requestState": request_state,
            },
        })
        .to_string(),
    )
}

/// `MissingRequiredClientCapability` (specification basic/index, "Error Codes").
pub(super) const MISSING_CAPABILITY: i64 = -32021;

/// The error answering request `id` whose call needs `capability`, which its client did not
/// declare.
pub(super) fn missing_capability(id: &Value, capability: &str) -> Bytes {
    Bytes::from(
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": MISSING_CAPABILITY,
                "message": format!("Missing required client capability: {capability}"),
                "data": { "requiredCapabilities": { capability: {} } },
            },
        })
        .to_string(),
    )
}

/// The child's question as an input request: its method and parameters, nothing else.
pub(super) fn question_of(asked: &Value) -> Value {
    let mut q = json!({ "method": asked.get("method").cloned().unwrap_or(Value::Null) });
    if let Some(params) = asked.get("params") {
        q["params"] = params.clone();
    }
    q
}

/// The answer the child gets for request `asked_id`: the client's result, or an error.
pub(super) fn answer_for_child(asked_id: &str, result: Result<&Value, &str>) -> Bytes {
    let id: Value = serde_json::from_str(asked_id).unwrap_or(Value::Null);
    let body = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(why) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": why}}),
    };
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_ignores_what_a_retry_adds_and_key_order() {
        let first = json!({"name": "t", "arguments": {"a": 1, "b": [1, 2]}, "_meta": {"x": 1}});
        let retry = json!({"arguments": {"b": [1, 2], "a": 1}, "name": "t",
            "inputResponses": {"input": {}}, "requestState": "s", "_meta": {"y": 2}});
        assert_eq!(
            call_digest("tools/call", Some(&first)),
            call_digest("tools/call", Some(&retry))
        );
        let other = json!({"name": "t", "arguments": {"a": 2, "b": [1, 2]}});
        assert_ne!(
            call_digest("tools/call", Some(&first)),
            call_digest("tools/call", Some(&other))
        );
        assert_ne!(
            call_digest("tools/call", Some(&first)),
            call_digest("prompts/get", Some(&first))
        );
    }

    fn sealed(calls: &HeldCalls, state: &State) -> String {
        let sealed = calls
            .sealer
            .seal(STATE_AAD, &serde_json::to_vec(state).unwrap())
            .unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
    }

    #[test]
    fn a_request_state_is_refused_unless_it_is_this_users_this_calls_and_fresh() {
        let calls = HeldCalls::new(SecretBox::new(&[7; 32]), "replica-a".into());
        let good = State {
            h: "hold".into(),
            r: "replica-a".into(),
            s: "password:alice".into(),
            d: "digest".into(),
            e: 1_000,
        };
        let take = |state: &str, subject: &str, digest: &str, now: u64| {
            calls.take(state, subject, digest, now).err()
        };
        let state = sealed(&calls, &good);
        // Valid in every way, but no call is held under it: taken already, or ended.
        assert_eq!(
            take(&state, "password:alice", "digest", 999),
            Some(StateRefusal::Used)
        );
        assert_eq!(
            take(&state, "password:bob", "digest", 999),
            Some(StateRefusal::OtherUser)
        );
        assert_eq!(
            take(&state, "password:alice", "other", 999),
            Some(StateRefusal::OtherRequest)
        );
        assert_eq!(
            take(&state, "password:alice", "digest", 1_001),
            Some(StateRefusal::Expired)
        );
        // One character changed, or a state sealed with another key, does not open.
        let mut tampered = state.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            take(&tampered, "password:alice", "digest", 999),
            Some(StateRefusal::Unreadable)
        );
        let foreign = HeldCalls::new(SecretBox::new(&[8; 32]), "replica-a".into());
        assert_eq!(
            take(&sealed(&foreign, &good), "password:alice", "digest", 999),
            Some(StateRefusal::Unreadable)
        );
        assert_eq!(
            take("not base64!", "password:alice", "digest", 999),
            Some(StateRefusal::Unreadable)
        );
        let elsewhere = sealed(
            &calls,
            &State {
                r: "replica-b".into(),
                ..good
            },
        );
        assert_eq!(
            take(&elsewhere, "password:alice", "digest", 999),
            Some(StateRefusal::OtherReplica("replica-b".into()))
        );
    }

    #[test]
    fn only_the_three_client_features_are_asked() {
        assert_eq!(capability_for("sampling/createMessage"), Some("sampling"));
        assert_eq!(capability_for("elicitation/create"), Some("elicitation"));
        assert_eq!(capability_for("roots/list"), Some("roots"));
        assert!(!asked_for_the_call("roots/list"));
        assert!(
            asked_for_the_call("elicitation/create")
                && asked_for_the_call("sampling/createMessage")
        );
        assert_eq!(capability_for("ping"), None);
        assert!(may_ask("tools/call") && !may_ask("tools/list"));
    }
}
