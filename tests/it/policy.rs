//! Tool policy, step-up scopes and the audit log (`--policy-file`, `--audit-log`), end to
//! end: `@modelcontextprotocol/server-everything` over stdio (2025 sessions and a stateless
//! 2026-07-28 request), and an HTTP MCP server of our own that records every message that
//! reaches it. Two users of an OpenID provider in different groups hold tokens minted the way
//! the authorization server stores them.

use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{Mint, TestProxy, client, mint, start_proxy};

const EVERYTHING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/e2e/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
);

/// The policy of these tests and of the e2e suite's (`tests/e2e/policy.test.mjs`).
const POLICY: &str = include_str!("../fixtures/policy.toml");

/// A planted secret that must never reach the audit log in `digest` mode.
const SECRET: &str = "s3cret-planted-in-arguments";

struct Users {
    alice: String,
    /// Alice with the step-up scope.
    alice_write: String,
    bob: String,
}

fn identity(user: &str, groups: &[&str]) -> mcp_auth_proxy::store::Identity {
    mcp_auth_proxy::store::Identity {
        provider: "oidc".into(),
        user_id: user.into(),
        email: Some(format!("{user}@example.com")),
        name: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: json!({ "sub": user }),
    }
}

async fn users(p: &TestProxy) -> Users {
    let resource = p.state.site().server.resource.clone();
    let token =
        |user: &'static str, groups: &'static [&'static str], scopes: &'static [&'static str]| {
            let repo = p.repo().clone();
            let resource = resource.clone();
            async move {
                let subject = format!("oidc:{user}");
                mint(
                    &repo,
                    &resource,
                    Mint {
                        subject: &subject,
                        scopes,
                        identity: Some(identity(user, groups)),
                        ..Mint::default()
                    },
                )
                .await
            }
        };
    Users {
        alice: token("alice", &["writers"], &["mcp"]).await,
        alice_write: token("alice", &["writers"], &["mcp", "mcp:write"]).await,
        bob: token("bob", &["readers"], &["mcp"]).await,
    }
}

/// server-everything over stdio behind a proxy with the policy `text` (its file in the
/// directory returned, which must outlive the proxy).
async fn everything_with_policy(text: &str) -> (tempfile::TempDir, TestProxy) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, text).unwrap();
    let path = policy.to_str().unwrap();
    let p = start_proxy(&["--policy-file", path, "--", "node", EVERYTHING, "stdio"]).await;
    (dir, p)
}

/// A proxy with the policy above and an audit log, in front of `backend`.
async fn proxy(dir: &std::path::Path, backend: &[&str]) -> TestProxy {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let audit = dir.join("audit.jsonl");
    let mut args = vec![
        "--policy-file".to_string(),
        policy.display().to_string(),
        "--audit-log".into(),
        audit.display().to_string(),
    ];
    args.extend(backend.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_proxy(&args).await
}

/// Posts `body`; returns the status, the headers and the JSON-RPC answer with `body`'s id
/// (from a JSON or an SSE answer; `Null` without one).
async fn post(
    p: &TestProxy,
    token: &str,
    sid: Option<&str>,
    extra: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .post(p.url("/mcp"))
        .bearer_auth(token)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .json(body);
    if let Some(sid) = sid {
        req = req
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", "2025-06-18");
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let sse = headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    });
    let text = resp.text().await.unwrap();
    let answer = if sse {
        text.split("\n\n")
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|m| m.get("id") == body.get("id"))
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    (status, headers, answer)
}

