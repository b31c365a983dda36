//! Serving one modern (2026-07-28) request from the caller's child (see [`super::modern`]
//! for the rules): the child initialized by the bridge once, then each request a short-lived
//! session of it whose end (the response delivered, or the client gone) is the request's
//! end at the child.

use std::sync::{Arc, LazyLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use memchr::memmem::Finder;
use serde_json::Value;
use tokio::sync::mpsc;

use super::modern::{self, CacheHints, Modern};
use super::mrtr::{self, HeldCalls};
use super::refusal::Refusal;
use super::{SHARED_INIT_WAIT, STREAM_QUEUE, StdioBackend};
use crate::backend::stdio::framing::{Kind, MemberName, Message, may_name, value_text};
use crate::backend::stdio::session::{Init, InitTurn, Session, StreamTx};
use crate::gate::Caller;

/// Ends a modern request's session when its response is dropped: after the answer that is
/// all; before it, the child is told the request is cancelled (closing the response stream
/// is the cancellation of 2026-07-28, specification basic/patterns/cancellation). A call
/// held for its client's answers (see [`super::mrtr`]) is disarmed instead.
struct EndsWithResponse(Option<Arc<Session>>);

impl EndsWithResponse {
    fn session(&self) -> Option<&Arc<Session>> {
        self.0.as_ref()
    }
}

impl Drop for EndsWithResponse {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.close("the client closed the response stream");
        }
    }
}

/// One modern request's conversation with the child: what the child says about the call,
/// until its answer (or a question for the client, which ends this response).
struct Exchange {
    rx: mpsc::Receiver<Bytes>,
    ends: EndsWithResponse,
    stream: StreamTx,
    request: Modern,
    hints: CacheHints,
    held: Option<Arc<HeldCalls>>,
    now_unix: u64,
}

/// Whether a stdio server speaks 2026-07-28 itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildEra {
    Modern,
    Legacy,
}

/// What a retry leads to.
enum Retry {
    /// The held call, given the client's answer: its rest is the retry's response.
    Continue(mrtr::Held),
    /// The retry did not answer: the same question again.
    AskAgain(Bytes),
}

/// What the response says next.
enum Said {
    /// A notification about the call.
    Event(Bytes),
    /// The last message: the answer, or the question for the client.
    Last(Bytes),
    End,
}

impl Exchange {
    async fn next(&mut self) -> Said {
        while let Some(raw) = self.rx.recv().await {
            let Some(m) = Message::parse(raw.clone()) else {
                continue;
            };
            match m.kind {
                Kind::Response => {
                    // A retry's answer is the held call's: it carries the first id.
                    let retry = self.request.request_state.is_some();
                    return Said::Last(modern::modernized(
                        m,
                        retry.then_some(&self.request.id),
                        &self.request.method,
                        self.hints,
                    ));
                }
                Kind::Request => {
                    if let Some(question) = self.ask(&raw, m.id.as_deref()).await {
                        return Said::Last(question);
                    }
                }
                // Logging is asked for per request, at a level (specification,
                // server/utilities/logging).
                _ if m.method.as_deref() == Some("notifications/message") => {
                    let wanted = serde_json::from_slice::<Value>(&raw)
                        .is_ok_and(|n| self.request.wants_log(&n));
                    if wanted {
                        return Said::Event(raw);
                    }
                }
                _ => return Said::Event(raw),
            }
        }
        Said::End
    }

    /// The child asked its client something: the `InputRequiredResult` that asks it, when
    /// the client can answer. Otherwise the child hears why not, and the client hears
    /// nothing, or `-32021` when its call needs the capability it did not declare (a
    /// question asked for the connection, not the call, never ends the call).
    async fn ask(&mut self, raw: &Bytes, asked_id: Option<&str>) -> Option<Bytes> {
        let asked_id = asked_id?.to_string();
        let asked: Value = serde_json::from_slice(raw).ok()?;
        let session = self.ends.session()?.clone();
        let (why, to_client) = match self.holder_for(&asked) {
            Ok(held) => {
                let question = mrtr::question_of(&asked);
                let digest = self.request.digest();
                match held.hold(
                    session.clone(),
                    self.stream.clone(),
                    asked_id.clone(),
                    question.clone(),
                    digest,
                    self.now_unix,
                ) {
                    Ok(state) => {
                        // Held: the call outlives this response.
                        self.ends.0 = None;
                        return Some(mrtr::input_required(&self.request.id, &question, &state));
                    }
                    Err(full) => (full.to_string(), None),
                }
            }
            Err(refused) => refused,
        };
        let _ = session
            .send_raw_answer(&mrtr::answer_for_child(&asked_id, Err(&why)))
            .await;
        to_client
    }

