//! The HTTP/1 fast lane against the general stack. Two proxies in front of one upstream that
//! speaks raw HTTP/1.1 (so every framing can be scripted): one with the lane, one with
//! `--no-fast-lane`. The same requests, byte for byte, go to both; what the upstream
//! receives and what the client gets back must match, and the lane must have served the
//! ordinary requests and handed every other one to the general stack.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_auth_proxy::store::Identity;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{Mint, TestProxy, mint, start_proxy};

/// A request as the upstream received it: target, header fields (names lowercased, sorted),
/// body.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The raw upstream. The request's `x-script` header picks the answer.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections the upstream has closed (its side dropped).
    closed: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = closed.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let (log, count) = (log.clone(), count.clone());
                conns.spawn(async move {
                    upstream_conn(s, addr, log).await;
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            seen,
            closed,
            task,
        }
    }

    fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Header fields as (lowercase name, value) pairs.
fn fields_of(headers: &[httparse::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect()
}

/// The first value of `name` among `fields`.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

async fn reply(s: &mut TcpStream, text: String) -> bool {
    s.write_all(text.as_bytes()).await.is_ok()
}

async fn upstream_conn(mut s: TcpStream, me: SocketAddr, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let (head_len, seen) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let mut headers = fields_of(req.headers);
                headers.sort();
                let target = req.path.unwrap().to_string();
                let method = req.method.unwrap().to_string();
                break (n, (method, target, headers));
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let (method, target, headers) = seen;
        let length: usize = field(&headers, "content-length").map_or(0, |v| v.parse().unwrap());
        while buf.len() < head_len + length {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_len..head_len + length].to_vec();
        buf.drain(..head_len + length);
        let script = field(&headers, "x-script").unwrap_or("json").to_string();
        log.lock().unwrap().push(Seen {
            method,
            target: target.clone(),
            headers,
            body,
        });
        let json = |extra: &str| {
            let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let ok = match script.as_str() {
            "json" => reply(&mut s, json("")).await,
            "session" => reply(&mut s, json("mcp-session-id: upstream-session-1\r\n")).await,
            // A header the proxy acts on, given twice: which one the client would read is
            // not the proxy's to guess.
            "two-sessions" => {
                let two =
                    "mcp-session-id: upstream-session-1\r\nmcp-session-id: upstream-session-2\r\n";
                reply(&mut s, json(two)).await
            }
            "two-types" => reply(&mut s, json("content-type: text/event-stream\r\n")).await,
            "two-redirects" => {
                let text = "HTTP/1.1 307 Temporary Redirect\r\nlocation: /mcp/\r\n\
                            location: /elsewhere\r\ncontent-length: 0\r\n\r\n";
                reply(&mut s, text.into()).await
            }
            "interim" => {
                reply(
                    &mut s,
                    format!("HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n{}", json("")),
                )
                .await
            }
            "hop" => {
                let extra = format!(
                    "connection: keep-alive\r\nkeep-alive: timeout=5\r\nproxy-authenticate: Basic\r\n\
                     location: http://{me}/elsewhere?q=1\r\ncache-control: private\r\n\
                     date: Mon, 01 Jan 2024 00:00:00 GMT\r\nx-upstream: 1\r\n"
                );
                reply(&mut s, json(&extra)).await
            }
            "sse" => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let event = |n: u32| {
                    let e = format!("id: {n}\ndata: {{\"n\":{n}}}\n\n");
                    format!("{:x}\r\n{e}\r\n", e.len())
                };
                let mut ok = reply(&mut s, format!("{head}{}", event(0))).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                ok &= reply(&mut s, event(1)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                ok && reply(&mut s, format!("{}0\r\n\r\n", event(2))).await
            }
            "big" => {
                let body = "x".repeat(200_000);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                reply(&mut s, format!("{head}{body}")).await
            }
            "close" => {
                let text = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"ok\":1}";
                reply(&mut s, text.into()).await;
                return;
            }
            "http10" => {
                let text = "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                reply(&mut s, text.into()).await;
                return;
            }
            "401" => {
                let text = "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"up\"\r\ncontent-length: 0\r\n\r\n";
                reply(&mut s, text.into()).await
            }
            "redirect" if target == "/mcp" => {
                let text = "HTTP/1.1 307 Temporary Redirect\r\nlocation: /mcp/\r\ncontent-length: 0\r\n\r\n";
                reply(&mut s, text.into()).await
            }
            "redirect" => reply(&mut s, json("")).await,
            "slow" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                reply(&mut s, json("")).await
            }
            "drop" => return,
            // Promises more body than it sends.
            "short" => {
                let text = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\":";
                reply(&mut s, text.into()).await;
                return;
            }
            // An SSE stream with one event, then held open (no more events) until the proxy
            // closes the connection.
            "hold" => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let e = "id: 0\ndata: {}\n\n";
                reply(&mut s, format!("{head}{:x}\r\n{e}\r\n", e.len())).await;
                let mut rest = [0u8; 64];
                while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
            // Answers with keep-alive, then closes the idle connection soon after.
            "close-later" => {
                reply(&mut s, json("")).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            other => panic!("unknown script {other}"),
        };
        if !ok {
            return;
        }
    }
}

/// A response as the client received it: status, header fields (names lowercased, sorted,
/// `date` left out), the body with any chunked framing removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }
}

