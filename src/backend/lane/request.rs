//! Reading a request in the lane: its head parsed with `httparse`, checked by the same
//! guard and bearer functions as the general path, and turned into a [`super::Plan`] (proxy
//! it), a request for the router, or a hand-off to the general stack.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::answer::line;
use super::{
    Behind, Lane, MAX_NAME, MAX_REQUEST_HEADERS, Message, Parsed, Plan, ROUTED_BODY_LIMIT, Routed,
};
use crate::backend::http::{self as proxy, ClientInfo, REPLAY_LIMIT};
use crate::gate::bearer_value;
use crate::request_head::{self, visible_ascii};

impl Lane {
    /// Reads a request head: one to proxy, one for the router, not yet complete, or one for
    /// the general stack.
    pub(super) fn parse(&self, buf: &[u8], peer: IpAddr) -> Parsed {
        // What goes upstream is written here for an HTTP server; the bridge reads the head
        // as `http` parts instead.
        let http = match &self.behind {
            Behind::Http(http) => Some(http.as_ref()),
            Behind::Bridge(_) => None,
        };
        let site = &self.shared.site;
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
        // A GET opens the client's SSE stream (none with --http-streaming-only: the
        // router's 405). A bridge's streams are the router's: they are few and long.
        let stream = req.method == Some("GET") && http.is_some_and(|h| !h.backend.streaming_only());
        let mut proxied = (req.method == Some("POST") || stream)
            && req.path == Some(site.server.mcp_path.as_str());
        let (mut host, mut forwarded_host, mut authorization) = (None, None, None);
        let (mut session_id, mut length, mut close) = (None, None, false);
        let mut forwarded_for: Vec<&str> = Vec::new();
        // Which of `request_head::SINGLE_VALUED` were seen, a bit each (by their place in that list).
        const _: () = assert!(request_head::SINGLE_VALUED.len() <= 16);
        let mut seen = 0u16;
        let mut headers = Vec::with_capacity(if proxied && http.is_some() {
            head_len
        } else {
            0
        });
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
                "host" | "authorization" | "mcp-session-id" | request_head::X_FORWARDED_HOST => {
                    let slot = match name {
                        "host" => &mut host,
                        "authorization" => &mut authorization,
                        "mcp-session-id" => &mut session_id,
                        _ => &mut forwarded_host,
                    };
                    // Read as the general path reads them (`HeaderValue::to_str`), and only
                    // once: a second copy is the router's to refuse (a list in
                    // `X-Forwarded-Host` too: `authority_of` addresses nothing with it).
                    match visible_ascii(h.value) {
                        Some(v) if slot.is_none() => *slot = Some(v),
                        _ => proxied = false,
                    }
                }
                "x-forwarded-for" => match visible_ascii(h.value) {
                    Some(v) => forwarded_for.push(v),
                    None => proxied = false,
                },
                // The rest of the single-valued headers are read upstream, not here: a second
                // copy is the router's to refuse, as the general path does.
                _ => {
                    if let Some(i) = request_head::SINGLE_VALUED.iter().position(|n| *n == name) {
                        let bit = 1u16 << i;
                        proxied &= seen & bit == 0;
                        seen |= bit;
                    }
                }
            }
            let Some(http) = http.filter(|_| proxied) else {
                continue;
            };
            if http.backend.never_forwarded(name) || http.static_names.iter().any(|n| n == name) {
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
        if !proxied
            || body_len > REPLAY_LIMIT.min(self.shared.max_body)
            || (stream && length.is_some())
        {
            return routed();
        }
        let trusted = crate::client_addr::is_trusted(&site.trusted_proxies, peer);
        let addressed = request_head::authority_of(forwarded_host, host, trusted)
            .is_some_and(|a| request_head::host_allowed(site, a));
        let token = authorization.map(bearer_value);
        let (true, Some(Ok(token))) = (addressed, token) else {
            return routed();
        };
        let from = ClientInfo {
            peer,
            peer_trusted: trusted,
        };
        let (parts, forwarded_for_line) = match http {
            Some(_) => (
                None,
                proxy::forwarded_for(&from, forwarded_for.iter().copied()),
            ),
            None => match parts_of(&req) {
                Some(parts) => (Some(parts), String::new()),
                None => return Parsed::Other,
            },
        };
        Parsed::Ready(Plan {
            message,
            stream,
            token: token.to_string(),
            session_id: http.and(session_id).map(str::to_string),
            headers,
            forwarded_for: forwarded_for_line,
            client: tracing::enabled!(target: "mcp_auth_proxy::server", tracing::Level::INFO).then(
                || {
                    crate::client_addr::client_ip_in(
                        &site.trusted_proxies,
                        peer,
                        forwarded_for.into_iter(),
                    )
                },
            ),
            parts,
            from,
        })
    }
}

/// A request head as `http` parts, as hyper would give it to the router (`None` when the
/// `http` crate refuses a part; the general stack then answers).
pub(super) fn parts_of_head(head: &[u8]) -> Option<http::request::Parts> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(head).ok()?;
    parts_of(&req)
}

/// [`parts_of_head`] for a head already parsed.
pub(super) fn parts_of(req: &httparse::Request) -> Option<http::request::Parts> {
    // Filled in place, the map sized once: `http::Request::builder` moved the whole request
    // at every header and grew the map one at a time (12 900 instructions for a client's
    // dozen headers, callgrind; hyper's own parse takes 11 300).
    let mut headers = HeaderMap::try_with_capacity(req.headers.len()).ok()?;
    for h in req.headers.iter() {
        headers
            .try_append(
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(h.value).ok()?,
            )
            .ok()?;
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    parts.uri = req.path?.parse().ok()?;
    parts.version = http::Version::HTTP_11;
    parts.headers = headers;
    Some(parts)
}

/// `name` in lowercase (in `buf` when it has capitals); `None` when longer than `buf`.
pub(super) fn lowercase<'a>(name: &'a str, buf: &'a mut [u8; MAX_NAME]) -> Option<&'a str> {
    // Names mostly come lowercase (fetch and HTTP/2 clients send them so): used as they are,
    // without the copy and its UTF-8 check (about 100 instructions a header, callgrind).
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return (name.len() <= MAX_NAME).then_some(name);
    }
    let out = buf.get_mut(..name.len())?;
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}
