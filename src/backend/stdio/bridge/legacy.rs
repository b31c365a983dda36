//! The 2024-11-05 "HTTP with SSE" transport, for clients that predate Streamable HTTP:
//! `GET /sse` opens a session and its one event stream, whose first event (`endpoint`) names
//! where to `POST` messages (`/messages?sessionId=…`); every answer and server message comes
//! back on the stream, each `POST` gets 202. The session ends when the stream is closed.
//! Same gate, same sessions (owned by their user), same children as `/mcp`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{GET_STREAM_QUEUE, StdioBackend, accepts_sse, read_message, sse_response};
use crate::backend::stdio::framing::Kind;
use crate::backend::stdio::session::Session;
use crate::error::jsonrpc_error;
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

fn only(method: &'static str) -> Response {
    let mut r = jsonrpc_error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {method}"));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(method));
    r
}

impl StdioBackend {
    /// `GET /sse`: a new session whose messages all arrive on this stream.
    pub fn legacy_sse(&self, caller: &Caller, method: &Method, headers: &HeaderMap) -> Response {
        if method != Method::GET {
            return only("GET");
        }
        if !accepts_sse(headers) {
            return jsonrpc_error(
                StatusCode::NOT_ACCEPTABLE,
                "GET needs Accept: text/event-stream",
            );
        }
        let session = match self.create(caller) {
            Ok(s) => s,
            Err(r) => return axum::response::IntoResponse::into_response(r),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(GET_STREAM_QUEUE);
        let endpoint = format!(
            "event: endpoint\ndata: {MESSAGES_PATH}?sessionId={}\n\n",
            session.mcp_id()
        );
        // The queue is new and empty: the endpoint event is first.
        let _ = tx.try_send(Bytes::from(endpoint));
        let _ = session.legacy.set(tx.clone());
        session.open_get_stream(tx);
        sse_response(rx, EndsSession(session))
    }

    /// `POST /messages?sessionId=…`: one message of a legacy session; its answer goes to
    /// the session's stream.
    pub async fn legacy_message(&self, caller: &Caller, req: Request) -> Response {
        if req.method() != Method::POST {
            return only("POST");
        }
        let id = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "sessionId")
            .map(|(_, v)| v.into_owned());
        let Some(id) = id else {
            return jsonrpc_error(StatusCode::BAD_REQUEST, "sessionId is required");
        };
        let Some((session, tx)) = self
            .find(caller, &id)
            .and_then(|s| s.legacy.get().cloned().map(|tx| (s, tx)))
        else {
            return jsonrpc_error(StatusCode::NOT_FOUND, "session not found");
        };
        let msg = match read_message(req).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        match msg.kind {
            Kind::Batch => {
                return jsonrpc_error(
                    StatusCode::BAD_REQUEST,
                    "this transport takes one message per request",
                );
            }
            Kind::Request => {
                let stream = session.new_stream(true, tx);
                if msg.method.as_deref() == Some("initialize") {
                    let id = msg.id.clone().unwrap_or_default();
                    match self.shared_init_answer(&session, &id).await {
                        Some(Ok(answer)) => {
                            stream.deliver(answer).await;
                            stream.finish();
                            return accepted();
                        }
                        Some(Err(r)) => return r,
                        None => {}
                    }
                }
                if let Err(why) = session.send(&msg, Some(stream)).await {
                    return jsonrpc_error(StatusCode::BAD_GATEWAY, why);
                }
            }
            _ => {
                if let Err(why) = session.send(&msg, None).await {
                    return jsonrpc_error(StatusCode::NOT_FOUND, why);
                }
            }
        }
        accepted()
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, "Accepted").into_response()
}