/// Reads one response from `s` (bytes already read in `buf`); `None` at the end.
pub async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Answer> {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }
    let (head_len, status, mut headers) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(buf) {
            break (n, resp.code.unwrap(), fields_of(resp.headers));
        }
        if !more(s, buf).await {
            return None;
        }
    };
    buf.drain(..head_len);
    if (100..200).contains(&status) {
        // An interim answer (100 Continue): the real one follows.
        return Box::pin(read_answer(s, buf)).await;
    }
    let mut body = Vec::new();
    if field(&headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(more(s, buf).await, "chunked body cut short");
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                assert!(more(s, buf).await, "chunk cut short");
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = field(&headers, "content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            assert!(more(s, buf).await, "body cut short");
        }
        body = buf.drain(..n).collect();
    }
    headers.retain(|(n, _)| n != "date");
    headers.sort();
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Sends `request` on a new connection and reads `count` answers.
async fn exchange(addr: &str, request: &[u8], count: usize) -> Vec<Answer> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(read_answer(&mut s, &mut buf).await.expect("an answer"));
    }
    out
}

/// One of the pair under test.
struct Side {
    proxy: TestProxy,
    token: String,
}

impl Side {
    fn authority(&self) -> String {
        self.proxy.base.trim_start_matches("http://").to_string()
    }

    /// A POST to the MCP endpoint with everything a real client sends and a few headers
    /// that must not go upstream; `extra` lines are added, `{token}` and `{host}` filled in.
    fn post(&self, script: &str, extra: &str, body: &str) -> Vec<u8> {
        let extra = extra
            .replace("{token}", &self.token)
            .replace("{host}", &self.authority());
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             Mcp-Protocol-Version: 2025-06-18\r\nX-Script: {script}\r\nX-Forwarded-For: 6.6.6.6\r\n\
             X-Forwarded-User: root\r\nX-Dept: forged\r\nX-Api-Key: from-client\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            self.authority(),
            self.token,
            body.len()
        )
        .into_bytes()
    }

    /// A GET to the MCP endpoint (the client's SSE stream), as `post` writes a POST.
    fn get(&self, script: &str, extra: &str) -> Vec<u8> {
        let extra = extra
            .replace("{token}", &self.token)
            .replace("{host}", &self.authority());
        format!(
            "GET /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Accept: text/event-stream\r\nMcp-Protocol-Version: 2025-06-18\r\nX-Script: {script}\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-User: root\r\nX-Dept: forged\r\n\
             X-Api-Key: from-client\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n{extra}\r\n",
            self.authority(),
            self.token,
        )
        .into_bytes()
    }

    /// Sends `request` on a new connection and reads `count` answers, this proxy's own port
    /// in header values (its origin in CORS grants, rewritten locations) written `PORT`.
    async fn exchange(&self, request: &[u8], count: usize) -> Vec<Answer> {
        let authority = self.authority();
        let port = authority.rsplit(':').next().unwrap_or_default();
        let mut answers = exchange(&authority, request, count).await;
        for a in &mut answers {
            for (_, v) in &mut a.headers {
                *v = v.replace(&format!(":{port}"), ":PORT");
            }
        }
        answers
    }

    fn served_by_lane(&self) -> u64 {
        self.proxy.state.metrics().fast_lane.get()
    }
}

