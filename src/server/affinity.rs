//! Serving a connection on the worker thread that runs its session's process.
//!
//! A stdio session's child is read and written by tasks on the worker that started it
//! (`server::workers`: one single-threaded runtime per core). A call that arrives on another
//! worker crosses threads twice, to the child and back, and each crossing wakes the other
//! thread's runtime with a system call. Measured with `bench/stdio-cpu.sh` (16 connections on
//! one session, two cores), serving everything on one worker cost 25–28 µs of proxy CPU per
//! call against 33–34 µs on two, and served 9–13% more calls (BENCHMARKS.md).
//!
//! So before a connection is served, its first request head is looked at. When it names a
//! stdio session (`Mcp-Session-Id`) whose child runs on another worker, or, without a
//! session, carries the token of a user whose stateless (2026-07-28) requests a child on
//! another worker serves, the connection is handed to that worker. A plain connection's head
//! is peeked at (it stays in the socket for the server to read as usual). Over TLS (HTTP/1)
//! the first bytes are read through TLS after the handshake, and the connection travels
//! with them and its TLS state ([`super::roaming`]); HTTP/2 connections are served where
//! they were accepted. Later requests on a connection stay where it is: clients keep one
//! session per connection, and the first request of a client's pool (`initialize`) starts
//! the child on the worker that serves it.
//!
//! Placement only chooses a thread; the request is authenticated and its session checked
//! against its user exactly as anywhere else.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use super::{App, AppState};
use crate::request_head::{MCP_SESSION_ID, visible_ascii};

/// How much of a connection's first bytes are looked at.
const PEEK: usize = 4096;

/// Most header fields read from the peeked head.
const MAX_HEADERS: usize = 64;

/// The servers whose sessions have a home worker (stdio), asked in order.
#[derive(Clone)]
pub struct Homes(Vec<AppState>);

impl Homes {
    /// `None` when no server places its sessions: nothing to peek for.
    pub fn of(state: &AppState) -> Option<Self> {
        let placing: Vec<AppState> = std::iter::once(state)
            .chain(state.servers.iter())
            .filter(|s| s.backend.as_ref().is_some_and(|b| b.places_sessions()))
            .cloned()
            .collect();
        (!placing.is_empty()).then_some(Self(placing))
    }

    /// The worker that should serve `stream`, from its first request (peeked at: the bytes
    /// stay in the socket); `Ok(None)` when any will do. An error when the connection
    /// closed or failed before sending anything.
    pub async fn home_of(&self, stream: &TcpStream) -> std::io::Result<Option<usize>> {
        let mut head = vec![0u8; PEEK];
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.home_of_head(&head[..n]).await)
    }

    /// The worker that should serve a connection whose first bytes are `head`.
    pub async fn home_of_head(&self, head: &[u8]) -> Option<usize> {
        let servers = self.0.iter().map(|s| &**s);
        match named(head)? {
            Named::Session(id) => servers
                .filter_map(|s| s.backend.as_ref())
                .find_map(|b| b.worker_of_session(id)),
            Named::Bearer(token) => {
                for server in servers {
                    if let Some(home) = home_of_user(server, token).await {
                        return Some(home);
                    }
                }
                None
            }
        }
    }
}

/// The first bytes a client sends on a decrypted stream (one read, as much as a peek
/// would see), for [`Homes::home_of_head`]; they are served before the rest. An error
/// when the connection closed or failed before sending anything.
pub async fn first_bytes<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Bytes> {
    let mut head = BytesMut::with_capacity(PEEK);
    if io.read_buf(&mut head).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(head.freeze())
}

/// The worker of the process that serves the stateless requests of `token`'s user on
/// `server`, when there is one (the token is read as the gate reads it, for its subject
/// only: the request is checked again when it is served).
async fn home_of_user(server: &App, token: &str) -> Option<usize> {
    let caller = crate::gate::check_token(server.repo(), server.tokens(), server.site(), token)
        .await
        .ok()?;
    server.backend.as_ref()?.worker_of_user(caller.subject())
}

/// What a request head names that places its connection.
#[derive(Debug, PartialEq)]
enum Named<'h> {
    /// A session (`Mcp-Session-Id`).
    Session(&'h str),
    /// No session: a bearer token, whose user's process serves stateless requests.
    Bearer(&'h str),
}

/// What a complete request head names; `None` for an incomplete head, a header sent twice
/// or one that is not visible ASCII (the server refuses those; placing them does not
/// matter).
fn named(head: &[u8]) -> Option<Named<'_>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    if let Some(id) = single(req.headers, MCP_SESSION_ID)? {
        return Some(Named::Session(id));
    }
    let authorization = single(req.headers, "authorization")??;
    crate::gate::bearer_value(authorization)
        .ok()
        .map(Named::Bearer)
}

/// The one value of header `name` (`Some(None)`: absent); `None` when it is sent twice, is
/// empty or is not what `HeaderValue::to_str` accepts.
fn single<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<Option<&'h str>> {
    let mut named = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let Some(one) = named.next() else {
        return Some(None);
    };
    if named.next().is_some() {
        return None;
    }
    let value = visible_ascii(one.value)?.trim();
    (!value.is_empty()).then_some(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_names_its_session_or_else_its_bearer() {
        let head = b"POST /mcp HTTP/1.1\r\nhost: a\r\nMcp-Session-Id: s-1\r\nauthorization: Bearer t\r\n\r\n{}";
        assert_eq!(named(head), Some(Named::Session("s-1")));
        let head = b"POST /mcp HTTP/1.1\r\nAuthorization: Bearer tok-1\r\n\r\n";
        assert_eq!(named(head), Some(Named::Bearer("tok-1")));
        for (head, why) in [
            (
                &b"POST /mcp HTTP/1.1\r\nmcp-session-id: s-1\r\n"[..],
                "an incomplete head",
            ),
            (
                b"POST /mcp HTTP/1.1\r\nmcp-session-id: s-1\r\nmcp-session-id: s-2\r\n\r\n",
                "a session named twice",
            ),
            (
                b"POST /mcp HTTP/1.1\r\nmcp-session-id: \r\n\r\n",
                "an empty session",
            ),
            (b"POST /mcp HTTP/1.1\r\nhost: a\r\n\r\n", "nothing named"),
            (
                b"POST /mcp HTTP/1.1\r\nauthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n",
                "two tokens",
            ),
            (
                b"POST /mcp HTTP/1.1\r\nauthorization: Basic YTpi\r\n\r\n",
                "not a bearer",
            ),
            (b"\x16\x03\x01garbage", "a TLS hello"),
        ] {
            assert_eq!(named(head), None, "{why}");
        }
    }
}
