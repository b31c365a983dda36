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

/// Longest line accepted from a child.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Messages kept for a GET stream that is not open.
const BACKLOG: usize = 256;

/// Messages queued towards one HTTP stream before the child is slowed down.
const STREAM_QUEUE: usize = 64;

/// Where messages for one HTTP stream go.
pub type StreamTx = mpsc::Sender<Bytes>;

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
    pub id: String,
    /// The subject of the user who created it; nobody else may use it.
    pub owner: String,
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
    pub fn start(id: String, owner: String, spec: &ChildSpec) -> std::io::Result<Arc<Session>> {
        let (mut child, withheld) = spawn(spec)?;
        if !withheld.is_empty() {
            tracing::debug!(session = %id, withheld = ?withheld, "the child does not see these variables of ours");
        }
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        let (kill_tx, mut kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let session = Arc::new(Session {
            id: id.clone(),
            owner,
            stdin: stdin_tx,
            kill: Mutex::new(Some(kill_tx)),
            routes: Mutex::new(Routes::default()),
            closed: AtomicBool::new(false),
            protocol_version: Mutex::new(None),
            last_used: Mutex::new(tokio::time::Instant::now()),
            stopped: stopped_rx,
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
                        tracing::warn!(session = %reader.id, line = %text, "the MCP server wrote a line that is not JSON-RPC; ignored")
                    }
                    Ok(Line::TooLong(n)) => {
                        tracing::warn!(session = %reader.id, bytes = n, "the MCP server wrote a line over the size limit; ignored")
                    }
                    Err(e) => {
                        tracing::warn!(session = %reader.id, error = %e, "reading the MCP server failed");
                        break;
                    }
                }
            }
            let status = stop(&mut child).await;
            let _ = stderr_task.await;
            reader.close("the MCP server exited");
            let _ = stopped_tx.send(true);
            match status {
                Ok(s) => tracing::warn!(
                    session = %reader.id, status = %s, last_stderr = ?tail.lines(),
                    "the MCP server process exited"
                ),
                Err(e) => {
                    tracing::warn!(session = %reader.id, error = %e, "waiting for the MCP server failed")
                }
            }
        });
        Ok(session)
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
                r.get_stream.as_ref().is_some_and(|tx| !tx.is_closed())
                    || r.pending.iter().any(|(_, tx)| !tx.is_closed())
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
        for (id, tx) in r.pending.drain(..) {
            let _ = tx.try_send(exited_error(&id, why));
        }
        r.progress.clear();
        r.get_stream = None;
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
                r.pending.push((id.clone(), tx));
                if let Some(t) = token {
                    r.progress.insert(t, id.clone());
                }
            }
        }
        self.stdin
            .send(framed)
            .await
            .map_err(|_| "the MCP server is not running")
    }

    /// Delivers a message to the GET stream, or keeps it for the next one.
    pub fn to_get_stream(&self, raw: Bytes) {
        let Ok(mut r) = self.routes.lock() else {
            return;
        };
        if let Some(tx) = &r.get_stream
            && tx.try_send(raw.clone()).is_ok()
        {
            return;
        }
        if r.backlog.len() == BACKLOG {
            r.backlog.pop_front();
        }
        r.backlog.push_back(raw);
    }

    /// Opens the GET stream; the backlog comes first.
    pub fn open_get_stream(&self, tx: StreamTx) {
        if let Ok(mut r) = self.routes.lock() {
            while let Some(m) = r.backlog.pop_front() {
                if tx.try_send(m).is_err() {
                    break;
                }
            }
            r.get_stream = Some(tx);
        }
    }

    async fn route(&self, m: Message) {
        let target = {
            let Ok(mut r) = self.routes.lock() else {
                return;
            };
            r.pending.retain(|(_, tx)| !tx.is_closed());
            match m.kind {
                Kind::Response => {
                    let id = m.id.clone().unwrap_or_default();
                    let pos = r.pending.iter().position(|(p, _)| *p == id);
                    let tx = pos.map(|i| r.pending.remove(i).1);
                    r.progress.retain(|_, req| *req != id);
                    if tx.is_none() {
                        tracing::debug!(session = %self.id, "a response for no waiting request; dropped");
                    }
                    tx
                }
                Kind::Notification if is_broadcast(m.method.as_deref()) => r.get_stream.clone(),
                Kind::Notification if m.method.as_deref() == Some("notifications/progress") => progress_token_of_params(&m.raw)
                    .and_then(|t| r.progress.get(&t).cloned())
                    .and_then(|req| r.pending.iter().find(|(p, _)| *p == req).map(|(_, tx)| tx.clone()))
                    .or_else(|| r.get_stream.clone()),
                _ => r.pending.last().map(|(_, tx)| tx.clone()).or_else(|| r.get_stream.clone()),
            }
            .or_else(|| {
                if m.kind != Kind::Response {
                    if r.backlog.len() == BACKLOG {
                        r.backlog.pop_front();
                    }
                    r.backlog.push_back(m.raw.clone());
                }
                None
            })
        };
        if let Some(tx) = target {
            // Backpressure: a slow HTTP client slows the child, it does not grow memory.
            let _ = tx.send(m.raw).await;
        }
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