const BODY: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#;

/// The two proxies (lane, general) in front of `up`, with identity headers, a header
/// mapping and a static header in play.
async fn pair(up: &RawUpstream, extra_args: &[&str]) -> (Side, Side) {
    let url = format!("http://{}/mcp", up.addr);
    let mut sides = Vec::new();
    for lane in [true, false] {
        let mut args = vec![
            "--header-mapping",
            "/dept:X-Dept",
            "--proxy-headers",
            "X-Api-Key: static",
            "--upstream-timeout",
            "1s",
        ];
        if !lane {
            args.push("--no-fast-lane");
        }
        args.extend_from_slice(extra_args);
        args.push(&url);
        let proxy = start_proxy(&args).await;
        let identity = Identity {
            provider: "password".into(),
            user_id: "alice".into(),
            email: Some("alice@example.com".into()),
            name: Some("Alice".into()),
            groups: vec!["admins".into(), "dev".into()],
            claims: json!({ "dept": "R&D" }),
        };
        let token = mint(
            proxy.repo(),
            &proxy.state.site().server.resource,
            Mint {
                identity: Some(identity),
                ..Mint::default()
            },
        )
        .await;
        sides.push(Side { proxy, token });
    }
    let general = sides.pop().unwrap();
    let lane = sides.pop().unwrap();
    (lane, general)
}

/// What the upstream saw, without the one header that names each proxy.
fn comparable(mut seen: Vec<Seen>) -> Vec<Seen> {
    for s in &mut seen {
        s.headers.retain(|(n, _)| n != "x-forwarded-host");
    }
    seen
}

#[tokio::test]
async fn the_lane_answers_exactly_as_the_general_stack() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &[]).await;
    for script in [
        "json",
        "session",
        "interim",
        "hop",
        "sse",
        "big",
        "close",
        "http10",
        "401",
        "redirect",
        "slow",
        "drop",
        "short",
        "two-sessions",
        "two-types",
        "two-redirects",
    ] {
        let before = lane.served_by_lane();
        let a = lane.exchange(&lane.post(script, "", BODY), 1).await;
        let seen_lane = comparable(up.take());
        let b = general.exchange(&general.post(script, "", BODY), 1).await;
        let seen_general = comparable(up.take());
        assert_eq!(a, b, "{script}: the client's view differs");
        assert_eq!(
            seen_lane, seen_general,
            "{script}: the upstream's view differs"
        );
        assert_eq!(
            lane.served_by_lane(),
            before + 1,
            "{script}: not served by the lane"
        );
        assert_eq!(general.served_by_lane(), 0);

        // And both are right, not merely alike.
        let expected_status = match script {
            "401" | "drop" | "short" | "two-sessions" | "two-types" | "two-redirects" => 502,
            "slow" => 504,
            _ => 200,
        };
        assert_eq!(a[0].status, expected_status, "{script}: {a:?}");
        assert_eq!(a[0].header("vary"), Some("origin"), "{script}");
        if script == "redirect" {
            assert_eq!(seen_lane.len(), 2);
            assert_eq!(seen_lane[1].target, "/mcp/");
            assert_eq!(seen_lane[1].body, BODY.as_bytes());
        }
    }

    // What went upstream, in detail (from the last ordinary exchange).
    let a = lane.exchange(&lane.post("json", "", BODY), 1).await;
    assert_eq!(a[0].body, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    let seen = up.take().pop().unwrap();
    let h = |name: &str| {
        seen.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join("|")
    };
    assert_eq!(seen.target, "/mcp");
    assert_eq!(seen.body, BODY.as_bytes());
    assert_eq!(h("host"), up.addr.to_string());
    assert_eq!(
        h("authorization"),
        "",
        "the client's token never goes upstream"
    );
    assert_eq!(
        h("x-forwarded-for"),
        "127.0.0.1",
        "the client's chain is not believed"
    );
    assert_eq!(h("x-forwarded-user"), "alice");
    assert_eq!(h("x-forwarded-email"), "alice@example.com");
    assert_eq!(h("x-forwarded-groups"), "admins,dev");
    assert_eq!(
        h("x-dept"),
        "R&D",
        "the mapped claim, not the forged header"
    );
    assert_eq!(
        h("x-api-key"),
        "static",
        "the static header replaces the client's"
    );
    assert_eq!(
        h("x-forwarded-host"),
        lane.proxy
            .state
            .site()
            .server
            .origin
            .as_str()
            .trim_start_matches("http://")
    );
    assert_eq!(h("x-forwarded-proto"), "http");
    assert_eq!(h("mcp-protocol-version"), "2025-06-18");
    assert_eq!(h("keep-alive"), "");
    assert_eq!(h("te"), "");
    assert_eq!(h("content-length"), BODY.len().to_string());
}

