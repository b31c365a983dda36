//! The exchange with the upstream: the request written in one piece on a pooled connection
//! of this worker, its answer's head read, and redirects and failures decided by
//! [`crate::backend::exchange`] as on the general path.

use std::time::Instant;

use axum::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use url::Url;

use super::answer::{LAST_CHUNK, chunk, emit, line};
use super::chunked::{self, Chunked};
use super::upstream::{self, Conn, Framing, Head};
use super::{Deadline, Failure, HttpUpstream, Lane, Plan};
use crate::backend::exchange::{self, UpstreamFailure};
use crate::backend::http::{self as proxy, WHOLE_RESPONSE_LIMIT};
use crate::backend::{identity, sessions};
use crate::error::jsonrpc_error;
use crate::gate::Caller;

impl Lane {
    /// Proxies one request and writes the answer; `Ok(false)` when the client connection
    /// ends after it, `Err` when it broke during the answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange<I>(
        &self,
        http: &HttpUpstream,
        client: &mut I,
        plan: &Plan,
        caller: &Caller,
        body: Bytes,
        timer: &mut Deadline,
        started: Instant,
    ) -> std::io::Result<bool>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let backend = &http.backend;
        let first_line = if plan.stream {
            &http.stream_line
        } else {
            &http.request_line
        };
        let mut request = http.request(first_line, plan, caller, &body);
        let mut url = http.target.clone();
        let mut hops = 0;
        let (mut conn, head) = loop {
            timer.restart();
            let sent = tokio::select! {
                r = http.send(&request) => Ok(r),
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
                    return self
                        .answer(client, plan, failure.response(), started, None)
                        .await;
                }
                Err(_) => {
                    UpstreamFailure::TimedOut.log(&url, None, None);
                    let resp = UpstreamFailure::TimedOut.response();
                    return self.answer(client, plan, resp, started, None).await;
                }
            };
            let location = head.location.as_deref();
            match exchange::after_status(head.status, location, &url, backend.base(), hops) {
                exchange::Next::Answer => break (conn, head),
                exchange::Next::Follow(next) => {
                    tracing::debug!(from = %proxy::redact(&url), to = %proxy::redact(&next), "following upstream redirect");
                    hops += 1;
                    http.discard(conn, &head).await;
                    let authority = &next[url::Position::BeforeHost..url::Position::AfterPort];
                    let path = &next[url::Position::BeforePath..url::Position::AfterQuery];
                    let line = request_line(plan.method(), path, authority);
                    request = http.request(&line, plan, caller, &body);
                    url = next;
                }
                exchange::Next::Fail(failure) => {
                    failure.log(&url, Some(head.status), None);
                    return self
                        .answer(client, plan, failure.response(), started, None)
                        .await;
                }
            }
        };

        if let Some(id) = exchange::session_to_bind(
            head.status,
            head.session_id.as_deref(),
            plan.session_id.as_deref(),
        ) && let Err(e) = sessions::bind(&self.shared.repo, id, caller.subject()).await
        {
            tracing::error!(error = %e, "store failure while recording a session");
            let resp = jsonrpc_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
            return self.answer(client, plan, resp, started, None).await;
        }
        let mut out = self.client_head(http, &conn.buf[..head.len], &head, plan.message.close);
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
                    return self.answer(client, plan, resp, started, None).await;
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
                    conn.release_if_empty();
                    more(&mut conn, client, plan.stream).await?;
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
                    conn.release_if_empty();
                    more(&mut conn, client, plan.stream).await?;
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
                    conn.release_if_empty();
                    let n = next_or_gone(&mut conn, client, plan.stream).await?;
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
            http.pools.put(conn);
        }
        Ok(!plan.message.close)
    }
}

impl HttpUpstream {
    /// The upstream request: request line and host, the client's forwarded headers, ours,
    /// the caller's identity, the body.
    pub(super) fn request(
        &self,
        request_line: &[u8],
        plan: &Plan,
        caller: &Caller,
        body: &[u8],
    ) -> Vec<u8> {
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
    pub(super) async fn send(&self, request: &[u8]) -> Result<(Conn, Head), Failure> {
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
    pub(super) async fn discard(&self, mut conn: Conn, head: &Head) {
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
}

/// More of an answer's bytes from the upstream (`Ok(0)` at its end). For a GET stream, also
/// watches its client: a stream's client that has gone must not hold the upstream connection
/// (and its own connection slot) until the next event, which may never come. A byte from the
/// client mid-stream (a request pipelined behind a stream, which is not answered while the
/// stream lasts) ends the connection too.
async fn next_or_gone<I: AsyncRead + Unpin>(
    conn: &mut Conn,
    client: &mut I,
    stream: bool,
) -> std::io::Result<usize> {
    if !stream {
        return conn.fill().await;
    }
    let mut probe = [0u8; 1];
    // Both are cancel-safe: whichever loses has consumed nothing.
    tokio::select! {
        read = conn.fill() => read,
        _ = client.read(&mut probe) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the client left its stream",
        )),
    }
}

/// [`next_or_gone`] in the middle of an answer: its end is an error.
async fn more<I: AsyncRead + Unpin>(
    conn: &mut Conn,
    client: &mut I,
    stream: bool,
) -> std::io::Result<()> {
    upstream::mid_answer(next_or_gone(conn, client, stream).await?)
}

/// Writes the request and reads up to the end of the final (non-1xx) response head.
pub(super) async fn exchange_head(conn: &mut Conn, request: &[u8]) -> Result<Head, Failure> {
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

pub(super) fn broken(e: chunked::ChunkError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// The host and port to connect to for `url` (an IPv6 literal without its brackets).
pub(super) fn connect_to(url: &Url) -> Option<(String, u16)> {
    let host = url.host_str()?.trim_matches(['[', ']']).to_string();
    Some((host, url.port_or_known_default()?))
}

/// `<method> <path> HTTP/1.1` and the `host` line.
pub(super) fn request_line(method: &str, path: &str, authority: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + authority.len() + 32);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    line(&mut out, "host", authority.as_bytes());
    out
}
