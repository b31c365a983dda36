//! One MCP session = one child process (per-session mode): its own `initialize`, its own id
//! space. Messages cross unchanged; the only thing the relay decides is which HTTP stream a
//! message from the child goes to:
//!
//! - a response → the stream of the request with that id;
//! - `notifications/progress` → the stream of the request that set that `progressToken`;
//! - list-changed and resource-updated notifications → the GET stream;
//! - other notifications and server→client requests (sampling, elicitation, roots) → the
//!   stream of the newest request still waiting, else the GET stream;
//! - with no stream to take it, a bounded backlog that the next GET stream drains first.
//!
//! When the child exits, every waiting request gets a JSON-RPC error at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::child::{ChildSpec, capture_stderr, spawn};
use super::framing::{JsonLines, Kind, Line, Message, frame};
use super::stream::StreamLog;

/// Longest line accepted from a child.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Messages kept for a GET stream that is not open.
const BACKLOG: usize = 256;

/// Recent streams kept for `Last-Event-ID` resumption.
const RECENT_STREAMS: usize = 32;

/// Where messages for one HTTP stream go.
pub type StreamTx = Arc<StreamLog>;

#[derive(Default)]
struct Routes {
    /// Request id (exact JSON text) → its stream, in arrival order.
    pending: Vec<(String, StreamTx)>,
    /// Progress token (exact JSON text) → request id.
    progress: HashMap<String, String>,
    get_stream: Option<StreamTx>,
    backlog: VecDeque<Bytes>,
}

/// A live session and its child.
pub struct Session {
    /// The child's name in the log (`child-N`).
    pub tag: String,
    /// The MCP session id, once a client claimed the child (a warm spare has none yet).
    mcp_id: std::sync::OnceLock<String>,
    /// The subject of the user who created the session; nobody else may use it.
    owner: std::sync::OnceLock<String>,
    stdin: mpsc::Sender<Bytes>,
    /// Fired to stop the child.
    kill: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    routes: Mutex<Routes>,
    closed: AtomicBool,
    /// The negotiated protocol version, once `initialize` was answered.
    pub protocol_version: Mutex<Option<String>>,
    /// When a client last sent something.
    last_used: Mutex<tokio::time::Instant>,
    /// Becomes true once the child has been stopped and reaped.
    stopped: tokio::sync::watch::Receiver<bool>,
    next_stream: std::sync::atomic::AtomicU64,
    /// The latest streams, for resumption.
    recent: Mutex<VecDeque<StreamTx>>,
}

/// Children that keep exiting by themselves soon after starting delay the next start: after
/// the second such exit in a row 1 s, then 2 s, 4 s … up to 30 s, until one runs for
/// [`STABLE_AFTER`].
#[derive(Debug, Default)]
pub struct CrashTracker {
    state: Mutex<(u32, Option<tokio::time::Instant>)>,
}

/// A child that ran this long is not crash-looping.
pub const STABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl CrashTracker {
    fn record(&self, quick_crash: bool) {
        if let Ok(mut s) = self.state.lock() {
            if quick_crash {
                // One crash is an accident: the next session may start at once. From the
                // second in a row on, wait 1 s, 2 s, 4 s … 30 s.
                s.0 = s.0.saturating_add(1);
                s.1 = (s.0 >= 2).then(|| {
                    let secs = (1u64 << (s.0 - 2).min(5)).min(30);
                    tokio::time::Instant::now() + std::time::Duration::from_secs(secs)
                });
            } else {
                *s = (0, None);
            }
        }
    }

    /// How long to wait before starting another child, if at all.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let s = self.state.lock().ok()?;
        s.1.and_then(|until| until.checked_duration_since(tokio::time::Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// The JSON-RPC error a waiting request gets when the child is gone.
fn exited_error(id: &str, message: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32000,"message":{}}}}}"#,
        Value::String(message.to_string())
    ))
}

