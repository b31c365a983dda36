//! The streaming reverse proxy to an HTTP MCP server.
//!
//! Request and response bodies stream through; SSE responses pass event by event (each chunk
//! is written to the client as it arrives, never buffered or compressed). What goes upstream
//! follows docs/design.md "What goes upstream": the client's `Authorization`, our cookies,
//! `Origin` and client copies of identity headers are removed; `Host` is the upstream's;
//! `X-Forwarded-*` are ours. An upstream 401/403 becomes a 502 so its challenge never sends
//! the client to the upstream's own authorization server.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use url::Url;

use super::exchange::{self, Next, UpstreamFailure};
use super::mapping::{same_origin, upstream_url};
use super::sessions;
use crate::config::{Site, UpstreamOptions};
use crate::error::jsonrpc_error;
use crate::gate::Caller;
use crate::single_header;
use crate::store::Identity;
use crate::store::Repo;

/// The MCP session header (Streamable HTTP transport), defined with the rules of a request's
/// head: it must not repeat.
pub use crate::request_head::MCP_SESSION_ID;

/// The media type of Server-Sent Events.
pub const SSE: &str = "text/event-stream";

/// Request bodies up to this size are read by the fast lane itself; larger ones (up to
/// `--max-body`) by the general path, which also reads them whole before forwarding.
pub const REPLAY_LIMIT: usize = 256 * 1024;

/// Upstream answers with a Content-Length up to this are sent on in one piece.
pub const WHOLE_RESPONSE_LIMIT: u64 = 64 * 1024;

/// Identity headers only the proxy may set; client copies are spoofing.
pub const IDENTITY_HEADERS: [&str; 6] = [
    crate::config::PROVIDER_HEADER,
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-name",
    "x-forwarded-groups",
    "x-forwarded-access-token",
];

/// Cookie names of ours start with this (after an optional `__Host-`).
pub const COOKIE_PREFIX: &str = "mcp_proxy_";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The upstream client: hyper's pooled client over plain TCP for an `http` upstream, over
/// rustls for an `https` one (redirects are followed only within the upstream's origin, so
/// one scheme serves all). Used directly rather than through reqwest: on the proxy's hot path
/// every layer shows up in the CPU cost per request, and hyper's body streams straight into
/// ours. Two types rather than rustls's either-scheme connector: each connection's task holds
/// its stream, and the either-scheme stream takes 1 112 bytes where plain TCP takes 40, for
/// every idle SSE stream of an HTTP/2 client (BENCHMARKS.md, "Scale").
enum UpstreamClient {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>),
}

impl UpstreamClient {
    fn request(&self, req: http::Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::Plain(client) => client.request(req),
            Self::Tls(client) => client.request(req),
        }
    }
}

/// The read buffer of an upstream connection that carries a client's `GET` stream. hyper
/// gives every connection 8 KiB by default and keeps it for the connection's life; an idle
/// stream needs little. 1 KiB took 3.1 KiB off each idle stream through the general stack
/// (HTTP/2 clients; `bench/scale.sh`, BENCHMARKS.md); a larger event takes a few more reads.
const STREAM_READ_BUFFER: usize = 1024;

/// The upstream client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the upstream HTTP client could not be set up: the system's CA roots: {0}")]
    PlatformRoots(rustls::Error),
    #[error("the public origin cannot be sent in a header: {0}")]
    Header(#[from] http::header::InvalidHeaderValue),
}

/// Why the upstream is not ready (readiness).
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("the MCP server at {host}:{port} refuses connections: {source}")]
    Refused {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("the MCP server at {host}:{port} did not accept a connection in time")]
    Slow { host: String, port: u16 },
}

