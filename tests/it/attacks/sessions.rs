//! One user against another on the stdio bridge: in shared mode (one child for everyone)
//! a user cannot cancel, answer for or read another's requests; a stream cannot be resumed
//! across users with `Last-Event-ID`; one user cannot take every session.

use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{TestProxy, client, start_proxy, token_for};
use crate::stdio::{FIXTURE, bridge_with, call, initialize, notify, ready, session_post, text};

/// Starts the fixture's "staged" tool (a log event now, the answer 700 ms later) and
/// returns its response once the first event has arrived (the request is in flight).
async fn staged_in_flight(
    p: &TestProxy,
    token: &str,
    sid: &str,
    id: u64,
) -> (String, reqwest::Response) {
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"staged"}});
    let resp = session_post(&p.url("/mcp"), token, sid, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp = resp;
    let first = resp.chunk().await.unwrap().unwrap();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.contains("first"), "{first}");
    (first, resp)
}

#[tokio::test]
async fn in_shared_mode_a_user_cannot_touch_anothers_requests() {
    let p = start_proxy(&["--stdio-mode", "shared", "--", "node", FIXTURE]).await;
    let alice = token_for(&p, "password:alice").await;
    let bob = token_for(&p, "password:bob").await;
    let sa = ready(&p, &alice).await;
    let sb = ready(&p, &bob).await;

    // Alice's request 7 is in flight; Bob cancels "7" and answers "7" in his session.
    let (_, rest) = staged_in_flight(&p, &alice, &sa, 7).await;
    let cancel =
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}});
    assert_eq!(notify(&p, &bob, &sb, cancel).await, StatusCode::ACCEPTED);
    let forged =
        json!({"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"forged"}]}});
    let status = notify(&p, &bob, &sb, forged).await;
    assert!(
        status.is_client_error(),
        "a response to no request of the server: {status}"
    );
    // Alice's answer is the child's, whole.
    let text_a = rest.text().await.unwrap();
    assert!(text_a.contains("staged done"), "{text_a}");
    assert!(!text_a.contains("forged"), "{text_a}");
    // The child never heard of a cancellation.
    let (_, counts) = call(&p, &bob, &sb, 8, "counts").await;
    assert_eq!(text(&counts), "1,1,0");

    // Bob's session id in Alice's hands, and the other way round: not theirs.
    assert_eq!(
        call(&p, &alice, &sb, 9, "echo").await.0,
        StatusCode::NOT_FOUND
    );
    let get = client()
        .get(p.url("/mcp"))
        .bearer_auth(&bob)
        .header("mcp-session-id", &sa)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn last_event_id_resumes_only_the_users_own_stream() {
    let marks = tempfile::tempdir().unwrap();
    let env = format!("MISBEHAVE_MARK_DIR={}", marks.path().display());
    let p = bridge_with(&["--max-sessions", "4", "--stdio-env", &env]).await;
    let alice = token_for(&p, "password:alice").await;
    let bob = token_for(&p, "password:bob").await;
    let sa = initialize(&p, &alice).await;
    let sb = initialize(&p, &bob).await;

    // Alice's stream drops after its first event; the answer is kept for her.
    let (first, rest) = staged_in_flight(&p, &alice, &sa, 21).await;
    let last_id = first
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_string();
    drop(rest);
    let done = marks.path().join("staged-done");
    crate::helpers::wait_for_file(&done, "the answer was never sent").await;

    let resume = |token: String, sid: String| {
        let url = p.url("/mcp");
        let last_id = last_id.clone();
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .header("mcp-session-id", sid)
                .header(header::ACCEPT, "text/event-stream")
                .header("last-event-id", last_id)
                .send()
                .await
                .unwrap()
        }
    };
    // Bob with Alice's session: not his.
    assert_eq!(
        resume(bob.clone(), sa.clone()).await.status(),
        StatusCode::NOT_FOUND
    );
    // Bob with her event id on his own session: nothing of hers (his own GET stream, or a
    // refusal), never her answer.
    let mine = resume(bob.clone(), sb.clone()).await;
    if mine.status() == StatusCode::OK {
        let mut body = mine.bytes_stream();
        let seen = tokio::time::timeout(std::time::Duration::from_millis(1500), body.next()).await;
        if let Ok(Some(Ok(chunk))) = seen {
            let chunk = String::from_utf8_lossy(&chunk).to_string();
            assert!(
                !chunk.contains("staged done") && !chunk.contains("second"),
                "{chunk}"
            );
        }
    } else {
        assert!(mine.status().is_client_error(), "{}", mine.status());
    }
    // Alice herself resumes and gets the rest.
    let hers = resume(alice.clone(), sa.clone()).await;
    assert_eq!(hers.status(), StatusCode::OK);
    let text = tokio::time::timeout(std::time::Duration::from_secs(5), hers.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("staged done"), "{text}");
}

/// `--max-sessions 4`: one user gets at most half (2); the others can still start theirs.
#[tokio::test]
async fn one_user_cannot_take_every_session() {
    let p = bridge_with(&["--max-sessions", "4"]).await;
    let mallory = token_for(&p, "password:mallory").await;
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let resp = client()
            .post(p.url("/mcp"))
            .bearer_auth(&mallory)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(header::CONTENT_TYPE, "application/json")
            .body(crate::stdio::init_body(1))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::OK {
            kept.push(
                resp.headers()["mcp-session-id"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        } else {
            refused += 1;
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(
                body["error"]["message"].is_string(),
                "a JSON-RPC error: {body}"
            );
        }
    }
    assert_eq!((kept.len(), refused), (2, 4));
    for user in ["password:ann", "password:ben"] {
        let t = token_for(&p, user).await;
        initialize(&p, &t).await;
    }
}