impl Session {
    /// Starts the child and the tasks that feed it and read it.
    pub fn start(
        tag: String,
        spec: &ChildSpec,
        crashes: Arc<CrashTracker>,
    ) -> std::io::Result<Arc<Session>> {
        let started = tokio::time::Instant::now();
        let (mut child, withheld) = spawn(spec)?;
        if !withheld.is_empty() {
            tracing::debug!(child = %tag, withheld = ?withheld, "the child does not see these variables of ours");
        }
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(64);
        let (kill_tx, mut kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let id = tag.clone();
        let session = Arc::new(Session {
            tag,
            mcp_id: std::sync::OnceLock::new(),
            owner: std::sync::OnceLock::new(),
            stdin: stdin_tx,
            kill: Mutex::new(Some(kill_tx)),
            routes: Mutex::new(Routes::default()),
            closed: AtomicBool::new(false),
            protocol_version: Mutex::new(None),
            last_used: Mutex::new(tokio::time::Instant::now()),
            stopped: stopped_rx,
            next_stream: std::sync::atomic::AtomicU64::new(1),
            recent: Mutex::new(VecDeque::new()),
        });
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the child's pipes are missing"));
        };
        let (tail, stderr_task) = capture_stderr(stderr, id.clone());

        tokio::spawn(async move {
            while let Some(msg) = stdin_rx.recv().await {
                if stdin.write_all(&msg).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });

        let reader = session.clone();
        tokio::spawn(async move {
            let mut lines = FramedRead::new(stdout, JsonLines::new(MAX_MESSAGE));
            loop {
                let line = tokio::select! {
                    line = lines.next() => line,
                    _ = &mut kill_rx => break,
                };
                let Some(line) = line else { break };
                match line {
                    Ok(Line::Message(m)) => reader.route(m).await,
                    Ok(Line::Garbage(text)) => {
                        tracing::warn!(session = %reader.tag, line = %text, "the MCP server wrote a line that is not JSON-RPC; ignored")
                    }
                    Ok(Line::TooLong(n)) => {
                        tracing::warn!(session = %reader.tag, bytes = n, "the MCP server wrote a line over the size limit; ignored")
                    }
                    Err(e) => {
                        tracing::warn!(session = %reader.tag, error = %e, "reading the MCP server failed");
                        break;
                    }
                }
            }
            // Nobody asked it to stop: it exited (or closed its stdout) by itself.
            let by_itself = !reader.is_closed();
            let status = stop(&mut child).await;
            let _ = stderr_task.await;
            crashes.record(by_itself && started.elapsed() < STABLE_AFTER);
            reader.close("the MCP server exited");
            let _ = stopped_tx.send(true);
            match status {
                Ok(s) => tracing::warn!(
                    session = %reader.tag, status = %s, last_stderr = ?tail.lines(),
                    "the MCP server process exited"
                ),
                Err(e) => {
                    tracing::warn!(session = %reader.tag, error = %e, "waiting for the MCP server failed")
                }
            }
        });
        Ok(session)
    }

    /// Gives the child to a client: its MCP session id and owner. False if it was claimed.
    pub fn claim(&self, mcp_id: String, owner: String) -> bool {
        self.touch();
        self.mcp_id.set(mcp_id).is_ok() && self.owner.set(owner).is_ok()
    }

    /// The MCP session id ("" for an unclaimed spare).
    pub fn mcp_id(&self) -> &str {
        self.mcp_id.get().map(String::as_str).unwrap_or_default()
    }

    /// The user who owns the session.
    pub fn owner(&self) -> Option<&str> {
        self.owner.get().map(String::as_str)
    }

    /// Notes that the client used the session now.
    pub fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    /// Whether nobody used the session for `timeout` and no stream of it is open.
    pub fn is_idle(&self, timeout: std::time::Duration) -> bool {
        let quiet = self
            .last_used
            .lock()
            .map(|t| t.elapsed() >= timeout)
            .unwrap_or(true);
        let streaming = self
            .routes
            .lock()
            .map(|r| {
                r.get_stream.as_ref().is_some_and(|s| s.has_live())
                    || r.pending.iter().any(|(_, s)| s.has_live())
            })
            .unwrap_or(false);
        quiet && !streaming
    }

    /// Waits until the child has been stopped and reaped.
    pub async fn wait_stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether the child is gone or the session was ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the session: waiting requests get an error, streams end, the child's stdin
    /// closes (and the child is killed when its handle drops with the reader task).
    pub fn close(&self, why: &str) {
        self.closed.store(true, Ordering::Release);
        if let Some(kill) = self.kill.lock().ok().and_then(|mut k| k.take()) {
            let _ = kill.send(());
        }
        let Ok(mut r) = self.routes.lock() else {
            return;
        };
        for (id, stream) in r.pending.drain(..) {
            stream.try_deliver(exited_error(&id, why));
            stream.finish();
        }
        r.progress.clear();
        if let Some(get) = r.get_stream.take() {
            get.finish();
        }
    }

    /// Sends a client message to the child, registering where its answers go.
    pub async fn send(&self, msg: &Message, stream: Option<StreamTx>) -> Result<(), &'static str> {
        if self.is_closed() {
            return Err("the session has ended");
        }
        let framed = frame(&msg.raw).ok_or("a message may not contain a raw newline")?;
        if let (Kind::Request, Some(id), Some(tx)) = (msg.kind, &msg.id, stream) {
            let token = progress_token(&msg.raw);
            if let Ok(mut r) = self.routes.lock() {
                r.register(id, tx, token);
            }
        }
        self.stdin
            .send(framed)
            .await
            .map_err(|_| "the MCP server is not running")
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
        let Ok(mut r) = self.routes.lock() else {
            return;
        };
        if let Some(get) = r.get_stream.as_ref().filter(|g| !g.is_finished()) {
            get.try_deliver(raw);
            return;
        }
        if r.backlog.len() == BACKLOG {
            r.backlog.pop_front();
        }
        r.backlog.push_back(raw);
    }

