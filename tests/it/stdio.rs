//! The stdio bridge against a child that misbehaves on purpose
//! (`tests/fixtures/misbehaving-server.mjs`, run with node).

use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{TestProxy, client, start_proxy, token_for};

pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/misbehaving-server.mjs"
);

async fn bridge() -> TestProxy {
    bridge_with(&["--max-sessions", "3"]).await
}

/// The proxy bridging the misbehaving fixture, with `flags`.
pub async fn bridge_with(flags: &[&str]) -> TestProxy {
    let mut args = flags.to_vec();
    args.extend(["--", "node", FIXTURE]);
    start_proxy(&args).await
}

pub fn init_body(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string()
}

/// Creates a session of the fixture; returns its id.
pub async fn initialize(p: &TestProxy, token: &str) -> String {
    let (sid, body) = open_session(p, token).await;
    assert_eq!(
        body["result"]["serverInfo"]["name"], "misbehaving",
        "answered despite the garbage before it"
    );
    sid
}

/// Sends `initialize` without a session; returns the new session's id and the answer.
pub async fn open_session(p: &TestProxy, token: &str) -> (String, Value) {
    open_session_on(&client(), &p.url("/mcp"), token).await
}

/// [`open_session`] on client `c` (its connection stays open in `c`'s pool), at `url`.
pub async fn open_session_on(c: &reqwest::Client, url: &str, token: &str) -> (String, Value) {
    let resp = c
        .post(url)
        .bearer_auth(token)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(init_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    (sid, body)
}

/// A POST of `body` on session `sid` of the MCP endpoint at `url`, as a 2025-06-18 client
/// sends it.
pub fn session_post(url: &str, token: &str, sid: &str, body: &Value) -> reqwest::RequestBuilder {
    session_post_on(&client(), url, token, sid, body)
}

/// [`session_post`] on client `c`.
pub fn session_post_on(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    sid: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    c.post(url)
        .bearer_auth(token)
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .json(body)
}

/// A session of `token`'s user, initialized (`notifications/initialized` accepted).
pub async fn ready(p: &TestProxy, token: &str) -> String {
    let sid = initialize(p, token).await;
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(
        notify(p, token, &sid, initialized).await,
        StatusCode::ACCEPTED
    );
    sid
}

/// POSTs a tools/call and returns the SSE events' data.
pub async fn call(
    p: &TestProxy,
    token: &str,
    sid: &str,
    id: u64,
    tool: &str,
) -> (StatusCode, Vec<Value>) {
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{"n":id},"_meta":{"progressToken":format!("p{id}")}}});
    let resp = session_post(&p.url("/mcp"), token, sid, &body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status != StatusCode::OK {
        return (status, vec![]);
    }
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
        .await
        .unwrap()
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = text
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (status, events)
}

#[tokio::test]
async fn garbage_huge_lines_and_big_answers_do_not_break_the_session() {
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let (status, events) = call(&p, &t, &sid, 2, "echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], 2);
    assert_eq!(events[0]["result"]["content"][0]["text"], "echo:{\"n\":2}");

    let (_, events) = call(&p, &t, &sid, 3, "big").await;
    assert_eq!(
        events[0]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        1024 * 1024
    );

    // Notifications about a request ride on its stream, before its answer.
    let (_, events) = call(&p, &t, &sid, 4, "notify").await;
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap_or("response"))
        .collect();
    assert_eq!(
        methods,
        vec![
            "notifications/message",
            "notifications/progress",
            "response"
        ]
    );
    assert_eq!(events[1]["params"]["progressToken"], "p4");
}

