//! `subscriptions/listen` (MCP 2026-07-28, basic/patterns/subscriptions) on a legacy child:
//! a long-lived stream that starts with the acknowledgement and then carries the child's
//! list-changed and resource-updated notifications the filter asked for, each tagged with
//! the subscription's id (the listen request's id).
//!
//! The listener is a session of the user's modern child, so the child's broadcasts reach it;
//! the URIs of `resourceSubscriptions` are subscribed at the child (`resources/subscribe`)
//! as the stream opens. What the child does not support (its `initialize` capabilities) is
//! left out of the acknowledgement and never sent. The stream carries an SSE comment every
//! [`KEEP_ALIVE`] so that proxies and clients do not close it while nothing changes, and
//! ends when the client closes it or the child goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::modern::{self, Modern};
use super::refusal::Refusal;
use super::{GET_STREAM_QUEUE, StdioBackend};
use crate::backend::stdio::framing::Message;
use crate::backend::stdio::session::Session;

/// How often a quiet stream carries a comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(25);

/// Open listen streams per user, and in all.
const MAX_PER_USER: usize = 8;
const MAX_LISTENERS: usize = 1024;

/// Resource URIs one subscription may name, and the longest URI taken.
const MAX_URIS: usize = 64;
const MAX_URI_LEN: usize = 2048;

const SUBSCRIPTION_ID_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// What one subscription asked for, less what the child cannot do.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Filter {
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: Vec<String>,
}

impl Filter {
    /// `asked` (the request's `notifications`) as the child's capabilities allow it.
    pub(super) fn honoured(asked: Option<&Value>, capabilities: Option<&Value>) -> Filter {
        let wants = |field: &str| asked.and_then(|a| a.get(field)) == Some(&Value::Bool(true));
        let offers = |cap: &str, flag: &str| {
            capabilities.and_then(|c| c.pointer(&format!("/{cap}/{flag}")))
                == Some(&Value::Bool(true))
        };
        let uris = if offers("resources", "subscribe") {
            asked
                .and_then(|a| a.get("resourceSubscriptions"))
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(Value::as_str)
                        .filter(|u| !u.is_empty() && u.len() <= MAX_URI_LEN)
                        .take(MAX_URIS)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Filter {
            tools: wants("toolsListChanged") && offers("tools", "listChanged"),
            prompts: wants("promptsListChanged") && offers("prompts", "listChanged"),
            resources: wants("resourcesListChanged") && offers("resources", "listChanged"),
            uris,
        }
    }

    /// The acknowledgement's `notifications`: what will be sent.
    fn acknowledged(&self) -> Value {
        let mut n = serde_json::Map::new();
        for (on, field) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                n.insert(field.into(), json!(true));
            }
        }
        if !self.uris.is_empty() {
            n.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(n)
    }

    /// Whether a notification of the child's belongs on this stream.
    pub(super) fn passes(&self, notification: &Value) -> bool {
        match notification.get("method").and_then(Value::as_str) {
            Some("notifications/tools/list_changed") => self.tools,
            Some("notifications/prompts/list_changed") => self.prompts,
            Some("notifications/resources/list_changed") => self.resources,
            Some("notifications/resources/updated") => notification
                .get("params")
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str)
                .is_some_and(|u| self.uris.iter().any(|s| s == u)),
            _ => false,
        }
    }
}

/// A notification tagged with the subscription it belongs to.
fn tagged(mut notification: Value, id: &Value) -> Bytes {
    if let Some(params) = notification
        .as_object_mut()
        .map(|n| n.entry("params").or_insert_with(|| json!({})))
        && let Some(params) = params.as_object_mut()
    {
        let meta = params.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(SUBSCRIPTION_ID_KEY.into(), id.clone());
        }
    }
    Bytes::from(notification.to_string())
}

/// The open listen streams, by user.
#[derive(Default)]
pub(super) struct Listeners(Arc<Mutex<HashMap<String, usize>>>);