    /// Opens a new GET stream feeding `tx`; the backlog comes first. A previous GET stream
    /// of the session ends.
    pub fn open_get_stream(&self, tx: mpsc::Sender<Bytes>) {
        let stream = self.new_stream(true, tx);
        if let Ok(mut r) = self.routes.lock() {
            while let Some(m) = r.backlog.pop_front() {
                stream.try_deliver(m);
            }
            if let Some(old) = r.get_stream.replace(stream) {
                old.finish();
            }
        }
    }

    async fn route(&self, m: Message) {
        let (target, finished) = match self.routes.lock() {
            Ok(mut r) => r.target(&m),
            Err(_) => return,
        };
        match target {
            // Backpressure: a slow HTTP client slows the child, it does not grow memory.
            Some(stream) => {
                stream.deliver(m.raw).await;
                if finished {
                    stream.finish();
                }
            }
            None if m.kind == Kind::Response => {
                tracing::debug!(session = %self.tag, "a response for no waiting request; dropped");
            }
            None => {}
        }
    }
}

impl Routes {
    /// Registers a client request waiting on `tx`, and its progress token.
    fn register(&mut self, id: &str, tx: StreamTx, progress_token: Option<String>) {
        self.pending.push((id.to_string(), tx));
        if let Some(t) = progress_token {
            self.progress.insert(t, id.to_string());
        }
    }

    /// The stream a message from the child goes to (see the module header), and whether
    /// that stream is finished with it (the last answer it waited for); `None` when the
    /// message went to the backlog (or, for a response, nowhere).
    fn target(&mut self, m: &Message) -> (Option<StreamTx>, bool) {
        self.pending.retain(|(_, s)| !s.is_finished());
        let target = match m.kind {
            Kind::Response => {
                let id = m.id.clone().unwrap_or_default();
                let pos = self.pending.iter().position(|(p, _)| *p == id);
                self.progress.retain(|_, req| *req != id);
                let Some(stream) = pos.map(|i| self.pending.remove(i).1) else {
                    return (None, false);
                };
                // A batch shares one stream: it ends with the last of its answers.
                let last = !self.pending.iter().any(|(_, s)| Arc::ptr_eq(s, &stream));
                return (Some(stream), last);
            }
            Kind::Notification if is_broadcast(m.method.as_deref()) => self.open_get_stream(),
            Kind::Notification if m.method.as_deref() == Some("notifications/progress") => {
                progress_token_of_params(&m.raw)
                    .and_then(|t| self.progress.get(&t).cloned())
                    .and_then(|req| {
                        self.pending
                            .iter()
                            .find(|(p, _)| *p == req)
                            .map(|(_, s)| s.clone())
                    })
                    .or_else(|| self.open_get_stream())
            }
            _ => self
                .pending
                .last()
                .map(|(_, s)| s.clone())
                .or_else(|| self.open_get_stream()),
        };
        if target.is_none() {
            if self.backlog.len() == BACKLOG {
                self.backlog.pop_front();
            }
            self.backlog.push_back(m.raw.clone());
        }
        (target, false)
    }

    fn open_get_stream(&self) -> Option<StreamTx> {
        self.get_stream.clone().filter(|s| !s.is_finished())
    }
}