#[tokio::test]
async fn requests_the_lane_does_not_serve_get_the_general_answers() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &["--max-body", "1KiB"]).await;
    let big = "x".repeat(2000);
    // (extra header lines, body, the status both give)
    let cases: Vec<(&str, &str, u16)> = vec![
        ("Origin: https://evil.example\r\n", BODY, 403),
        ("Origin: http://{host}\r\n", BODY, 200),
        ("Cookie: theirs=1; mcp_proxy_session=s\r\n", BODY, 200),
        ("Expect: 100-continue\r\n", BODY, 200),
        ("Mcp-Session-Id: never-issued\r\n", BODY, 404),
        ("Authorization: Bearer {token}\r\n", BODY, 400),
        ("Connection: x-custom\r\nX-Custom: 1\r\n", BODY, 200),
        ("", &big, 413),
        // A single-valued header repeated (here after the one `post` writes, or twice): 400
        // before anything is read from it, on both paths; lists and cookies may repeat.
        (
            "Mcp-Session-Id: mine\r\nMcp-Session-Id: theirs\r\n",
            BODY,
            400,
        ),
        ("Host: {host}\r\n", BODY, 400),
        ("Mcp-Protocol-Version: 2025-03-26\r\n", BODY, 400),
        ("Content-Type: text/plain\r\n", BODY, 400),
        ("Last-Event-ID: 1\r\nLast-Event-ID: 2\r\n", BODY, 400),
        (
            "Origin: http://{host}\r\nOrigin: http://{host}\r\n",
            BODY,
            400,
        ),
        ("Mcp-Method: a\r\nMcp-Method: b\r\n", BODY, 400),
        ("Mcp-Name: a\r\nMcp-Name: b\r\n", BODY, 400),
        ("Mcp-Session-Id: caf\u{e9}\r\n", BODY, 400),
        ("Cookie: a=1\r\nCookie: b=2\r\n", BODY, 200),
        ("X-Forwarded-For: 1.1.1.1\r\n", BODY, 200),
    ];
    for (extra, body, status) in cases {
        let a = lane.exchange(&lane.post("json", extra, body), 1).await;
        let seen_lane = comparable(up.take());
        let b = general
            .exchange(&general.post("json", extra, body), 1)
            .await;
        let seen_general = comparable(up.take());
        assert_eq!(a, b, "{extra:?}");
        assert_eq!(seen_lane, seen_general, "{extra:?}");
        assert_eq!(a[0].status, status, "{extra:?}: {a:?}");
        if status >= 400 {
            assert!(seen_lane.is_empty(), "{extra:?} went upstream");
        }
    }
    // Requests whose first line or credentials are not the lane's.
    let raw = |side: &Side, text: &str| {
        text.replace("{host}", &side.authority())
            .replace("{token}", &side.token)
            .into_bytes()
    };
    for text in [
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{}",
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer wrong\r\nContent-Length: 2\r\n\r\n{}",
        "POST /mcp HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{}",
        "POST /mcp?x=1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{}",
        "POST /mcp HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{}",
        "GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: {host}\r\n\r\n",
        // Lengths an upstream might read otherwise (smuggling): never the lane's.
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: +2\r\n\r\n{}",
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let a = lane.exchange(&raw(&lane, text), 1).await;
        let b = general.exchange(&raw(&general, text), 1).await;
        let (mut a, mut b) = (a[0].clone(), b[0].clone());
        assert_eq!(a.status, b.status, "{text:?}");
        // Metadata and challenges name each proxy's own origin.
        for x in [&mut a, &mut b] {
            x.headers
                .retain(|(n, _)| n != "www-authenticate" && n != "content-length");
            x.body.clear();
        }
        assert_eq!(a, b, "{text:?}");
        up.take();
    }
    // Answered by the router within the lane: a CORS preflight, a HEAD.
    for text in [
        "OPTIONS /mcp HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nAccess-Control-Request-Method: POST\r\n\r\n",
        "HEAD /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ] {
        let head = text.starts_with("HEAD");
        let a = routed_answer(&lane, &raw(&lane, text), head).await;
        let b = routed_answer(&general, &raw(&general, text), head).await;
        assert_eq!(a, b, "{text:?}");
        assert!(a.status < 300, "{text:?}: {a:?}");
        up.take();
    }
    assert_eq!(
        lane.served_by_lane(),
        1,
        "none of these but the repeated X-Forwarded-For (a list) was proxied by the lane"
    );
}