/// A call's SSE answer leaves with its head in one write: the head waits for the first
/// event, so a client reading once gets both (a head sent ahead went out 300 ms before the
/// fixture's late answer, and this read would have returned it alone).
#[tokio::test]
async fn a_calls_sse_answer_leaves_with_its_head_in_one_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let sid = ready(&p, &t).await;
    let body = json!({"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"late","arguments":{}}}).to_string();
    let authority = p.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {t}\r\n\
         mcp-session-id: {sid}\r\nmcp-protocol-version: 2025-06-18\r\n\
         accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&buf[..n]);
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("content-type: text/event-stream"), "{first}");
    assert!(
        first.contains(r#"data: {"jsonrpc":"2.0","id":41,"result""#),
        "the head came without its event: {first}"
    );
}

#[tokio::test]
async fn a_crashing_child_fails_its_requests_at_once_and_the_next_session_works() {
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let started = std::time::Instant::now();
    let (status, events) = call(&p, &t, &sid, 5, "crash").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], 5);
    assert_eq!(events[0]["error"]["code"], -32000);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The dead session is gone; a new one starts a fresh child.
    let (status, _) = call(&p, &t, &sid, 6, "echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sid2 = initialize(&p, &t).await;
    let (_, events) = call(&p, &t, &sid2, 7, "echo").await;
    assert_eq!(events[0]["id"], 7);
}

