//! The HTTP/1 fast lane in front of the stdio bridge, against the general stack. Two proxies
//! bridging the misbehaving fixture: one with the lane, one with `--no-fast-lane`. The same
//! requests, byte for byte, go to both; the answers must match (the session ids each proxy
//! makes aside), the lane must have served the POSTs to the MCP endpoint, and a client that
//! leaves mid-call must be noticed as the general stack notices it.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::fastlane::{Answer, read_answer};
use crate::helpers::{TestProxy, token_for};
use crate::stdio::{FIXTURE, init_body};

/// One proxy of the pair and a token of its user.
struct Side {
    proxy: TestProxy,
    token: String,
}

impl Side {
    async fn start(lane: bool, marks: &std::path::Path) -> Self {
        let env = format!("MISBEHAVE_MARK_DIR={}", marks.display());
        let mut args = vec!["--stdio-env", env.as_str()];
        if !lane {
            args.push("--no-fast-lane");
        }
        args.extend(["--", "node", FIXTURE]);
        let proxy = crate::helpers::start_proxy(&args).await;
        let token = token_for(&proxy, "password:alice").await;
        Side { proxy, token }
    }

    fn authority(&self) -> String {
        self.proxy.base.trim_start_matches("http://").to_string()
    }

    /// A POST of `body` to the MCP endpoint with what a client sends, and `extra` lines.
    fn post(&self, extra: &str, body: &str) -> String {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             {extra}Content-Length: {}\r\n\r\n{body}",
            self.authority(),
            self.token,
            body.len()
        )
    }

    /// `post` within the session `sid`, as a 2025-06-18 client sends it.
    fn in_session(&self, sid: &str, body: &str) -> String {
        let extra = format!("Mcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\n");
        self.post(&extra, body)
    }

    /// Sends `requests` in one write on a new connection and reads `count` answers, this
    /// proxy's own port in header values (its metadata URL in a challenge) written `PORT`.
    async fn exchange(&self, requests: &str, count: usize) -> Vec<Answer> {
        let authority = self.authority();
        let port = authority.rsplit(':').next().unwrap_or_default().to_string();
        let mut s = TcpStream::connect(&authority).await.unwrap();
        s.write_all(requests.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for i in 0..count {
            let mut answer = read_answer(&mut s, &mut buf)
                .await
                .unwrap_or_else(|| panic!("no answer {i} of {count}"));
            for (_, v) in &mut answer.headers {
                *v = v.replace(&format!(":{port}"), ":PORT");
            }
            out.push(answer);
        }
        out
    }

    fn served_by_lane(&self) -> u64 {
        self.proxy.state.metrics().fast_lane.get()
    }
}

fn call(id: u64, tool: &str) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{"message":"hi"}}}).to_string()
}

/// A stateless (2026-07-28) call of `tool`, with its mirrored headers.
fn modern_call(side: &Side, tool: &str) -> String {
    let body = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":tool,"arguments":{},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let extra = format!(
        "Mcp-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\nMcp-Name: {tool}\r\n"
    );
    side.post(&extra, &body.to_string())
}

/// `answers` with the session id `sid` written `SID`, wherever it appears.
fn without_session_id(mut answers: Vec<Answer>, sid: &str) -> Vec<Answer> {
    for a in &mut answers {
        for (_, v) in &mut a.headers {
            *v = v.replace(sid, "SID");
        }
        a.body = String::from_utf8_lossy(&a.body)
            .replace(sid, "SID")
            .into_bytes();
    }
    answers
}