/// One answer; for a HEAD request, only its head (no body follows it, whatever its
/// Content-Length says), without the length, which names each proxy's origin.
async fn routed_answer(side: &Side, request: &[u8], head: bool) -> Answer {
    if !head {
        return side.exchange(request, 1).await.remove(0);
    }
    let mut s = TcpStream::connect(side.authority()).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].ends_with(b"\r\n\r\n"),
        "a body after a HEAD answer"
    );
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut fields);
    resp.parse(&buf[..n]).unwrap();
    let mut headers = fields_of(resp.headers);
    headers.retain(|(n, _)| n != "date" && n != "content-length");
    headers.sort();
    Answer {
        status: resp.code.unwrap(),
        headers,
        body: Vec::new(),
    }
}

#[tokio::test]
async fn a_get_stream_goes_through_the_lane_exactly_as_through_the_general_stack() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &[]).await;
    for (script, extra, status) in [
        ("sse", "", 200),
        ("sse", "Last-Event-ID: 1\r\n", 200),
        ("json", "", 200),
        ("redirect", "", 200),
        ("close", "", 200),
        ("401", "", 502),
        ("slow", "", 504),
        ("drop", "", 502),
    ] {
        let before = lane.served_by_lane();
        let a = lane.exchange(&lane.get(script, extra), 1).await;
        let seen_lane = comparable(up.take());
        let b = general.exchange(&general.get(script, extra), 1).await;
        let seen_general = comparable(up.take());
        assert_eq!(a, b, "{script} {extra:?}: the client's view differs");
        assert_eq!(
            seen_lane, seen_general,
            "{script} {extra:?}: the upstream's view differs"
        );
        assert_eq!(
            lane.served_by_lane(),
            before + 1,
            "{script}: not the lane's"
        );
        assert_eq!(a[0].status, status, "{script}: {a:?}");
        assert!(
            seen_lane
                .iter()
                .all(|s| s.method == "GET" && s.body.is_empty()),
            "{script}: a GET, without a body: {seen_lane:?}"
        );
    }
    // The router's within the lane, with the same answers: another user's (or an unknown)
    // session (404, before the upstream), a GET with a body.
    for extra in [
        "Mcp-Session-Id: never-issued\r\n",
        "Content-Length: 2\r\n\r\n{}",
    ] {
        let a = lane.exchange(&lane.get("sse", extra), 1).await;
        let b = general.exchange(&general.get("sse", extra), 1).await;
        assert_eq!(a, b, "{extra:?}");
        up.take();
    }
    assert_eq!(
        lane.exchange(&lane.get("sse", "Mcp-Session-Id: never-issued\r\n"), 1)
            .await[0]
            .status,
        404
    );
    // Counted as GETs, as the general stack counts them.
    let counted = r#"mcp_auth_proxy_http_requests_total{route="mcp",method="GET",status="200"} 6"#;
    for side in [&lane, &general] {
        let text = side.proxy.state.metrics().render();
        assert!(
            text.contains(counted),
            "{}",
            text.lines()
                .filter(|l| l.contains("requests_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // With --http-streaming-only there is no GET stream: 405 on both, never upstream.
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &["--http-streaming-only"]).await;
    let a = lane.exchange(&lane.get("sse", ""), 1).await;
    let b = general.exchange(&general.get("sse", ""), 1).await;
    assert_eq!((a[0].status, b[0].status), (405, 405));
    assert_eq!(a, b);
    assert!(up.take().is_empty());
    assert_eq!(lane.served_by_lane(), 0);
}

#[tokio::test]
async fn a_stream_whose_client_left_lets_its_upstream_connection_go() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &[]).await;
    for side in [&lane, &general] {
        let closed = up.closed();
        let mut s = TcpStream::connect(side.authority()).await.unwrap();
        s.write_all(&side.get("hold", "")).await.unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("id: 0") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream's first event");
            got.extend_from_slice(&chunk[..n]);
        }
        // The client goes; the upstream sends nothing more.
        drop(s);
        crate::helpers::wait_until(
            || up.closed() > closed,
            "the upstream connection of a stream whose client left to close",
        )
        .await;
    }
    assert_eq!(lane.served_by_lane(), 1);
}

