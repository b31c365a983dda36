//! Thread-per-core serving.
//!
//! One acceptor hands each new connection to the least busy of N worker threads; every worker
//! runs its own single-threaded tokio runtime, so a request, its upstream call and its answer
//! are all polled on one thread. Measured on the proxy's hot path (BENCHMARKS.md), this
//! removes the multi-threaded scheduler's cross-thread wake-ups, which cost about a quarter
//! of the CPU per proxied request.
//!
//! Tasks a handler spawns (a stdio child's pumps, hyper's upstream connections) live on the
//! worker that spawned them, so worker runtimes are kept alive until the caller of
//! [`Workers::finish`] has stopped everything that may still depend on them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::backend::lane::prefixed::Prefixed;
use crate::server::affinity::first_bytes;
use crate::server::roaming::Roaming;

/// Which listener a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Plain,
    Tls,
}

/// What the workers serve.
#[derive(Clone)]
pub struct Apps {
    /// The application (over TLS when TLS is on).
    pub main: Router,
    /// The plain listener's application when TLS is on (redirects, ACME HTTP-01).
    pub plain: Option<Router>,
    pub tls: Option<crate::server::tls::TlsAccept>,
    /// The HTTP/1 fast lane of the main application, when its configuration allows one.
    pub lane: Option<Arc<crate::backend::lane::Lane>>,
    /// How long a client may take to send a request's headers (`--header-read-timeout`).
    pub header_read_timeout: std::time::Duration,
    /// The backends whose sessions live on one worker (stdio): a plain connection is served
    /// where its first request's session lives ([`crate::server::affinity`]).
    pub homes: Option<crate::server::affinity::Homes>,
    /// Counts the connections handed to their session's worker.
    pub placed: prometheus_client::metrics::counter::Counter,
}

/// A connection slot of `--max-connections`, held while the connection lives.
pub type Slot = tokio::sync::OwnedSemaphorePermit;

/// A connection as it reaches a worker.
enum Socket {
    /// Accepted from a listener: adopted (and, on the TLS listener, its handshake made) by
    /// the worker, which may hand it on to the worker of its session.
    Accepted(std::net::TcpStream, Listener),
    /// A plain connection handed on by the worker that accepted it: served here.
    Placed(std::net::TcpStream),
    /// A TLS connection handed on after its handshake, with the first bytes read through
    /// it: served here.
    PlacedTls(Box<TlsStream<Roaming>>, Bytes),
}

/// A connection handed to a worker.
struct Conn {
    socket: Socket,
    peer: SocketAddr,
    slot: Slot,
}

/// Where a worker takes connections, and how many it serves.
#[derive(Clone)]
struct Inbox {
    conns: mpsc::UnboundedSender<Conn>,
    /// Connections this worker currently serves.
    load: Arc<AtomicUsize>,
}

