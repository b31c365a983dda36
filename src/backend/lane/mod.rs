//! The HTTP/1 fast lane: `POST` to the MCP endpoint (and, for an HTTP upstream, `GET`, a
//! client's SSE stream), read and answered without the general HTTP stack.
//!
//! Every MCP message a client sends is such a request, and on that path the general stack
//! (hyper's server and client state machines, header maps, the router and its middleware,
//! the client's connection task) cost about twice nginx's CPU per request (BENCHMARKS.md).
//! The lane reads the request head with `httparse` and checks it exactly as the general path
//! does (the same guard, gate, session and header functions). Then, behind an HTTP upstream,
//! it writes the upstream request in one piece on a pooled connection of the same worker
//! thread and relays the answer as it arrives: whole when small and of known length, chunk by
//! chunk otherwise (SSE included). Behind a stdio server it hands the request to the bridge
//! as the router's `proxy` handler does ([`crate::backend::Backend::serve`], `bridge.rs`) and
//! writes the bridge's answer itself, watching the client meanwhile as hyper does.
//!
//! It serves only the ordinary case. Other plain HTTP/1.1 requests with a small body of
//! known length — another method or path, a query, `Origin` (CORS), cookies, and every
//! request the gate or the session check refuses — are answered by the router (the general
//! path's handlers and middleware) within the lane, so a client's discovery requests or a
//! 401 do not take its connection out of the lane. What the lane does not read itself —
//! HTTP/1.0 or HTTP/2, `Expect`, `Upgrade`, chunked or large request bodies, a head it does
//! not fully understand — hands the connection, with the bytes already read, to the general
//! stack, which serves it to the end. The client cannot tell which served it: the
//! differential tests in `tests/it/fastlane.rs` (an HTTP upstream) and
//! `tests/it/bridge_lane.rs` (the stdio bridge) check this header by header.
//!
//! The lane knows nothing of the server above it: the server hands it the router and what
//! it reads ([`Shared`]), and gives it connections.

mod answer;
mod bridge;
pub mod chunked;
pub mod prefixed;
mod relay;
mod request;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Method, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tower::ServiceExt;
use url::Url;

use self::answer::{LAST_CHUNK, chunk, emit, line, status_line};
use self::prefixed::Prefixed;
use self::relay::{connect_to, request_line};
use self::request::parts_of_head;
use self::upstream::Pools;
use crate::backend::http::{ClientInfo, HOP_BY_HOP, HttpBackend, WHOLE_RESPONSE_LIMIT};
use crate::backend::{Backend, mapping, sessions};
use crate::config::Site;
use crate::gate::{Caller, TokenCache, check_token};
use crate::metrics::Metrics;
use crate::store::Repo;

/// Longest request head the lane reads before handing the connection on.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Longest header name the lane reads (longer ones go to the general stack).
const MAX_NAME: usize = 64;

/// Largest request body the lane reads for the router (the authorization server's forms
/// and JSON are smaller; larger bodies go to the general stack, which streams them).
const ROUTED_BODY_LIMIT: usize = 64 * 1024;

/// How much of a streamed answer the lane gathers before writing it out, when its pieces
/// come faster than they can be written.
const WRITE_AT: usize = 64 * 1024;

/// Most header fields in a request the lane serves.
const MAX_REQUEST_HEADERS: usize = 64;

/// Upstream request headers only the lane writes (a `--proxy-headers` entry of one of these
/// names keeps the lane off: the general path's replacement rules then apply).
const LANE_WRITES: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// What the lane reads of the running proxy, handed down by the server.
pub struct Shared {
    pub site: Site,
    pub repo: Repo,
    /// The gate's cache: the same one the general path and revocation use.
    pub tokens: Arc<TokenCache>,
    pub metrics: Arc<Metrics>,
    /// `--max-body`.
    pub max_body: usize,
    /// `--body-read-timeout`.
    pub body_read_timeout: Duration,
}