/// How long a child (and what it started) gets between SIGTERM and SIGKILL.
const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops the child and everything it started (its process group: `npx` runs the server as
/// a grandchild): SIGTERM, then SIGKILL after [`KILL_GRACE`]. Returns the child's status.
async fn stop(child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    let group = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let signal_group = |sig| {
        if let Some(pgid) = group {
            // The group may be gone already; that is the goal.
            let _ = rustix::process::kill_process_group(pgid, sig);
        }
    };
    if let Ok(Some(status)) = child.try_wait() {
        // The child is gone; make sure nothing it started outlives it.
        signal_group(rustix::process::Signal::KILL);
        return Ok(status);
    }
    signal_group(rustix::process::Signal::TERM);
    let status = match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(rustix::process::Signal::KILL);
            let _ = child.start_kill();
            child.wait().await
        }
    };
    signal_group(rustix::process::Signal::KILL);
    status
}

fn is_broadcast(method: Option<&str>) -> bool {
    method.is_some_and(|m| m.ends_with("/list_changed") || m == "notifications/resources/updated")
}

/// `params._meta.progressToken` of a client request, as exact JSON text.
fn progress_token(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    v.pointer("/params/_meta/progressToken")
        .map(Value::to_string)
}

/// `params.progressToken` of a progress notification, as exact JSON text.
fn progress_token_of_params(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    v.pointer("/params/progressToken").map(Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A raw (unframed) stream and its receiving end.
    fn stream(no: u64) -> (StreamTx, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(16);
        (StreamLog::new(no, false, tx), rx)
    }

    /// Routes a message the way the reader task does.
    fn deliver(r: &mut Routes, json: &str) {
        let m = msg(json);
        if let (Some(s), finished) = r.target(&m) {
            s.try_deliver(m.raw);
            if finished {
                s.finish();
            }
        }
    }

    #[test]
    fn every_message_goes_to_exactly_one_stream() {
        let mut r = Routes::default();
        let (get, mut get_rx) = stream(1);
        let (a, mut a_rx) = stream(2);
        let (b, mut b_rx) = stream(3);
        r.register("1", a, Some("\"tok-a\"".into()));
        r.register("\"b\"", b, None);
        r.get_stream = Some(get);

        deliver(
            &mut r,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok-a","progress":1}}"#,
        );
        deliver(
            &mut r,
            r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
        );
        deliver(
            &mut r,
            r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}}"#,
        );
        deliver(&mut r, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        deliver(&mut r, r#"{"jsonrpc":"2.0","id":"b","result":{}}"#);
        deliver(&mut r, r#"{"jsonrpc":"2.0","id":99,"result":{}}"#);
        deliver(
            &mut r,
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#,
        );

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
        let get = drain(&mut get_rx);
        assert_eq!(get.len(), 2, "{get:?}");
        assert!(get[0].contains("list_changed") && get[1].contains("notifications/message"));
        assert!(
            r.pending.is_empty() && r.progress.is_empty(),
            "answered requests are forgotten"
        );
    }

    #[test]
    fn a_batch_stream_ends_with_its_last_answer() {
        let mut r = Routes::default();
        let (shared, mut rx) = stream(4);
        r.register("1", shared.clone(), None);
        r.register("2", shared.clone(), None);
        deliver(&mut r, r#"{"jsonrpc":"2.0","id":2,"result":{}}"#);
        assert!(!shared.is_finished());
        deliver(&mut r, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert!(shared.is_finished());
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[test]
    fn without_a_stream_messages_wait_in_a_bounded_backlog() {
        let mut r = Routes::default();
        for i in 0..(BACKLOG + 5) {
            deliver(
                &mut r,
                &format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"n":{i}}}}}"#
                ),
            );
        }
        deliver(&mut r, r#"{"jsonrpc":"2.0","id":3,"result":{}}"#);
        assert_eq!(
            r.backlog.len(),
            BACKLOG,
            "bounded, and responses to nobody are not kept"
        );
        assert!(
            String::from_utf8_lossy(&r.backlog[0]).contains(r#""n":5"#),
            "the oldest go first"
        );
        // A finished GET stream counts as none.
        let (get, _rx) = stream(5);
        get.finish();
        r.get_stream = Some(get);
        assert!(
            r.target(&msg(
                r#"{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}"#
            ))
            .0
            .is_none()
        );
    }
}
