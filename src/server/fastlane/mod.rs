//! The HTTP/1 fast lane: `POST` to the MCP endpoint of an HTTP upstream, parsed and proxied
//! without the general HTTP stack.
//!
//! Every proxied MCP message is such a request, and on that path the general stack (hyper's
//! server and client state machines, header maps, the router, the client's connection task)
//! cost about twice nginx's CPU per request (BENCHMARKS.md). The lane reads the request head
//! with `httparse`, checks it exactly as the general path does (the same guard, gate,
//! session and header functions), writes the upstream request in one piece on a pooled
//! connection of the same worker thread, and relays the answer as it arrives: whole when
//! small and of known length, chunk by chunk otherwise (SSE included).
//!
//! It proxies only the ordinary case. Other plain HTTP/1.1 requests with a small body of
//! known length — another method or path, a query, `Origin` (CORS), cookies, and every
//! request the gate or the session check refuses — are answered by the router (the general
//! path's handlers and middleware) within the lane, so a client's discovery requests or a
//! 401 do not take its connection out of the lane. What the lane does not read itself —
//! HTTP/1.0 or HTTP/2, `Expect`, `Upgrade`, chunked or large request bodies, a head it does
//! not fully understand — hands the connection, with the bytes already read, to the general
//! stack, which serves it to the end. The client cannot tell which served it: the
//! differential test in `tests/it/fastlane.rs` checks this header by header.

pub mod chunked;
pub mod prefixed;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tower::ServiceExt;
use url::Url;

use self::chunked::Chunked;
use self::prefixed::Prefixed;
use self::upstream::{Conn, Framing, Head, Pools};
use super::AppState;
use super::guard;
use crate::backend::exchange::{self, UpstreamFailure};
use crate::backend::http::{
    self as proxy, ClientInfo, HOP_BY_HOP, HttpBackend, REPLAY_LIMIT, WHOLE_RESPONSE_LIMIT,
};
use crate::backend::{identity, mapping, sessions};
use crate::error::jsonrpc_error;
use crate::gate::{Caller, bearer_value, check_token};

/// Longest request head the lane reads before handing the connection on.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Longest header name the lane reads (longer ones go to the general stack).
const MAX_NAME: usize = 64;

/// Largest request body the lane reads for the router (the authorization server's forms
/// and JSON are smaller; larger bodies go to the general stack, which streams them).
const ROUTED_BODY_LIMIT: usize = 64 * 1024;

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

