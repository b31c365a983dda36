//! Where a message from a child goes (the module's doc above lists the rules): requests
//! waiting for their answers, the ids and progress tokens renamed in shared mode, and the
//! streams that take what no request claims.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Weak};

use bytes::Bytes;
use memchr::memmem::Finder;
use serde_json::Value;

use super::{BACKLOG, Init, Session, StreamTx, push_bounded};
use crate::backend::stdio::framing::{Kind, MemberName, Message, replace_value, value_text};

pub(super) const PROGRESS_TOKEN: [&str; 3] = ["params", "_meta", "progressToken"];

/// The progress token's member name, for [`may_name`](crate::backend::stdio::framing::may_name).
pub(super) static PROGRESS_TOKEN_NAME: MemberName = LazyLock::new(|| Finder::new("progressToken"));

/// Where a 2026-07-28 subscription's messages name it.
const SUBSCRIPTION_ID: [&str; 3] = ["params", "_meta", "io.modelcontextprotocol/subscriptionId"];

/// A client request the child has not answered yet.
pub(super) struct Pending {
    /// The id as the child sees it (exact JSON text).
    pub(super) id: String,
    pub(super) stream: StreamTx,
    pub(super) session: Weak<Session>,
    /// Shared mode: the client's own id and progress token, restored on the way out.
    pub(super) client_id: Option<String>,
    pub(super) client_token: Option<String>,
    /// Shared mode: this is the `initialize` whose result the other sessions get.
    pub(super) initialize: bool,
}

#[derive(Default)]
pub(super) struct Routes {
    /// Shared mode (see [`Child`]).
    pub(super) shared: bool,
    /// In arrival order.
    pub(super) pending: Vec<Pending>,
    /// Progress token → request id, both as the child sees them.
    pub(super) progress: HashMap<String, String>,
    /// The sessions attached to the child.
    pub(super) sessions: Vec<Weak<Session>>,
    /// Server→client requests not answered yet: id → the session that was asked (the
    /// latest [`BACKLOG`]).
    pub(super) asked: VecDeque<(String, Weak<Session>)>,
    /// Messages from a child no session is attached to yet (a warm spare), for the first.
    pub(super) orphans: VecDeque<Bytes>,
}

/// Where one message from the child goes.
pub(super) enum Route {
    /// One stream; `true` when the stream is finished with it (its last awaited answer).
    Stream(StreamTx, Bytes, bool),
    /// The GET streams (or backlogs) of these sessions.
    Sessions(Vec<Arc<Session>>, Bytes),
    /// Back to the child: the error answer to a request of its that nobody can take.
    Refuse(Bytes),
    Nowhere,
}

impl Pending {
    /// The id the client used.
    pub(super) fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.id)
    }
}