#[tokio::test]
async fn a_connection_keeps_its_lane_pipelines_in_order_and_moves_on_only_when_it_must() {
    let up = RawUpstream::start().await;
    let (lane, _general) = pair(&up, &[]).await;
    let addr = &lane.proxy.base[7..];

    // Pipelined: two posts the lane proxies, a refused one and a metadata read the router
    // answers within the lane, and a post proxied by the lane again.
    let mut wire = lane.post("json", "", BODY);
    wire.extend(lane.post("sse", "", BODY));
    wire.extend(
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {0}\r\nContent-Length: 2\r\n\r\n{{}}\
             GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: {0}\r\n\r\n",
            lane.authority()
        )
        .into_bytes(),
    );
    wire.extend(lane.post("json", "", BODY));
    let answers = exchange(addr, &wire, 5).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 401, 200, 200]);
    assert!(String::from_utf8_lossy(&answers[1].body).contains(r#"data: {"n":2}"#));
    assert!(answers[2].header("www-authenticate").is_some());
    assert!(String::from_utf8_lossy(&answers[3].body).contains("authorization_servers"));
    assert_eq!(
        lane.served_by_lane(),
        3,
        "the connection stayed in the lane"
    );
    assert_eq!(up.take().len(), 3);

    // A request only the general stack serves (here `Expect: 100-continue`) moves the
    // connection there for good: the next post is not the lane's.
    let mut wire = lane.post("json", "Expect: 100-continue\r\n", BODY);
    wire.extend(lane.post("json", "", BODY));
    let answers = exchange(addr, &wire, 2).await;
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200, 200]
    );
    assert_eq!(lane.served_by_lane(), 3);
    assert_eq!(up.take().len(), 2);

    // `Connection: close` is honoured: the answer says so and the connection ends.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&lane.post("json", "Connection: close\r\n", BODY))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = read_answer(&mut s, &mut buf).await.unwrap();
    assert_eq!(a.header("connection"), Some("close"));
    assert!(read_answer(&mut s, &mut buf).await.is_none());

    // A pooled upstream connection the upstream closed while idle is not used.
    let closed = up.closed();
    exchange(addr, &lane.post("close-later", "", BODY), 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while up.closed() == closed {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = exchange(addr, &lane.post("json", "", BODY), 1).await;
    assert_eq!(a[0].status, 200);
    assert_eq!(
        up.take().len(),
        3,
        "each request went upstream exactly once"
    );
}

#[tokio::test]
async fn idle_and_slow_connections_are_cut_after_the_header_timeout() {
    let up = RawUpstream::start().await;
    let (lane, _general) = pair(&up, &["--header-read-timeout", "1s"]).await;
    let addr = lane.authority();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    // Two requests 600 ms apart: the second restarts the timeout, so the connection, idle
    // after it, is closed about a second later — not a second after the first.
    let started = std::time::Instant::now();
    s.write_all(&lane.post("json", "", BODY)).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(&lane.post("json", "", BODY)).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 200);
    let second = started.elapsed();
    assert!(read_answer(&mut s, &mut buf).await.is_none());
    let idle = started.elapsed() - second;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "closed {idle:?} after the second answer"
    );
    assert_eq!(lane.served_by_lane(), 2);

    // A head trickled byte by byte is cut off too, although bytes keep coming.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let request = lane.post("json", "", BODY);
    let mut closed = false;
    for byte in request.iter().take(request.len() - 10) {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut chunk = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(50), slow.read(&mut chunk)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling client was never cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(lane.served_by_lane(), 2);
}

