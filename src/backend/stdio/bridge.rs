//! Streamable HTTP (MCP transports, 2025-06-18 / 2025-11-25) in front of stdio children;
//! a POST of MCP 2026-07-28 (stateless, no session) goes to [`modern`] instead.
//!
//! `POST` carries one client message: requests are answered as an SSE stream (when the client
//! accepts it) that ends with the response, or as JSON; notifications and responses get 202.
//! `GET` opens the session's stream for server-initiated messages. `DELETE` ends the session.
//! Sessions are created by `initialize`, identified by a 128-bit random `Mcp-Session-Id`, and
//! belong to the user who created them: another user gets 404, as for an unknown id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::child::ChildSpec;
use super::framing::{Kind, Message};
use super::session::{Child, CrashTracker, Init, InitTurn, Session};
use super::stream::parse_event_id;
use crate::backend::http::MCP_SESSION_ID;
use crate::error::jsonrpc_error;
use crate::gate::Caller;

pub mod legacy;
mod listen;
pub mod modern;
mod mrtr;
pub mod refusal;
mod sessions;
mod stateless;

use self::refusal::Refusal;

/// Protocol versions a client may name in `MCP-Protocol-Version`.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// A ceiling on a client message; the router's `--max-body` applies first.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Queue of one HTTP stream.
const STREAM_QUEUE: usize = 64;

/// Queue of a GET stream: room for the whole backlog it starts with, and then some.
pub const GET_STREAM_QUEUE: usize = super::session::BACKLOG + STREAM_QUEUE;

/// How long a new session of a shared child waits for the first session's `initialize`.
const SHARED_INIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why no child could be started now (readiness).
#[derive(Debug, thiserror::Error)]
pub enum NotStartable {
    #[error("the MCP server keeps exiting right after it starts; next try in {retry_in_secs} s")]
    CrashLooping { retry_in_secs: u64 },
    #[error("the command {0:?} is not found")]
    NotFound(String),
}

/// The stdio backend: a child per session, or one shared by all (`--stdio-mode shared`).
pub struct StdioBackend {
    spec: ChildSpec,
    max_sessions: crate::config::SessionLimits,
    idle_timeout: std::time::Duration,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    crashes: Arc<CrashTracker>,
    /// `--stdio-warm-spare`: a started child waiting for the next session (shared mode:
    /// the shared child is started before the first session).
    warm_spare: bool,
    /// Per-session mode: the warm spare. Shared mode: the child every session uses.
    spare: Mutex<Option<Arc<Child>>>,
    shared: bool,
    /// `--stdio-identity-env`: the user's identity in their child's environment.
    identity_env: crate::backend::identity::IdentityEnv,
    next_child: std::sync::atomic::AtomicU64,
    next_session: std::sync::atomic::AtomicU64,
    /// With replicas: `<replica id>.` before every session id, so a load balancer can send a
    /// session's requests to the replica that holds its child (README, "Running several
    /// replicas").
    session_prefix: String,
    /// The caching hints on modern results.
    cache_hints: modern::CacheHints,
    /// This replica's id ("" alone), sealed into the state of held calls.
    replica: String,
    /// Modern calls waiting for their clients' answers (none without a key to seal with).
    held: Option<Arc<mrtr::HeldCalls>>,
    /// Open `subscriptions/listen` streams.
    listeners: listen::Listeners,
    /// Whether the stdio server speaks 2026-07-28 itself, once known.
    child_era: std::sync::OnceLock<stateless::ChildEra>,
    /// Held while the first child is asked that.
    probing: tokio::sync::Mutex<()>,
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

impl StdioBackend {
    /// The backend; with `warm_spare`, the first (spare or shared) child starts now.
    pub fn new(
        spec: ChildSpec,
        max_sessions: crate::config::SessionLimits,
        idle_timeout: std::time::Duration,
        warm_spare: bool,
        shared: bool,
        identity_env: crate::backend::identity::IdentityEnv,
        children: crate::metrics::ChildMetrics,
    ) -> Self {
        let backend = Self {
            spec,
            max_sessions,
            idle_timeout,
            sessions: Mutex::new(HashMap::new()),
            crashes: Arc::new(CrashTracker::with_metrics(children)),
            warm_spare,
            spare: Mutex::new(None),
            shared,
            identity_env,
            next_child: std::sync::atomic::AtomicU64::new(1),
            next_session: std::sync::atomic::AtomicU64::new(1),
            session_prefix: String::new(),
            cache_hints: modern::CacheHints::default(),
            replica: String::new(),
            held: None,
            listeners: listen::Listeners::default(),
            child_era: std::sync::OnceLock::new(),
            probing: tokio::sync::Mutex::new(()),
        };
        backend.refill_spare();
        backend
    }