impl Inbox {
    fn give(&self, conn: Conn) {
        self.load.fetch_add(1, Ordering::Relaxed);
        if self.conns.send(conn).is_err() {
            self.load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Worker {
    /// Resolves when the worker has no connection left after the stop signal.
    drained: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The running worker threads.
pub struct Workers {
    /// Where each worker takes connections (by index).
    inboxes: Arc<[Inbox]>,
    workers: Vec<Worker>,
    stop: watch::Sender<bool>,
    release: watch::Sender<bool>,
}

impl Workers {
    /// Starts `count` workers serving `app`.
    pub fn start(count: usize, apps: Apps) -> std::io::Result<Self> {
        let (stop, _) = watch::channel(false);
        let (release, _) = watch::channel(false);
        let count = count.max(1);
        let mut workers = Vec::with_capacity(count);
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..count)
            .map(|_| {
                let (conns, rx) = mpsc::unbounded_channel();
                let load = Arc::new(AtomicUsize::new(0));
                (Inbox { conns, load }, rx)
            })
            .unzip();
        let inboxes: Arc<[Inbox]> = inboxes.into();
        for (index, rx) in receivers.into_iter().enumerate() {
            let (drained_tx, drained) = oneshot::channel();
            let job = WorkerJob {
                index,
                apps: apps.clone(),
                rx,
                inboxes: inboxes.clone(),
                stop: stop.subscribe(),
                release: release.subscribe(),
                drained: drained_tx,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("mcp-worker-{index}"))
                .spawn(move || {
                    crate::worker::set_current(index);
                    runtime.block_on(job.run());
                })?;
            workers.push(Worker {
                drained: Some(drained),
                thread: Some(thread),
            });
        }
        Ok(Self {
            inboxes,
            workers,
            stop,
            release,
        })
    }

    /// Hands a new connection to the worker serving the fewest.
    pub fn dispatch(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        from: Listener,
        slot: Slot,
    ) {
        let Some(inbox) = self
            .inboxes
            .iter()
            .min_by_key(|i| i.load.load(Ordering::Relaxed))
        else {
            return;
        };
        inbox.give(Conn {
            socket: Socket::Accepted(stream, from),
            peer,
            slot,
        });
    }

    /// Tells every connection to finish its current requests and close.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Resolves when every worker has closed all its connections (after [`Workers::stop`]).
    pub async fn drained(&mut self) {
        for w in &mut self.workers {
            if let Some(rx) = w.drained.take() {
                let _ = rx.await;
            }
        }
    }

    /// Ends the worker runtimes (dropping whatever still runs on them) and joins the threads.
    pub async fn finish(mut self) {
        let _ = self.release.send(true);
        let threads: Vec<_> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.thread.take())
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

struct WorkerJob {
    index: usize,
    apps: Apps,
    rx: mpsc::UnboundedReceiver<Conn>,
    /// Every worker's inbox (this one's at `index`, with its load), to hand a connection to
    /// its session's.
    inboxes: Arc<[Inbox]>,
    stop: watch::Receiver<bool>,
    release: watch::Receiver<bool>,
    drained: oneshot::Sender<()>,
}

impl WorkerJob {
    /// How this worker places the connections it accepts; `None` when it serves them all
    /// itself (no backend places its sessions, or there is no other worker).
    fn placing(&self) -> Option<Placing> {
        let homes = self.apps.homes.clone().filter(|_| self.inboxes.len() > 1)?;
        Some(Placing {
            homes,
            index: self.index,
            inboxes: self.inboxes.clone(),
            placed: self.apps.placed.clone(),
        })
    }

    async fn run(mut self) {
        // Not tracked: it runs until the runtime is dropped.
        tokio::spawn(crate::server::timer_anchor::hold());
        let tracker = TaskTracker::new();
        let mut stop = self.stop.clone();
        loop {
            let next = tokio::select! {
                c = self.rx.recv() => c,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(Conn { socket, peer, slot }) = next else {
                break;
            };
            let guard = LoadGuard {
                load: self.inboxes[self.index].load.clone(),
                slot: Some(slot),
            };
            let serving = |app: Router, lane| Serving {
                peer,
                app,
                lane,
                stop: self.stop.clone(),
                load: guard,
                header_read_timeout: self.apps.header_read_timeout,
            };
            // A placed connection was set up by the worker that accepted it.
            let accepted = matches!(socket, Socket::Accepted(..));
            let (stream, from, placing) = match socket {
                Socket::PlacedTls(mut tls, head) => {
                    if let Err(e) = tls.get_mut().0.unpark() {
                        tracing::debug!(error = %e, worker = self.index, "could not adopt a connection");
                        continue;
                    }
                    let serving = serving(self.apps.main.clone(), self.apps.lane.clone());
                    tracker.spawn(serving.serve(Prefixed::new(head, *tls)));
                    continue;
                }
                Socket::Placed(stream) => (stream, Listener::Plain, None),
                Socket::Accepted(stream, from) => (stream, from, self.placing()),
            };
            let stream = match TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, worker = self.index, "could not adopt a connection");
                    continue;
                }
            };
            // Small writes (an SSE event, a short JSON answer) must leave at once: without
            // TCP_NODELAY, Nagle's algorithm holds them for the client's delayed ACK (~40 ms).
            if accepted && let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            match (from, &self.apps.tls) {
                (Listener::Tls, Some(tls)) => {
                    let tls = tls.clone();
                    let serving = serving(self.apps.main.clone(), self.apps.lane.clone());
                    tracker.spawn(async move {
                        let handshake = tls.handshake(Roaming::new(stream));
                        if let Ok(Some(stream)) =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await
                        {
                            after_handshake(stream, serving, placing).await;
                        }
                    });
                }
                (Listener::Plain, _) => {
                    // The plain listener serves the application itself unless TLS is on (its
                    // redirects are not placed).
                    let (serving, placing) = match &self.apps.plain {
                        Some(plain) => (serving(plain.clone(), None), None),
                        None => {
                            let lane = self.apps.lane.clone();
                            (serving(self.apps.main.clone(), lane), placing)
                        }
                    };
                    match placing {
                        Some(placing) => tracker.spawn(placing.plain(stream, serving)),
                        None => tracker.spawn(serving.serve(stream)),
                    };
                }
                (Listener::Tls, None) => {}
            }
        }
        tracker.close();
        let drain = async {
            tracker.wait().await;
            let _ = self.drained.send(());
            std::future::pending::<()>().await;
        };
        // Released either after draining or, past the grace period, with streams still open
        // (dropping the runtime then closes them).
        tokio::select! {
            _ = drain => {}
            _ = self.release.wait_for(|r| *r) => {}
        }
    }
}

/// Counts a connection against its worker's load, and holds its slot, until dropped.
struct LoadGuard {
    load: Arc<AtomicUsize>,
    /// Always `Some` but while the connection is handed to another worker.
    slot: Option<Slot>,
}

/// What a worker needs to hand a connection to the worker of its session.
struct Placing {
    homes: crate::server::affinity::Homes,
    index: usize,
    inboxes: Arc<[Inbox]>,
    placed: prometheus_client::metrics::counter::Counter,
}

impl Placing {
    /// Serves a plain connection here, or hands it to the worker of its session (its first
    /// request peeked at, left in the socket).
    async fn plain(self, stream: TcpStream, serving: Serving) {
        let Some(home) = serving.first(self.homes.home_of(&stream)).await else {
            return;
        };
        let Some(inbox) = self.elsewhere(home) else {
            return serving.serve(stream).await;
        };
        match stream.into_std() {
            Ok(stream) => self.give(&inbox, Socket::Placed(stream), serving),
            Err(e) => tracing::debug!(error = %e, "could not hand a connection on"),
        }
    }

    /// Serves a TLS connection here, or hands it to the worker of its session with the
    /// first bytes read through it and its TLS state.
    async fn tls(self, mut stream: TlsStream<Roaming>, serving: Serving) {
        let Some(head) = serving.first(first_bytes(&mut stream)).await else {
            return;
        };
        let home = self.homes.home_of_head(&head).await;
        let Some(inbox) = self.elsewhere(home) else {
            return serving.serve(Prefixed::new(head, stream)).await;
        };
        match stream.get_mut().0.park() {
            Ok(()) => self.give(&inbox, Socket::PlacedTls(Box::new(stream), head), serving),
            Err(e) => tracing::debug!(error = %e, "could not hand a connection on"),
        }
    }

    /// The inbox of worker `home`, when that is another worker.
    fn elsewhere(&self, home: Option<usize>) -> Option<Inbox> {
        home.filter(|h| *h != self.index)
            .and_then(|h| self.inboxes.get(h))
            .cloned()
    }

    /// Hands the connection to `inbox`: its slot goes with it, and this worker's count of
    /// it ends with `serving`. Counted first: once handed over, the other worker may answer
    /// the request before this thread runs again.
    fn give(&self, inbox: &Inbox, socket: Socket, mut serving: Serving) {
        let Some(slot) = serving.load.slot.take() else {
            return;
        };
        self.placed.inc();
        inbox.give(Conn {
            socket,
            peer: serving.peer,
            slot,
        });
    }
}

/// A TLS connection after its handshake: HTTP/2 is the general stack's and served here;
/// HTTP/1 is placed when this worker places connections.
async fn after_handshake(
    stream: TlsStream<Roaming>,
    mut serving: Serving,
    placing: Option<Placing>,
) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        serving.lane = None;
    }
    match placing.filter(|_| !h2) {
        Some(placing) => placing.tls(stream, serving).await,
        None => serving.serve(stream).await,
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often an idle HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const H2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a connection is served with but the connection itself.
struct Serving {
    peer: SocketAddr,
    app: Router,
    lane: Option<Arc<crate::backend::lane::Lane>>,
    stop: watch::Receiver<bool>,
    /// Held while the connection is served here.
    load: LoadGuard,
    header_read_timeout: std::time::Duration,
}

impl Serving {
    /// What `read` gives of a connection's first bytes, within `--header-read-timeout` and
    /// until the stop; `None` when the connection is done (silent that long, closed, failed,
    /// or the server stopping), as the server itself would have ended it.
    async fn first<T>(&self, read: impl Future<Output = std::io::Result<T>>) -> Option<T> {
        let mut stop = self.stop.clone();
        tokio::select! {
            r = tokio::time::timeout(self.header_read_timeout, read) => r.ok()?.ok(),
            _ = stop.wait_for(|s| *s) => None,
        }
    }

    /// Serves `stream`: in the fast lane while its requests are the lane's, then (or else)
    /// with the general stack.
    async fn serve<I>(self, stream: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Serving {
            peer,
            app,
            lane,
            mut stop,
            load: _load,
            header_read_timeout,
        } = self;
        match lane {
            Some(lane) => {
                if let Some(rest) = lane
                    .serve(stream, peer, &app, &mut stop, header_read_timeout)
                    .await
                {
                    serve_general(rest, peer, app, stop, header_read_timeout).await;
                }
            }
            None => serve_general(stream, peer, app, stop, header_read_timeout).await,
        }
    }
}

/// Serves a connection with hyper (HTTP/1 or HTTP/2) and the router.
async fn serve_general<I>(
    stream: I,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: std::time::Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // Slowloris: a client that trickles its headers is cut off.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // HTTP/2 (over TLS): a peer that stops answering pings is dropped, so dead connections
    // do not hold their slot of --max-connections.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}