/// Posts `body` as it is written (JSON that `serde_json::Value` cannot hold); returns the
/// status and the JSON answer.
async fn post_raw(
    p: &TestProxy,
    token: &str,
    sid: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = client()
        .post(p.url("/mcp"))
        .bearer_auth(token)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Some(sid) = sid {
        req = req
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Opens an initialized 2025-06-18 session; returns its id.
async fn session(p: &TestProxy, token: &str) -> String {
    let (sid, _) = crate::stdio::open_session(p, token).await;
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    let status = crate::stdio::notify(p, token, &sid, initialized).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    sid
}

async fn tool_names(p: &TestProxy, token: &str, sid: Option<&str>, id: u64) -> Vec<String> {
    let list = json!({"jsonrpc":"2.0","id":id,"method":"tools/list"});
    let (status, _, answer) = post(p, token, sid, &[], &list).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
}

/// `echo` called in session `sid`; returns the status and the answer.
async fn echo(p: &TestProxy, token: &str, sid: &str, id: u64) -> (StatusCode, Value) {
    let (status, _, answer) = post(
        p,
        token,
        Some(sid),
        &[],
        &call(id, "echo", json!({"message": "x"})),
    )
    .await;
    (status, answer)
}

/// The audit log's records once it holds `n` of them.
async fn audit_records(dir: &std::path::Path, n: usize) -> Vec<Value> {
    let path = dir.join("audit.jsonl");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= n {
            assert!(
                !text.contains(SECRET),
                "a planted secret reached the audit log"
            );
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "the audit log never held {n} records: {}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
}

/// The outcomes of the first `n` audit records.
async fn audit_outcomes(dir: &std::path::Path, n: usize) -> Vec<String> {
    let records = audit_records(dir, n).await;
    records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn assert_denied(answer: &Value, rule: &str) {
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert_eq!(answer["error"]["data"]["decision"], "denied", "{answer}");
    assert!(
        answer["error"]["data"]["rule"]
            .as_str()
            .unwrap_or_default()
            .contains(rule),
        "{answer}"
    );
}

#[tokio::test]
async fn users_see_and_call_only_what_the_policy_allows_on_the_stdio_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path(), &["--", "node", EVERYTHING, "stdio"]).await;
    let u = users(&p).await;
    let alice = session(&p, &u.alice).await;
    let bob = session(&p, &u.bob).await;

    // Different lists from the same server, by group and annotation.
    let seen_by_alice = tool_names(&p, &u.alice, Some(&alice), 1).await;
    let seen_by_bob = tool_names(&p, &u.bob, Some(&bob), 1).await;
    for name in [
        "echo",
        "get-sum",
        "toggle-simulated-logging",
        "gzip-file-as-resource",
    ] {
        assert!(
            seen_by_alice.contains(&name.to_string()),
            "{name}: {seen_by_alice:?}"
        );
    }
    assert!(seen_by_bob.contains(&"echo".to_string()), "{seen_by_bob:?}");
    for name in [
        "toggle-simulated-logging",
        "gzip-file-as-resource",
        "get-env",
    ] {
        assert!(
            !seen_by_bob.contains(&name.to_string()),
            "{name}: {seen_by_bob:?}"
        );
    }
    assert!(!seen_by_alice.contains(&"get-env".to_string()));

    // A denied call gets a JSON-RPC error naming the decision.
    let toggle = || call(2, "toggle-simulated-logging", json!({}));
    let (status, _, answer) = post(&p, &u.bob, Some(&bob), &[], &toggle()).await;
    assert_eq!(status, StatusCode::OK);
    assert_denied(&answer, "the policy's default");
    // What the policy cannot read it does not pass on: `JSON.parse` in the server takes a
    // lone surrogate and `1e999` where serde_json does not, so the denied tool would run.
    for arguments in [r#"{"x":"\ud800"}"#, r#"{"x":1e999}"#] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"get-env","arguments":{arguments}}}}}"#
        );
        let (status, answer) = post_raw(&p, &u.bob, Some(&bob), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], -32700, "{answer}");
    }

    // Step-up: allowed to alice only with mcp:write; the challenge names every scope needed.
    let (status, headers, _) = post(&p, &u.alice, Some(&alice), &[], &toggle()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"mcp mcp:write\""), "{challenge}");
    assert!(challenge.contains("resource_metadata=\""), "{challenge}");
    let (status, _, answer) = post(&p, &u.alice_write, Some(&alice), &[], &toggle()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(answer["result"]["content"].is_array(), "{answer}");

    // Allowed calls reach the server; a planted secret stays out of the audit log.
    let echo = call(3, "echo", json!({"message": SECRET}));
    let (_, _, answer) = post(&p, &u.bob, Some(&bob), &[], &echo).await;
    assert_eq!(
        answer["result"]["content"][0]["text"],
        format!("Echo: {SECRET}")
    );
    let (_, _, answer) = post(
        &p,
        &u.alice_write,
        Some(&alice),
        &[],
        &call(4, "get-env", json!({})),
    )
    .await;
    assert_denied(&answer, "nobody reads the environment");

    // A stateless 2026-07-28 request is judged the same way (bob's annotations were never
    // listed in that era: the rule that needs them refuses).
    let modern = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"toggle-simulated-logging","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "toggle-simulated-logging"),
    ];
    let (status, _, answer) = post(&p, &u.bob, None, &headers, &modern).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["error"]["code"], -32001, "{answer}");

    // The audit log, line for line.
    let records = audit_records(dir.path(), 6).await;
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |u: &str, n: &str, o: &str| (u.to_string(), n.to_string(), o.to_string());
    assert_eq!(
        summary,
        vec![
            expect("oidc:bob", "toggle-simulated-logging", "denied"),
            expect("oidc:alice", "toggle-simulated-logging", "step_up"),
            expect("oidc:alice", "toggle-simulated-logging", "ok"),
            expect("oidc:bob", "echo", "ok"),
            expect("oidc:alice", "get-env", "denied"),
            expect("oidc:bob", "toggle-simulated-logging", "denied"),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r["method"] == "tools/call" && r["client_id"] == "client-1")
    );
    assert_eq!(records[3]["session"], bob.as_str());
    assert_eq!(records[3]["era"], "2025");
    assert_eq!(records[5]["era"], "2026-07-28");
    assert!(
        records[3]["arguments"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(records[1]["rule"], "mcp:write");
}

/// An HTTP MCP server that records every JSON-RPC message it receives: `tools/list`
/// answered as SSE, calls as JSON.
async fn recording_upstream() -> (crate::helpers::Upstream, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |body: axum::Json<Value>| {
            let log = log.clone();
            async move {
                let m = body.0;
                let name = m["params"]["name"].as_str().unwrap_or_default();
                log.lock().unwrap().push(format!("{} {name}", m["method"].as_str().unwrap_or_default()));
                let tools = json!([
                    {"name": "read_file", "annotations": {"readOnlyHint": true}},
                    {"name": "write_file", "annotations": {"readOnlyHint": false, "destructiveHint": true}},
                    {"name": "get-env", "annotations": {"readOnlyHint": true}},
                ]);
                match m["method"].as_str() {
                    Some("tools/list") => {
                        let answer = json!({"jsonrpc":"2.0","id":m["id"],"result":{"tools":tools}});
                        (
                            [(header::CONTENT_TYPE.as_str(), "text/event-stream")],
                            format!("event: message\ndata: {answer}\n\n"),
                        )
                            .into_response()
                    }
                    _ => axum::Json(json!({"jsonrpc":"2.0","id":m["id"],"result":{"content":[{"type":"text","text":format!("did {name}")}]}})).into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (crate::helpers::Upstream::from_parts(addr, task), seen)
}

/// The policy's proxy in front of [`recording_upstream`], its users, and what reached the
/// upstream, after Bob's `tools/list` (lists answered as SSE are filtered too, and the policy
/// judges a call by the annotations of a listed tool).
async fn policy_before_recording_upstream() -> (
    crate::helpers::Upstream,
    tempfile::TempDir,
    TestProxy,
    Users,
    Arc<Mutex<Vec<String>>>,
) {
    let (upstream, seen) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let url = upstream.url("/mcp");
    let p = proxy(dir.path(), &[&url]).await;
    let u = users(&p).await;
    assert_eq!(tool_names(&p, &u.bob, None, 1).await, ["read_file"]);
    (upstream, dir, p, u, seen)
}

#[tokio::test]
async fn a_denied_call_never_reaches_an_http_upstream() {
    let (_upstream, dir, p, u, seen) = policy_before_recording_upstream().await;
    assert_eq!(
        tool_names(&p, &u.alice, None, 1).await,
        ["read_file", "write_file"]
    );

    let (_, _, answer) = post(&p, &u.bob, None, &[], &call(2, "write_file", json!({}))).await;
    assert_denied(&answer, "the policy's default");
    let (status, _, _) = post(&p, &u.alice, None, &[], &call(3, "write_file", json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, answer) = post(
        &p,
        &u.alice_write,
        None,
        &[],
        &call(4, "write_file", json!({})),
    )
    .await;
    assert_eq!(answer["result"]["content"][0]["text"], "did write_file");
    let (_, _, answer) = post(&p, &u.bob, None, &[], &call(5, "read_file", json!({}))).await;
    assert_eq!(answer["result"]["content"][0]["text"], "did read_file");

    // The upstream's own record: the lists, and only the two calls allowed.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "tools/list ",
            "tools/list ",
            "tools/call write_file",
            "tools/call read_file"
        ]
    );
    assert_eq!(
        audit_outcomes(dir.path(), 4).await,
        ["denied", "step_up", "ok", "ok"]
    );
}

/// A server that takes the first of two names (cJSON's look-up does) would run the tool the
/// policy refused, if the proxy judged the last (serde_json's and `JSON.parse`'s): such a
/// body is refused before either reads it.
#[tokio::test]
async fn a_call_naming_its_tool_twice_is_refused_not_guessed() {
    let (_upstream, dir, p, u, seen) = policy_before_recording_upstream().await;
    for body in [
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"write_file","name":"read_file","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"write_file","n\u0061me":"read_file"}}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/list","method":"tools/call","params":{"name":"read_file"}}"#,
    ] {
        let (status, answer) = post_raw(&p, &u.bob, None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
    }
    // The same call written once goes through.
    let (_, _, answer) = post(&p, &u.bob, None, &[], &call(10, "read_file", json!({}))).await;
    assert_eq!(answer["result"]["content"][0]["text"], "did read_file");
    assert_eq!(
        *seen.lock().unwrap(),
        ["tools/list ", "tools/call read_file"]
    );
    assert_eq!(
        audit_outcomes(dir.path(), 4).await,
        ["denied", "denied", "denied", "ok"]
    );
}

#[tokio::test]
async fn the_policy_is_reloaded_while_calls_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path(), &["--", "node", EVERYTHING, "stdio"]).await;
    let u = users(&p).await;
    let bob = session(&p, &u.bob).await;
    tool_names(&p, &u.bob, Some(&bob), 1).await;

    // A call that takes a while (5 steps of 0.4 s), in flight during the reload.
    let long = call(
        2,
        "trigger-long-running-operation",
        json!({"duration": 2, "steps": 5}),
    );
    let in_flight = {
        let (url, token, sid) = (p.url("/mcp"), u.bob.clone(), bob.clone());
        tokio::spawn(async move {
            crate::stdio::session_post(&url, &token, &sid, &long)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let denied_echo = POLICY.replacen(
        "[[rule]]\nname = \"nobody reads the environment\"\nusers = [\"*\"]\ntools = [\"get-env\"]",
        "[[rule]]\nname = \"nobody reads the environment\"\nusers = [\"*\"]\ntools = [\"get-env\", \"echo\"]",
        1,
    );
    assert_ne!(denied_echo, POLICY);
    std::fs::write(dir.path().join("policy.toml"), denied_echo).unwrap();
    let mut id = 10;
    loop {
        id += 1;
        let (_, answer) = echo(&p, &u.bob, &bob, id).await;
        if answer["error"]["code"] == -32001 {
            assert_denied(&answer, "nobody reads the environment");
            break;
        }
        assert!(id < 200, "the new policy never took effect: {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let text = in_flight.await.unwrap();
    assert!(text.contains("Long running operation completed"), "{text}");

    // A file that no longer parses keeps the last good policy.
    std::fs::write(dir.path().join("policy.toml"), "[[rule]]\nusers = 3\n").unwrap();
    let (_, answer) = echo(&p, &u.bob, &bob, 300).await;
    assert_denied(&answer, "nobody reads the environment");
}

#[tokio::test]
async fn with_audit_fail_closed_calls_stop_while_the_log_cannot_be_written() {
    // /dev/full takes the open and refuses every write (ENOSPC).
    let p = start_proxy(&[
        "--audit-log",
        "/dev/full",
        "--audit-fail-closed",
        "--",
        "node",
        EVERYTHING,
        "stdio",
    ])
    .await;
    let u = users(&p).await;
    let bob = session(&p, &u.bob).await;
    let mut id = 0;
    let answer = loop {
        id += 1;
        let (status, answer) = echo(&p, &u.bob, &bob, id).await;
        assert_eq!(status, StatusCode::OK);
        if answer.get("error").is_some() {
            break answer;
        }
        assert!(id < 100, "calls were never refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(answer["error"]["code"], -32002, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit log"),
        "{answer}"
    );
    // Without a policy, lists are not touched.
    assert!(
        tool_names(&p, &u.bob, Some(&bob), 500)
            .await
            .contains(&"get-env".to_string())
    );
}

/// The authorization server's side of step-up: a scope the policy names is advertised,
/// described on the consent page in the file's words, and granted to those the policy names;
/// for anyone else it is dropped (no description, not in the token).
#[tokio::test]
async fn a_step_up_scope_is_consented_in_words_and_granted_only_to_those_named() {
    use crate::flow::{Browser, OAuthClient, query, token};
    for (holder, granted) in [("provider:password", true), ("oidc:bob", false)] {
        let (dir, p) = everything_with_policy(&format!(
                "[[rule]]\nusers = [\"{holder}\"]\ntools = [\"*\"]\neffect = \"allow\"\nscope = \"mcp:write\"\n\n[scopes.\"mcp:write\"]\ndescription = \"Change things on the server\"\n"
            )).await;
        let t = p.target();
        for doc in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-protected-resource/mcp",
        ] {
            let meta = crate::helpers::get_json(p.url(doc)).await;
            assert!(
                meta["scopes_supported"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("mcp:write")),
                "{doc}: {meta}"
            );
        }
        let oauth = OAuthClient::public(&t).await;
        let browser = Browser::new();
        let url = oauth.auth_url(&t, &[("scope", "mcp mcp:write")]);
        // Sign in, then look at the consent page before approving it.
        let login = browser.http.get(&url).send().await.unwrap();
        let login = browser.follow(&t, &login).await;
        let consent = browser
            .post_form(
                &t,
                "/.auth/login",
                &login,
                &[("password", crate::helpers::TEST_PASSWORD)],
            )
            .await;
        let page = browser.follow(&t, &consent).await;
        assert!(page.contains("name=\"decision\""), "{page}");
        assert_eq!(
            page.contains("Change things on the server (permission “mcp:write”)"),
            granted,
            "{page}"
        );
        let back = browser
            .authorize(&t, &url, crate::helpers::TEST_PASSWORD, "approve")
            .await;
        let code = query(&back, "code").expect("a code");
        let answer: Value = token(&t, &oauth.code_params(&code, &[]))
            .await
            .json()
            .await
            .unwrap();
        let scopes: Vec<&str> = answer["scope"].as_str().unwrap().split(' ').collect();
        assert_eq!(scopes.contains(&"mcp:write"), granted, "{answer}");
        assert!(scopes.contains(&"mcp"), "{answer}");
        if !granted {
            continue;
        }
        // The policy stops naming the user: the next refresh leaves the scope out.
        std::fs::write(
            dir.path().join("policy.toml"),
            "[[rule]]\nusers = [\"oidc:bob\"]\ntools = [\"*\"]\neffect = \"allow\"\nscope = \"mcp:write\"\n",
        )
        .unwrap();
        let mut refresh_token = answer["refresh_token"].as_str().unwrap().to_string();
        for round in 0.. {
            let resp = crate::flow::refresh(&t, &oauth.id, &refresh_token).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let refreshed: Value = resp.json().await.unwrap();
            let scope = refreshed["scope"].as_str().unwrap().to_string();
            if !scope.split(' ').any(|s| s == "mcp:write") {
                assert!(scope.split(' ').any(|s| s == "mcp"), "{scope}");
                break;
            }
            assert!(
                round < 200,
                "the scope stayed after the policy changed: {scope}"
            );
            refresh_token = refreshed["refresh_token"].as_str().unwrap().to_string();
            // Under the refresh rate limit (120 a minute) while the file is reloaded.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Prompts and resources are judged and listed like tools, and every decision is counted.
#[tokio::test]
async fn prompts_and_resources_are_judged_and_listed_too() {
    let refused = "demo://resource/static/document/instructions.md";
    let (_dir, p) = everything_with_policy(&format!(
            "default = \"allow\"\n[[rule]]\nname = \"no argued prompts\"\nusers = [\"*\"]\nprompts = [\"args-*\"]\neffect = \"deny\"\n\n[[rule]]\nname = \"no instructions\"\nusers = [\"*\"]\nresources = [\"{refused}\"]\neffect = \"deny\"\n"
        )).await;
    let u = users(&p).await;
    let sid = session(&p, &u.bob).await;
    let listed = |answer: &Value, member: &str, key: &str| -> Vec<String> {
        answer["result"][member]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|i| i[key].as_str().unwrap().to_string())
            .collect()
    };
    let rpc = |id: u64, method: &str, params: Value| json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});

    let (_, _, prompts) = post(
        &p,
        &u.bob,
        Some(&sid),
        &[],
        &rpc(1, "prompts/list", json!({})),
    )
    .await;
    let prompts = listed(&prompts, "prompts", "name");
    assert!(
        prompts.contains(&"simple-prompt".to_string()),
        "{prompts:?}"
    );
    assert!(!prompts.contains(&"args-prompt".to_string()), "{prompts:?}");
    let (_, _, answer) = post(
        &p,
        &u.bob,
        Some(&sid),
        &[],
        &rpc(
            2,
            "prompts/get",
            json!({"name": "args-prompt", "arguments": {"city": "x"}}),
        ),
    )
    .await;
    assert_denied(&answer, "no argued prompts");
    let (_, _, answer) = post(
        &p,
        &u.bob,
        Some(&sid),
        &[],
        &rpc(3, "prompts/get", json!({"name": "simple-prompt"})),
    )
    .await;
    assert!(answer["result"]["messages"].is_array(), "{answer}");

    let (_, _, resources) = post(
        &p,
        &u.bob,
        Some(&sid),
        &[],
        &rpc(4, "resources/list", json!({})),
    )
    .await;
    let resources = listed(&resources, "resources", "uri");
    assert!(
        !resources.is_empty() && !resources.contains(&refused.to_string()),
        "{resources:?}"
    );
    let (_, _, answer) = post(
        &p,
        &u.bob,
        Some(&sid),
        &[],
        &rpc(5, "resources/read", json!({"uri": refused})),
    )
    .await;
    assert_denied(&answer, "no instructions");
    let (_, _, answer) = post(
        &p,
        &u.bob,
        Some(&sid),
        &[],
        &rpc(6, "resources/read", json!({"uri": resources[0]})),
    )
    .await;
    assert!(answer["result"]["contents"].is_array(), "{answer}");

    let metrics = p.state.metrics().render();
    assert!(
        metrics.contains("policy_decisions_total{event=\"deny\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("policy_decisions_total{event=\"allow\"} 2"),
        "{metrics}"
    );
}

/// A list answer that reaches the client on an event stream rather than in its POST's answer
/// (the 2024-11-05 transport's `/sse`, as a `Last-Event-ID` replay does) is filtered by its
/// shape.
#[tokio::test]
async fn a_list_on_an_event_stream_is_filtered_by_its_shape() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path(), &["--", "node", EVERYTHING, "stdio"]).await;
    let u = users(&p).await;
    let stream = client()
        .get(p.url("/sse"))
        .bearer_auth(&u.bob)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream();
    let mut text = String::new();
    // The events' data lines so far, after the stream has said `until`.
    let mut read_until = async |until: &str| {
        while !text.contains(until) {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
                .await
                .expect("an event within 20 s")
                .expect("the stream is open")
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.clone()
    };
    let events = read_until("event: endpoint").await;
    let endpoint = events
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap()
        .to_string();
    let send = async |body: Value| {
        let resp = client()
            .post(p.url(&endpoint))
            .bearer_auth(&u.bob)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    };
    send(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})).await;
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await;
    send(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"})).await;
    let events = read_until("\"id\":2").await;
    let list: Value = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|m| m["id"] == 2)
        .unwrap();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    for hidden in ["get-env", "toggle-simulated-logging"] {
        assert!(!names.contains(&hidden), "{hidden}: {names:?}");
    }
}