/// A configured HTTP upstream.
pub struct HttpBackend {
    /// One connection pool per worker thread, so a request and its upstream connection are
    /// driven by the same thread (see `server::workers`).
    clients: Vec<UpstreamClient>,
    /// The same for `GET` (a client's SSE stream, idle most of its life, holding its upstream
    /// connection all along): connections that read at most [`STREAM_READ_BUFFER`] at once.
    stream_clients: Vec<UpstreamClient>,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`: the public origin's, fixed at startup.
    forwarded_proto: HeaderValue,
    forwarded_host: HeaderValue,
    base: Url,
    /// The upstream's origin: the `aud` of identity assertions.
    audience: String,
    opts: UpstreamOptions,
    /// The names [`Self::never_forwarded`] refuses by name alone, gathered at startup: it
    /// judges every header of every request, and one look-up here replaced comparing with
    /// each list in turn (600 instructions fewer a request, callgrind).
    reserved_names: HashSet<Box<str>, foldhash::fast::FixedState>,
}

/// What the proxy adds for the upstream beyond the request itself.
pub struct Upstream<'a> {
    /// Signs the identity assertion (`--proxy-forward-authorization`).
    pub assertion: Option<&'a crate::assertion::Signer>,
    /// The user's token at their provider (`--pass-access-token`).
    pub provider_token: Option<String>,
}

/// Who the request came from, for `X-Forwarded-For`.
#[derive(Clone, Copy)]
pub struct ClientInfo {
    pub peer: IpAddr,
    pub peer_trusted: bool,
}

#[async_trait::async_trait]
impl super::Backend for HttpBackend {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn not_ready(&self, limit: std::time::Duration) -> Option<String> {
        self.reachable(limit).await.err().map(|e| e.to_string())
    }

    async fn serve(&self, handoff: super::Handoff<'_>, req: Request) -> Response {
        if self.streaming_only()
            && req.method() == Method::GET
            && req.uri().path() == handoff.site.server.mcp_path
        {
            let mut resp = jsonrpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this server offers no GET stream",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            return resp;
        }
        let super::Handoff {
            caller,
            site,
            repo,
            client,
            upstream,
        } = handoff;
        self.forward(repo, site, caller, client, upstream, req)
            .await
    }

    fn sends_provider_token(&self) -> bool {
        true
    }
}

impl HttpBackend {
    /// Whether the upstream accepts a TCP connection within `limit` (readiness; no request
    /// is sent).
    pub async fn reachable(&self, limit: std::time::Duration) -> Result<(), Unreachable> {
        let host = self
            .base
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let port = self.base.port_or_known_default().unwrap_or(80);
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(Unreachable::Refused { host, port, source }),
            Err(_) => Err(Unreachable::Slow { host, port }),
        }
    }

    /// A client for `base`. Redirects are never followed by the client (see `forward`), and
    /// a reverse proxy talks to its backend directly, whatever `HTTP_PROXY` says.
    pub fn new(
        base: Url,
        opts: UpstreamOptions,
        site: &Site,
        workers: usize,
    ) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(opts.connect_timeout));
        let tls = if base.scheme() == "https" {
            use rustls_platform_verifier::ConfigVerifierExt;
            let config = rustls::ClientConfig::with_platform_verifier()
                .map_err(ClientError::PlatformRoots)?;
            let mut http = http.clone();
            http.enforce_http(false);
            Some(
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http),
            )
        } else {
            None
        };
        let pools = |read_buffer: Option<usize>| {
            (0..workers.max(1))
                .map(|_| {
                    let mut builder = Client::builder(TokioExecutor::new());
                    builder.pool_idle_timeout(std::time::Duration::from_secs(90));
                    if let Some(size) = read_buffer {
                        builder.http1_read_buf_exact_size(size);
                    }
                    match &tls {
                        Some(tls) => UpstreamClient::Tls(builder.build(tls.clone())),
                        None => UpstreamClient::Plain(builder.build(http.clone())),
                    }
                })
                .collect()
        };
        let public_host = site
            .server
            .origin
            .as_str()
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or_default();
        let header = HeaderValue::from_str;
        let reserved_names = HOP_BY_HOP
            .into_iter()
            .chain(IDENTITY_HEADERS)
            .chain(["host", "authorization", "origin", "cookie", "forwarded"])
            .chain(super::identity::our_names(&opts))
            .map(Box::from)
            .collect();
        Ok(Self {
            reserved_names,
            audience: base.origin().ascii_serialization(),
            clients: pools(None),
            stream_clients: pools(Some(STREAM_READ_BUFFER)),
            forwarded_proto: header(site.server.origin.scheme())?,
            forwarded_host: header(public_host)?,
            base,
            opts,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn options(&self) -> &UpstreamOptions {
        &self.opts
    }

    /// `X-Forwarded-Proto` and `X-Forwarded-Host` as sent upstream.
    pub fn forwarded(&self) -> (&HeaderValue, &HeaderValue) {
        (&self.forwarded_proto, &self.forwarded_host)
    }

    /// The calling worker's connection pool for a request with `method`.
    fn client(&self, method: &Method) -> &UpstreamClient {
        let clients = if method == Method::GET {
            &self.stream_clients
        } else {
            &self.clients
        };
        &clients[crate::worker::current() % clients.len()]
    }

    /// Whether GET on the MCP path is refused (`--http-streaming-only`).
    pub fn streaming_only(&self) -> bool {
        self.opts.streaming_only
    }

    /// Forwards an authenticated request and streams the answer back.
    pub async fn forward(
        &self,
        repo: &Repo,
        site: &Site,
        caller: &Caller,
        client: ClientInfo,
        extra: Upstream<'_>,
        req: Request,
    ) -> Response {
        let assertion = extra.assertion;
        let (parts, body) = req.into_parts();
        let mut url = upstream_url(
            &self.base,
            &site.server.mcp_path,
            parts.uri.path(),
            parts.uri.query(),
        );

        let session_id = parts
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(id) = &session_id {
            match sessions::owned_by(repo, id, caller.subject()).await {
                Ok(true) => {}
                Ok(false) => return jsonrpc_error(StatusCode::NOT_FOUND, "session not found"),
                Err(e) => {
                    tracing::error!(error = %e, "store failure while checking a session");
                    return jsonrpc_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily unavailable",
                    );
                }
            }
        }

        // The whole body (at most --max-body, within --body-read-timeout) before anything
        // goes upstream: a body over the limit is a 413 that reached no one, and a 307/308
        // can be replayed.
        let body = match crate::request_body::read_whole(body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };

        // The signed assertion replaces the client's token; without an identity to assert,
        // none is sent (and the upstream, expecting one, refuses: fail closed).
        let asserted = match (assertion, caller.identity()) {
            (Some(signer), Some(id)) => match signer.sign(id, self.audience.as_str()).await {
                Ok(jwt) => HeaderValue::from_str(&format!("Bearer {jwt}")).ok(),
                Err(e) => {
                    tracing::error!(error = %e, "the identity assertion could not be signed");
                    return jsonrpc_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily unavailable",
                    );
                }
            },
            _ => None,
        };
        let mut hops = 0;
        let resp = loop {
            let this_body = Body::from(body.clone());
            let Ok(uri) = url.as_str().parse::<http::Uri>() else {
                return UpstreamFailure::NoRoute.response();
            };
            let mut upstream_req = http::Request::new(this_body);
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() = uri;
            *upstream_req.headers_mut() =
                self.upstream_headers(&parts.headers, &client, caller.identity());
            if let Some(v) = &asserted {
                let mut v = v.clone();
                v.set_sensitive(true);
                upstream_req.headers_mut().insert(header::AUTHORIZATION, v);
            }
            if let Some(Ok(mut v)) = extra.provider_token.as_deref().map(HeaderValue::from_str) {
                v.set_sensitive(true);
                upstream_req
                    .headers_mut()
                    .insert(HeaderName::from_static("x-forwarded-access-token"), v);
            }
            let sent = tokio::time::timeout(
                self.opts.response_timeout,
                self.client(&parts.method).request(upstream_req),
            )
            .await;
            let resp = match sent {
                Ok(Ok(r)) => r,
                Err(_) => {
                    UpstreamFailure::TimedOut.log(&url, None, None);
                    return UpstreamFailure::TimedOut.response();
                }
                Ok(Err(e)) => {
                    let failure = if e.is_connect() {
                        UpstreamFailure::Unreachable
                    } else {
                        UpstreamFailure::ConnectionFailed
                    };
                    failure.log(&url, None, Some(&crate::error::chain(&e)));
                    return failure.response();
                }
            };
            // The headers of the answer the proxy acts on come once: with two copies it could
            // bind or follow one and the client read the other (the lane's rule too).
            let acted_on = [header::LOCATION.as_str(), MCP_SESSION_ID, "content-type"];
            if single_header::first_repeated(resp.headers(), acted_on).is_some() {
                let failure = UpstreamFailure::ConnectionFailed;
                let status = Some(resp.status().as_u16());
                failure.log(
                    &url,
                    status,
                    Some("a header that has one value is repeated"),
                );
                return failure.response();
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok());
            match exchange::after_status(resp.status().as_u16(), location, &url, &self.base, hops) {
                Next::Answer => break resp,
                Next::Follow(next) => {
                    tracing::debug!(from = %redact(&url), to = %redact(&next), "following upstream redirect");
                    hops += 1;
                    url = next;
                }
                Next::Fail(failure) => {
                    failure.log(&url, Some(resp.status().as_u16()), None);
                    return failure.response();
                }
            }
        };

        let status = resp.status();
        if status.is_success() {
            let issued = resp
                .headers()
                .get(MCP_SESSION_ID)
                .and_then(|v| v.to_str().ok());
            if let Some(id) =
                exchange::session_to_bind(status.as_u16(), issued, session_id.as_deref())
                && let Err(e) = sessions::bind(repo, id, caller.subject()).await
            {
                tracing::error!(error = %e, "store failure while recording a session");
                return jsonrpc_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
            }
            if parts.method == Method::DELETE
                && let Some(id) = &session_id
                && let Err(e) = sessions::unbind(repo, id).await
            {
                tracing::warn!(error = %e, "store failure while forgetting a session");
            }
        }

        self.client_response(resp, site).await
    }

    /// Whether a client header (`name` in lowercase) is never sent upstream as it came: it
    /// describes the connection, carries the client's credentials or our cookies, or is one
    /// only the proxy may set. (`Cookie` is sent again without our cookies.) A name with `_`
    /// is judged as its `-` form too: CGI, WSGI and PHP upstreams read `X_Forwarded_User` as
    /// `X-Forwarded-User`, so such a copy would shadow ours.
    pub fn never_forwarded(&self, name: &str) -> bool {
        // A byte loop: `contains('_')` goes through `memchr`, costly on names this short.
        if name.bytes().any(|b| b == b'_') {
            let dashed = name.replace('_', "-");
            if self.reserved(&dashed) || self.opts.headers.iter().any(|(n, _)| n.as_str() == dashed)
            {
                return true;
            }
        }
        self.reserved(name)
    }

    /// The hop-by-hop headers, the identity headers and ours, the client's credentials and
    /// host, and every `X-Forwarded-*`.
    fn reserved(&self, name: &str) -> bool {
        self.reserved_names.contains(name) || name.starts_with("x-forwarded-")
    }

    /// The headers sent upstream.
    fn upstream_headers(
        &self,
        incoming: &HeaderMap,
        client: &ClientInfo,
        identity: Option<&Identity>,
    ) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(incoming.len() + 4);
        let connection_listed: Vec<String> = incoming
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in incoming {
            let n = name.as_str();
            if self.never_forwarded(n) || connection_listed.iter().any(|c| c == n) {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        if let Some(cookie) = foreign_cookies(incoming) {
            out.insert(header::COOKIE, cookie);
        }

        let forwarded_for = forwarded_for(
            client,
            incoming
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        insert_str(&mut out, "x-forwarded-for", &forwarded_for);
        out.insert(
            HeaderName::from_static("x-forwarded-proto"),
            self.forwarded_proto.clone(),
        );
        out.insert(
            HeaderName::from_static("x-forwarded-host"),
            self.forwarded_host.clone(),
        );

        for (name, value) in &self.opts.headers {
            out.insert(name.clone(), value.clone());
        }
        if let Some(id) = identity {
            super::identity::insert(&self.opts, &mut out, id);
        }
        out
    }

    /// The upstream's answer as ours: status and end-to-end headers kept, body streamed.
    async fn client_response(
        &self,
        resp: http::Response<hyper::body::Incoming>,
        site: &Site,
    ) -> Response {
        let status = resp.status();
        let mut headers = HeaderMap::with_capacity(resp.headers().len() + 2);
        for (name, value) in resp.headers() {
            if HOP_BY_HOP.contains(&name.as_str()) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if let Some(loc) = headers.get(header::LOCATION).and_then(|l| l.to_str().ok())
            && let Some(rewritten) = self.public_location(loc, site)
            && let Ok(v) = HeaderValue::from_str(&rewritten)
        {
            headers.insert(header::LOCATION, v);
        }
        let is_sse = crate::media_type::content_type_is(&headers, SSE);
        if is_sse {
            headers.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            headers
                .entry(header::CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-cache"));
        }
        // A small answer of known length (an ordinary JSON-RPC response) is read whole so it
        // leaves in one write with its headers; streams (SSE) and large or open-ended bodies
        // pass through chunk by chunk as they arrive.
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let small = !is_sse && length.is_some_and(|n| n <= WHOLE_RESPONSE_LIMIT);
        let incoming = resp.into_body();
        let body = if small {
            match incoming.collect().await {
                Ok(b) => Body::from(b.to_bytes()),
                Err(e) => {
                    tracing::warn!(error = %e, "upstream response body failed");
                    return UpstreamFailure::ConnectionFailed.response();
                }
            }
        } else {
            Body::new(incoming)
        };
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }

    /// A `Location` pointing at the upstream's origin, pointed at ours instead.
    pub fn public_location(&self, loc: &str, site: &Site) -> Option<String> {
        let abs = self.base.join(loc).ok()?;
        if !same_origin(&abs, &self.base) || !loc.contains("://") {
            return None;
        }
        let mut s = site.server.origin.join(abs.path());
        if let Some(q) = abs.query() {
            s.push('?');
            s.push_str(q);
        }
        Some(s)
    }
}

/// `X-Forwarded-For` for the upstream: the client's peer address, after the chain a trusted
/// proxy passed (`earlier`, ignored from anyone else).
pub fn forwarded_for<'a>(client: &ClientInfo, earlier: impl Iterator<Item = &'a str>) -> String {
    let peer = crate::client_addr::with_text(
        crate::client_addr::canonical_ip(client.peer),
        str::to_string,
    );
    let earlier: Vec<&str> = if client.peer_trusted {
        earlier.collect()
    } else {
        Vec::new()
    };
    if earlier.is_empty() {
        peer
    } else {
        format!("{}, {peer}", earlier.join(", "))
    }
}

fn insert_str(map: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        map.insert(HeaderName::from_static(name), v);
    }
}

/// The `Cookie` header without the proxy's own cookies, or `None` if nothing is left.
fn foreign_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or("").trim();
            !name
                .trim_start_matches("__Host-")
                .starts_with(COOKIE_PREFIX)
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join("; ")).ok()
}

/// A URL without query string or credentials, for logs.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}