/// One open stream's place, given back when the stream ends.
struct Place {
    of: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Listeners {
    fn take(&self, user: &str) -> Option<Place> {
        let mut open = self.0.lock().ok()?;
        let total: usize = open.values().sum();
        let mine = open.entry(user.to_string()).or_default();
        if *mine >= MAX_PER_USER || total >= MAX_LISTENERS {
            return None;
        }
        *mine += 1;
        Some(Place {
            of: self.0.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut open) = self.of.lock()
            && let Some(n) = open.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Ends the listener's session (and so its place among the child's sessions) with the
/// stream, after unsubscribing the child from the URIs no other listener still wants.
struct Listening {
    session: Arc<Session>,
    /// The URIs this listener counts in the child's subscriptions.
    uris: Vec<String>,
    _place: Place,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let session = self.session.clone();
        let uris = std::mem::take(&mut self.uris);
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !uris.is_empty() => {
                runtime.spawn(async move {
                    let answers = unsubscribe(&session, &uris).await;
                    // The session ends once the child answered: ending it sooner would
                    // cancel the unsubscribes.
                    for mut answer in answers {
                        let _ = tokio::time::timeout(UNSUBSCRIBE_WAIT, answer.recv()).await;
                    }
                    session.close("the subscription ended");
                });
            }
            _ => session.close("the subscription ended"),
        }
    }
}

/// How long a closing listener waits for the child to answer its unsubscribes.
const UNSUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// Sends `resources/subscribe` or `resources/unsubscribe` for `uri` from `session`; the
/// answer arrives on the receiver.
async fn ask_child(
    session: &Arc<Session>,
    method: &str,
    uri: &str,
) -> Result<mpsc::Receiver<Bytes>, &'static str> {
    // The id is the child's own once sent: a modern child is shared by its requests' sessions,
    // whose ids the bridge makes unique.
    let request = json!({
        "jsonrpc": "2.0", "id": "mcp-auth-proxy-subscription",
        "method": method, "params": {"uri": uri},
    });
    let request = Message::parse(Bytes::from(request.to_string())).ok_or("unreadable request")?;
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let stream = session.new_stream(false, tx);
    session.send(&request, Some(stream)).await?;
    Ok(rx)
}

/// Counts `listening`'s URIs in its child's subscriptions, subscribing the child to those
/// no other listener had asked for.
async fn subscribe(listening: &mut Listening, uris: &[String]) -> Result<(), &'static str> {
    let session = listening.session.clone();
    let mut subscribed = session.child().subscribed.lock().await;
    for uri in uris {
        let listeners = subscribed.entry(uri.clone()).or_default();
        *listeners += 1;
        listening.uris.push(uri.clone());
        if *listeners == 1 {
            ask_child(&session, "resources/subscribe", uri).await?;
        }
    }
    Ok(())
}

/// Takes `uris` out of the child's subscriptions, unsubscribing the child from those no
/// listener wants any more; the answers to come.
async fn unsubscribe(session: &Arc<Session>, uris: &[String]) -> Vec<mpsc::Receiver<Bytes>> {
    let mut subscribed = session.child().subscribed.lock().await;
    let mut answers = Vec::new();
    for uri in uris {
        let Some(listeners) = subscribed.get_mut(uri) else {
            continue;
        };
        *listeners = listeners.saturating_sub(1);
        if *listeners == 0 {
            subscribed.remove(uri);
            if let Ok(answer) = ask_child(session, "resources/unsubscribe", uri).await {
                answers.push(answer);
            }
        }
    }
    answers
}