    /// Who may hold this call while its client answers `asked`; else why not (for the
    /// child) and what the client is told, if anything.
    fn holder_for(&self, asked: &Value) -> Result<Arc<HeldCalls>, (String, Option<Bytes>)> {
        let method = asked
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(capability) = mrtr::capability_for(method) else {
            return Err((format!("{method} is not something a client answers"), None));
        };
        let Some(held) = self.held.clone() else {
            return Err((
                "this proxy cannot relay questions to its client".into(),
                None,
            ));
        };
        if !mrtr::may_ask(&self.request.method) {
            let why = format!(
                "a {} request cannot carry questions to the client",
                self.request.method
            );
            return Err((why, None));
        }
        if !self.request.declared(capability) {
            let why = format!("the client did not declare the {capability} capability");
            if !mrtr::asked_for_the_call(method) {
                // Asked for the connection (the server's first roots/list, say, while this
                // call happened to be in flight): the child hears why, the call goes on.
                return Err((why, None));
            }
            // The call needs what the client lacks: it ends here (the child hears the
            // refusal, then the cancellation), and the client learns what was missing.
            let to_client = mrtr::missing_capability(&self.request.id, capability);
            return Err((why, Some(to_client)));
        }
        Ok(held)
    }
}

impl StdioBackend {
    /// Answers a modern request (`request` is `msg` as read by [`modern::read`]).
    pub(super) async fn modern(
        &self,
        caller: &Caller,
        msg: &Message,
        request: Modern,
        wants_sse: bool,
    ) -> Result<Response, Refusal> {
        if !request.is_request {
            // This revision defines no client notifications over HTTP: taken and dropped.
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        let now_unix = crate::clock::Clock::system().now();
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        // The user's child: for a new call, and for the retry of a call a modern server
        // holds itself (a call the bridge holds knows its own session).
        let anchor = match (&request.request_state, self.child_era.get()) {
            (None, _) | (Some(_), Some(ChildEra::Modern)) => {
                let anchor = self.modern_anchor(caller)?;
                anchor.touch();
                Some(anchor)
            }
            (Some(_), _) => None,
        };
        let modern_child = match &anchor {
            // Probed (or initialized) before anything is sent for this request.
            Some(anchor) if request.request_state.is_none() => {
                self.prepare(anchor).await? == ChildEra::Modern
            }
            other => other.is_some(),
        };
        let (session, stream, anchor) = match anchor {
            None => {
                let state = request.request_state.as_deref().unwrap_or_default();
                match self
                    .continue_held(caller, &request, state, now_unix, tx)
                    .await?
                {
                    Retry::Continue(held) => (held.session, held.stream, None),
                    Retry::AskAgain(answer) => {
                        return Ok(super::json_response(StatusCode::OK, answer));
                    }
                }
            }
            Some(anchor) => {
                let answered_here = matches!(
                    request.method.as_str(),
                    "server/discover" | "subscriptions/listen"
                );
                if !modern_child && answered_here {
                    // Initialized by `prepare`: its result read only when it is needed.
                    let init = serde_json::from_slice::<Value>(&self.initialized(&anchor).await?)
                        .map_err(|_| {
                        Refusal::Rpc(
                            StatusCode::BAD_GATEWAY,
                            "the MCP server's initialize result is not JSON",
                        )
                    })?;
                    if request.method == "server/discover" {
                        let answer = modern::discover(&request.id, &init, self.cache_hints);
                        return Ok(super::json_response(StatusCode::OK, answer));
                    }
                    if request.method == "subscriptions/listen" {
                        return self.listen(&anchor, &request, &init, wants_sse).await;
                    }
                }
                let stripped = (!modern_child)
                    .then(|| request.for_legacy_child(msg))
                    .flatten();
                let session = self.request_session(&anchor);
                let stream = session.new_stream(false, tx);
                session
                    .send(stripped.as_ref().unwrap_or(msg), Some(stream.clone()))
                    .await
                    .map_err(|why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why))?;
                (session, stream, Some(anchor))
            }
        };
        let exchange = Exchange {
            rx,
            ends: EndsWithResponse(Some(session)),
            stream,
            request,
            hints: self.cache_hints,
            // A modern server asks its client through its own results: nothing to hold.
            held: (!modern_child).then(|| self.held.clone()).flatten(),
            now_unix,
        };
        let answer = respond(exchange, wants_sse).await;
        if let Some(anchor) = anchor {
            anchor.touch();
        }
        Ok(answer)
    }

