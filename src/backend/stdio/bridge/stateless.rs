//! Serving one modern (2026-07-28) request from the caller's child (see [`super::modern`]
//! for the rules): the child initialized by the bridge once, then each request a short-lived
//! session of it whose end (the response delivered, or the client gone) is the request's
//! end at the child.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::modern::{self, CacheHints, Modern};
use super::refusal::Refusal;
use super::{SHARED_INIT_WAIT, STREAM_QUEUE, StdioBackend};
use crate::backend::stdio::framing::{Kind, Message};
use crate::backend::stdio::session::{Init, InitTurn, Session};
use crate::gate::Caller;

/// Ends a modern request's session when its response is dropped: after the answer that is
/// all; before it, the child is told the request is cancelled (closing the response stream
/// is the cancellation of 2026-07-28, specification basic/patterns/cancellation).
struct EndsWithResponse(Arc<Session>);

impl Drop for EndsWithResponse {
    fn drop(&mut self) {
        self.0.close("the client closed the response stream");
    }
}

impl StdioBackend {
    /// Answers a modern request (`body` is `msg` parsed).
    pub(super) async fn modern(
        &self,
        caller: &Caller,
        headers: &axum::http::HeaderMap,
        msg: &Message,
        body: &Value,
        wants_sse: bool,
    ) -> Result<Response, Refusal> {
        let request = modern::check(headers, body)?;
        if !request.is_request {
            // This revision defines no client notifications over HTTP: taken and dropped.
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        let anchor = self.modern_anchor(caller)?;
        anchor.touch();
        let init = self.initialized(&anchor).await?;
        let hints = self.cache_hints;
        if request.method == "server/discover" {
            let answer = modern::discover(&request.id, &init, hints);
            return Ok(modern::json_response(StatusCode::OK, answer));
        }
        let no = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session =
            Session::attach_stateless(anchor.child().clone(), caller.subject().to_string(), no);
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        let stream = session.new_stream(false, tx);
        session
            .send(msg, Some(stream))
            .await
            .map_err(|why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why))?;
        let ends = EndsWithResponse(session);
        let answer = if wants_sse {
            modern_sse(rx, request, hints, ends)
        } else {
            modern_json(rx, &request, hints, ends).await
        };
        anchor.touch();
        Ok(answer)
    }

    /// The child's `initialize` result, sending the bridge's own `initialize` first when
    /// nobody has.
    async fn initialized(&self, anchor: &Arc<Session>) -> Result<Value, Refusal> {
        let not_started = || {
            Refusal::Rpc(
                StatusCode::GATEWAY_TIMEOUT,
                "the MCP server did not finish starting",
            )
        };
        for _ in 0..3 {
            match anchor.child().begin_initialize() {
                InitTurn::Cached(result) => {
                    return serde_json::from_slice(&result).map_err(|_| {
                        Refusal::Rpc(
                            StatusCode::BAD_GATEWAY,
                            "the MCP server's initialize result is not JSON",
                        )
                    });
                }
                InitTurn::Wait(mut rx) => {
                    let waited =
                        tokio::time::timeout(SHARED_INIT_WAIT, rx.wait_for(|i| *i != Init::Sent))
                            .await;
                    if !matches!(waited, Ok(Ok(_))) {
                        return Err(not_started());
                    }
                }
                InitTurn::Send => self.initialize(anchor).await?,
            }
        }
        Err(not_started())
    }

    /// Runs the child's `initialize` and `notifications/initialized`.
    async fn initialize(&self, anchor: &Arc<Session>) -> Result<(), Refusal> {
        let failed = |why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why);
        let init = Message::parse(modern::initialize_request())
            .ok_or(failed("the initialize request could not be made"))?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        let stream = anchor.new_stream(false, tx);
        anchor.send(&init, Some(stream)).await.map_err(failed)?;
        let answered = tokio::time::timeout(SHARED_INIT_WAIT, async {
            while let Some(raw) = rx.recv().await {
                if Message::parse(raw).is_some_and(|m| m.kind == Kind::Response) {
                    return true;
                }
            }
            false
        })
        .await;
        if answered != Ok(true) {
            return Err(failed("the MCP server did not answer initialize"));
        }
        let initialized = Message::parse(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .ok_or(failed("the initialized notification could not be made"))?;
        anchor.send(&initialized, None).await.map_err(failed)
    }
}

/// The request's messages as SSE events: notifications about it, then its answer as a
/// modern result, then the end of the stream.
fn modern_sse(
    rx: mpsc::Receiver<Bytes>,
    request: Modern,
    hints: CacheHints,
    ends: EndsWithResponse,
) -> Response {
    let events = futures_util::stream::unfold(
        (rx, request.method, ends),
        move |(mut rx, method, ends)| async move {
            let raw = rx.recv().await?;
            let raw = match Message::parse(raw.clone()) {
                Some(m) if m.kind == Kind::Response => modern::modernized(raw, &method, hints),
                _ => raw,
            };
            Some((
                Ok::<_, std::convert::Infallible>(modern::sse_event(&raw)),
                (rx, method, ends),
            ))
        },
    );
    super::event_stream(axum::body::Body::from_stream(events))
}

/// The request's answer as one JSON object (what else the child says about it is dropped:
/// a JSON answer has no room for it).
async fn modern_json(
    mut rx: mpsc::Receiver<Bytes>,
    request: &Modern,
    hints: CacheHints,
    _ends: EndsWithResponse,
) -> Response {
    while let Some(raw) = rx.recv().await {
        if Message::parse(raw.clone()).is_some_and(|m| m.kind == Kind::Response) {
            let answer = modern::modernized(raw, &request.method, hints);
            return modern::json_response(StatusCode::OK, answer);
        }
    }
    crate::error::jsonrpc_error(
        StatusCode::BAD_GATEWAY,
        "the MCP server ended without answering",
    )
}
