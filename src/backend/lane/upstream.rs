//! The fast lane's upstream connections: plain HTTP/1.1, kept alive in one small pool per
//! worker thread (a request and its upstream connection are driven by the same thread), and
//! the parsing of the upstream's response head.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Idle connections kept per worker (nginx's `keepalive` in the benchmark is 64 in all).
const IDLE_PER_WORKER: usize = 32;

/// An idle connection older than this is closed rather than reused (as hyper's pool).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Longest upstream response head read.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most header fields in an upstream response head.
pub const MAX_HEADERS: usize = 96;

/// One connection to the upstream and the bytes read from it but not yet used.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// Whether it served a request before (a failure then may be a close we raced).
    pub reused: bool,
    idle_since: Instant,
}

impl Conn {
    /// Reads more from the upstream into `buf`; `Ok(0)` at its end. Room is reserved once
    /// bytes are there to read, not while waiting for them: a stream idle between events
    /// (for hours, perhaps) holds no buffer ([`Conn::release_if_empty`]).
    ///
    /// The read goes through tokio's `poll_read`, not `try_read_buf`: a read that leaves room
    /// in the buffer tells tokio the socket is drained, so once the answer is in, the
    /// connection no longer counts as readable and [`Pools::take`] reuses it without a `recv`
    /// of its own ([`nothing_to_read`]): one system call fewer per proxied request.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        loop {
            self.stream.readable().await?;
            self.buf.reserve(16 * 1024);
            let read = std::future::poll_fn(|cx| {
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf) {
                    Poll::Ready(read) => Poll::Ready(Some(read)),
                    // Readiness that had nothing behind it: wait again, holding no room.
                    Poll::Pending => Poll::Ready(None),
                }
            })
            .await;
            match read {
                Some(read) => return read,
                None => self.release_if_empty(),
            }
        }
    }

    /// Lets go of the buffer's memory when it holds nothing (between a stream's events; the
    /// next [`Conn::fill`] allocates again once bytes arrive).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Reads more, in the middle of an answer: its end is an error.
    pub async fn fill_more(&mut self) -> std::io::Result<()> {
        mid_answer(self.fill().await?)
    }

    /// Reads until `buf` holds at least `n` bytes.
    pub async fn fill_to(&mut self, n: usize) -> std::io::Result<()> {
        while self.buf.len() < n {
            self.fill_more().await?;
        }
        Ok(())
    }
}

/// A connection idle at least this long is asked by a system call whether the upstream
/// closed it ([`nothing_to_read`]).
const ASK_KERNEL_AFTER: Duration = Duration::from_secs(1);

/// Whether an idle connection has nothing to read. Either an end (the upstream closed it) or
/// bytes it never asked for makes it unusable.
///
/// tokio knows from its last look at the socket whether it is readable, and `try_read` makes
/// a system call only when it is; [`Conn::fill`] reads through `poll_read`, so a socket
/// drained by the last answer is known to be drained and a connection taken again at once
/// costs no call. An upstream's close may come after tokio's last look, though, and
/// upstreams close idle connections after seconds, not microseconds: a connection idle for
/// [`ASK_KERNEL_AFTER`] is asked with a `recv` that neither waits nor consumes.
fn nothing_to_read(stream: &TcpStream, idle_for: Duration) -> bool {
    let read = if idle_for >= ASK_KERNEL_AFTER {
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        rustix::net::recv(stream, &mut [0u8; 1], flags)
            .map(|(n, _)| n)
            .map_err(std::io::Error::from)
    } else {
        stream.try_read(&mut [0u8; 1])
    };
    matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// What a read of `n` bytes in the middle of an answer means: none is the upstream closing
/// early, an error.
pub fn mid_answer(n: usize) -> std::io::Result<()> {
    match n {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the MCP server closed the connection mid-answer",
        )),
        _ => Ok(()),
    }
}

/// Where the upstream is, and the idle connections to it.
pub struct Pools {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Vec<Mutex<Vec<Conn>>>,
}