impl StdioBackend {
    /// Opens a `subscriptions/listen` stream on `anchor`'s child.
    pub(super) async fn listen(
        &self,
        anchor: &Arc<Session>,
        request: &Modern,
        init: &Value,
        wants_sse: bool,
    ) -> Result<Response, Refusal> {
        if !wants_sse {
            return Err(Refusal::Rpc(
                StatusCode::NOT_ACCEPTABLE,
                "subscriptions/listen answers with a stream: accept text/event-stream",
            ));
        }
        let place = self.listeners.take(anchor.owner()).ok_or(Refusal::Rpc(
            StatusCode::TOO_MANY_REQUESTS,
            "too many subscriptions are open: close one first",
        ))?;
        let filter = Filter::honoured(
            request.param("notifications").as_ref(),
            init.get("capabilities"),
        );
        let session = self.request_session(anchor);
        let (tx, rx) = mpsc::channel::<Bytes>(GET_STREAM_QUEUE);
        session.open_raw_get_stream(tx);
        let mut listening = Listening {
            session,
            uris: Vec::new(),
            _place: place,
        };
        subscribe(&mut listening, &filter.uris)
            .await
            .map_err(|why| Refusal::Rpc(StatusCode::BAD_GATEWAY, why))?;
        let id = request.id.clone();
        let ack = json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {
                "_meta": { SUBSCRIPTION_ID_KEY: id },
                "notifications": filter.acknowledged(),
            },
        });
        let first = futures_util::stream::once(async move {
            Ok::<_, std::convert::Infallible>(modern::sse_event(ack.to_string().as_bytes()))
        });
        let mut beat = tokio::time::interval(KEEP_ALIVE);
        beat.reset();
        let rest = futures_util::stream::unfold(
            (rx, beat, filter, id, listening),
            |(mut rx, mut beat, filter, id, listening)| async move {
                loop {
                    let event = tokio::select! {
                        raw = rx.recv() => {
                            let Ok(notification) = serde_json::from_slice::<Value>(&raw?) else {
                                continue;
                            };
                            if !filter.passes(&notification) {
                                continue;
                            }
                            modern::sse_event(&tagged(notification, &id))
                        }
                        _ = beat.tick() => Bytes::from_static(b":\n\n"),
                    };
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (rx, beat, filter, id, listening),
                    ));
                }
            },
        );
        Ok(super::event_stream(axum::body::Body::from_stream(
            futures_util::StreamExt::chain(first, rest),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything_caps() -> Value {
        json!({"tools": {"listChanged": true}, "prompts": {"listChanged": true},
               "resources": {"subscribe": true, "listChanged": true}})
    }

    #[test]
    fn the_acknowledgement_holds_what_was_asked_and_the_child_can_do() {
        let asked = json!({"toolsListChanged": true, "promptsListChanged": false,
                           "resourceSubscriptions": ["file:///a"], "somethingNew": true});
        let f = Filter::honoured(Some(&asked), Some(&everything_caps()));
        assert_eq!(
            f.acknowledged(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///a"]})
        );
        // A child without list changes or subscriptions: nothing is promised.
        let f = Filter::honoured(Some(&asked), Some(&json!({"tools": {}})));
        assert_eq!(f.acknowledged(), json!({}));
    }

    #[test]
    fn only_what_the_filter_names_passes_tagged_with_the_subscription() {
        let asked = json!({"resourcesListChanged": true, "resourceSubscriptions": ["file:///a"]});
        let f = Filter::honoured(Some(&asked), Some(&everything_caps()));
        let updated = |uri: &str| json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}});
        assert!(f.passes(&updated("file:///a")));
        assert!(!f.passes(&updated("file:///b")));
        assert!(f.passes(&json!({"method": "notifications/resources/list_changed"})));
        assert!(!f.passes(&json!({"method": "notifications/tools/list_changed"})));
        assert!(!f.passes(&json!({"method": "notifications/message", "params": {}})));
        let out: Value = serde_json::from_slice(&tagged(updated("file:///a"), &json!(7))).unwrap();
        assert_eq!(out["params"]["_meta"][SUBSCRIPTION_ID_KEY], 7);
        assert_eq!(out["params"]["uri"], "file:///a");
    }

    #[test]
    fn open_streams_are_bounded_per_user_and_given_back() {
        let l = Listeners::default();
        let places: Vec<_> = (0..MAX_PER_USER)
            .map(|_| l.take("alice").unwrap())
            .collect();
        assert!(l.take("alice").is_none());
        assert!(l.take("bob").is_some());
        drop(places);
        assert!(l.take("alice").is_some());
    }
}
