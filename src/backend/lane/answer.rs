//! Writing the answer to the client: the head rebuilt from the upstream's with the same
//! header rules as the general path, the body whole or chunk by chunk, and the request
//! recorded in the metrics and the log.

use std::time::Instant;

use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::upstream::{self, Framing, Head};
use super::{HttpUpstream, Lane, Plan};
use crate::backend::http::HOP_BY_HOP;

impl Lane {
    /// Our response head for the upstream's: end-to-end headers kept, `Location` pointed at
    /// us, SSE marked unbuffered, and what the general path adds (`Vary`, HSTS, `Date`).
    pub(super) fn client_head(
        &self,
        http: &HttpUpstream,
        upstream: &[u8],
        head: &Head,
        close: bool,
    ) -> Vec<u8> {
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
                    .and_then(|l| http.backend.public_location(l, &self.shared.site))
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
    pub(super) fn date(&self) -> String {
        http_date(self.shared.repo.clock().now())
    }

    /// What every answer on the MCP endpoint carries beyond its own headers.
    pub(super) fn common_headers(
        &self,
        out: &mut Vec<u8>,
        has_date: bool,
        has_hsts: bool,
        close: bool,
    ) {
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

    /// Writes an answer to a request of `plan` as the front middleware finishes it. With
    /// `watch`, the client is watched while a streamed body waits (see [`Lane::respond`]);
    /// the answers the lane makes itself on an HTTP upstream's path (its errors, the same
    /// as the general path's) are whole and go without.
    pub(super) async fn answer<I>(
        &self,
        client: &mut I,
        plan: &Plan,
        mut resp: Response,
        started: Instant,
        watch: Option<&mut BytesMut>,
    ) -> std::io::Result<bool>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        // What the front middleware and the https side add to every answer here.
        let headers = resp.headers_mut();
        headers.append(header::VARY, header::HeaderValue::from_static("origin"));
        if let Some(hsts) = self.hsts {
            headers
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert(header::HeaderValue::from_static(hsts));
        }
        self.record(plan, resp.status().as_u16(), started);
        self.respond(client, resp, false, plan.message.close, watch)
            .await
    }

    /// Counts and logs the request (when the answer is ready, before it is written), then
    /// writes the start of the answer.
    pub(super) async fn write_head<I>(
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
    pub(super) fn record(&self, plan: &Plan, status: u16, started: Instant) {
        // As the general path's: until the answer (or the proxy's error) was ready.
        let metrics = &self.shared.metrics;
        self.upstream_seconds
            .get_or_init(|| {
                metrics
                    .upstream_seconds
                    .get_or_create(&crate::metrics::BackendLabels {
                        backend: self.backend_kind(),
                    })
                    .clone()
            })
            .observe(started.elapsed().as_secs_f64());
        let method = plan.method();
        let labels = || crate::metrics::RequestLabels {
            route: "mcp",
            method,
            status,
        };
        // The counter of the common case (a POST answered 200) is kept at hand.
        if status == 200 && !plan.stream {
            self.ok_count
                .get_or_init(|| metrics.requests.get_or_create(&labels()).clone())
                .inc();
        } else {
            metrics.requests.get_or_create(&labels()).inc();
        }
        metrics.fast_lane.inc();
        let ms = crate::metrics::elapsed_ms(started);
        let route = "mcp";
        // The front middleware's line, under its target (log filters treat both alike).
        match plan.client {
            Some(client) => {
                let path = self.shared.site.server.mcp_path.as_str();
                crate::client_addr::with_text(client, |client| {
                    tracing::info!(target: "mcp_auth_proxy::server", method, route, path, status, ms, client, "request");
                });
            }
            None => {
                tracing::debug!(target: "mcp_auth_proxy::server", method, route, status, ms, "request");
            }
        }
    }
}

pub(super) fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    // Piece by piece: `format!` cost some 700 instructions of every answer (callgrind).
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes `bytes` to the client and flushes them (a TLS stream buffers its records).
pub(super) async fn emit<I: AsyncWrite + Unpin>(io: &mut I, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// The end of a chunked body.
pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `data` as one chunk (nothing for no data: an empty chunk would end the body).
pub(super) fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header's value for `secs` (Unix time), formatted once per second per thread.
pub(super) fn http_date(secs: u64) -> String {
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