impl Pools {
    pub fn new(host: String, port: u16, connect_timeout: Duration, workers: usize) -> Self {
        Self {
            host,
            port,
            connect_timeout,
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    fn mine(&self) -> &Mutex<Vec<Conn>> {
        &self.idle[crate::worker::current() % self.idle.len()]
    }

    /// A live idle connection of the calling worker, if any.
    pub fn take(&self) -> Option<Conn> {
        let mut idle = self.mine().lock().ok()?;
        while let Some(mut c) = idle.pop() {
            let idle_for = c.idle_since.elapsed();
            if idle_for < IDLE_TIMEOUT && nothing_to_read(&c.stream, idle_for) {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub fn put(&self, mut conn: Conn) {
        if !conn.buf.is_empty() {
            return;
        }
        conn.idle_since = Instant::now();
        if let Ok(mut idle) = self.mine().lock()
            && idle.len() < IDLE_PER_WORKER
        {
            idle.push(conn);
        }
    }

    /// A new connection.
    pub async fn connect(&self) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            reused: false,
            idle_since: Instant::now(),
        })
    }
}

/// How a response body is delimited (RFC 9112 §6.3, for an answer to a POST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// What the lane needs to know of an upstream response head.
#[derive(Debug)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
    pub session_id: Option<String>,
    pub location: Option<String>,
    pub sse: bool,
}

/// The upstream's response head is not HTTP/1.x as we accept it.
#[derive(Debug, thiserror::Error)]
#[error("malformed response from the MCP server: {0}")]
pub struct BadResponse(pub &'static str);

/// The headers of an answer that the lane reads and that must come once (a bit each): with
/// two copies the lane could act on one and the client read the other. The general path
/// holds the upstream to the same (`backend::http`, through `single_header`).
const SESSION_ID: u8 = 1;
const LOCATION: u8 = 2;
const CONTENT_TYPE: u8 = 4;

/// Marks `header` seen, refusing the answer if it was already.
fn read_once(seen: &mut u8, header: u8) -> Result<(), BadResponse> {
    if *seen & header != 0 {
        return Err(BadResponse("a header that has one value is repeated"));
    }
    *seen |= header;
    Ok(())
}

/// Parses a response head at the start of `buf`: `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(BadResponse("head too large")),
        Err(_) => return Err(BadResponse("unparsable head")),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let (mut chunked, mut coded, mut length) = (false, false, None::<u64>);
    let (mut session_id, mut location, mut sse) = (None, None, false);
    let mut seen = 0u8;
    let mut lower = [0u8; 32];
    for h in resp.headers.iter() {
        // Only short names matter here.
        let Some(name) = lower.get_mut(..h.name.len()) else {
            continue;
        };
        name.copy_from_slice(h.name.as_bytes());
        name.make_ascii_lowercase();
        let text = || std::str::from_utf8(h.value).ok();
        match &*name {
            b"transfer-encoding" => {
                coded = true;
                chunked = text()
                    .and_then(|t| t.rsplit(',').next())
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
            b"content-length" => {
                for v in text().into_iter().flat_map(|t| t.split(',')).map(str::trim) {
                    // Digits only: the header goes on to the client as it came.
                    let n = v
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| v.parse::<u64>().ok())
                        .flatten()
                        .ok_or(BadResponse("bad content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(BadResponse("conflicting content-length"));
                    }
                    length = Some(n);
                }
            }
            b"connection"
                if text().is_some_and(|t| {
                    t.split(',').any(|c| c.trim().eq_ignore_ascii_case("close"))
                }) =>
            {
                keep_alive = false;
            }
            b"mcp-session-id" => {
                read_once(&mut seen, SESSION_ID)?;
                session_id = text().map(str::to_string);
            }
            b"location" => {
                read_once(&mut seen, LOCATION)?;
                location = text().map(str::to_string);
            }
            b"content-type" => {
                read_once(&mut seen, CONTENT_TYPE)?;
                sse = text()
                    .is_some_and(|t| crate::media_type::mime_is(t, crate::backend::http::SSE));
            }
            _ => {}
        }
    }
    let framing = if matches!(status, 100..=199 | 204 | 304) {
        Framing::Empty
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some(Head {
        len,
        status,
        framing,
        keep_alive,
        session_id,
        location,
        sse,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        parse_head(s.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn framing_rules() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(12), true));
        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\r\n");
        assert_eq!(
            (h.framing, h.keep_alive, h.sse),
            (Framing::Close, false, true)
        );
        let h = head("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.1 202 Accepted\r\nMcp-Session-Id: abc\r\nLocation: /x\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(h.session_id.as_deref(), Some("abc"));
        assert_eq!(h.location.as_deref(), Some("/x"));
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    /// A connection to a fresh local listener, and the listener's end of it.
    async fn pair() -> (Conn, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (upstream, _) = listener.accept().await.unwrap();
        let conn = Conn {
            stream,
            buf: BytesMut::new(),
            reused: false,
            idle_since: Instant::now(),
        };
        (conn, upstream)
    }

    #[tokio::test]
    async fn an_answer_read_whole_leaves_the_connection_known_to_be_drained() {
        use tokio::io::AsyncWriteExt;
        let (mut conn, mut upstream) = pair().await;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        upstream.write_all(answer).await.unwrap();
        while conn.buf.len() < answer.len() {
            assert!(conn.fill().await.unwrap() > 0);
        }
        // Not readable as far as tokio knows, so taking it again needs no `recv`.
        let readable = tokio::time::timeout(Duration::ZERO, conn.stream.readable()).await;
        assert!(
            readable.is_err(),
            "tokio still counts the drained socket as readable"
        );
        assert!(nothing_to_read(&conn.stream, Duration::ZERO));
    }

    #[tokio::test]
    async fn a_long_idle_connection_is_asked_whether_the_upstream_closed_it() {
        let (conn, upstream) = pair().await;
        drop(upstream);
        // Nothing here yields to tokio, so only a system call can see the close.
        assert!(
            nothing_to_read(&conn.stream, Duration::ZERO),
            "judged by tokio's last look, which has not seen the close"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while nothing_to_read(&conn.stream, ASK_KERNEL_AFTER) {
            assert!(Instant::now() < deadline, "the close was never seen");
            std::hint::spin_loop();
        }
    }
}