/// Reads from `s` until the proxy closes the connection or `limit` passes; what was read.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

#[tokio::test]
async fn bodies_that_trickle_in_are_cut_off_and_free_their_connection_slot() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(
        &up,
        &["--max-connections", "3", "--body-read-timeout", "1s"],
    )
    .await;
    for side in [&lane, &general] {
        let host = side.authority();
        // Complete heads, one byte of a 50 000-byte body, no token needed: the MCP endpoint
        // (with and without a token), the token endpoint and the login form.
        let heads = [
            format!("POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Length: 50000\r\n\r\n{{"),
            format!(
                "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n{{",
                side.token
            ),
            format!(
                "POST /token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 50000\r\n\r\ng"
            ),
        ];
        let mut held = Vec::new();
        for head in &heads {
            let mut s = TcpStream::connect(&host).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            held.push(s);
        }
        for (s, head) in held.iter_mut().zip(&heads) {
            let answer = until_closed(s, Duration::from_secs(10)).await;
            let answer = answer.unwrap_or_else(|| panic!("still open after 10 s: {head:?}"));
            // A plain close, or a refusal (408, or the gate's 401 without reading the
            // body) followed by the close.
            let text = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || text.starts_with("HTTP/1.1 4"),
                "{head:?}: {text}"
            );
        }
        // The slots are free again: a new client is served.
        let health = exchange(
            &host,
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            1,
        )
        .await;
        assert_eq!(health[0].status, 200);
    }
    assert!(up.take().is_empty(), "no partial body went upstream");
}

#[tokio::test]
async fn a_chunked_body_over_max_body_is_413_and_reaches_no_one() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &["--max-body", "1KiB"]).await;
    let chunk = "x".repeat(800);
    for side in [&lane, &general] {
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n",
            side.authority(),
            side.token
        );
        let answer = side.exchange(request.as_bytes(), 1).await.remove(0);
        assert_eq!(answer.status, 413, "{answer:?}");
        assert!(up.take().is_empty(), "the upstream saw a request");
    }
}

#[tokio::test]
async fn underscore_copies_of_our_headers_never_reach_the_upstream() {
    let up = RawUpstream::start().await;
    let (lane, general) = pair(&up, &[]).await;
    // CGI, WSGI and PHP read `_` as `-`: each of these would shadow a header only we set
    // (identity, --header-mapping's X-Dept, --proxy-headers' X-Api-Key).
    let shadows = "X_Forwarded_User: root\r\nX-Forwarded_Email: root@evil.example\r\n\
                   x_forwarded_groups: admins\r\nX_Dept: forged\r\nX_Api_Key: from-client\r\n\
                   X_Forwarded_For: 6.6.6.6\r\nX_Unrelated: kept\r\n";
    for side in [&lane, &general] {
        let answer = side.exchange(&side.post("json", shadows, BODY), 1).await;
        assert_eq!(answer[0].status, 200);
        let seen = up.take();
        let names: Vec<&str> = seen[0].headers.iter().map(|(n, _)| n.as_str()).collect();
        let underscored: Vec<&&str> = names.iter().filter(|n| n.contains('_')).collect();
        assert_eq!(underscored, [&"x_unrelated"], "{names:?}");
        let value = |n: &str| field(&seen[0].headers, n).map(str::to_string);
        assert_eq!(value("x-forwarded-user").as_deref(), Some("alice"));
        assert_eq!(value("x-dept").as_deref(), Some("R&D"));
        assert_eq!(value("x-api-key").as_deref(), Some("static"));
    }
    assert_eq!(lane.served_by_lane(), 1);
}
