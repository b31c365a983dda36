//! One running stdio server: its start and `initialize` turn, its pumps, its exit (every
//! waiting request answered at once), its stop, and the backoff after crashes at start.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::codec::FramedRead;

use super::stdin::{Closed, Stdin};
use super::{MAX_MESSAGE, Route, Routes};
use crate::backend::stdio::child::{ChildSpec, capture_stderr, spawn};
use crate::backend::stdio::framing::{JsonLines, Kind, Line, Message, frame};

/// Shared mode: the state of the child's one `initialize`.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Not sent yet (or it failed): the next session's `initialize` goes to the child.
    Idle,
    /// Sent, not answered yet.
    Sent,
    /// The result (exact JSON text), answered to every later session.
    Done(Bytes),
}

/// What a new session's `initialize` should do (see [`Child::begin_initialize`]).
pub enum InitTurn {
    Send,
    Cached(Bytes),
    Wait(watch::Receiver<Init>),
}

/// One running stdio server.
pub struct Child {
    /// The child's name in the log (`child-N`).
    pub tag: String,
    /// Shared mode: several sessions, ids rewritten.
    pub(super) shared: bool,
    pub(super) stdin: Stdin,
    /// Fired to stop the child.
    pub(super) kill: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    pub(super) routes: Mutex<Routes>,
    pub(super) closed: AtomicBool,
    /// Becomes true once the child has been stopped and reaped.
    pub(super) stopped: watch::Receiver<bool>,
    pub(super) init: watch::Sender<Init>,
    pub(super) initialized_sent: AtomicBool,
    pub(super) next_id: AtomicU64,
    /// The resource URIs this child was subscribed to (`resources/subscribe`) for
    /// 2026-07-28 listeners, and for how many of them: subscribed for the first, unsubscribed
    /// after the last. Held while a subscribe or unsubscribe is written, so that the child
    /// receives them in the order they were decided.
    pub subscribed: tokio::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The process id, for the operator console (`None` for pipes in tests).
    pub pid: Option<u32>,
    /// When the child was started.
    pub started: tokio::time::Instant,
}

/// Children that keep exiting by themselves soon after starting delay the next start: after
/// the second such exit in a row 1 s, then 2 s, 4 s … up to 30 s, until one runs for
/// [`STABLE_AFTER`].
#[derive(Debug, Default)]
pub struct CrashTracker {
    pub(super) state: Mutex<(u32, Option<tokio::time::Instant>)>,
    /// Children started, crashed, alive.
    pub metrics: crate::metrics::ChildMetrics,
}

/// A child that ran this long is not crash-looping.
pub const STABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl CrashTracker {
    pub fn with_metrics(metrics: crate::metrics::ChildMetrics) -> Self {
        Self {
            state: Mutex::default(),
            metrics,
        }
    }

    pub(super) fn record(&self, quick_crash: bool) {
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

/// The JSON-RPC error a waiting request gets when it cannot be answered any more.
pub(super) fn exited_error(id: &str, message: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32000,"message":{}}}}}"#,
        Value::String(message.to_string())
    ))
}

impl Child {
    pub(super) fn new(
        tag: String,
        shared: bool,
        stdin: Stdin,
        kill: tokio::sync::oneshot::Sender<()>,
        stopped: watch::Receiver<bool>,
        pid: Option<u32>,
    ) -> Arc<Child> {
        Arc::new(Child {
            tag,
            shared,
            stdin,
            kill: Mutex::new(Some(kill)),
            routes: Mutex::new(Routes {
                shared,
                ..Routes::default()
            }),
            closed: AtomicBool::new(false),
            stopped,
            init: watch::Sender::new(Init::Idle),
            initialized_sent: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            subscribed: tokio::sync::Mutex::default(),
            pid,
            started: tokio::time::Instant::now(),
        })
    }

    /// Starts the child and the tasks that feed it and read it.
    pub fn start(
        tag: String,
        spec: &ChildSpec,
        crashes: Arc<CrashTracker>,
        shared: bool,
    ) -> std::io::Result<Arc<Child>> {
        let started = tokio::time::Instant::now();
        let (mut process, withheld) = spawn(spec)?;
        crashes.metrics.started.inc();
        crashes.metrics.live.inc();
        if !withheld.is_empty() {
            tracing::debug!(child = %tag, withheld = %withheld.join(","), "the child does not see these variables of ours");
        }
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        ) else {
            return Err(std::io::Error::other("the child's pipes are missing"));
        };
        let (kill_tx, mut kill_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let stdin = Stdin::spawn(stdin);
        let child = Child::new(tag, shared, stdin, kill_tx, stopped_rx, process.id());
        let (tail, stderr_task) = capture_stderr(stderr, child.tag.clone());

        let reader = child.clone();
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
            let status = stop(&mut process).await;
            let _ = stderr_task.await;
            crashes.record(by_itself && started.elapsed() < STABLE_AFTER);
            crashes.metrics.live.dec();
            if by_itself {
                crashes.metrics.crashed.inc();
            }
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
        Ok(child)
    }

    /// The worker thread whose runtime runs the child's pumps (`None` outside the workers):
    /// a connection served there reaches the child without waking another thread.
    pub fn worker(&self) -> Option<usize> {
        self.stdin.home()
    }