    /// Names the replica in every session id from now on.
    pub fn naming_replica(mut self, replica: Option<&str>) -> Self {
        self.session_prefix = replica.map(|r| format!("{r}.")).unwrap_or_default();
        self.replica = replica.unwrap_or_default().to_string();
        self
    }

    /// Relays the questions of children to modern clients (multi round-trip requests), with
    /// their state sealed by `sealer`. After [`Self::naming_replica`].
    pub fn holding_calls(mut self, sealer: crate::store::SecretBox) -> Self {
        self.held = Some(Arc::new(mrtr::HeldCalls::new(sealer, self.replica.clone())));
        self
    }

    /// `ttl_ms` in the caching hints of modern results (`--stdio-cache-ttl`).
    pub fn with_cache_ttl(mut self, ttl_ms: u64) -> Self {
        self.cache_hints = modern::CacheHints { ttl_ms };
        self
    }

    /// Handles a request to the MCP path.
    pub async fn handle(&self, caller: &Caller, req: Request) -> Result<Response, Refusal> {
        let session = req.headers().contains_key(MCP_SESSION_ID);
        match *req.method() {
            Method::POST => self.post(caller, req).await,
            // Without a session, GET and DELETE are of no era: 2026-07-28 has neither.
            Method::GET | Method::DELETE if !session => Err(Refusal::Method("POST")),
            Method::GET => {
                legacy_version(req.headers())?;
                self.get(caller, req.headers())
            }
            Method::DELETE => {
                legacy_version(req.headers())?;
                self.delete(caller, req.headers())
            }
            _ => Err(Refusal::Method("GET, POST, DELETE")),
        }
    }