/// The lane, set up for one proxy.
pub struct Lane {
    shared: Shared,
    behind: Behind,
    /// The HSTS header line on the https side.
    hsts: Option<&'static str>,
    ok_count: OnceLock<Counter>,
    upstream_seconds: OnceLock<Histogram>,
}

/// The MCP server the lane's requests go to.
enum Behind {
    /// An HTTP one: the lane writes the upstream request itself and relays the answer.
    Http(Box<HttpUpstream>),
    /// A stdio one: the request goes to the bridge as the router's `proxy` handler hands it
    /// over ([`Backend::serve`]), and its answer is written by the lane.
    Bridge(Arc<dyn Backend>),
}

/// What the lane writes to an HTTP upstream, prepared once.
struct HttpUpstream {
    backend: Arc<HttpBackend>,
    /// `POST <target> HTTP/1.1` and `host:` for the MCP path's upstream URL.
    request_line: Vec<u8>,
    /// The same with `GET`: a client opening its SSE stream.
    stream_line: Vec<u8>,
    /// The upstream URL of the MCP path (redirects are resolved against it).
    target: Url,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and the `--proxy-headers`, as header lines.
    fixed_headers: Vec<u8>,
    static_names: Vec<HeaderName>,
    pools: Pools,
}

/// Where a request's head and body end, and whether the connection ends after it.
#[derive(Clone, Copy)]
struct Message {
    head_len: usize,
    body_len: usize,
    /// The client asked to close after this exchange.
    close: bool,
}

/// What the lane read from a request head it will proxy.
struct Plan {
    message: Message,
    /// A `GET` (the client's SSE stream), not a `POST`.
    stream: bool,
    token: String,
    /// The session the request names, when its owner is checked here (an HTTP upstream's
    /// sessions are recorded in the store; the bridge knows its own and refuses another
    /// user's itself).
    session_id: Option<String>,
    /// The client's header lines that go upstream as they came.
    headers: Vec<u8>,
    forwarded_for: String,
    /// The client's address, for the request log (only when it is written).
    client: Option<IpAddr>,
    /// The head as `http` parts, for the bridge (which reads them as the router hands them).
    parts: Option<http::request::Parts>,
    /// Who sent it.
    from: ClientInfo,
}

impl Plan {
    fn method(&self) -> &'static str {
        if self.stream { "GET" } else { "POST" }
    }
}

/// A request the router answers within the lane: its head as `http` parts.
struct Routed {
    message: Message,
    parts: http::request::Parts,
}

enum Parsed {
    Partial,
    /// Not for the lane: the general stack serves the connection from here on.
    Other,
    Route(Routed),
    Ready(Plan),
}

/// What the lane does with the request it read.
enum Next {
    Proxy(Plan, Caller),
    Route(Routed),
}

/// How an exchange went wrong before the answer began.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Bad(upstream::BadResponse),
}