    /// A session of its own on `anchor`'s child, for one request or subscription.
    pub(super) fn request_session(&self, anchor: &Session) -> Arc<Session> {
        let no = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Session::attach_stateless(
            anchor.child().clone(),
            String::new(),
            anchor.owner().to_string(),
            no,
        )
    }

    /// A retry: the held call its `requestState` names, given the client's answer.
    async fn continue_held(
        &self,
        caller: &Caller,
        request: &Modern,
        state: &str,
        now_unix: u64,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<Retry, Refusal> {
        let refused = |why: String| {
            Refusal::Modern(modern::ModernRefusal::InvalidParams {
                id: request.id.clone(),
                why,
            })
        };
        let holding = self
            .held
            .as_ref()
            .ok_or_else(|| refused("requestState was not made by this server".into()))?;
        let held = holding
            .take(state, caller.subject(), &request.digest(), now_unix)
            .map_err(|e| refused(e.to_string()))?;
        let Some(result) = request.input_response(mrtr::INPUT_KEY) else {
            // Retried without the answer: asked again (the specification's advice), under a
            // new state.
            let question = held.question.clone();
            let state = holding
                .hold(
                    held.session,
                    held.stream,
                    held.asked_id,
                    question.clone(),
                    request.digest(),
                    now_unix,
                )
                .map_err(|e| refused(e.to_string()))?;
            return Ok(Retry::AskAgain(mrtr::input_required(
                &request.id,
                &question,
                &state,
            )));
        };
        // The retry's response takes the rest of the call before the child hears the answer,
        // so that nothing it says next is lost.
        held.stream.attach(tx, None);
        held.session
            .send_raw_answer(&mrtr::answer_for_child(&held.asked_id, Ok(&result)))
            .await
            .map_err(|why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why))?;
        Ok(Retry::Continue(held))
    }

    /// How the anchor's child serves modern requests: as they are, when the server speaks
    /// 2026-07-28 itself (asked once per backend, with `server/discover` on the first child
    /// before anything else; a server of the 2025 revisions answers it with an error); else
    /// through the `initialize` the bridge runs. Shared mode's child is initialized by
    /// whichever session comes first, so it is always treated as a 2025 server.
    async fn prepare(&self, anchor: &Arc<Session>) -> Result<ChildEra, Refusal> {
        let era = match self.child_era.get() {
            Some(era) => *era,
            None if self.shared => ChildEra::Legacy,
            None => {
                // One probe, however many first requests arrive at once.
                let _one = self.probing.lock().await;
                match self.child_era.get() {
                    Some(era) => *era,
                    None => {
                        let era = self.probe(anchor).await?;
                        *self.child_era.get_or_init(|| era)
                    }
                }
            }
        };
        if era == ChildEra::Legacy {
            self.initialized(anchor).await?;
        }
        Ok(era)
    }