    async fn post(&self, caller: &Caller, req: Request) -> Result<Response, Refusal> {
        let wants_sse = accepts_sse(req.headers());
        let (parts, body) = req.into_parts();
        let headers = parts.headers;
        let msg = read_message(body).await?;
        if !headers.contains_key(MCP_SESSION_ID)
            && msg.kind != Kind::Batch
            && let Some(request) = modern::read(&headers, &msg)
        {
            return self.modern(caller, &msg, request?, wants_sse).await;
        }
        legacy_version(&headers)?;
        if msg.kind == Kind::Batch {
            return self.batch(caller, &headers, msg, wants_sse).await;
        }

        let (session, created) = if headers.contains_key(MCP_SESSION_ID) {
            (self.session(caller, &headers)?, false)
        } else if msg.kind == Kind::Request && msg.method.as_deref() == Some("initialize") {
            (self.create(caller)?, true)
        } else {
            return Err(Refusal::Rpc(
                StatusCode::BAD_REQUEST,
                "no session: send initialize first, then use its Mcp-Session-Id",
            ));
        };

        if msg.kind != Kind::Request {
            return match session.send(&msg, None).await {
                Ok(()) => Ok(StatusCode::ACCEPTED.into_response()),
                Err(why) => Err(Refusal::Rpc(StatusCode::NOT_FOUND, why)),
            };
        }

        let id = msg.id.clone().unwrap_or_default();
        if created && let Some(answer) = self.shared_initialize(&session, &id).await {
            return answer;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        let stream = session.new_stream(wants_sse && !created, tx);
        if let Err(why) = session.send(&msg, Some(stream)).await {
            return Err(Refusal::Rpc(StatusCode::BAD_GATEWAY, why));
        }
        let mut resp = if wants_sse && !created {
            post_sse(rx).await
        } else {
            // initialize is answered as JSON: its answer must carry the session id header,
            // and nothing else can happen before it.
            self.json_answer(&session, &id, rx, created).await
        };
        if created {
            if session.is_closed() {
                // The child died before answering initialize: no session to hand out.
                return Err(Refusal::Rpc(
                    StatusCode::BAD_GATEWAY,
                    "the MCP server exited while starting",
                ));
            }
            if let Ok(v) = HeaderValue::from_str(session.mcp_id()) {
                resp.headers_mut().insert(MCP_SESSION_ID, v);
            }
        }
        Ok(resp)
    }

    /// Shared mode: a new session's `initialize` is answered with the result the child gave
    /// the first session (`None`: this one goes to the child). The answer carries the new
    /// session's id header.
    async fn shared_initialize(
        &self,
        session: &Arc<Session>,
        id: &str,
    ) -> Option<Result<Response, Refusal>> {
        let body = match self.shared_init_answer(session, id).await? {
            Ok(body) => body,
            Err(refused) => return Some(Err(refused)),
        };
        let mut r = json_response(StatusCode::OK, body);
        if let Ok(v) = HeaderValue::from_str(session.mcp_id()) {
            r.headers_mut().insert(MCP_SESSION_ID, v);
        }
        Some(Ok(r))
    }

    /// The JSON-RPC answer to a shared-mode session's `initialize` from the cached result
    /// (`None`: this session's `initialize` goes to the child).
    async fn shared_init_answer(
        &self,
        session: &Arc<Session>,
        id: &str,
    ) -> Option<Result<Bytes, Refusal>> {
        let result = loop {
            match session.child().begin_initialize() {
                InitTurn::Send => return None,
                InitTurn::Cached(result) => break result,
                InitTurn::Wait(mut rx) => {
                    let waited =
                        tokio::time::timeout(SHARED_INIT_WAIT, rx.wait_for(|i| *i != Init::Sent))
                            .await;
                    if !matches!(waited, Ok(Ok(_))) || session.is_closed() {
                        self.forget(session, "the MCP server did not finish starting");
                        return Some(Err(Refusal::Rpc(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the MCP server did not finish starting",
                        )));
                    }
                }
            }
        };
        let version = serde_json::from_slice::<Value>(&result).ok().and_then(|v| {
            v.get("protocolVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        if let Ok(mut pv) = session.protocol_version.lock() {
            *pv = version;
        }
        let mut body = Vec::with_capacity(result.len() + id.len() + 32);
        body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(br#","result":"#);
        body.extend_from_slice(&result);
        body.push(b'}');
        Some(Ok(Bytes::from(body)))
    }

    /// A JSON-RPC batch: only clients of protocol 2025-03-26 may send one (later revisions
    /// removed batching), and never with `initialize`.
    async fn batch(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        batch: Message,
        wants_sse: bool,
    ) -> Result<Response, Refusal> {
        let session = self.session(caller, headers)?;
        let version = headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| session.protocol_version.lock().ok().and_then(|v| v.clone()))
            .unwrap_or_else(|| "2025-03-26".to_string());
        if version != "2025-03-26" {
            return Err(Refusal::Rpc(
                StatusCode::BAD_REQUEST,
                "JSON-RPC batches are not allowed after protocol 2025-03-26",
            ));
        }
        let Ok(items) = serde_json::from_slice::<Vec<Box<serde_json::value::RawValue>>>(&batch.raw)
        else {
            return Err(Refusal::Parse);
        };
        let Some(messages) = items
            .iter()
            .map(|i| Message::parse(Bytes::copy_from_slice(i.get().as_bytes())))
            .collect::<Option<Vec<_>>>()
        else {
            return Err(Refusal::Rpc(
                StatusCode::BAD_REQUEST,
                "every batch element must be a JSON-RPC message",
            ));
        };
        if messages
            .iter()
            .any(|m| m.kind == Kind::Batch || m.method.as_deref() == Some("initialize"))
        {
            return Err(Refusal::Rpc(
                StatusCode::BAD_REQUEST,
                "initialize and nested batches cannot be batched",
            ));
        }
        let ids: Vec<String> = messages
            .iter()
            .filter(|m| m.kind == Kind::Request)
            .filter_map(|m| m.id.clone())
            .collect();
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        let shared = session.new_stream(wants_sse, tx);
        for m in &messages {
            let stream = (m.kind == Kind::Request).then(|| shared.clone());
            if let Err(why) = session.send(m, stream).await {
                return Err(Refusal::Rpc(StatusCode::BAD_GATEWAY, why));
            }
        }
        drop(shared);
        if ids.is_empty() {
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        if wants_sse {
            return Ok(post_sse(rx).await);
        }
        Ok(self.json_batch_answer(&session, ids, rx).await)
    }

    /// Collects the responses to a batch's requests into one JSON array.
    async fn json_batch_answer(
        &self,
        session: &Session,
        mut ids: Vec<String>,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> Response {
        let mut out = Vec::from(&b"["[..]);
        while !ids.is_empty() {
            let Some(raw) = rx.recv().await else { break };
            match Message::parse(raw.clone()) {
                Some(m)
                    if m.kind == Kind::Response
                        && m.id.as_ref().is_some_and(|id| ids.contains(id)) =>
                {
                    ids.retain(|id| Some(id) != m.id.as_ref());
                    if out.len() > 1 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&raw);
                }
                _ => session.to_get_stream(raw),
            }
        }
        out.push(b']');
        json_response(StatusCode::OK, out)
    }

    /// Waits for the response; anything else the child says meanwhile goes to the GET stream.
    async fn json_answer(
        &self,
        session: &Session,
        id: &str,
        mut rx: mpsc::Receiver<Bytes>,
        initialize: bool,
    ) -> Response {
        while let Some(raw) = rx.recv().await {
            let Some(m) = Message::parse(raw.clone()) else {
                continue;
            };
            if m.kind == Kind::Response && m.id.as_deref() == Some(id) {
                if initialize {
                    let version = serde_json::from_slice::<Value>(&raw).ok().and_then(|v| {
                        v.pointer("/result/protocolVersion")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    });
                    if let Ok(mut pv) = session.protocol_version.lock() {
                        *pv = version;
                    }
                }
                return json_response(StatusCode::OK, raw);
            }
            session.to_get_stream(raw);
        }
        jsonrpc_error(
            StatusCode::BAD_GATEWAY,
            "the MCP server ended without answering",
        )
    }

    fn get(&self, caller: &Caller, headers: &HeaderMap) -> Result<Response, Refusal> {
        if !accepts_sse(headers) {
            return Err(Refusal::Rpc(
                StatusCode::NOT_ACCEPTABLE,
                "GET needs Accept: text/event-stream",
            ));
        }
        let session = self.session(caller, headers)?;
        let (tx, rx) = mpsc::channel::<Bytes>(GET_STREAM_QUEUE);
        // Resumption: `Last-Event-ID` names a stream of this session and the last event
        // the client saw; an unknown id just opens the GET stream.
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_event_id);
        match resume {
            Some((no, after)) if session.resume(no, after, tx.clone()) => {}
            _ => session.open_get_stream(tx),
        }
        Ok(sse_response(None, rx, ()))
    }

    fn delete(&self, caller: &Caller, headers: &HeaderMap) -> Result<Response, Refusal> {
        let session = self.session(caller, headers)?;
        session.close("the session was ended by the client");
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(session.mcp_id());
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// A JSON answer (a JSON-RPC message the bridge already holds as bytes).
pub(super) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A legacy request's `MCP-Protocol-Version`, when it gives one, must be a legacy version.
fn legacy_version(headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get("mcp-protocol-version") {
        Some(v)
            if !v
                .to_str()
                .is_ok_and(|v| SUPPORTED_VERSIONS.contains(&v.trim())) =>
        {
            Err(Refusal::Rpc(
                StatusCode::BAD_REQUEST,
                "unsupported MCP-Protocol-Version",
            ))
        }
        _ => Ok(()),
    }
}

/// A POST's SSE answer: the events arriving on `rx` (framed by the stream), ending when the
/// stream lets go of its sender.
///
/// Its head waits for the first event, as the stateless path's answer waits for its first
/// message (`stateless::respond`): a call answered at once then leaves in one write (head,
/// event and the body's end), where a head sent ahead of the event went out alone, a
/// second write of the answer and a second wake-up of the client per call (BENCHMARKS.md,
/// "one write per answer"). A stream that ends before any event is the child gone.
async fn post_sse(mut rx: mpsc::Receiver<Bytes>) -> Response {
    match rx.recv().await {
        Some(first) => sse_response(Some(first), rx, ()),
        None => jsonrpc_error(
            StatusCode::BAD_GATEWAY,
            "the MCP server ended without answering",
        ),
    }
}

/// An SSE response of `first`, then the events arriving on `rx`; `keep` lives as long as the
/// response body (the legacy transport ends its session when it is dropped).
fn sse_response<K: Send + 'static>(
    first: Option<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    keep: K,
) -> Response {
    let events =
        futures_util::stream::unfold((first, rx, keep), |(first, mut rx, keep)| async move {
            let event = match first {
                Some(event) => Some(event),
                None => rx.recv().await,
            };
            event.map(|ev| (Ok::<_, std::convert::Infallible>(ev), (None, rx, keep)))
        });
    event_stream(Body::from_stream(events))
}

/// `body` as an SSE response, unbuffered by proxies in front.
fn event_stream(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The one client message of a POST body, on one line (a client's pretty-printed JSON is
/// re-encoded: the child reads a message per line).
async fn read_message(body: axum::body::Body) -> Result<Message, Refusal> {
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| crate::request_body::Unread::of(&e))?;
    let body = if body.contains(&b'\n') {
        match serde_json::from_slice::<Value>(&body).and_then(|v| serde_json::to_vec(&v)) {
            Ok(v) => Bytes::from(v),
            Err(_) => Bytes::new(),
        }
    } else {
        body
    };
    Message::parse(body).ok_or(Refusal::Parse)
}

/// The bridge as the proxy's backend: the MCP path speaks Streamable HTTP; `/sse` and
/// `/message` speak the older HTTP+SSE transport.
#[async_trait::async_trait]
impl crate::backend::Backend for StdioBackend {
    fn kind(&self) -> &'static str {
        "stdio"
    }

    async fn not_ready(&self, _limit: std::time::Duration) -> Option<String> {
        self.startable().err().map(|e| e.to_string())
    }

    async fn serve(&self, handoff: crate::backend::Handoff<'_>, req: Request) -> Response {
        let caller = handoff.caller;
        match req.uri().path() {
            p if p == handoff.site.server.mcp_path => {
                self.handle(caller, req).await.into_response()
            }
            legacy::SSE_PATH => self
                .legacy_sse(caller, req.method(), req.headers())
                .into_response(),
            legacy::MESSAGES_PATH => self.legacy_message(caller, req).await.into_response(),
            _ => jsonrpc_error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn sessions(&self) -> Vec<crate::backend::SessionView> {
        self.overview()
    }

    fn end_session(&self, id: &str) -> bool {
        self.end(id)
    }

    fn places_sessions(&self) -> bool {
        true
    }

    fn worker_of_session(&self, id: &str) -> Option<usize> {
        self.child_worker(id)
    }

    fn worker_of_user(&self, subject: &str) -> Option<usize> {
        self.child_worker(&sessions::modern_key_of(subject))
    }

    fn live_sessions(&self) -> usize {
        StdioBackend::live_sessions(self)
    }

    fn housekeeping_interval(&self) -> Option<std::time::Duration> {
        Some(self.reap_interval())
    }

    fn housekeep(&self) {
        self.reap_idle();
        if let Some(held) = &self.held {
            held.sweep();
        }
    }

    async fn shutdown(&self) {
        StdioBackend::shutdown(self).await;
    }
}