/// Everything a session's client does, on three connections: `initialize` alone; then
/// (pipelined in one write) its notification, calls answered at once, after notifications
/// and with a 1 MB result, a batch, a JSON-only call, broken requests and another user's
/// view of the session; then `DELETE` and a call after it. The answers, with the session id
/// written `SID`, and how many requests the lane served.
async fn a_session_s_life(side: &Side, other_token: &str) -> (Vec<Answer>, u64) {
    let before = side.served_by_lane();
    let mut answers = side.exchange(&side.post("", &init_body(1)), 1).await;
    assert_eq!(answers[0].status, 200, "{:?}", answers[0]);
    let sid = answers[0].header("mcp-session-id").unwrap().to_string();
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let batch = format!("[{},{}]", call(8, "echo"), call(9, "id"));
    let json_only = side.in_session(&sid, &call(10, "echo")).replace(
        "Accept: application/json, text/event-stream",
        "Accept: application/json",
    );
    let others = side
        .in_session(&sid, &call(11, "echo"))
        .replace(&side.token, other_token);
    let pipelined = [
        side.in_session(&sid, &initialized),
        side.in_session(&sid, &call(2, "echo")),
        side.in_session(&sid, &call(3, "notify")),
        side.in_session(&sid, &call(4, "big")),
        // Batches are of 2025-03-26 (2025-06-18 has none).
        side.in_session(&sid, &batch)
            .replace("2025-06-18", "2025-03-26"),
        json_only,
        side.in_session(&sid, "{not json"),
        side.in_session("no-such-session", &call(12, "echo")),
        side.in_session(&sid, &call(13, "echo"))
            .replace("2025-06-18", "1999-01-01"),
        others,
        modern_call(side, "echo"),
        // Refused by the gate: the router's answer, within the lane.
        side.in_session(&sid, &call(15, "echo"))
            .replace(&side.token, "not-a-token"),
    ];
    answers.extend(side.exchange(&pipelined.concat(), pipelined.len()).await);
    let delete = format!(
        "DELETE /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nMcp-Session-Id: {sid}\r\n\
         Mcp-Protocol-Version: 2025-06-18\r\n\r\n",
        side.authority(),
        side.token
    );
    let after = side.in_session(&sid, &call(14, "echo"));
    answers.extend(side.exchange(&(delete + &after), 2).await);
    (
        without_session_id(answers, &sid),
        side.served_by_lane() - before,
    )
}

#[tokio::test]
async fn the_lane_bridges_exactly_as_the_general_stack() {
    let marks = tempfile::tempdir().unwrap();
    let lane = Side::start(true, marks.path()).await;
    let general = Side::start(false, marks.path()).await;
    let (through_lane, served) =
        a_session_s_life(&lane, &token_for(&lane.proxy, "password:bob").await).await;
    let (through_general, not_served) =
        a_session_s_life(&general, &token_for(&general.proxy, "password:bob").await).await;
    let statuses: Vec<u16> = through_lane.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            200, 202, 200, 200, 200, 200, 200, 400, 404, 400, 404, 200, 401, 204, 404
        ],
        "each request answered as it should be"
    );
    for (i, (l, g)) in through_lane.iter().zip(&through_general).enumerate() {
        assert_eq!(
            l, g,
            "answer {i} differs between the lane and the general stack"
        );
    }
    assert_eq!(through_lane.len(), through_general.len());
    // The SSE answers are the bridge's, whole: the notifications before the answer, the
    // 1 MB result.
    let body = |i: usize| String::from_utf8_lossy(&through_lane[i].body).to_string();
    assert!(body(3).contains("notifications/message") && body(3).contains(r#""id":3"#));
    assert!(body(4).len() > 1_000_000, "{}", body(4).len());
    // Every POST with a good token in the lane (the DELETE is the router's); none in the other.
    assert_eq!(served, 13, "the lane served every POST");
    assert_eq!(not_served, 0);
}

/// The stateless call's answer, once the call `hang` is in the child and its client is gone.
async fn cancelled_when_the_client_leaves(side: &Side, marks: &std::path::Path) -> Value {
    let mark = marks.join("hanging");
    let _ = std::fs::remove_file(&mark);
    let mut s = TcpStream::connect(side.authority()).await.unwrap();
    s.write_all(modern_call(side, "hang").as_bytes())
        .await
        .unwrap();
    crate::helpers::wait_for_file(&mark, "the call never reached the child").await;
    drop(s);
    // The child hears of the cancellation (`counts`: initialize, initialized, cancelled).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answers = side.exchange(&modern_call(side, "counts"), 1).await;
        let answer: Value = serde_json::from_slice(&answers[0].body).unwrap();
        if answer["result"]["content"][0]["text"] == "1,1,1" {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child was not told: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_call_cancels_it_in_the_lane_as_elsewhere() {
    for lane in [true, false] {
        let marks = tempfile::tempdir().unwrap();
        let side = Side::start(lane, marks.path()).await;
        let before = side.served_by_lane();
        cancelled_when_the_client_leaves(&side, marks.path()).await;
        assert_eq!(side.served_by_lane() > before, lane);
    }
}