#[tokio::test]
async fn sessions_are_checked_owned_and_limited() {
    let p = bridge().await;
    let alice = token_for(&p, "password:alice").await;
    let bob = token_for(&p, "password:bob").await;
    let c = client();
    let sid = initialize(&p, &alice).await;

    // Without a session id only initialize is accepted.
    let ping = json!({"jsonrpc":"2.0","id":9,"method":"ping"}).to_string();
    let resp = c
        .post(p.url("/mcp"))
        .bearer_auth(&alice)
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Another user's token on this session: 404, as for an unknown one.
    let (status, _) = call(&p, &bob, &sid, 10, "echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&p, &alice, "no-such-session", 11, "echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Unsupported protocol version: 400. Not JSON: a JSON-RPC parse error.
    let resp = c
        .post(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "1999-01-01")
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c
        .post(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32700);
    // Notifications are accepted with 202.
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let resp = c
        .post(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .body(note)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // GET needs SSE; DELETE ends the session for good.
    let resp = c
        .get(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    let resp = c
        .delete(p.url("/mcp"))
        .bearer_auth(&bob)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = c
        .delete(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, _) = call(&p, &alice, &sid, 12, "echo").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // --max-sessions 3, so at most 2 (half, rounded up) per user: alice's third is refused
    // with her own count; bob takes the last slot; then everyone is refused.
    let _s = [initialize(&p, &alice).await, initialize(&p, &alice).await];
    let refused = |token: String| {
        let url = p.url("/mcp");
        let c = c.clone();
        async move {
            let resp = c
                .post(url)
                .bearer_auth(token)
                .header(header::ACCEPT, "application/json, text/event-stream")
                .body(init_body(99))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            resp.json::<Value>().await.unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mine = refused(alice.clone()).await;
    assert!(mine.contains("you already hold 2"), "{mine}");
    let _b = initialize(&p, &bob).await;
    let carol = token_for(&p, "password:carol").await;
    let all = refused(carol).await;
    assert!(
        all.contains("all 3") && all.contains("2 by one user"),
        "{all}"
    );
}

#[tokio::test]
async fn ending_a_session_stops_the_child_and_what_it_started() {
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let (_, events) = call(&p, &t, &sid, 2, "grandchild").await;
    let pid: u32 = events[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let alive = |pid: u32| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    assert!(alive(pid), "the grandchild runs");
    let resp = client()
        .delete(p.url("/mcp"))
        .bearer_auth(&t)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while alive(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "the grandchild was stopped with the session");
}

#[tokio::test]
async fn idle_sessions_end_and_their_children_stop() {
    let p = start_proxy(&["--session-idle-timeout", "1s", "--", "node", FIXTURE]).await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    // Used every 400 ms for 2.4 s: never a second of silence, so never idle (the reaper
    // looks every second).
    for id in 2..8 {
        let (status, _) = call(&p, &t, &sid, id, "echo").await;
        assert_eq!(status, StatusCode::OK, "in use, not idle (call {id})");
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    // Then silence: the reaper ends it (watched without touching it, which would keep it).
    let stdio = p.state.backend.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while stdio.live_sessions() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never reaped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = call(&p, &t, &sid, 9, "echo").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "ended after a second of silence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_child_and_exits_0() {
    let site = crate::helpers::BinarySite::new().await;
    let bin = site.start(&["--", "node", FIXTURE]).await;
    let t = bin.target(&site.origin);
    let oc = crate::flow::OAuthClient::public(&t).await;
    let tok = oc.sign_in(&t, &crate::flow::Browser::new()).await;
    let access = tok["access_token"].as_str().unwrap();
    let post = |body: String, sid: Option<String>| {
        let mut r = client()
            .post(t.url("/mcp"))
            .bearer_auth(access)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(body);
        if let Some(s) = sid {
            r = r.header("mcp-session-id", s);
        }
        r.send()
    };
    let resp = post(init_body(1), None).await.unwrap();
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"grandchild"}})
        .to_string();
    let text = post(call, Some(sid)).await.unwrap().text().await.unwrap();
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    let pid: u32 = v["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let code = bin.terminate(std::time::Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the grandchild is gone: {stat}"
    );
}

#[tokio::test]
async fn batches_only_for_2025_03_26_sessions() {
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let c = client();
    let init = |version: &str| {
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":version,"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string()
    };
    let batch = json!([
        {"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{"a":1}}},
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"echo","arguments":{"b":2}}}
    ])
    .to_string();
    for (version, expected) in [
        ("2025-03-26", StatusCode::OK),
        ("2025-06-18", StatusCode::BAD_REQUEST),
    ] {
        let resp = c
            .post(p.url("/mcp"))
            .bearer_auth(&t)
            .header(header::ACCEPT, "application/json")
            .body(init(version))
            .send()
            .await
            .unwrap();
        let sid = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let resp = c
            .post(p.url("/mcp"))
            .bearer_auth(&t)
            .header("mcp-session-id", &sid)
            .header(header::ACCEPT, "application/json")
            .body(batch.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "{version}");
        if expected == StatusCode::OK {
            let answers: Vec<Value> = resp.json().await.unwrap();
            let mut ids: Vec<String> = answers.iter().map(|a| a["id"].to_string()).collect();
            ids.sort();
            assert_eq!(ids, vec!["\"x\"".to_string(), "10".to_string()]);
            // A batch with initialize in it is refused.
            let bad =
                json!([{"jsonrpc":"2.0","id":2,"method":"initialize","params":{}}]).to_string();
            let resp = c
                .post(p.url("/mcp"))
                .bearer_auth(&t)
                .header("mcp-session-id", &sid)
                .body(bad)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        }
    }
}

#[tokio::test]
async fn a_child_that_dies_at_start_gets_502_then_a_backoff() {
    let p = start_proxy(&[
        "--stdio-env",
        "MISBEHAVE_EXIT_AT_START=1",
        "--",
        "node",
        FIXTURE,
    ])
    .await;
    let t = token_for(&p, "password:alice").await;
    let c = client();
    let post = || {
        c.post(p.url("/mcp"))
            .bearer_auth(&t)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(init_body(1))
            .send()
    };
    for _ in 0..2 {
        let failed = post().await.unwrap();
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        assert!(failed.headers().get("mcp-session-id").is_none());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Two quick exits in a row: the proxy is still up, and the next start waits.
    let second = post().await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().get(header::RETRY_AFTER).is_some());
    // Refused (503) until the backoff has passed, then tried again (and failing again, 502).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let status = post().await.unwrap().status();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backoff never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        after,
        StatusCode::BAD_GATEWAY,
        "tried again after the backoff"
    );
}

#[tokio::test]
async fn a_dropped_stream_resumes_with_last_event_id() {
    let marks = tempfile::tempdir().unwrap();
    let env = format!("MISBEHAVE_MARK_DIR={}", marks.path().display());
    let p = bridge_with(&["--max-sessions", "3", "--stdio-env", &env]).await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let body = json!({"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"staged"}});
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(&t)
        .header("mcp-session-id", &sid)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.contains("first"), "{first}");
    let last_id = first
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_string();
    drop(stream); // the connection is lost before the answer

    // The rest is sent while no one listens.
    let done = marks.path().join("staged-done");
    crate::helpers::wait_for_file(&done, "the answer was never sent").await;
    let resumed = client()
        .get(p.url("/mcp"))
        .bearer_auth(&t)
        .header("mcp-session-id", &sid)
        .header(header::ACCEPT, "text/event-stream")
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    let text = tokio::time::timeout(std::time::Duration::from_secs(5), resumed.text())
        .await
        .unwrap()
        .unwrap();
    assert!(!text.contains("\"first\""), "not replayed twice: {text}");
    assert!(text.contains("\"second\""), "{text}");
    assert!(
        text.contains("staged done"),
        "the answer arrives on the resumed stream: {text}"
    );
}

#[tokio::test]
async fn a_warm_spare_child_is_started_ahead_and_replaced_when_taken() {
    let pids = tempfile::tempdir().unwrap();
    let env = format!("MISBEHAVE_PID_DIR={}", pids.path().display());
    let p = bridge_with(&["--stdio-warm-spare", "--stdio-env", &env]).await;
    let started = || std::fs::read_dir(pids.path()).unwrap().count();
    let wait_for = |n: usize| async move {
        for _ in 0..100 {
            if started() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{n} children never started; {} did", started());
    };
    wait_for(1).await;
    assert_eq!(started(), 1, "one spare before any session");
    let spare_pid = std::fs::read_dir(pids.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let (_, events) = call(&p, &t, &sid, 2, "pid").await;
    assert_eq!(
        events[0]["result"]["content"][0]["text"].as_str(),
        spare_pid.to_str(),
        "the session runs on the spare"
    );
    wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        started(),
        2,
        "taken spare replaced by exactly one new spare"
    );
}

#[tokio::test]
async fn list_changed_goes_to_the_get_stream_not_the_request() {
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let get = client()
        .get(p.url("/mcp"))
        .bearer_auth(&t)
        .header("mcp-session-id", &sid)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let mut get_stream = get.bytes_stream();
    let (_, events) = call(&p, &t, &sid, 2, "changed").await;
    assert_eq!(
        events.len(),
        1,
        "only the answer on the request's stream: {events:?}"
    );
    assert_eq!(events[0]["id"], 2);
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), get_stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("notifications/tools/list_changed"), "{text}");
}

/// POSTs a client notification; returns the status.
pub async fn notify(p: &TestProxy, token: &str, sid: &str, body: Value) -> StatusCode {
    session_post(&p.url("/mcp"), token, sid, &body)
        .send()
        .await
        .unwrap()
        .status()
}

pub fn text(events: &[Value]) -> &str {
    events.last().unwrap()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn shared_mode_one_child_serves_every_session_with_its_own_ids() {
    let p = start_proxy(&["--stdio-mode", "shared", "--", "node", FIXTURE]).await;
    let alice = token_for(&p, "password:alice").await;
    let bob = token_for(&p, "password:bob").await;
    let sa = ready(&p, &alice).await;
    let sb = ready(&p, &bob).await;
    assert_ne!(sa, sb);

    // The same request id and progress token on both sessions, at the same time.
    let ((st_a, ev_a), (st_b, ev_b)) = tokio::join!(
        call(&p, &alice, &sa, 2, "staged"),
        call(&p, &bob, &sb, 2, "notify")
    );
    assert_eq!((st_a, st_b), (StatusCode::OK, StatusCode::OK));
    assert_eq!(ev_a.last().unwrap()["id"], 2);
    assert_eq!(text(&ev_a), "staged done");
    assert_eq!(ev_b.last().unwrap()["id"], 2);
    assert_eq!(text(&ev_b), "echo:{\"n\":2}");
    let progress: Vec<&Value> = ev_b
        .iter()
        .filter(|e| e["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 1);
    assert_eq!(progress[0]["params"]["progressToken"], "p2", "restored");

    // One child; it saw ids of the proxy's, one initialize and one initialized.
    let (_, pid_a) = call(&p, &alice, &sa, 3, "pid").await;
    let (_, pid_b) = call(&p, &bob, &sb, 3, "pid").await;
    assert_eq!(text(&pid_a), text(&pid_b));
    let (_, seen) = call(&p, &bob, &sb, 4, "id").await;
    assert!(text(&seen).starts_with("\"mcp-proxy-"), "{}", text(&seen));
    assert_eq!(seen.last().unwrap()["id"], 4);
    let (_, counts) = call(&p, &alice, &sa, 5, "counts").await;
    assert_eq!(text(&counts), "1,1,0");

    // Sessions still belong to their users; ending one leaves the child to the other.
    assert_eq!(
        call(&p, &bob, &sa, 6, "echo").await.0,
        StatusCode::NOT_FOUND
    );
    let del = client()
        .delete(p.url("/mcp"))
        .bearer_auth(&alice)
        .header("mcp-session-id", &sa)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        call(&p, &alice, &sa, 7, "echo").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, still) = call(&p, &bob, &sb, 8, "pid").await;
    assert_eq!(text(&still), text(&pid_a), "the same child");

    // A crash ends every session on the child; the next session starts a new one.
    let (_, crashed) = call(&p, &bob, &sb, 9, "crash").await;
    assert_eq!(crashed[0]["error"]["code"], -32000);
    assert_eq!(
        call(&p, &bob, &sb, 10, "echo").await.0,
        StatusCode::NOT_FOUND
    );
    let sc = initialize(&p, &alice).await;
    let (_, fresh) = call(&p, &alice, &sc, 11, "pid").await;
    assert_ne!(text(&fresh), text(&pid_a));
}

#[tokio::test]
async fn pagination_and_cancellation_cross_unchanged() {
    let p = bridge().await;
    let t = token_for(&p, "password:alice").await;
    let sid = initialize(&p, &t).await;
    let mut uris = Vec::new();
    let mut cursor: Option<String> = None;
    for id in 10.. {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let resp = client()
            .post(p.url("/mcp"))
            .bearer_auth(&t)
            .header("mcp-session-id", &sid)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .json(&json!({"jsonrpc":"2.0","id":id,"method":"resources/list","params":params}))
            .send()
            .await
            .unwrap();
        let text = resp.text().await.unwrap();
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap()
            .to_string();
        let page: Value = serde_json::from_str(&data).unwrap();
        for r in page["result"]["resources"].as_array().unwrap() {
            uris.push(r["uri"].as_str().unwrap().to_string());
        }
        cursor = page["result"]["nextCursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        uris,
        (0..5).map(|i| format!("test://r/{i}")).collect::<Vec<_>>()
    );

    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":99,"reason":"no"}});
    assert_eq!(notify(&p, &t, &sid, cancel).await, StatusCode::ACCEPTED);
    let (_, counts) = call(&p, &t, &sid, 20, "counts").await;
    assert_eq!(text(&counts), "1,0,1", "the cancellation reached the child");
}

#[tokio::test]
async fn each_child_knows_its_user_by_the_variables_named() {
    use crate::helpers::{Mint, mint};
    let p = start_proxy(&[
        "--stdio-identity-env",
        "user=MCP_USER,email=MCP_EMAIL,groups=MCP_GROUPS,/sub=MCP_SUB,name=MCP_NAME",
        "--stdio-warm-spare",
        "--",
        "node",
        FIXTURE,
    ])
    .await;
    let identity = |user: &str, groups: Vec<String>| mcp_auth_proxy::store::Identity {
        provider: "oidc".into(),
        user_id: user.into(),
        email: Some(user.into()),
        name: None,
        groups,
        claims: json!({ "sub": format!("sub-{user}") }),
    };
    let resource = p.state.site().server.resource.clone();
    let ann = mint(
        p.repo(),
        &resource,
        Mint {
            subject: "oidc:ann@example.com",
            identity: Some(identity(
                "ann@example.com",
                vec!["staff".into(), "ops".into()],
            )),
            ..Mint::default()
        },
    )
    .await;
    let bob = mint(
        p.repo(),
        &resource,
        Mint {
            subject: "oidc:bob@example.com",
            identity: Some(identity("bob@example.com", vec![])),
            ..Mint::default()
        },
    )
    .await;
    let env_of = |token: String, sid: String, var: &'static str| {
        let url = p.url("/mcp");
        async move {
            let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"env","arguments":{"name":var}}});
            let resp = client()
                .post(url)
                .bearer_auth(token)
                .header("mcp-session-id", sid)
                .header(header::ACCEPT, "application/json")
                .json(&body)
                .send()
                .await
                .unwrap();
            let v: Value = resp.json().await.unwrap();
            v["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let sa = initialize(&p, &ann).await;
    let sb = initialize(&p, &bob).await;
    assert_eq!(
        env_of(ann.clone(), sa.clone(), "MCP_USER").await,
        "ann@example.com"
    );
    assert_eq!(
        env_of(ann.clone(), sa.clone(), "MCP_GROUPS").await,
        "staff,ops"
    );
    assert_eq!(
        env_of(ann.clone(), sa.clone(), "MCP_SUB").await,
        "sub-ann@example.com"
    );
    assert_eq!(
        env_of(ann.clone(), sa, "MCP_NAME").await,
        "<unset>",
        "unknown: not set"
    );
    assert_eq!(
        env_of(bob.clone(), sb.clone(), "MCP_USER").await,
        "bob@example.com"
    );
    assert_eq!(env_of(bob, sb, "MCP_GROUPS").await, "<unset>");
}

/// Reads SSE events from a legacy stream until `want` of them arrived: `(event, data)`.
async fn legacy_events(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    want: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < want {
        while let Some(end) = buf.find("\n\n") {
            let ev: String = buf.drain(..end + 2).collect();
            let field = |name: &str| {
                ev.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_default()
                    .to_string()
            };
            out.push((field("event"), field("data")));
        }
        if out.len() >= want {
            break;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    out
}

#[tokio::test]
async fn the_2024_11_05_sse_transport_is_gated_owned_and_ends_with_its_stream() {
    let p = bridge().await;
    let alice = token_for(&p, "password:alice").await;
    let bob = token_for(&p, "password:bob").await;
    let open = |token: &str| {
        client()
            .get(p.url("/sse"))
            .bearer_auth(token)
            .header(header::ACCEPT, "text/event-stream")
            .send()
    };
    assert_eq!(
        client().get(p.url("/sse")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = open(&alice).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let first = legacy_events(&mut stream, &mut buf, 1).await;
    assert_eq!(first[0].0, "endpoint");
    let endpoint = first[0].1.clone();
    assert!(endpoint.starts_with("/messages?sessionId="), "{endpoint}");

    let post = |token: &str, path: &str, body: String| {
        client()
            .post(p.url(path))
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
    };
    // The answer comes on the stream; the POST gets 202.
    let resp = post(&alice, &endpoint, init_body(7)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let answer = legacy_events(&mut stream, &mut buf, 1).await;
    assert_eq!(answer[0].0, "message");
    let v: Value = serde_json::from_str(&answer[0].1).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["serverInfo"]["name"], "misbehaving");

    // Someone else's token on that session: as if it did not exist.
    let ping = || json!({"jsonrpc":"2.0","id":8,"method":"ping"}).to_string();
    assert_eq!(
        post(&bob, &endpoint, ping()).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&alice, "/messages", ping()).await.unwrap().status(),
        StatusCode::BAD_REQUEST,
        "no sessionId"
    );
    assert_eq!(
        post(&alice, &endpoint, "[1,2]".into())
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST,
        "no batches on this transport"
    );
    assert_eq!(
        post(&alice, &endpoint, "{not json".into())
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    // A Streamable HTTP session is not a legacy one.
    let sid = initialize(&p, &alice).await;
    assert_eq!(
        post(&alice, &format!("/messages?sessionId={sid}"), ping())
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client()
            .post(p.url("/sse"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Closing the stream ends the session.
    drop(stream);
    let mut gone = false;
    for _ in 0..50 {
        if post(&alice, &endpoint, ping()).await.unwrap().status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the session ended with its stream");
}

/// A user's child for 2026-07-28 requests counts as one of their sessions while in use, and
/// idles out like one: the session ends and the child process stops.
#[tokio::test]
async fn a_users_modern_child_ends_when_idle() {
    let p = start_proxy(&["--session-idle-timeout", "1s", "--", "node", FIXTURE]).await;
    let t = token_for(&p, "password:alice").await;
    let pid: i32 = modern_tool(&p, &t, "pid").await.trim().parse().unwrap();
    let stdio = p.state.backend.as_ref().unwrap();
    assert_eq!(
        stdio.live_sessions(),
        1,
        "the user's modern child is one session"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let alive = || {
        std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    };
    while stdio.live_sessions() > 0 || alive() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle modern child was not stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A stateless (2026-07-28) request: `method` with `params` and the `_meta` every such
/// request carries, the headers mirroring it.
pub async fn modern_request(
    p: &TestProxy,
    token: &str,
    method: &str,
    name: Option<&str>,
    params: Value,
) -> reqwest::Response {
    modern_request_on(&client(), &p.url("/mcp"), token, method, name, params).await
}

/// [`modern_request`] on client `c`.
pub async fn modern_request_on(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    method: &str,
    name: Option<&str>,
    mut params: Value,
) -> reqwest::Response {
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities":{}});
    let body = json!({"jsonrpc":"2.0","id":1,"method":method,"params":params});
    let mut req = c
        .post(url)
        .bearer_auth(token)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .json(&body);
    if let Some(name) = name {
        req = req.header("mcp-name", name);
    }
    req.send().await.unwrap()
}

/// The text a tool of the fixture answers a stateless call with.
pub async fn modern_tool(p: &TestProxy, token: &str, tool: &str) -> String {
    let params = json!({"name": tool, "arguments": {}});
    let resp = modern_request(p, token, "tools/call", Some(tool), params).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["result"]["resultType"], "complete", "{answer}");
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Opens a `subscriptions/listen` stream for `uris`; returns it once acknowledged.
async fn listen(p: &TestProxy, token: &str, uris: &[&str]) -> reqwest::Response {
    let params = json!({"notifications": {"resourceSubscriptions": uris}});
    let mut resp = modern_request(p, token, "subscriptions/listen", None, params).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let first = resp.chunk().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("acknowledged"), "{first}");
    resp
}

/// The child is subscribed to a resource (`resources/subscribe`) for the first listener that
/// names it, and unsubscribed after the last one closes, once per resource.
#[tokio::test]
async fn a_childs_subscriptions_follow_its_listeners() {
    let p = bridge_with(&[]).await;
    let t = token_for(&p, "password:alice").await;
    let a = listen(&p, &t, &["test://r/0"]).await;
    assert_eq!(modern_tool(&p, &t, "subscriptions").await, "test://r/0;1,0");
    let b = listen(&p, &t, &["test://r/0", "test://r/1"]).await;
    assert_eq!(
        modern_tool(&p, &t, "subscriptions").await,
        "test://r/0 test://r/1;2,0",
        "test://r/0 is subscribed once"
    );
    drop(a);
    drop(b);
    // Both closed: each resource unsubscribed once (test://r/0 after its second listener).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = modern_tool(&p, &t, "subscriptions").await;
        if now == ";2,2" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed after both listeners closed: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// With two workers, a connection whose first request names a session (or, without one,
/// the token of a user with a 2026-07-28 child) is served by the worker running that
/// session's child; its calls are answered as anywhere else.
#[tokio::test]
async fn a_connection_is_served_on_the_worker_of_its_sessions_child() {
    let p = bridge_with(&["--workers", "2"]).await;
    let t = token_for(&p, "password:alice").await;
    let placed = || p.state.metrics().connections_placed.get();
    // Each client keeps its connection open: a worker's load is its open connections, and
    // a new connection goes to the least loaded (the first on a tie).
    let first = client();
    let (sid, _) = open_session_on(&first, &p.url("/mcp"), &t).await;
    assert_eq!(
        placed(),
        0,
        "worker 0 took the first connection and started the child"
    );

    // The next connection goes to worker 1, and is handed to worker 0.
    let second = client();
    let call =
        json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"id","arguments":{}}});
    let answer = session_post_on(&second, &p.url("/mcp"), &t, &sid, &call)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let text = answer.text().await.unwrap();
    assert!(text.contains(r#""id":7,"result""#), "{text}");
    assert_eq!(
        placed(),
        1,
        "the session's connection moved to its child's worker"
    );

    // Stateless: the user's 2026-07-28 child starts on worker 1 (worker 0 holds two
    // connections) and a third client's connection stays there open.
    let third = client();
    let params = json!({"name": "id", "arguments": {}});
    let url = p.url("/mcp");
    let modern = async |c: &reqwest::Client| {
        modern_request_on(c, &url, &t, "tools/call", Some("id"), params.clone()).await
    };
    let answer = modern(&third).await;
    assert_eq!(answer.status(), StatusCode::OK);
    answer.bytes().await.unwrap();
    assert_eq!(placed(), 1);
    // An idle connection on worker 1 evens the loads: the next goes to worker 0, and its
    // token's user has a child on worker 1.
    let authority = p.base.trim_start_matches("http://");
    let idle = tokio::net::TcpStream::connect(authority).await.unwrap();
    // The acceptor takes connections in order: the idle one is counted before the next.
    let fourth = client();
    let answer = modern(&fourth).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let text = answer.text().await.unwrap();
    assert!(text.contains(r#""result""#), "{text}");
    assert_eq!(
        placed(),
        2,
        "a stateless connection moved to its user's child's worker"
    );
    drop(idle);
}

/// Over TLS (HTTP/1.1) the same: a session's connection accepted by the other worker is
/// handed, with its TLS state and the bytes read of its first request, to the worker running
/// the session's child, and served there.
#[tokio::test]
async fn a_tls_connection_is_served_on_the_worker_of_its_sessions_child() {
    let ca = crate::tls::ca();
    let dir = tempfile::tempdir().unwrap();
    crate::tls::leaf(&ca, dir.path(), "placed");
    let p = crate::tls::tls_proxy_for(dir.path(), &["--workers", "2", "--", "node", FIXTURE]).await;
    let addr = p.tls_addr.unwrap();
    let url = format!("https://localhost:{}/mcp", addr.port());
    let t = token_for(&p, "password:alice").await;
    let placed = || p.state.metrics().connections_placed.get();
    // Worker 0 takes the first connection (kept open in its client) and starts the child.
    let first = crate::tls::https_client(&ca, true, addr);
    let (sid, answer) = open_session_on(&first, &url, &t).await;
    assert_eq!(answer["result"]["serverInfo"]["name"], "misbehaving");
    assert_eq!(placed(), 0);
    // The next goes to worker 1 and is handed on.
    let second = crate::tls::https_client(&ca, true, addr);
    for id in [7, 8] {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"id","arguments":{}}});
        let answer = session_post_on(&second, &url, &t, &sid, &call)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.version(), reqwest::Version::HTTP_11);
        let text = answer.text().await.unwrap();
        assert!(text.contains(&format!(r#""id":{id},"result""#)), "{text}");
    }
    assert_eq!(placed(), 1, "one connection, handed on once, served twice");
}