impl Routes {
    pub(super) fn live_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.closed.load(Ordering::Acquire))
            .collect()
    }

    /// Where a message from the child goes (see the module header), and, when it answers
    /// the shared child's `initialize`, the new state of that.
    pub(super) fn target(&mut self, m: &Message) -> (Route, Option<Init>) {
        self.pending.retain(|p| !p.stream.is_finished());
        let raw = m.raw.clone();
        match m.kind {
            Kind::Response => {
                let id = m.id.clone().unwrap_or_default();
                let Some(pos) = self.pending.iter().position(|p| p.id == id) else {
                    return (Route::Nowhere, None);
                };
                let p = self.pending.remove(pos);
                self.progress.retain(|_, req| *req != p.id);
                let init = p.initialize.then(|| {
                    value_text(&raw, &["result"]).map_or(Init::Idle, |r| {
                        Init::Done(Bytes::copy_from_slice(r.as_bytes()))
                    })
                });
                let raw = match &p.client_id {
                    Some(cid) => m.with_id(cid).unwrap_or(raw),
                    None => raw,
                };
                // A batch shares one stream: it ends with the last of its answers.
                let last = !self
                    .pending
                    .iter()
                    .any(|q| Arc::ptr_eq(&q.stream, &p.stream));
                (Route::Stream(p.stream, raw, last), init)
            }
            // A 2026-07-28 server's subscription stream: every message of it names the
            // `subscriptions/listen` request that opened it.
            Kind::Notification if value_text(&raw, &SUBSCRIPTION_ID).is_some() => {
                let id = value_text(&raw, &SUBSCRIPTION_ID).unwrap_or_default();
                match self.pending.iter().find(|p| p.id == id) {
                    Some(p) => {
                        let raw = match &p.client_id {
                            Some(cid) => replace_value(&raw, &SUBSCRIPTION_ID, cid).unwrap_or(raw),
                            None => raw,
                        };
                        (Route::Stream(p.stream.clone(), raw, false), None)
                    }
                    None => (Route::Nowhere, None),
                }
            }
            Kind::Notification if is_broadcast(m.method.as_deref()) => {
                (self.for_sessions(self.live_sessions(), raw), None)
            }
            Kind::Notification if m.method.as_deref() == Some("notifications/progress") => {
                let token = value_text(&raw, &["params", "progressToken"]).and_then(normalized);
                let waiting = token
                    .and_then(|t| self.progress.get(&t))
                    .and_then(|req| self.pending.iter().find(|p| p.id == *req));
                match waiting {
                    Some(p) => {
                        let raw = match &p.client_token {
                            Some(t) => {
                                replace_value(&raw, &["params", "progressToken"], t).unwrap_or(raw)
                            }
                            None => raw,
                        };
                        (Route::Stream(p.stream.clone(), raw, false), None)
                    }
                    // Its request was answered (a late event) or never ours: it belongs to
                    // one caller, so it goes to nobody rather than to everybody.
                    None => {
                        tracing::debug!("a progress notification for no waiting request; dropped");
                        (Route::Nowhere, None)
                    }
                }
            }
            Kind::Notification if m.method.as_deref() == Some("notifications/cancelled") => {
                // The child gave up one of its own requests: tell the session it asked.
                let asked = value_text(&raw, &["params", "requestId"])
                    .and_then(|id| self.asked.iter().position(|(a, _)| a == id))
                    .and_then(|i| self.asked.remove(i))
                    .and_then(|(_, s)| s.upgrade());
                match asked {
                    Some(s) => (self.for_sessions(vec![s], raw), None),
                    None => {
                        tracing::debug!("a cancellation of no request we relayed; dropped");
                        (Route::Nowhere, None)
                    }
                }
            }
            Kind::Request => {
                let route = self.newest_waiting_or(raw, true);
                (route, None)
            }
            _ => (self.newest_waiting_or(raw, false), None),
        }
    }

    /// A server→client request (`one`) or notification that names no request of ours.
    ///
    /// Per-session mode: to the stream of the newest waiting request; with none, to the
    /// GET stream. Shared mode: nothing in the message says which session caused it, so it
    /// goes where that is certain: the newest waiting request of the only session with
    /// requests in flight, else the only session; otherwise a notification goes to every
    /// session and a request is refused with an error to the child (never guessed: a prompt
    /// shown to the wrong user is a leak). A request remembers whom it asked.
    pub(super) fn newest_waiting_or(&mut self, raw: Bytes, one: bool) -> Route {
        let request_id = one
            .then(|| value_text(&raw, &["id"]).map(str::to_string))
            .flatten();
        if self.shared {
            return self.unambiguous(raw, request_id);
        }
        if let Some(p) = self.pending.last() {
            let (stream, session) = (p.stream.clone(), p.session.clone());
            if let Some(id) = request_id {
                self.remember_asked(id, session);
            }
            return Route::Stream(stream, raw, false);
        }
        let mut sessions = self.live_sessions();
        if one {
            sessions.sort_by_key(|s| s.last_used());
            sessions = sessions.pop().into_iter().collect();
            if let (Some(id), Some(s)) = (request_id, sessions.first()) {
                self.remember_asked(id, Arc::downgrade(s));
            }
        }
        self.for_sessions(sessions, raw)
    }

    pub(super) fn unambiguous(&mut self, raw: Bytes, request_id: Option<String>) -> Route {
        let busy: Vec<&Pending> = self
            .pending
            .iter()
            .filter(|p| p.session.strong_count() > 0)
            .collect();
        let one_busy = busy.last().filter(|newest| {
            busy.iter()
                .all(|p| Weak::ptr_eq(&p.session, &newest.session))
        });
        if let Some(p) = one_busy {
            let (stream, session) = (p.stream.clone(), p.session.clone());
            // A modern request's stream takes the question too: the bridge turns it into a
            // multi round-trip result, or answers the child with an error.
            if let Some(id) = request_id {
                self.remember_asked(id, session);
            }
            return Route::Stream(stream, raw, false);
        }
        let sessions = self.live_sessions();
        let Some(id) = request_id else {
            return self.for_sessions(sessions, raw);
        };
        if let ([], [only]) = (busy.as_slice(), sessions.as_slice()) {
            // Modern clients are asked only while their request waits (above).
            if only.stateless {
                return Route::Refuse(cannot_ask(&id));
            }
            self.remember_asked(id, Arc::downgrade(only));
            return self.for_sessions(sessions, raw);
        }
        Route::Refuse(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32603,"message":"the proxy shares this server between several sessions and cannot tell which one this request is for"}}}}"#
        )))
    }

    pub(super) fn remember_asked(&mut self, id: String, session: Weak<Session>) {
        if self.asked.len() == BACKLOG {
            self.asked.pop_front();
        }
        self.asked.push_back((id, session));
    }

    pub(super) fn for_sessions(&mut self, sessions: Vec<Arc<Session>>, raw: Bytes) -> Route {
        if sessions.is_empty() {
            push_bounded(&mut self.orphans, raw);
            return Route::Nowhere;
        }
        Route::Sessions(sessions, raw)
    }
}

/// The child's answer to a request its modern client cannot be asked (2026-07-28 clients
/// answer through multi round-trip results, which the bridge does not relay yet).
fn cannot_ask(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32601,"message":"the client of this request cannot be asked anything through this proxy"}}}}"#
    ))
}

/// A JSON value's canonical text (`1.0` and `1` stay apart, escapes are resolved), so a
/// token the child echoes in another spelling still matches.
pub(super) fn normalized(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text)
        .ok()
        .map(|v| v.to_string())
}

pub(super) fn is_broadcast(method: Option<&str>) -> bool {
    method.is_some_and(|m| m.ends_with("/list_changed") || m == "notifications/resources/updated")
}