impl Lane {
    /// What the lane makes of a request head `buf` from `peer`: `partial`, `other` (the
    /// general stack's), `route` (answered by the router within the lane) or `proxy`. For
    /// the fuzz target, which drives [`Lane::parse`] with hostile heads.
    pub fn parse_kind(&self, buf: &[u8], peer: IpAddr) -> &'static str {
        match self.parse(buf, peer) {
            Parsed::Partial => "partial",
            Parsed::Other => "other",
            Parsed::Route(_) => "route",
            Parsed::Ready(_) => "proxy",
        }
    }

    /// The lane for `backend`, when its configuration is one the lane serves exactly as the
    /// general path does: an `http://` upstream, no signed identity assertion
    /// (`signs_assertions`), no provider token passed on, and header options without
    /// overlaps. `hsts` is the header value the https side adds.
    pub fn new(
        backend: Arc<HttpBackend>,
        shared: Shared,
        signs_assertions: bool,
        hsts: Option<&'static str>,
        workers: usize,
    ) -> Option<Self> {
        if signs_assertions {
            return None;
        }
        let opts = backend.options();
        if opts.pass_access_token {
            return None;
        }
        let mcp_path = shared.site.server.mcp_path.as_str();
        let target = mapping::upstream_url(backend.base(), mcp_path, mcp_path, None);
        if target.scheme() != "http" {
            return None;
        }
        let (host, port) = connect_to(&target)?;
        // Names set twice (by a static header and identity, or two identity headers) are
        // replaced in order by the general path; the lane writes lines once each.
        let mut ours: Vec<&str> = opts.headers.iter().map(|(n, _)| n.as_str()).collect();
        ours.extend(crate::backend::identity::our_names(opts));
        let mut distinct = ours.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != ours.len()
            || opts
                .headers
                .iter()
                .any(|(n, _)| LANE_WRITES.contains(&n.as_str()) || HOP_BY_HOP.contains(&n.as_str()))
        {
            tracing::debug!("the header options overlap: every request takes the general path");
            return None;
        }
        let authority = &target[url::Position::BeforeHost..url::Position::AfterPort];
        let path = &target[url::Position::BeforePath..url::Position::AfterQuery];
        let (post_line, stream_line) = (
            request_line("POST", path, authority),
            request_line("GET", path, authority),
        );
        let (proto, fhost) = backend.forwarded();
        let mut fixed_headers = Vec::new();
        line(&mut fixed_headers, "x-forwarded-proto", proto.as_bytes());
        line(&mut fixed_headers, "x-forwarded-host", fhost.as_bytes());
        for (name, value) in &opts.headers {
            line(&mut fixed_headers, name.as_str(), value.as_bytes());
        }
        let http = HttpUpstream {
            static_names: opts.headers.iter().map(|(n, _)| n.clone()).collect(),
            pools: Pools::new(host, port, opts.connect_timeout, workers),
            request_line: post_line,
            stream_line,
            target,
            fixed_headers,
            backend,
        };
        Some(Self::with(Behind::Http(Box::new(http)), shared, hsts))
    }

    /// The lane for a stdio `backend` (the bridge): its POSTs to the MCP endpoint are read
    /// and checked here and handed to the bridge as the router's `proxy` handler hands them.
    /// The bridge reads nothing of a request's hand-off but the caller and the site (no
    /// identity assertion or provider token goes to a child over HTTP), so no option keeps
    /// this lane off.
    pub fn bridging(backend: Arc<dyn Backend>, shared: Shared, hsts: Option<&'static str>) -> Self {
        Self::with(Behind::Bridge(backend), shared, hsts)
    }

    fn with(behind: Behind, shared: Shared, hsts: Option<&'static str>) -> Self {
        Self {
            shared,
            behind,
            hsts,
            ok_count: OnceLock::new(),
            upstream_seconds: OnceLock::new(),
        }
    }

    /// The backend's name in the metrics.
    fn backend_kind(&self) -> &'static str {
        match &self.behind {
            Behind::Http(http) => http.backend.kind(),
            Behind::Bridge(backend) => backend.kind(),
        }
    }

    /// Serves requests on `io` while they are the lane's; returns the connection, with what
    /// was read of the next request, when one is not (`None` once the connection is over).
    pub async fn serve<I>(
        &self,
        mut io: I,
        peer: SocketAddr,
        router: &Router,
        stop: &mut watch::Receiver<bool>,
        header_read_timeout: Duration,
    ) -> Option<Prefixed<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut head_timer = Deadline::new(header_read_timeout);
        // Armed at the first exchange with an HTTP upstream (a bridge's calls have no
        // deadline of their own, as on the general path).
        let mut upstream_timer = None;
        let mut body_timer = Deadline::new(self.shared.body_read_timeout);
        loop {
            head_timer.restart();
            let (next, started) = loop {
                if !buf.is_empty() {
                    let started = Instant::now();
                    match self.parse(&buf, peer.ip()) {
                        Parsed::Ready(plan) => break (self.authorized(plan, &buf).await, started),
                        Parsed::Route(routed) => break (Some(Next::Route(routed)), started),
                        Parsed::Partial if buf.len() < MAX_REQUEST_HEAD => {}
                        Parsed::Partial | Parsed::Other => {
                            return Some(Prefixed::new(buf.freeze(), io));
                        }
                    }
                } else if *stop.borrow() {
                    return None;
                }
                buf.reserve(4096);
                let idle = buf.is_empty();
                let read = tokio::select! {
                    r = io.read_buf(&mut buf) => r,
                    // Too slow to send its headers (slowloris), or idle that long: done.
                    () = head_timer.passed() => return None,
                    _ = stop.wait_for(|s| *s), if idle => return None,
                };
                // Closed or failed: done.
                if !matches!(read, Ok(n) if n > 0) {
                    return None;
                }
            };
            let Some(next) = next else {
                return Some(Prefixed::new(buf.freeze(), io));
            };
            let Message {
                head_len, body_len, ..
            } = match &next {
                Next::Proxy(plan, _) => plan.message,
                Next::Route(r) => r.message,
            };
            let total = head_len + body_len;
            body_timer.restart();
            while buf.len() < total {
                buf.reserve(total - buf.len());
                let read = tokio::select! {
                    r = io.read_buf(&mut buf) => r,
                    // A body that trickles in or stops (--body-read-timeout): done.
                    () = body_timer.passed() => return None,
                };
                if !matches!(read, Ok(n) if n > 0) {
                    return None;
                }
            }
            let body = buf.split_to(total).freeze().slice(head_len..);
            let answered = match (next, &self.behind) {
                (Next::Proxy(plan, caller), Behind::Http(http)) => {
                    // A stream may stay open for hours, mostly idle: its head's buffer is
                    // not held for it (as for the router's answers below).
                    if plan.stream && buf.is_empty() {
                        buf = BytesMut::new();
                    }
                    let timer = upstream_timer.get_or_insert_with(|| {
                        Deadline::new(http.backend.options().response_timeout)
                    });
                    self.exchange(http, &mut io, &plan, &caller, body, timer, started)
                        .await
                }
                (Next::Proxy(plan, caller), Behind::Bridge(backend)) => {
                    let backend = backend.as_ref();
                    self.bridge(backend, &mut io, &mut buf, plan, &caller, body, started)
                        .await
                }
                (Next::Route(routed), _) => {
                    // The router's answer may stream for hours (an SSE stream): the head's
                    // buffer is not held for it when nothing of a next request is in it
                    // (allocated again for the next head). Measured with bench/scale.sh:
                    // 32.3 KiB per idle stream before, 27.6 after.
                    if buf.is_empty() {
                        buf = BytesMut::new();
                    }
                    self.route(&mut io, &mut buf, router, peer, routed, body)
                        .await
                }
            };
            match answered {
                Ok(true) => {}
                Ok(false) => {
                    let _ = io.shutdown().await;
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fast lane: connection ended mid-answer");
                    return None;
                }
            }
        }
    }

    /// Proxying with the caller when the token is good and any session theirs; else the
    /// router's answer (the gate's or the session check's refusal), or `None` when `head`
    /// cannot be given to the router.
    async fn authorized(&self, plan: Plan, head: &[u8]) -> Option<Next> {
        let shared = &self.shared;
        // A token bound to a DPoP key never passes as a bearer token: the router's gate
        // answers it.
        if let Ok(caller) =
            check_token(&shared.repo, &shared.tokens, &shared.site, &plan.token).await
            && caller.record().jkt.is_none()
            && !shared.site.require_dpop
        {
            let owned = match &plan.session_id {
                Some(id) => matches!(
                    sessions::owned_by(&shared.repo, id, caller.subject()).await,
                    Ok(true)
                ),
                None => true,
            };
            if owned {
                return Some(Next::Proxy(plan, caller));
            }
        }
        // The bridge's plan has the head's parts already; an HTTP one reads them now.
        let parts = match plan.parts {
            Some(parts) => parts,
            None => parts_of_head(&head[..plan.message.head_len])?,
        };
        Some(Next::Route(Routed {
            message: plan.message,
            parts,
        }))
    }

    /// Answers a request with the router (the general path's handlers and middleware) and
    /// writes the answer as hyper would; the connection stays in the lane.
    async fn route<I>(
        &self,
        io: &mut I,
        buf: &mut BytesMut,
        router: &Router,
        peer: SocketAddr,
        routed: Routed,
        body: Bytes,
    ) -> std::io::Result<bool>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let head_only = routed.parts.method == Method::HEAD;
        let mut req = http::Request::from_parts(routed.parts, Body::from(body));
        req.extensions_mut().insert(ConnectInfo(peer));
        let Some(Ok(resp)) = unless_gone(router.clone().oneshot(req), io, buf).await else {
            return Err(gone());
        };
        self.respond(io, resp, head_only, routed.message.close, Some(buf))
            .await
    }

    /// Writes `resp` as hyper would: `Date` added, a length when the body's is known, else
    /// chunked; no body after a HEAD request or on 1xx/204/304. `Ok(false)` when `close`.
    /// With `watch`, the client is watched while a streamed body waits, as hyper watches it:
    /// one that leaves ends the answer (its body dropped: a stream's end, a call's
    /// cancellation), and what it sends meanwhile is kept in `watch` for later.
    async fn respond<I>(
        &self,
        io: &mut I,
        resp: Response,
        head_only: bool,
        close: bool,
        mut watch: Option<&mut BytesMut>,
    ) -> std::io::Result<bool>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status.as_u16();
        let mut out = Vec::with_capacity(512);
        status_line(&mut out, status);
        let (mut has_date, mut length) = (false, None);
        // No length on an answer that can have no body (as hyper).
        let lengthless = matches!(status, 100..=199 | 204);
        for (name, value) in &parts.headers {
            // Framing and the connection are the server's to say.
            if name == header::TRANSFER_ENCODING
                || name == header::CONNECTION
                || (lengthless && name == header::CONTENT_LENGTH)
            {
                continue;
            }
            has_date |= name == header::DATE;
            if name == header::CONTENT_LENGTH {
                length = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            }
            line(&mut out, name.as_str(), value.as_bytes());
        }
        if !has_date {
            line(&mut out, "date", self.date().as_bytes());
        }
        let bodiless = matches!(status, 100..=199 | 204 | 304);
        let exact = body.size_hint().exact();
        if !bodiless && length.is_none() {
            length = exact;
            if let Some(n) = exact {
                line(&mut out, "content-length", n.to_string().as_bytes());
            }
        }
        let chunked = !bodiless && length.is_none();
        if chunked && !head_only {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if bodiless || head_only {
            emit(io, &out).await?;
            return Ok(!close);
        }
        if length.is_some_and(|n| n <= WHOLE_RESPONSE_LIMIT) {
            // A page or a JSON answer: with its head in one write.
            let whole = body.collect().await.map_err(std::io::Error::other)?;
            out.extend_from_slice(&whole.to_bytes());
            emit(io, &out).await?;
            return Ok(!close);
        }
        // What the body has ready goes out with what is waiting (the head, at first), and
        // the rest as it comes: a stream answered at once (the bridge's answer to a call, an
        // event and the end) leaves in one write, as hyper writes it, where a write per
        // piece cost the client a wake-up each.
        loop {
            if out.len() >= WRITE_AT {
                emit(io, &out).await?;
                out.clear();
            }
            let next = match body.frame().now_or_never() {
                Some(next) => next,
                None => {
                    if !out.is_empty() {
                        emit(io, &out).await?;
                        out.clear();
                    }
                    match watch.as_deref_mut() {
                        Some(buf) => unless_gone(body.frame(), io, buf).await.ok_or_else(gone)?,
                        None => body.frame().await,
                    }
                }
            };
            let Some(frame) = next else {
                break;
            };
            let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
                continue;
            };
            if chunked {
                chunk(&mut out, &data);
            } else {
                out.extend_from_slice(&data);
            }
        }
        if chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
        if !out.is_empty() {
            emit(io, &out).await?;
        }
        Ok(!close)
    }
}