    /// Whether the child is gone or being stopped.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether this child serves every session (shared mode).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// How many live sessions are attached.
    pub fn session_count(&self) -> usize {
        self.routes
            .lock()
            .map(|r| r.sessions.iter().filter(|s| s.strong_count() > 0).count())
            .unwrap_or(0)
    }

    /// Whether someone is listening: a request waits for the child with its client still
    /// there, or a session's stream of the child's notifications is open.
    pub fn busy(&self) -> bool {
        let sessions = match self.routes.lock() {
            Ok(r) if r.pending.iter().any(|p| p.stream.has_live()) => return true,
            Ok(r) => r.live_sessions(),
            Err(_) => return false,
        };
        sessions.iter().any(|s| s.has_live_get_stream())
    }

    /// Waits until the child has been stopped and reaped.
    pub async fn wait_stopped(&self) {
        let mut rx = self.stopped.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops the child: every waiting request gets an error, every attached session ends.
    pub fn close(&self, why: &str) {
        self.closed.store(true, Ordering::Release);
        if let Some(kill) = self.kill.lock().ok().and_then(|mut k| k.take()) {
            let _ = kill.send(());
        }
        self.release_init();
        let (pending, sessions) = match self.routes.lock() {
            Ok(mut r) => {
                r.progress.clear();
                r.asked.clear();
                let sessions: Vec<_> = r.sessions.drain(..).filter_map(|s| s.upgrade()).collect();
                (std::mem::take(&mut r.pending), sessions)
            }
            Err(_) => return,
        };
        for p in pending {
            p.stream.try_deliver(exited_error(p.client_id(), why));
            p.stream.finish();
        }
        for s in sessions {
            s.mark_closed();
        }
    }

    /// An `initialize` in flight will not be answered (its session or the child ended): the
    /// next session initializes the child instead.
    pub(super) fn release_init(&self) {
        self.init.send_if_modified(|i| {
            let waiting = *i == Init::Sent;
            if waiting {
                *i = Init::Idle;
            }
            waiting
        });
    }

    /// Shared mode: whether a new session's `initialize` goes to the child, is answered
    /// from the first session's result, or must wait for that result.
    pub fn begin_initialize(&self) -> InitTurn {
        if !self.shared {
            return InitTurn::Send;
        }
        let mut turn = InitTurn::Send;
        let mut rx = Some(self.init.subscribe());
        self.init.send_if_modified(|i| match i {
            Init::Idle => {
                *i = Init::Sent;
                true
            }
            Init::Sent => {
                if let Some(rx) = rx.take() {
                    turn = InitTurn::Wait(rx);
                }
                false
            }
            Init::Done(result) => {
                turn = InitTurn::Cached(result.clone());
                false
            }
        });
        turn
    }

    pub(super) async fn send_raw(&self, raw: &[u8]) -> Result<(), &'static str> {
        let framed = frame(raw).ok_or("a message may not contain a raw newline")?;
        self.stdin
            .send(framed)
            .await
            .map_err(|Closed| "the MCP server is not running")
    }

    /// A request id (JSON string) no other session's request has in this child.
    pub(super) fn fresh_id(&self, session: u64, what: &str) -> String {
        let next = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Joined rather than formatted: this runs for every call in shared mode.
        let (mut session_no, mut n) = (itoa::Buffer::new(), itoa::Buffer::new());
        [
            "\"mcp-proxy-",
            session_no.format(session),
            "-",
            n.format(next),
            what,
            "\"",
        ]
        .concat()
    }

    pub(super) async fn route(&self, m: Message) {
        let (route, init) = match self.routes.lock() {
            Ok(mut r) => r.target(&m),
            Err(_) => return,
        };
        if let Some(result) = init {
            self.init.send_replace(result);
        }
        match route {
            // Backpressure: a slow HTTP client slows the child, it does not grow memory.
            Route::Stream(stream, raw, finished) => {
                stream.deliver(raw).await;
                if finished {
                    stream.finish();
                }
            }
            Route::Sessions(sessions, raw) => {
                for s in sessions {
                    s.to_get_stream(raw.clone());
                }
            }
            Route::Refuse(answer) => {
                tracing::warn!(
                    session = %self.tag,
                    method = m.method.as_deref().unwrap_or_default(),
                    "the MCP server asked its client something the proxy cannot deliver (several sessions of a shared server were busy, or the client is a stateless 2026-07-28 one); refused"
                );
                if let Err(e) = self.send_raw(&answer).await {
                    tracing::debug!(session = %self.tag, error = e, "could not refuse a server request");
                }
            }
            Route::Nowhere if m.kind == Kind::Response => {
                tracing::debug!(session = %self.tag, "a response for no waiting request; dropped");
            }
            Route::Nowhere => {}
        }
    }
}

/// How long a child (and what it started) gets between SIGTERM and SIGKILL.
pub(super) const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops the child and everything it started (its process group: `npx` runs the server as
/// a grandchild): SIGTERM, then SIGKILL after [`KILL_GRACE`]. Returns the child's status.
pub(super) async fn stop(
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
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
