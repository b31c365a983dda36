//! The 2024-11-05 "HTTP with SSE" transport, for clients that predate Streamable HTTP:
//! `GET /sse` opens a session and its one event stream, whose first event (`endpoint`) names
//! where to `POST` messages (`/messages?sessionId=…`); every answer and server message comes
//! back on the stream, each `POST` gets 202. The session ends when the stream is closed.
//! Same gate, same sessions (owned by their user), same children as `/mcp`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{GET_STREAM_QUEUE, Refusal, StdioBackend, accepts_sse, read_message, sse_response};
use crate::backend::stdio::framing::Kind;
use crate::backend::stdio::session::Session;
use crate::gate::Caller;

/// Where legacy clients open their stream.
pub const SSE_PATH: &str = "/sse";
/// Where they post messages.
pub const MESSAGES_PATH: &str = "/messages";

/// Ends the session when its stream's response body is dropped (the client went away).
struct EndsSession(Arc<Session>);

impl Drop for EndsSession {
    fn drop(&mut self) {
        self.0.close("the SSE connection was closed");
    }
}

impl StdioBackend {
    /// `GET /sse`: a new session whose messages all arrive on this stream.
    pub fn legacy_sse(
        &self,
        caller: &Caller,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Response, Refusal> {
        if method != Method::GET {
            return Err(Refusal::Method("GET"));
        }
        if !accepts_sse(headers) {
            return Err(Refusal::Rpc(
                StatusCode::NOT_ACCEPTABLE,
                "GET needs Accept: text/event-stream",
            ));
        }
        let session = self.create(caller)?;
        let (tx, rx) = mpsc::channel::<Bytes>(GET_STREAM_QUEUE);
        let endpoint = format!(
            "event: endpoint\ndata: {MESSAGES_PATH}?sessionId={}\n\n",
            session.mcp_id()
        );
        // The queue is new and empty: the endpoint event is first.
        let _ = tx.try_send(Bytes::from(endpoint));
        let _ = session.legacy.set(tx.clone());
        session.open_get_stream(tx);
        Ok(sse_response(None, rx, EndsSession(session)))
    }

    /// `POST /messages?sessionId=…`: one message of a legacy session; its answer goes to
    /// the session's stream.
    pub async fn legacy_message(&self, caller: &Caller, req: Request) -> Result<Response, Refusal> {
        if req.method() != Method::POST {
            return Err(Refusal::Method("POST"));
        }
        let id = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "sessionId")
            .map(|(_, v)| v.into_owned());
        let Some(id) = id else {
            return Err(Refusal::Rpc(
                StatusCode::BAD_REQUEST,
                "sessionId is required",
            ));
        };
        let Some((session, tx)) = self
            .find(caller, &id)
            .and_then(|s| s.legacy.get().cloned().map(|tx| (s, tx)))
        else {
            return Err(Refusal::Rpc(StatusCode::NOT_FOUND, "session not found"));
        };
        let msg = read_message(req.into_body()).await?;
        match msg.kind {
            Kind::Batch => {
                return Err(Refusal::Rpc(
                    StatusCode::BAD_REQUEST,
                    "this transport takes one message per request",
                ));
            }
            Kind::Request => {
                let stream = session.new_stream(true, tx);
                if msg.method.as_deref() == Some("initialize") {
                    let id = msg.id.clone().unwrap_or_default();
                    match self.shared_init_answer(&session, &id).await {
                        Some(Ok(answer)) => {
                            stream.deliver(answer).await;
                            stream.finish();
                            return Ok(accepted());
                        }
                        Some(Err(refused)) => return Err(refused),
                        None => {}
                    }
                }
                if let Err(why) = session.send(&msg, Some(stream)).await {
                    return Err(Refusal::Rpc(StatusCode::BAD_GATEWAY, why));
                }
            }
            _ => {
                if let Err(why) = session.send(&msg, None).await {
                    return Err(Refusal::Rpc(StatusCode::NOT_FOUND, why));
                }
            }
        }
        Ok(accepted())
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, "Accepted").into_response()
}