/// Runs `work` while watching the client: `None` when it left first (closed the
/// connection, or it failed). What it sends meanwhile (a request pipelined behind this one)
/// is kept in `buf`, up to a request head's worth; past that it is not read until later.
/// Dropping `work` then is what hyper does with a request whose client left: a stream's
/// end, a call's cancellation at the MCP server.
async fn unless_gone<I, T>(
    work: impl Future<Output = T>,
    io: &mut I,
    buf: &mut BytesMut,
) -> Option<T>
where
    I: AsyncRead + Unpin,
{
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            // Cancel-safe: a read that loses the race has taken nothing.
            read = io.read_buf(buf), if buf.len() < MAX_REQUEST_HEAD => {
                if !matches!(read, Ok(n) if n > 0) {
                    return None;
                }
            }
        }
    }
}

/// The error of an answer whose client left before its end.
fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the client left before its answer ended",
    )
}

/// A timeout restarted far more often than it fires (once per request on a keep-alive
/// connection). Restarting only moves the target; the timer is re-armed when it fires
/// before it. (A timer registered per request wakes the runtime's driver each time: a
/// syscall per request, measured.)
struct Deadline {
    period: Duration,
    at: tokio::time::Instant,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(period: Duration) -> Self {
        let at = tokio::time::Instant::now() + period;
        Self {
            period,
            at,
            sleep: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    fn restart(&mut self) {
        self.at = tokio::time::Instant::now() + self.period;
    }

    /// Resolves once the current target has passed.
    async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if tokio::time::Instant::now() >= self.at {
                return;
            }
            self.sleep.as_mut().reset(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::request::lowercase;
    use super::*;
    use crate::request_head::visible_ascii;

    #[test]
    fn where_to_connect_and_what_to_send() {
        let at = |u: &str| connect_to(&Url::parse(u).unwrap());
        assert_eq!(at("http://[::1]:8080/mcp"), Some(("::1".into(), 8080)));
        assert_eq!(at("http://up/mcp"), Some(("up".into(), 80)));
        assert_eq!(at("http://127.0.0.1:9/"), Some(("127.0.0.1".into(), 9)));
        assert_eq!(
            request_line("POST", "/api/mcp?k=1", "up:9000"),
            b"POST /api/mcp?k=1 HTTP/1.1\r\nhost: up:9000\r\n"
        );
        let mut out = Vec::new();
        chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
        chunk(&mut out, b"hello");
        assert_eq!(out, b"5\r\nhello\r\n");
        for (status, line) in [
            (200, &b"HTTP/1.1 200 OK\r\n"[..]),
            (404, b"HTTP/1.1 404 Not Found\r\n"),
            (599, b"HTTP/1.1 599 \r\n"),
        ] {
            let mut out = Vec::new();
            status_line(&mut out, status);
            assert_eq!(out, line);
        }
        assert_eq!(visible_ascii(b"Bearer abc"), Some("Bearer abc"));
        assert_eq!(visible_ascii("caf\u{e9}".as_bytes()), None);
        assert_eq!(visible_ascii(b"a\x7fb"), None);
        let mut buf = [0u8; MAX_NAME];
        assert_eq!(
            lowercase("Content-Length", &mut buf),
            Some("content-length")
        );
        assert_eq!(lowercase(&"x".repeat(MAX_NAME + 1), &mut buf), None);
        assert_eq!(lowercase(&"X".repeat(MAX_NAME + 1), &mut buf), None);
        assert_eq!(
            lowercase("mcp-session-id", &mut buf),
            Some("mcp-session-id")
        );
    }
}
