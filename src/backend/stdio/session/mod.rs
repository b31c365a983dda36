//! Children and the MCP sessions they serve.
//!
//! A [`Child`] is one running stdio server; a [`Session`] is one MCP session (its id, its
//! owner, its GET stream). In per-session mode (the default) every session has a child of its
//! own and messages cross unchanged. In shared mode (`--stdio-mode shared`) every session is
//! attached to one child: a client request's `id` and `progressToken` are replaced on the way
//! in by ones unique in the child (spliced into the bytes, nothing else changes) and restored
//! on the way out, so clients never see each other's ids and results reach the child's
//! callers byte for byte.
//!
//! Where a message from the child goes:
//!
//! - a response → the stream of the request with that id;
//! - `notifications/progress` → the stream of the request that set that `progressToken`
//!   (none waiting: dropped, never broadcast; it belongs to one caller); likewise
//!   `notifications/cancelled` → the session asked by the request it cancels;
//! - list-changed and resource-updated notifications → the GET stream of every session;
//! - server→client requests (sampling, elicitation, roots) and other notifications → the
//!   stream of the newest request still waiting; with none, requests go to the GET stream of
//!   the session used last and notifications to every session's GET stream;
//! - with no stream to take it, a bounded backlog that the session's next GET stream drains.
//!
//! When the child exits, every waiting request gets a JSON-RPC error at once.

mod child;
mod routes;
mod stdin;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::framing::{
    Kind, Message, frame, may_name, replace_value, splice_all, value_spans, value_text,
};
use super::stream::StreamLog;

pub use self::child::*;
use self::routes::*;

/// Longest line accepted from a child.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Messages kept for a GET stream that is not open.
pub const BACKLOG: usize = 256;

/// Recent streams kept for `Last-Event-ID` resumption.
const RECENT_STREAMS: usize = 32;

/// Where messages for one HTTP stream go.
pub type StreamTx = Arc<StreamLog>;

/// A live MCP session.
pub struct Session {
    mcp_id: String,
    /// The subject of the user who created the session; nobody else may use it.
    owner: String,
    /// A number unique among the child's sessions (shared mode: part of rewritten ids).
    no: u64,
    child: Arc<Child>,
    closed: AtomicBool,
    /// The negotiated protocol version, once `initialize` was answered.
    pub protocol_version: Mutex<Option<String>>,
    /// When a client last sent something.
    last_used: Mutex<tokio::time::Instant>,
    /// When the session began.
    pub created: tokio::time::Instant,
    next_stream: AtomicU64,
    /// The latest streams, for resumption.
    recent: Mutex<VecDeque<StreamTx>>,
    get: Mutex<GetStream>,
    /// The 2024-11-05 SSE connection every message of a legacy session goes to.
    pub legacy: std::sync::OnceLock<mpsc::Sender<Bytes>>,
    /// One modern (2026-07-28) request: the child may not ask its client anything (those
    /// clients are asked through multi round-trip results, not relayed yet).
    stateless: bool,
}

#[derive(Default)]
struct GetStream {
    stream: Option<StreamTx>,
    backlog: VecDeque<Bytes>,
}

fn push_bounded(q: &mut VecDeque<Bytes>, raw: Bytes) {
    if q.len() == BACKLOG {
        q.pop_front();
    }
    q.push_back(raw);
}

impl Session {
    /// A new session `mcp_id` of `owner` on `child`; the first session of a warm spare
    /// receives what the child said before it came.
    pub fn attach(child: Arc<Child>, mcp_id: String, owner: String, no: u64) -> Arc<Session> {
        Self::attach_as(child, mcp_id, owner, no, false)
    }

    /// A session of modern requests of `owner` on a multiplexed child: one request's, or
    /// (with an id) the one that keeps a user's modern child.
    pub fn attach_stateless(
        child: Arc<Child>,
        mcp_id: String,
        owner: String,
        no: u64,
    ) -> Arc<Session> {
        Self::attach_as(child, mcp_id, owner, no, true)
    }