/// The lane, set up for one proxy.
pub struct Lane {
    app: AppState,
    backend: Arc<HttpBackend>,
    /// `POST <target> HTTP/1.1` and `host:` for the MCP path's upstream URL.
    request_line: Vec<u8>,
    /// The upstream URL of the MCP path (redirects are resolved against it).
    target: Url,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and the `--proxy-headers`, as header lines.
    fixed_headers: Vec<u8>,
    static_names: Vec<HeaderName>,
    /// The HSTS header line on the https side.
    hsts: Option<&'static str>,
    pools: Pools,
    ok_count: OnceLock<Counter>,
    upstream_seconds: OnceLock<Histogram>,
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
    token: String,
    session_id: Option<String>,
    /// The client's header lines that go upstream as they came.
    headers: Vec<u8>,
    forwarded_for: String,
    /// The client's address, for the request log (only when it is written).
    client: Option<IpAddr>,
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
    /// The lane for `app`, when its configuration is one the lane serves exactly as the
    /// general path does: an `http://` upstream, no signed identity assertion, no provider
    /// token passed on, and header options without overlaps. `hsts` is the header value the
    /// https side adds.
    pub fn new(app: AppState, hsts: Option<&'static str>, workers: usize) -> Option<Self> {
        let backend = app.http_backend.clone()?;
        if app.stdio_backend.is_some() || app.assertion.is_some() {
            return None;
        }
        let opts = backend.options();
        if opts.pass_access_token {
            return None;
        }
        let mcp_path = app.site().mcp_path.as_str();
        let target = mapping::upstream_url(backend.base(), mcp_path, mcp_path, None);
        if target.scheme() != "http" {
            return None;
        }
        let (host, port) = connect_to(&target)?;
        // Names set twice (by a static header and identity, or two identity headers) are
        // replaced in order by the general path; the lane writes lines once each.
        let mut ours: Vec<&str> = opts.headers.iter().map(|(n, _)| n.as_str()).collect();
        let i = &opts.identity;
        ours.extend([&i.user, &i.email, &i.name, &i.groups].map(HeaderName::as_str));
        ours.extend(opts.mapping.iter().map(|(_, n)| n.as_str()));
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
        let request_line = request_line(path, authority);
        let (proto, fhost) = backend.forwarded();
        let mut fixed_headers = Vec::new();
        line(&mut fixed_headers, "x-forwarded-proto", proto.as_bytes());
        line(&mut fixed_headers, "x-forwarded-host", fhost.as_bytes());
        for (name, value) in &opts.headers {
            line(&mut fixed_headers, name.as_str(), value.as_bytes());
        }
        Some(Self {
            static_names: opts.headers.iter().map(|(n, _)| n.clone()).collect(),
            pools: Pools::new(host, port, opts.connect_timeout, workers),
            request_line,
            target,
            fixed_headers,
            hsts,
            app,
            backend,
            ok_count: OnceLock::new(),
            upstream_seconds: OnceLock::new(),
        })
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
        let mut upstream_timer = Deadline::new(self.backend.options().response_timeout);
        let mut body_timer = Deadline::new(self.app.body_read_timeout);
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
            let message = buf.split_to(total).freeze();
            let body = message.slice(head_len..);
            let answered = match next {
                Next::Proxy(plan, caller) => {
                    self.exchange(&mut io, &plan, &caller, body, &mut upstream_timer, started)
                        .await
                }
                Next::Route(routed) => self.route(&mut io, router, peer, routed, body).await,
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
        let app = &self.app;
        if let Ok(caller) = check_token(app.repo(), app.tokens(), app.site(), &plan.token).await {
            let owned = match &plan.session_id {
                Some(id) => matches!(
                    sessions::owned_by(app.repo(), id, caller.subject()).await,
                    Ok(true)
                ),
                None => true,
            };
            if owned {
                return Some(Next::Proxy(plan, caller));
            }
        }
        let parts = parts_of_head(&head[..plan.message.head_len])?;
        Some(Next::Route(Routed {
            message: plan.message,
            parts,
        }))
    }

    /// Reads a request head: one to proxy, one for the router, not yet complete, or one for
    /// the general stack.
    fn parse(&self, buf: &[u8], peer: IpAddr) -> Parsed {
        let backend = &self.backend;
        let site = self.app.site();
        let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        if req.version != Some(1) {
            return Parsed::Other;
        }
        // Whether the lane may proxy it itself; else the router answers it here.
        let mut proxied = req.method == Some("POST") && req.path == Some(site.mcp_path.as_str());
        let (mut host, mut forwarded_host, mut authorization) = (None, None, None);
        let (mut session_id, mut length, mut close) = (None, None, false);
        let mut forwarded_for: Vec<&str> = Vec::new();
        // Which of `guard::SINGLE_VALUED` were seen, a bit each (by their place in that list).
        const _: () = assert!(guard::SINGLE_VALUED.len() <= 16);
        let mut seen = 0u16;
        let mut headers = Vec::with_capacity(if proxied { head_len } else { 0 });
        let mut lower = [0u8; MAX_NAME];
        for h in req.headers.iter() {
            // Names are tokens (ASCII); one lowercase copy serves every comparison.
            let Some(name) = lowercase(h.name, &mut lower) else {
                return Parsed::Other;
            };
            match name {
                // The general stack's: interim answers, protocol switches, chunked bodies.
                "expect" | "upgrade" | "transfer-encoding" => return Parsed::Other,
                "content-length" => match visible_ascii(h.value) {
                    Some(v) if length.is_none() => length = Some(v),
                    _ => return Parsed::Other,
                },
                "connection" => {
                    for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                            // It names other headers as hop-by-hop: the general path's
                            // rules.
                            proxied = false;
                        }
                    }
                }
                // The router's: CORS, our cookies.
                "origin" | "cookie" => proxied = false,
                "host" | "authorization" | "mcp-session-id" => {
                    let slot = match name {
                        "host" => &mut host,
                        "authorization" => &mut authorization,
                        _ => &mut session_id,
                    };
                    // Read as the general path reads them (`HeaderValue::to_str`), and only
                    // once: a second copy is the router's to refuse or choose from.
                    match visible_ascii(h.value) {
                        Some(v) if slot.is_none() => *slot = Some(v),
                        _ => proxied = false,
                    }
                }
                "x-forwarded-host" | "x-forwarded-for" => match visible_ascii(h.value) {
                    Some(v) if name == "x-forwarded-for" => forwarded_for.push(v),
                    Some(v) => {
                        forwarded_host.get_or_insert(v);
                    }
                    None => proxied = false,
                },
                // The rest of the single-valued headers are read upstream, not here: a second
                // copy is the router's to refuse, as the general path does.
                _ => {
                    if let Some(i) = guard::SINGLE_VALUED.iter().position(|n| *n == name) {
                        let bit = 1u16 << i;
                        proxied &= seen & bit == 0;
                        seen |= bit;
                    }
                }
            }
            if !proxied
                || backend.never_forwarded(name)
                || self.static_names.iter().any(|n| n == name)
            {
                continue;
            }
            line(&mut headers, h.name, h.value);
        }
        // Digits only (no sign, list or space: the header goes upstream as it came, and
        // the upstream must read the same length the lane did).
        let body_len = match length.map(|v| (v, v.parse::<usize>())) {
            None => 0,
            Some((v, Ok(n))) if v.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => return Parsed::Other,
        };
        let message = Message {
            head_len,
            body_len,
            close,
        };
        let routed = || {
            if body_len > ROUTED_BODY_LIMIT {
                return Parsed::Other;
            }
            match parts_of(&req) {
                Some(parts) => Parsed::Route(Routed { message, parts }),
                None => Parsed::Other,
            }
        };
        if !proxied || body_len > REPLAY_LIMIT.min(self.app.max_body) {
            return routed();
        }
        let trusted = crate::client_addr::is_trusted(&site.trusted_proxies, peer);
        let addressed = guard::authority_of(forwarded_host, host, trusted)
            .is_some_and(|a| guard::host_allowed(site, a));
        let token = authorization.map(bearer_value);
        let (true, Some(Ok(token))) = (addressed, token) else {
            return routed();
        };
        let client = ClientInfo {
            peer,
            peer_trusted: trusted,
        };
        Parsed::Ready(Plan {
            message,
            token: token.to_string(),
            session_id: session_id.map(str::to_string),
            headers,
            forwarded_for: proxy::forwarded_for(&client, forwarded_for.iter().copied()),
            client: tracing::enabled!(target: "mcp_auth_proxy::server", tracing::Level::INFO).then(
                || {
                    crate::client_addr::client_ip_in(
                        &site.trusted_proxies,
                        peer,
                        forwarded_for.into_iter(),
                    )
                },
            ),
        })
    }

    /// Answers a request with the router (the general path's handlers and middleware) and
    /// writes the answer as hyper would; the connection stays in the lane.
    async fn route<I>(
        &self,
        io: &mut I,
        router: &Router,
        peer: SocketAddr,
        routed: Routed,
        body: Bytes,
    ) -> std::io::Result<bool>
    where
        I: AsyncWrite + Unpin,
    {
        let head_only = routed.parts.method == Method::HEAD;
        let mut req = http::Request::from_parts(routed.parts, Body::from(body));
        req.extensions_mut().insert(ConnectInfo(peer));
        let Ok(resp) = router.clone().oneshot(req).await;
        self.respond(io, resp, head_only, routed.message.close)
            .await
    }

    /// Writes `resp` as hyper would: `Date` added, a length when the body's is known, else
    /// chunked; no body after a HEAD request or on 1xx/204/304. `Ok(false)` when `close`.
    async fn respond<I>(
        &self,
        io: &mut I,
        resp: Response,
        head_only: bool,
        close: bool,
    ) -> std::io::Result<bool>
    where
        I: AsyncWrite + Unpin,
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
        emit(io, &out).await?;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(std::io::Error::other)?.into_data() else {
                continue;
            };
            let mut piece = Vec::with_capacity(data.len() + 16);
            if chunked {
                chunk(&mut piece, &data);
            } else {
                piece.extend_from_slice(&data);
            }
            emit(io, &piece).await?;
        }
        if chunked {
            emit(io, LAST_CHUNK).await?;
        }
        Ok(!close)
    }

    /// Proxies one request and writes the answer; `Ok(false)` when the client connection
    /// ends after it, `Err` when it broke during the answer.
    async fn exchange<I>(
        &self,
        client: &mut I,
        plan: &Plan,
        caller: &Caller,
        body: Bytes,
        timer: &mut Deadline,
        started: Instant,
    ) -> std::io::Result<bool>
    where
        I: AsyncWrite + Unpin,
    {
        let backend = &self.backend;
        let mut request = self.request(&self.request_line, plan, caller, &body);
        let mut url = self.target.clone();
        let mut hops = 0;
        let (mut conn, head) = loop {
            timer.restart();
            let sent = tokio::select! {
                r = self.send(&request) => Ok(r),
                () = timer.passed() => Err(()),
            };
            let (conn, head) = match sent {
                Ok(Ok(answer)) => answer,
                Ok(Err(failure)) => {
                    let cause = failure.to_string();
                    let failure = match failure {
                        Failure::Connect(_) => UpstreamFailure::Unreachable,
                        _ => UpstreamFailure::ConnectionFailed,
                    };
                    failure.log(&url, None, Some(&cause));
                    return self.answer(client, plan, failure.response(), started).await;
                }
                Err(_) => {
                    UpstreamFailure::TimedOut.log(&url, None, None);
                    let resp = UpstreamFailure::TimedOut.response();
                    return self.answer(client, plan, resp, started).await;
                }
            };
            let location = head.location.as_deref();
            match exchange::after_status(head.status, location, &url, backend.base(), hops) {
                exchange::Next::Answer => break (conn, head),
                exchange::Next::Follow(next) => {
                    tracing::debug!(from = %proxy::redact(&url), to = %proxy::redact(&next), "following upstream redirect");
                    hops += 1;
                    self.discard(conn, &head).await;
                    let authority = &next[url::Position::BeforeHost..url::Position::AfterPort];
                    let path = &next[url::Position::BeforePath..url::Position::AfterQuery];
                    request = self.request(&request_line(path, authority), plan, caller, &body);
                    url = next;
                }
                exchange::Next::Fail(failure) => {
                    failure.log(&url, Some(head.status), None);
                    return self.answer(client, plan, failure.response(), started).await;
                }
            }
        };

        if let Some(id) = exchange::session_to_bind(
            head.status,
            head.session_id.as_deref(),
            plan.session_id.as_deref(),
        ) && let Err(e) = sessions::bind(self.app.repo(), id, caller.subject()).await
        {
            tracing::error!(error = %e, "store failure while recording a session");
            let resp = jsonrpc_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
            return self.answer(client, plan, resp, started).await;
        }
        let mut out = self.client_head(&conn.buf[..head.len], &head, plan.message.close);
        let _ = conn.buf.split_to(head.len);
        let reusable = match head.framing {
            Framing::Empty => {
                self.write_head(client, &out, plan, head.status, started)
                    .await?;
                true
            }
            Framing::Length(n) if n <= WHOLE_RESPONSE_LIMIT => {
                // An ordinary JSON-RPC answer: read whole, sent with its head in one write.
                let n = n as usize;
                if let Err(e) = conn.fill_to(n).await {
                    // Nothing was sent yet: the client gets the general path's 502.
                    tracing::warn!(error = %e, "upstream response body failed");
                    let resp = UpstreamFailure::ConnectionFailed.response();
                    return self.answer(client, plan, resp, started).await;
                }
                out.extend_from_slice(&conn.buf.split_to(n));
                self.write_head(client, &out, plan, head.status, started)
                    .await?;
                true
            }
            Framing::Length(n) => {
                let mut left = n;
                let now = left.min(conn.buf.len() as u64) as usize;
                out.extend_from_slice(&conn.buf.split_to(now));
                left -= now as u64;
                self.write_head(client, &out, plan, head.status, started)
                    .await?;
                while left > 0 {
                    conn.fill_more().await?;
                    let now = left.min(conn.buf.len() as u64) as usize;
                    emit(client, &conn.buf.split_to(now)).await?;
                    left -= now as u64;
                }
                true
            }
            Framing::Chunked => {
                // Relayed as it comes, chunk framing and all (SSE events leave at once).
                let mut chunks = Chunked::new();
                let used = chunks.feed(&conn.buf).map_err(broken)?;
                out.extend_from_slice(&conn.buf.split_to(used));
                self.write_head(client, &out, plan, head.status, started)
                    .await?;
                while !chunks.done() {
                    conn.fill_more().await?;
                    let used = chunks.feed(&conn.buf).map_err(broken)?;
                    emit(client, &conn.buf.split_to(used)).await?;
                }
                true
            }
            Framing::Close => {
                // Until the upstream closes, sent on to the client in chunks.
                let first = conn.buf.split();
                chunk(&mut out, &first);
                self.write_head(client, &out, plan, head.status, started)
                    .await?;
                loop {
                    let n = conn.fill().await?;
                    let mut piece = Vec::with_capacity(n + 16);
                    if n == 0 {
                        piece.extend_from_slice(LAST_CHUNK);
                    } else {
                        chunk(&mut piece, &conn.buf.split());
                    }
                    emit(client, &piece).await?;
                    if n == 0 {
                        break;
                    }
                }
                false
            }
        };
        if reusable && head.keep_alive {
            self.pools.put(conn);
        }
        Ok(!plan.message.close)
    }

    /// The upstream request: request line and host, the client's forwarded headers, ours,
    /// the caller's identity, the body.
    fn request(&self, request_line: &[u8], plan: &Plan, caller: &Caller, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            request_line.len() + plan.headers.len() + self.fixed_headers.len() + 256 + body.len(),
        );
        out.extend_from_slice(request_line);
        out.extend_from_slice(&plan.headers);
        line(&mut out, "x-forwarded-for", plan.forwarded_for.as_bytes());
        out.extend_from_slice(&self.fixed_headers);
        if let Some(id) = caller.identity() {
            identity::each(self.backend.options(), id, |name, value| {
                line(&mut out, name.as_str(), value.as_bytes());
            });
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    /// Sends the request on a pooled connection (or a new one) and reads the answer's head.
    /// Pooled connections the upstream closed while idle are noticed before use
    /// ([`Pools::take`]); one closed at that very moment fails the write, and the request,
    /// which then never left, goes out on a new connection. A request is never sent twice:
    /// once written, a failure is the client's 502.
    async fn send(&self, request: &[u8]) -> Result<(Conn, Head), Failure> {
        let mut conn = match self.pools.take() {
            Some(c) => c,
            None => self.pools.connect().await.map_err(Failure::Connect)?,
        };
        loop {
            match exchange_head(&mut conn, request).await {
                Ok(head) => return Ok((conn, head)),
                Err(Failure::Write(e)) if conn.reused => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; sending on a new one");
                    conn = self.pools.connect().await.map_err(Failure::Connect)?;
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    /// Reads and drops a redirect's small body so its connection can be used again.
    async fn discard(&self, mut conn: Conn, head: &Head) {
        let Framing::Length(n) = head.framing else {
            return;
        };
        let need = head.len + n as usize;
        if n > WHOLE_RESPONSE_LIMIT || !head.keep_alive {
            return;
        }
        if conn.fill_to(need).await.is_err() {
            return;
        }
        let _ = conn.buf.split_to(need);
        self.pools.put(conn);
    }

    /// Our response head for the upstream's: end-to-end headers kept, `Location` pointed at
    /// us, SSE marked unbuffered, and what the general path adds (`Vary`, HSTS, `Date`).
    fn client_head(&self, upstream: &[u8], head: &Head, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(upstream.len() + 160);
        status_line(&mut out, head.status);
        // Parsed again rather than kept from `parse_head`: a parse costs less than keeping
        // the fields' places, and most heads take this path once.
        let mut fields = [httparse::EMPTY_HEADER; upstream::MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let _ = resp.parse(upstream);
        let (mut has_date, mut has_cache_control, mut has_hsts) = (false, false, false);
        for h in resp.headers.iter().take_while(|h| !h.name.is_empty()) {
            let is = |n: &str| h.name.eq_ignore_ascii_case(n);
            if HOP_BY_HOP.iter().any(|n| is(n))
                || (is("content-length")
                    && matches!(head.framing, Framing::Chunked | Framing::Close))
                || (head.sse && is("x-accel-buffering"))
            {
                continue;
            }
            has_date |= is("date");
            has_cache_control |= is("cache-control");
            has_hsts |= is("strict-transport-security");
            if is("location")
                && let Some(rewritten) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|l| self.backend.public_location(l, self.app.site()))
                && axum::http::HeaderValue::from_str(&rewritten).is_ok()
            {
                line(&mut out, h.name, rewritten.as_bytes());
                continue;
            }
            line(&mut out, h.name, h.value);
        }
        if head.sse {
            out.extend_from_slice(b"x-accel-buffering: no\r\n");
            if !has_cache_control {
                out.extend_from_slice(b"cache-control: no-cache\r\n");
            }
        }
        self.common_headers(&mut out, has_date, has_hsts, close);
        if matches!(head.framing, Framing::Chunked | Framing::Close) {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The `Date` header's value now (on the proxy's clock).
    fn date(&self) -> String {
        http_date(self.app.repo().clock().now())
    }

    /// What every answer on the MCP endpoint carries beyond its own headers.
    fn common_headers(&self, out: &mut Vec<u8>, has_date: bool, has_hsts: bool, close: bool) {
        out.extend_from_slice(b"vary: origin\r\n");
        if let Some(hsts) = self.hsts
            && !has_hsts
        {
            line(out, "strict-transport-security", hsts.as_bytes());
        }
        if !has_date {
            line(out, "date", self.date().as_bytes());
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
    }

    /// Writes an answer the proxy made itself (an error the general path gives the same way).
    async fn answer<I>(
        &self,
        client: &mut I,
        plan: &Plan,
        resp: Response,
        started: Instant,
    ) -> std::io::Result<bool>
    where
        I: AsyncWrite + Unpin,
    {
        // What the front middleware and the https side add to every answer here.
        let mut resp = resp;
        let headers = resp.headers_mut();
        headers.append(header::VARY, header::HeaderValue::from_static("origin"));
        if let Some(hsts) = self.hsts {
            headers
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert(header::HeaderValue::from_static(hsts));
        }
        self.record(plan, resp.status().as_u16(), started);
        self.respond(client, resp, false, plan.message.close).await
    }

    /// Counts and logs the request (when the answer is ready, before it is written), then
    /// writes the start of the answer.
    async fn write_head<I>(
        &self,
        client: &mut I,
        bytes: &[u8],
        plan: &Plan,
        status: u16,
        started: Instant,
    ) -> std::io::Result<()>
    where
        I: AsyncWrite + Unpin,
    {
        self.record(plan, status, started);
        emit(client, bytes).await
    }

    /// Counts and logs an answered request as the front middleware does.
    fn record(&self, plan: &Plan, status: u16, started: Instant) {
        // As the general path's: until the answer (or the proxy's error) was ready.
        let metrics = self.app.metrics();
        self.upstream_seconds
            .get_or_init(|| {
                metrics
                    .upstream_seconds
                    .get_or_create(&crate::metrics::BackendLabels { backend: "http" })
                    .clone()
            })
            .observe(started.elapsed().as_secs_f64());
        let labels = || crate::metrics::RequestLabels {
            route: "mcp",
            method: "POST",
            status,
        };
        if status == 200 {
            self.ok_count
                .get_or_init(|| metrics.requests.get_or_create(&labels()).clone())
                .inc();
        } else {
            metrics.requests.get_or_create(&labels()).inc();
        }
        metrics.fast_lane.inc();
        let ms = crate::metrics::elapsed_ms(started);
        let (method, route) = ("POST", "mcp");
        // The front middleware's line, under its target (log filters treat both alike).
        match plan.client {
            Some(client) => {
                let path = self.app.site().mcp_path.as_str();
                tracing::info!(target: "mcp_auth_proxy::server", method, route, path, status, ms, %client, "request");
            }
            None => {
                tracing::debug!(target: "mcp_auth_proxy::server", method, route, status, ms, "request");
            }
        }
    }
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

/// Writes the request and reads up to the end of the final (non-1xx) response head.
async fn exchange_head(conn: &mut Conn, request: &[u8]) -> Result<Head, Failure> {
    conn.stream
        .write_all(request)
        .await
        .map_err(Failure::Write)?;
    loop {
        if !conn.buf.is_empty() {
            match upstream::parse_head(&conn.buf).map_err(Failure::Bad)? {
                Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                    // Interim answers (100 Continue, 103 Early Hints) are not passed on.
                    let _ = conn.buf.split_to(head.len);
                    continue;
                }
                Some(head) if head.status == 101 => {
                    return Err(Failure::Bad(upstream::BadResponse("unasked upgrade")));
                }
                Some(head) => return Ok(head),
                None => {}
            }
        }
        match conn.fill().await {
            Ok(0) => {
                return Err(Failure::Read(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before the answer",
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(Failure::Read(e)),
        }
    }
}

fn broken(e: chunked::ChunkError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// The host and port to connect to for `url` (an IPv6 literal without its brackets).
fn connect_to(url: &Url) -> Option<(String, u16)> {
    let host = url.host_str()?.trim_matches(['[', ']']).to_string();
    Some((host, url.port_or_known_default()?))
}

/// `POST <path> HTTP/1.1` and the `host` line.
fn request_line(path: &str, authority: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + authority.len() + 32);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    line(&mut out, "host", authority.as_bytes());
    out
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
}

/// Writes `bytes` to the client and flushes them (a TLS stream buffers its records).
async fn emit<I: AsyncWrite + Unpin>(io: &mut I, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `data` as one chunk (nothing for no data: an empty chunk would end the body).
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A request head as `http` parts, as hyper would give it to the router (`None` when the
/// `http` crate refuses a part; the general stack then answers).
fn parts_of_head(head: &[u8]) -> Option<http::request::Parts> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(head).ok()?;
    parts_of(&req)
}

/// [`parts_of_head`] for a head already parsed.
fn parts_of(req: &httparse::Request) -> Option<http::request::Parts> {
    let mut builder = http::Request::builder()
        .method(Method::from_bytes(req.method?.as_bytes()).ok()?)
        .uri(req.path?)
        .version(http::Version::HTTP_11);
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

/// `name` in lowercase, in `buf`; `None` when longer than it.
fn lowercase<'a>(name: &str, buf: &'a mut [u8; MAX_NAME]) -> Option<&'a str> {
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// A header value as `HeaderValue::to_str` accepts it: visible ASCII, spaces and tabs.
fn visible_ascii(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// The `Date` header's value for `secs` (Unix time), formatted once per second per thread.
fn http_date(secs: u64) -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            );
        }
        text.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_to_connect_and_what_to_send() {
        let at = |u: &str| connect_to(&Url::parse(u).unwrap());
        assert_eq!(at("http://[::1]:8080/mcp"), Some(("::1".into(), 8080)));
        assert_eq!(at("http://up/mcp"), Some(("up".into(), 80)));
        assert_eq!(at("http://127.0.0.1:9/"), Some(("127.0.0.1".into(), 9)));
        assert_eq!(
            request_line("/api/mcp?k=1", "up:9000"),
            b"POST /api/mcp?k=1 HTTP/1.1\r\nhost: up:9000\r\n"
        );
        let mut out = Vec::new();
        chunk(&mut out, b"");
        assert!(out.is_empty(), "an empty chunk would end the body");
        chunk(&mut out, b"hello");
        assert_eq!(out, b"5\r\nhello\r\n");
        assert_eq!(visible_ascii(b"Bearer abc"), Some("Bearer abc"));
        assert_eq!(visible_ascii("caf\u{e9}".as_bytes()), None);
        assert_eq!(visible_ascii(b"a\x7fb"), None);
        let mut buf = [0u8; MAX_NAME];
        assert_eq!(
            lowercase("Content-Length", &mut buf),
            Some("content-length")
        );
        assert_eq!(lowercase(&"x".repeat(MAX_NAME + 1), &mut buf), None);
    }
}