    /// Asks a child that has been told nothing yet whether it speaks 2026-07-28.
    async fn probe(&self, anchor: &Arc<Session>) -> Result<ChildEra, Refusal> {
        let answer = self.first_answer(anchor, modern::discover_request()).await;
        let Some(answer) = answer? else {
            // It exited or kept silent: a server of the 2025 revisions that takes nothing
            // before `initialize`. Its child (this user's alone: no probe in shared mode) is
            // stopped; the next request starts another.
            self.child_era.get_or_init(|| ChildEra::Legacy);
            anchor
                .child()
                .close("the MCP server did not answer server/discover");
            return Err(Refusal::Rpc(
                StatusCode::BAD_GATEWAY,
                "the MCP server stopped when asked server/discover; try again",
            ));
        };
        let versions = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v.pointer("/result/supportedVersions").cloned());
        let speaks = |v: &Value| {
            v.as_str()
                .is_some_and(|v| modern::MODERN_VERSIONS.contains(&v))
        };
        if versions
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(speaks))
        {
            tracing::info!(child = %anchor.child().tag, "the MCP server speaks 2026-07-28: modern requests go to it as they are");
            Ok(ChildEra::Modern)
        } else {
            tracing::info!(child = %anchor.child().tag, "the MCP server speaks the 2025 revisions: the proxy initializes it for modern requests");
            Ok(ChildEra::Legacy)
        }
    }

    /// The child's `initialize` result, sending the bridge's own `initialize` first when
    /// nobody has.
    async fn initialized(&self, anchor: &Arc<Session>) -> Result<Bytes, Refusal> {
        let not_started = || {
            Refusal::Rpc(
                StatusCode::GATEWAY_TIMEOUT,
                "the MCP server did not finish starting",
            )
        };
        for _ in 0..3 {
            match anchor.child().begin_initialize() {
                InitTurn::Cached(result) => return Ok(result),
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

    /// Sends `request` (one the bridge makes) to `anchor`'s child; its answer, or `None`
    /// when the child ends or stays silent for [`SHARED_INIT_WAIT`].
    async fn first_answer(
        &self,
        anchor: &Arc<Session>,
        request: Bytes,
    ) -> Result<Option<Bytes>, Refusal> {
        let failed = |why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why);
        let request = Message::parse(request).ok_or(failed("a request could not be made"))?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
        let stream = anchor.new_stream(false, tx);
        anchor.send(&request, Some(stream)).await.map_err(failed)?;
        let answer = tokio::time::timeout(SHARED_INIT_WAIT, async {
            while let Some(raw) = rx.recv().await {
                if Message::parse(raw.clone()).is_some_and(|m| m.kind == Kind::Response) {
                    return Some(raw);
                }
            }
            None
        })
        .await;
        Ok(answer.ok().flatten())
    }

    /// Runs the child's `initialize` and `notifications/initialized`.
    async fn initialize(&self, anchor: &Arc<Session>) -> Result<(), Refusal> {
        let failed = |why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why);
        let request = modern::initialize_request(self.held.is_some());
        if self.first_answer(anchor, request).await?.is_none() {
            return Err(failed("the MCP server did not answer initialize"));
        }
        let initialized = Message::parse(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ))
        .ok_or(failed("the initialized notification could not be made"))?;
        anchor.send(&initialized, None).await.map_err(failed)
    }
}

/// The response to a modern request. An answer that comes before anything else is one JSON
/// object (its HTTP status from its error: 404 for a method the server does not have, 400
/// for a capability the client did not declare); a call that reports progress first
/// streams, when the client accepts a stream.
async fn respond(mut exchange: Exchange, wants_sse: bool) -> Response {
    let first = match exchange.next().await {
        Said::Last(raw) => return json_answer(raw),
        Said::End => return ended(),
        Said::Event(raw) => raw,
    };
    if !wants_sse {
        // A JSON answer has no room for notifications: only the answer counts.
        loop {
            match exchange.next().await {
                Said::Event(_) => {}
                Said::Last(raw) => return json_answer(raw),
                Said::End => return ended(),
            }
        }
    }
    let first = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(modern::sse_event(&first))
    });
    let rest = futures_util::stream::unfold(Some(exchange), |exchange| async move {
        let mut exchange = exchange?;
        let (event, rest) = match exchange.next().await {
            Said::Event(raw) => (raw, Some(exchange)),
            Said::Last(raw) => (raw, None),
            Said::End => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(modern::sse_event(&event)),
            rest,
        ))
    });
    super::event_stream(axum::body::Body::from_stream(
        futures_util::StreamExt::chain(first, rest),
    ))
}

static ERROR: MemberName = LazyLock::new(|| Finder::new("error"));

fn json_answer(raw: Bytes) -> Response {
    // Most answers are results: the error code is read only where there may be one.
    let code = may_name(&raw, &ERROR)
        .then(|| value_text(&raw, &["error", "code"]))
        .flatten()
        .and_then(|c| c.parse::<i64>().ok());
    let status = match code {
        Some(-32601) => StatusCode::NOT_FOUND,
        Some(mrtr::MISSING_CAPABILITY) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    super::json_response(status, raw)
}

fn ended() -> Response {
    crate::error::jsonrpc_error(
        StatusCode::BAD_GATEWAY,
        "the MCP server ended without answering",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_s_status_comes_from_its_error_however_it_is_written() {
        for (answer, status) in [
            (r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#, 200),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{"text":"no error here"}}"#,
                200,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x"}}"#,
                404,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error" : {"code":-32601,"message":"x"}}"#,
                404,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"\u0065rror":{"code":-32601,"message":"x"}}"#,
                404,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}"#,
                200,
            ),
        ] {
            let got = json_answer(Bytes::from(answer)).status();
            assert_eq!(got.as_u16(), status, "{answer}");
        }
    }
}