    fn attach_as(
        child: Arc<Child>,
        mcp_id: String,
        owner: String,
        no: u64,
        stateless: bool,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            mcp_id,
            owner,
            no,
            child: child.clone(),
            closed: AtomicBool::new(false),
            protocol_version: Mutex::new(None),
            last_used: Mutex::new(tokio::time::Instant::now()),
            created: tokio::time::Instant::now(),
            next_stream: AtomicU64::new(1),
            recent: Mutex::new(VecDeque::new()),
            get: Mutex::new(GetStream::default()),
            legacy: std::sync::OnceLock::new(),
            stateless,
        });
        if let Ok(mut r) = child.routes.lock() {
            r.sessions.retain(|s| s.strong_count() > 0);
            r.sessions.push(Arc::downgrade(&session));
            if let Ok(mut g) = session.get.lock() {
                g.backlog.extend(r.orphans.drain(..));
            }
        }
        session
    }

    /// Whether the session carries modern (2026-07-28) requests (see [`Session::attach_stateless`]).
    pub fn is_stateless(&self) -> bool {
        self.stateless
    }

    pub fn mcp_id(&self) -> &str {
        &self.mcp_id
    }

    /// The user who owns the session.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn child(&self) -> &Arc<Child> {
        &self.child
    }

    /// Notes that the client used the session now.
    pub fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    /// How long since a client last used the session.
    pub fn idle_for(&self) -> std::time::Duration {
        self.last_used().elapsed()
    }

    fn last_used(&self) -> tokio::time::Instant {
        self.last_used
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }

    /// Whether nobody used the session for `timeout` and no stream of it is open.
    pub fn is_idle(&self, timeout: std::time::Duration) -> bool {
        let quiet = self.last_used().elapsed() >= timeout;
        let get_live = self
            .get
            .lock()
            .map(|g| g.stream.as_ref().is_some_and(|s| s.has_live()))
            .unwrap_or(false);
        let waiting_live = self
            .child
            .routes
            .lock()
            .map(|r| {
                r.pending
                    .iter()
                    .any(|p| self.owns(p) && p.stream.has_live())
            })
            .unwrap_or(false);
        quiet && !get_live && !waiting_live
    }

    /// Whether a client reads this session's stream of the child's notifications.
    pub fn has_live_get_stream(&self) -> bool {
        self.get
            .lock()
            .map(|g| g.stream.as_ref().is_some_and(|s| s.has_live()))
            .unwrap_or(false)
    }

    fn owns(&self, p: &Pending) -> bool {
        std::ptr::eq(p.session.as_ptr(), self)
    }

    /// Whether the session was ended (or its child is gone).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.child.is_closed()
    }

    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(get) = self.get.lock().ok().and_then(|mut g| g.stream.take()) {
            get.finish();
        }
    }

    /// Ends the session. Per-session mode stops its child; in shared mode the child goes
    /// on, the session's waiting requests get an error and are cancelled at the child.
    pub fn close(&self, why: &str) {
        if !self.child.shared {
            self.mark_closed();
            self.child.close(why);
            return;
        }
        self.mark_closed();
        let mine = match self.child.routes.lock() {
            Ok(mut r) => {
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut r.pending)
                    .into_iter()
                    .partition(|p| self.owns(p));
                r.pending = rest;
                for p in &mine {
                    r.progress.retain(|_, req| *req != p.id);
                }
                r.asked
                    .retain(|(_, s)| !std::ptr::eq(s.as_ptr(), self) && s.strong_count() > 0);
                r.sessions
                    .retain(|s| !std::ptr::eq(s.as_ptr(), self) && s.strong_count() > 0);
                mine
            }
            Err(_) => return,
        };
        if mine.iter().any(|p| p.initialize) {
            // The session that was initializing the shared child left: the next one will.
            self.child.release_init();
        }
        if !mine.is_empty() {
            tracing::info!(child = %self.child.tag, requests = mine.len(), why, "requests cancelled at the MCP server");
        }
        for p in mine {
            p.stream.try_deliver(exited_error(p.client_id(), why));
            p.stream.finish();
            let cancel = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{},"reason":{}}}}}"#,
                p.id,
                Value::String(why.to_string())
            );
            if let Some(framed) = frame(cancel.as_bytes()) {
                self.child.stdin.try_send(framed);
            }
        }
    }

    /// Sends a client message to the child, registering where its answers go. In shared
    /// mode the request's id and progress token are replaced by ones unique in the child.
    pub async fn send(
        self: &Arc<Self>,
        msg: &Message,
        stream: Option<StreamTx>,
    ) -> Result<(), &'static str> {
        if self.is_closed() {
            return Err("the session has ended");
        }
        let Some(raw) = self.outgoing(msg, stream)? else {
            return Ok(());
        };
        self.child.send_raw(&raw).await
    }

    /// Sends this session's answer to a request the child asked it (built by the bridge).
    pub async fn send_raw_answer(self: &Arc<Self>, raw: &Bytes) -> Result<(), &'static str> {
        let msg = Message::parse(raw.clone()).ok_or("unreadable answer")?;
        self.send(&msg, None).await
    }

    /// What goes to the child for `msg` (`None`: nothing), with its answers' routes set.
    fn outgoing(
        self: &Arc<Self>,
        msg: &Message,
        stream: Option<StreamTx>,
    ) -> Result<Option<Bytes>, &'static str> {
        let child = &self.child;
        let mut r = child
            .routes
            .lock()
            .map_err(|_| "the session is unavailable")?;
        match (msg.kind, &msg.id, stream) {
            (Kind::Request, Some(id), Some(stream)) => {
                // The id and the progress token, read in one pass; none at all when the
                // body cannot name a progress token and the id's place is known or unneeded
                // (most calls carry no token: the pass was a twentieth of a call's work).
                let needs_id = child.shared && msg.id_at.is_none();
                let [id_span, token_span] = if needs_id || may_name(&msg.raw, &PROGRESS_TOKEN_NAME)
                {
                    value_spans(&msg.raw, [&["id"], &PROGRESS_TOKEN])
                } else {
                    [msg.id_at.clone(), None]
                };
                let text = |span: &Option<std::ops::Range<usize>>| {
                    let bytes = msg.raw.get(span.clone()?)?;
                    std::str::from_utf8(bytes).ok().map(str::to_string)
                };
                let token = text(&token_span);
                let mut pending = Pending {
                    id: id.clone(),
                    stream,
                    session: Arc::downgrade(self),
                    client_id: None,
                    client_token: None,
                    initialize: false,
                };
                let mut raw = msg.raw.clone();
                let mut child_token = token.clone();
                if child.shared {
                    pending.id = child.fresh_id(self.no, "");
                    pending.client_id = Some(id.clone());
                    pending.initialize = msg.method.as_deref() == Some("initialize");
                    let id_span = id_span.ok_or("unreadable request")?;
                    let mut rewrites = vec![(id_span, pending.id.clone())];
                    if let (Some(t), Some(span)) = (&token, token_span) {
                        let fresh = child.fresh_id(self.no, "-progress");
                        rewrites.push((span, fresh.clone()));
                        pending.client_token = Some(t.clone());
                        child_token = Some(fresh);
                    }
                    raw = splice_all(&raw, rewrites).ok_or("unreadable request")?;
                }
                if let Some(t) = child_token.as_deref().and_then(normalized) {
                    r.progress.insert(t, pending.id.clone());
                }
                r.pending.push(pending);
                Ok(Some(raw))
            }
            (Kind::Response, Some(id), _) => {
                // The answer to a server→client request; in shared mode only from the
                // session that was asked.
                let asked = r.asked.iter().position(|(a, s)| {
                    a == id && (!child.shared || std::ptr::eq(s.as_ptr(), Arc::as_ptr(self)))
                });
                let by_asked = asked.and_then(|i| r.asked.remove(i)).is_some();
                if child.shared && !by_asked {
                    return Err("no request of the server has this id");
                }
                Ok(Some(msg.raw.clone()))
            }
            (Kind::Notification, _, _) if child.shared => match msg.method.as_deref() {
                // The child was initialized once, by the first session.
                Some("notifications/initialized") => {
                    let again = child.initialized_sent.swap(true, Ordering::AcqRel);
                    Ok((!again).then(|| msg.raw.clone()))
                }
                // Cancelling one of this session's requests: name it as the child knows it.
                Some("notifications/cancelled") => {
                    let wanted = value_text(&msg.raw, &["params", "requestId"]);
                    let theirs = r
                        .pending
                        .iter()
                        .find(|p| self.owns(p) && Some(p.client_id()) == wanted);
                    Ok(theirs
                        .and_then(|p| replace_value(&msg.raw, &["params", "requestId"], &p.id)))
                }
                _ => Ok(Some(msg.raw.clone())),
            },
            _ => Ok(Some(msg.raw.clone())),
        }
    }

    /// A new stream of this session feeding `tx` (SSE-framed, or raw messages for a JSON
    /// answer).
    pub fn new_stream(&self, sse: bool, tx: mpsc::Sender<Bytes>) -> StreamTx {
        let no = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let stream = StreamLog::new(no, sse, tx);
        if sse && let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_STREAMS {
                recent.pop_front();
            }
            recent.push_back(stream.clone());
        }
        stream
    }

    /// Reconnects `tx` to stream `no` after event `after` (`Last-Event-ID`); false when the
    /// stream is no longer known.
    pub fn resume(&self, no: u64, after: u64, tx: mpsc::Sender<Bytes>) -> bool {
        let found = self
            .recent
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|s| s.no == no).cloned());
        match found {
            Some(s) => {
                s.attach(tx, Some(after));
                true
            }
            None => false,
        }
    }

    /// Delivers a message to the GET stream, or keeps it for the next one.
    pub fn to_get_stream(&self, raw: Bytes) {
        let Ok(mut g) = self.get.lock() else {
            return;
        };
        match g.stream.as_ref().filter(|s| !s.is_finished()) {
            Some(s) => s.try_deliver(raw),
            None => push_bounded(&mut g.backlog, raw),
        }
    }

    /// Opens a new GET stream feeding `tx`; the backlog comes first. A previous GET stream
    /// of the session ends.
    pub fn open_get_stream(&self, tx: mpsc::Sender<Bytes>) {
        self.open_get_stream_as(true, tx);
    }

    /// [`Self::open_get_stream`] of raw messages (a modern subscription frames its own).
    pub fn open_raw_get_stream(&self, tx: mpsc::Sender<Bytes>) {
        self.open_get_stream_as(false, tx);
    }

    fn open_get_stream_as(&self, sse: bool, tx: mpsc::Sender<Bytes>) {
        let stream = self.new_stream(sse, tx);
        if let Ok(mut g) = self.get.lock() {
            while let Some(m) = g.backlog.pop_front() {
                stream.try_deliver(m);
            }
            if let Some(old) = g.stream.replace(stream) {
                old.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn msg(json: &str) -> Message {
        Message::parse(Bytes::from(json.to_string())).unwrap()
    }

    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        out
    }

    /// A child with in-memory pipes: what the sessions send it arrives on the receiver.
    fn pipe_child(shared: bool) -> (Arc<Child>, mpsc::Receiver<Bytes>) {
        let (stdin, rx) = mpsc::channel(64);
        let (kill, _) = tokio::sync::oneshot::channel();
        let (_, stopped) = watch::channel(false);
        (
            Child::new(
                "child-t".into(),
                shared,
                stdin::Stdin::queued(stdin),
                kill,
                stopped,
                None,
            ),
            rx,
        )
    }

    /// A raw (unframed) stream of `session` and its receiving end.
    fn stream(session: &Session) -> (StreamTx, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(16);
        (session.new_stream(false, tx), rx)
    }

    fn get_stream(session: &Session) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(16);
        session.open_get_stream(tx);
        rx
    }

    /// The SSE `data:` payloads of a GET stream's events.
    fn events(rx: &mut mpsc::Receiver<Bytes>) -> Vec<String> {
        drain(rx)
            .iter()
            .filter_map(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(str::to_string)
            })
            .collect()
    }

    /// The next line the child received, as JSON.
    fn received(rx: &mut mpsc::Receiver<Bytes>) -> Value {
        let line = rx.try_recv().expect("the child received a message");
        assert!(line.ends_with(b"\n"), "newline-framed");
        serde_json::from_slice(&line).unwrap()
    }

    #[tokio::test]
    async fn per_session_every_message_goes_to_exactly_one_stream() {
        let (child, mut stdin) = pipe_child(false);
        let s = Session::attach(child.clone(), "sid".into(), "alice".into(), 1);
        let mut get = get_stream(&s);
        let (a, mut a_rx) = stream(&s);
        let (b, mut b_rx) = stream(&s);
        let req_a = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"tok-a"}}}"#;
        s.send(&msg(req_a), Some(a)).await.unwrap();
        s.send(&msg(r#"{"jsonrpc":"2.0","id":"b","method":"x"}"#), Some(b))
            .await
            .unwrap();
        assert_eq!(
            &stdin.try_recv().unwrap()[..],
            format!("{req_a}\n").as_bytes(),
            "per-session mode: bytes untouched"
        );

        for line in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok-a","progress":1}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":"b","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":99,"result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#,
        ] {
            child.route(msg(line)).await;
        }

        let a = drain(&mut a_rx);
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(a[0].contains("tok-a") && a[1].contains(r#""id":1"#));
        assert!(
            matches!(
                a_rx.try_recv(),
                Err(mpsc::error::TryRecvError::Disconnected)
            ),
            "answered: the stream has ended"
        );
        let b = drain(&mut b_rx);
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(
            b[0].contains("sampling/createMessage"),
            "server requests go to the newest waiting request"
        );
        assert!(b[1].contains(r#""id":"b""#));
        let get = events(&mut get);
        assert_eq!(get.len(), 2, "{get:?}");
        assert!(get[0].contains("list_changed") && get[1].contains("notifications/message"));
        let r = child.routes.lock().unwrap();
        assert!(
            r.pending.is_empty() && r.progress.is_empty(),
            "answered requests are forgotten"
        );
    }

    #[tokio::test]
    async fn a_batch_stream_ends_with_its_last_answer() {
        let (child, _stdin) = pipe_child(false);
        let s = Session::attach(child.clone(), "sid".into(), "alice".into(), 1);
        let (shared, mut rx) = stream(&s);
        for id in [1, 2] {
            let m = msg(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#));
            s.send(&m, Some(shared.clone())).await.unwrap();
        }
        child
            .route(msg(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#))
            .await;
        assert!(!shared.is_finished());
        child
            .route(msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
            .await;
        assert!(shared.is_finished());
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[tokio::test]
    async fn without_a_stream_messages_wait_in_a_bounded_backlog() {
        let (child, _stdin) = pipe_child(false);
        // A warm spare: what it says before any session goes to the first one.
        child
            .route(msg(
                r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"early":1}}"#,
            ))
            .await;
        let s = Session::attach(child.clone(), "sid".into(), "alice".into(), 1);
        for i in 0..(BACKLOG + 5) {
            let line = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"n":{i}}}}}"#
            );
            child.route(msg(&line)).await;
        }
        child
            .route(msg(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#))
            .await;
        let backlog = s.get.lock().unwrap().backlog.clone();
        assert_eq!(
            backlog.len(),
            BACKLOG,
            "bounded, and responses to nobody are not kept"
        );
        assert!(
            String::from_utf8_lossy(&backlog[0]).contains(r#""n":5"#),
            "the oldest go first"
        );
        let (tx, mut get) = mpsc::channel(super::super::bridge::GET_STREAM_QUEUE);
        s.open_get_stream(tx);
        assert_eq!(
            events(&mut get).len(),
            BACKLOG,
            "the next GET stream drains it all"
        );
    }

    #[tokio::test]
    async fn shared_mode_drops_a_late_progress_event_instead_of_broadcasting_it() {
        let (child, mut stdin) = pipe_child(true);
        let s1 = Session::attach(child.clone(), "one".into(), "alice".into(), 1);
        let s2 = Session::attach(child.clone(), "two".into(), "bob".into(), 2);
        let (mut get1, mut get2) = (get_stream(&s1), get_stream(&s2));
        let (a, mut a_rx) = stream(&s1);
        let req = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":"secret-progress"}}}"#;
        s1.send(&msg(req), Some(a)).await.unwrap();
        let m = received(&mut stdin);
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, m["id"]);
        child.route(msg(&answer)).await;
        assert_eq!(drain(&mut a_rx).len(), 1);
        // The child sends alice's progress after her answer (a race inside a real server),
        // and cancels a request nobody relayed.
        for late in [
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{},"message":"alice's file names"}}}}"#,
                m["params"]["_meta"]["progressToken"]
            ),
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"never"}}"#
                .to_string(),
        ] {
            child.route(msg(&late)).await;
        }
        assert!(events(&mut get2).is_empty(), "bob read nothing of alice's");
        assert!(events(&mut get1).is_empty(), "nor does anyone else get it");
    }

    #[tokio::test]
    async fn shared_mode_rewrites_ids_and_tokens_and_restores_them() {
        let (child, mut stdin) = pipe_child(true);
        let s1 = Session::attach(child.clone(), "one".into(), "alice".into(), 1);
        let s2 = Session::attach(child.clone(), "two".into(), "bob".into(), 2);
        let (a, mut a_rx) = stream(&s1);
        let (b, mut b_rx) = stream(&s2);
        // Both clients use id 1 and the same progress token.
        let req = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"p"}}}"#;
        s1.send(&msg(req), Some(a)).await.unwrap();
        s2.send(&msg(req), Some(b)).await.unwrap();
        let (m1, m2) = (received(&mut stdin), received(&mut stdin));
        assert_ne!(m1["id"], m2["id"], "unique ids at the child");
        assert_ne!(
            m1["params"]["_meta"]["progressToken"],
            m2["params"]["_meta"]["progressToken"]
        );
        assert_eq!(m1["params"]["name"], "x", "the rest is unchanged");

        // The child answers the second first; results pass byte for byte.
        let result = r#"{"content":[{"type":"text","text":"é \u00e9"}],  "x" : 1.50}"#;
        let progress = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{},"progress":1}}}}"#,
            m2["params"]["_meta"]["progressToken"]
        );
        child.route(msg(&progress)).await;
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, m2["id"]);
        child.route(msg(&answer)).await;
        let b = drain(&mut b_rx);
        assert_eq!(
            b,
            vec![
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}"#.to_string(),
                format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#),
            ]
        );
        assert!(drain(&mut a_rx).is_empty(), "nothing for the other session");

        // Cancellation names the request as the child knows it.
        let cancel =
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#;
        s1.send(&msg(cancel), None).await.unwrap();
        assert_eq!(received(&mut stdin)["params"]["requestId"], m1["id"]);
        // A session cannot cancel another's request (nor one it never made).
        s2.send(&msg(cancel), None).await.unwrap();
        assert!(stdin.try_recv().is_err());
    }

    #[tokio::test]
    async fn shared_mode_routes_server_requests_and_broadcasts() {
        let (child, mut stdin) = pipe_child(true);
        let s1 = Session::attach(child.clone(), "one".into(), "alice".into(), 1);
        let s2 = Session::attach(child.clone(), "two".into(), "bob".into(), 2);
        let (mut g1, mut g2) = (get_stream(&s1), get_stream(&s2));
        let (a, mut a_rx) = stream(&s1);
        s1.send(
            &msg(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call"}"#),
            Some(a),
        )
        .await
        .unwrap();
        let _ = received(&mut stdin);

        // A sampling request while s1's call runs goes to s1's call stream.
        child
            .route(msg(
                r#"{"jsonrpc":"2.0","id":40,"method":"sampling/createMessage","params":{}}"#,
            ))
            .await;
        assert!(drain(&mut a_rx)[0].contains("sampling/createMessage"));
        let answer = r#"{"jsonrpc":"2.0","id":40,"result":{"role":"assistant"}}"#;
        assert!(
            s2.send(&msg(answer), None).await.is_err(),
            "only the session asked may answer"
        );
        s1.send(&msg(answer), None).await.unwrap();
        assert_eq!(received(&mut stdin)["id"], 40);
        assert!(s1.send(&msg(answer), None).await.is_err(), "answered once");

        // list_changed reaches every session's GET stream.
        child
            .route(msg(
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            ))
            .await;
        assert_eq!(events(&mut g1).len(), 1);
        assert_eq!(events(&mut g2).len(), 1);

        // initialized reaches the child once.
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        s1.send(&msg(initialized), None).await.unwrap();
        s2.send(&msg(initialized), None).await.unwrap();
        assert_eq!(received(&mut stdin)["method"], "notifications/initialized");
        assert!(stdin.try_recv().is_err());
    }

    #[tokio::test]
    async fn shared_mode_never_guesses_whose_a_server_request_is() {
        let (child, mut stdin) = pipe_child(true);
        let s1 = Session::attach(child.clone(), "one".into(), "alice".into(), 1);
        let s2 = Session::attach(child.clone(), "two".into(), "bob".into(), 2);
        let (mut g1, mut g2) = (get_stream(&s1), get_stream(&s2));
        let (a, mut a_rx) = stream(&s1);
        let (b, mut b_rx) = stream(&s2);
        s1.send(
            &msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
            Some(a),
        )
        .await
        .unwrap();
        s2.send(
            &msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
            Some(b),
        )
        .await
        .unwrap();
        let _ = (received(&mut stdin), received(&mut stdin));
        child
            .route(msg(r#"{"jsonrpc":"2.0","id":9,"method":"elicitation/create","params":{"message":"secret"}}"#))
            .await;
        assert!(drain(&mut a_rx).is_empty() && drain(&mut b_rx).is_empty());
        assert!(events(&mut g1).is_empty() && events(&mut g2).is_empty());
        let refused = received(&mut stdin);
        assert_eq!(refused["id"], 9);
        assert_eq!(refused["error"]["code"], -32603);
        // A log line with no owner goes to everyone's GET stream.
        child
            .route(msg(
                r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#,
            ))
            .await;
        assert_eq!((events(&mut g1).len(), events(&mut g2).len()), (1, 1));
    }

    #[tokio::test]
    async fn shared_mode_initializes_the_child_once() {
        let (child, mut stdin) = pipe_child(true);
        let s1 = Session::attach(child.clone(), "one".into(), "alice".into(), 1);
        assert!(matches!(child.begin_initialize(), InitTurn::Send));
        assert!(matches!(child.begin_initialize(), InitTurn::Wait(_)));
        let (a, mut a_rx) = stream(&s1);
        let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
        s1.send(&msg(init), Some(a)).await.unwrap();
        let id = received(&mut stdin)["id"].clone();
        let result = r#"{"protocolVersion":"2025-06-18","serverInfo":{"name":"s"}}"#;
        child
            .route(msg(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
            )))
            .await;
        assert!(drain(&mut a_rx)[0].contains(r#""id":0"#));
        match child.begin_initialize() {
            InitTurn::Cached(r) => assert_eq!(&r[..], result.as_bytes()),
            _ => panic!("later sessions get the cached result"),
        }
    }

    #[tokio::test]
    async fn closing_a_shared_session_cancels_its_requests_and_keeps_the_child() {
        let (child, mut stdin) = pipe_child(true);
        let s1 = Session::attach(child.clone(), "one".into(), "alice".into(), 1);
        let s2 = Session::attach(child.clone(), "two".into(), "bob".into(), 2);
        let (a, mut a_rx) = stream(&s1);
        s1.send(
            &msg(r#"{"jsonrpc":"2.0","id":"x","method":"slow"}"#),
            Some(a),
        )
        .await
        .unwrap();
        let sent = received(&mut stdin);
        s1.close("the session was ended by the client");
        let a = drain(&mut a_rx);
        assert!(
            a[0].contains(r#""id":"x""#) && a[0].contains("ended by the client"),
            "{a:?}"
        );
        let cancel = received(&mut stdin);
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], sent["id"]);
        assert!(s1.is_closed() && !s2.is_closed() && !child.is_closed());
        assert_eq!(child.session_count(), 1);

        // The child exiting ends every session and fails what waits.
        let (b, mut b_rx) = stream(&s2);
        s2.send(&msg(r#"{"jsonrpc":"2.0","id":2,"method":"slow"}"#), Some(b))
            .await
            .unwrap();
        child.close("the MCP server exited");
        assert!(drain(&mut b_rx)[0].contains(r#""id":2,"error""#));
        assert!(s2.is_closed());
    }
}
