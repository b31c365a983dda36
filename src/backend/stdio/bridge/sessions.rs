//! The bridge's sessions and their children: a child started for each session (or one shared
//! by all), a warm spare kept ready, the limits per user and in all, idle sessions reaped,
//! and every child stopped at shutdown.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;

use super::refusal::SessionRefusal;
use super::{NotStartable, StdioBackend};
use crate::backend::http::MCP_SESSION_ID;
use crate::backend::stdio::child::{self, ChildSpec};
use crate::backend::stdio::session::{Child, Session};
use crate::gate::Caller;
use crate::tokens;

impl StdioBackend {
    pub(super) fn start_child(&self) -> std::io::Result<Arc<Child>> {
        self.start_child_with(&self.spec)
    }

    pub(super) fn start_child_with(&self, spec: &ChildSpec) -> std::io::Result<Arc<Child>> {
        self.start_child_as(spec, self.shared)
    }

    /// `multiplexed`: several sessions on the child, their ids rewritten (shared mode, and
    /// the children that serve modern requests).
    fn start_child_as(&self, spec: &ChildSpec, multiplexed: bool) -> std::io::Result<Arc<Child>> {
        let no = self
            .next_child
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Child::start(
            format!("child-{no}"),
            spec,
            self.crashes.clone(),
            multiplexed,
        )
    }

    /// The child's command for `caller`: ours plus their identity in the variables named
    /// by `--stdio-identity-env` (a variable with no value is left out).
    pub(super) fn spec_for(&self, caller: &Caller) -> ChildSpec {
        let mut spec = self.spec.clone();
        if let Some(id) = caller.identity() {
            for (var, v) in self.identity_env.values(id) {
                spec.extra_env.retain(|(k, _)| *k != var);
                spec.extra_env.push((var, v));
            }
        }
        spec
    }

    /// Starts a spare child if spares are on and none is waiting (and not while the server
    /// is crash-looping).
    pub(super) fn refill_spare(&self) {
        // A child that must carry its user's identity cannot be started ahead of the user.
        if !self.warm_spare
            || !self.identity_env.vars.is_empty()
            || self.crashes.retry_after().is_some()
        {
            return;
        }
        let Ok(mut spare) = self.spare.lock() else {
            return;
        };
        if spare.as_ref().is_some_and(|s| !s.is_closed()) {
            return;
        }
        match self.start_child() {
            Ok(s) => *spare = Some(s),
            Err(e) => tracing::warn!(error = %e, "the spare MCP server could not be started"),
        }
    }

    /// Whether a session could get a child now (readiness): the command is found and the
    /// server is not crash-looping.
    pub fn startable(&self) -> Result<(), NotStartable> {
        if let Some(wait) = self.crashes.retry_after() {
            return Err(NotStartable::CrashLooping {
                retry_in_secs: wait.as_secs().max(1),
            });
        }
        if !child::findable(&self.spec) {
            return Err(NotStartable::NotFound(self.spec.program.clone()));
        }
        Ok(())
    }

    /// The live sessions with their children, newest first.
    pub fn overview(&self) -> Vec<crate::backend::SessionView> {
        let sessions: Vec<Arc<Session>> = match self.sessions.lock() {
            Ok(m) => m.values().filter(|s| !s.is_closed()).cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<crate::backend::SessionView> = sessions
            .iter()
            .map(|s| {
                let pid = s.child().pid;
                crate::backend::SessionView {
                    id: s.mcp_id().to_string(),
                    user: s.owner().to_string(),
                    pid,
                    age: s.created.elapsed(),
                    idle: s.idle_for(),
                    rss_kib: pid.and_then(resident_kib),
                    stateless: s.is_stateless(),
                    shared_child: self.shared,
                }
            })
            .collect();
        out.sort_by_key(|v| v.age);
        out
    }

    /// Ends a session at the operator's word: closed, and its child stopped unless shared.
    pub fn end(&self, id: &str) -> bool {
        let Some(session) = self.sessions.lock().ok().and_then(|mut m| m.remove(id)) else {
            return false;
        };
        tracing::warn!(session = %id, child = %session.child().tag, "an operator ended an MCP session");
        session.close("an operator ended the session");
        if !self.shared {
            session.child().close("an operator ended the session");
        }
        true
    }

    /// Live sessions (for the metrics).
    pub fn live_sessions(&self) -> usize {
        self.sessions
            .lock()
            .map(|m| m.values().filter(|s| !s.is_closed()).count())
            .unwrap_or(0)
    }

    /// Ends sessions nobody used for the idle timeout; returns how many.
    pub fn reap_idle(&self) -> usize {
        let Ok(mut m) = self.sessions.lock() else {
            return 0;
        };
        let before = m.len();
        m.retain(|_, s| {
            if s.is_closed() {
                return false;
            }
            // A user's modern child: its requests are sessions of their own, so busy, it is
            // not idle; and in per-session mode the child is this session's alone.
            let modern = s.is_stateless();
            if s.is_idle(self.idle_timeout) && !(modern && s.child().busy()) {
                tracing::info!(session = %s.mcp_id(), child = %s.child().tag, "ending an idle MCP session");
                s.close("the session was idle too long");
                if modern && !self.shared {
                    s.child().close("the session was idle too long");
                }
                return false;
            }
            true
        });
        before - m.len()
    }

    /// How often idle sessions are looked for.
    pub fn reap_interval(&self) -> std::time::Duration {
        (self.idle_timeout / 4).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        )
    }

    /// Ends every session and waits until the children are stopped (shutdown).
    pub async fn shutdown(&self) {
        const WHY: &str = "the proxy is shutting down";
        let sessions: Vec<Arc<Session>> = match self.sessions.lock() {
            Ok(mut m) => m.drain().map(|(_, s)| s).collect(),
            Err(_) => return,
        };
        let mut children: Vec<Arc<Child>> = Vec::new();
        for s in &sessions {
            s.close(WHY);
            if !children.iter().any(|c| Arc::ptr_eq(c, s.child())) {
                children.push(s.child().clone());
            }
        }
        if let Some(spare) = self.spare.lock().ok().and_then(|mut s| s.take())
            && !children.iter().any(|c| Arc::ptr_eq(c, &spare))
        {
            children.push(spare);
        }
        for c in &children {
            c.close(WHY);
        }
        for c in &children {
            c.wait_stopped().await;
        }
    }

    /// The caller's live session named by the request.
    pub(super) fn session(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
    ) -> Result<Arc<Session>, SessionRefusal> {
        let Some(id) = headers.get(MCP_SESSION_ID).and_then(|v| v.to_str().ok()) else {
            return Err(SessionRefusal::Unnamed);
        };
        self.find(caller, id).ok_or(SessionRefusal::NotFound)
    }

    /// The caller's live session `id` (touched), if there is one.
    pub(super) fn find(&self, caller: &Caller, id: &str) -> Option<Arc<Session>> {
        let found = self.sessions.lock().ok().and_then(|m| m.get(id).cloned());
        found
            .filter(|s| !s.is_closed() && s.owner() == caller.subject())
            .inspect(|s| s.touch())
    }

    /// The worker thread running session `id`'s child (whoever owns it: this only places a
    /// connection, the request is still checked).
    pub(super) fn child_worker(&self, id: &str) -> Option<usize> {
        let sessions = self.sessions.lock().ok()?;
        sessions
            .get(id)
            .filter(|s| !s.is_closed())
            .and_then(|s| s.child().worker())
    }

    /// Ends a session and forgets it.
    pub(super) fn forget(&self, session: &Session, why: &str) {
        session.close(why);
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(session.mcp_id());
        }
    }

    pub(super) fn create(&self, caller: &Caller) -> Result<Arc<Session>, SessionRefusal> {
        self.create_as(caller, None)
    }

    /// The caller's child for modern requests, initialized by the bridge (see
    /// [`super::modern`]): kept as a session of theirs under a key no header can name, so
    /// it counts against the limits, idles out and stops at shutdown like one.
    pub(super) fn modern_anchor(&self, caller: &Caller) -> Result<Arc<Session>, SessionRefusal> {
        let key = modern_key(caller);
        match self.find(caller, &key) {
            Some(anchor) => Ok(anchor),
            None => self.create_as(caller, Some(key)),
        }
    }

    fn create_as(
        &self,
        caller: &Caller,
        modern: Option<String>,
    ) -> Result<Arc<Session>, SessionRefusal> {
        let mut map = self.sessions.lock().map_err(|_| SessionRefusal::Internal)?;
        // Two first modern requests at once: the second finds the first's child.
        if let Some(key) = &modern
            && let Some(anchor) = map.get(key).filter(|s| !s.is_closed())
        {
            return Ok(anchor.clone());
        }
        map.retain(|_, s| !s.is_closed());
        let limits = self.max_sessions;
        let mine = map
            .values()
            .filter(|s| s.owner() == caller.subject())
            .count();
        if mine >= limits.per_user {
            tracing::warn!(user = %caller.subject(), sessions = mine, "a user is at --max-sessions-per-user");
            return Err(SessionRefusal::UserFull { held: mine });
        }
        if map.len() >= limits.total {
            let mut by_user: HashMap<&str, usize> = HashMap::new();
            for s in map.values() {
                *by_user.entry(s.owner()).or_default() += 1;
            }
            let (top, held) = by_user
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .unwrap_or_default();
            tracing::warn!(
                top_user = top,
                top_sessions = held,
                total = map.len(),
                "--max-sessions reached"
            );
            return Err(SessionRefusal::ServerFull {
                total: map.len(),
                top: held,
            });
        }
        let shared_running = self.shared
            && self
                .spare
                .lock()
                .ok()
                .is_some_and(|c| c.as_ref().is_some_and(|c| !c.is_closed()));
        if !shared_running && let Some(wait) = self.crashes.retry_after() {
            return Err(SessionRefusal::BackingOff(wait));
        }
        let id = modern
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.session_prefix, tokens::generate_id()));
        let started = match (&modern, self.shared) {
            (Some(_), false) => self.start_child_as(&self.spec_for(caller), true),
            _ if self.identity_env.vars.is_empty() => self.child_for_new_session(),
            _ => self.start_child_with(&self.spec_for(caller)),
        };
        let child = started.map_err(|e| {
            tracing::error!(error = %e, program = %self.spec.program, "the MCP server could not be started");
            SessionRefusal::NotStarted
        })?;
        let no = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = caller.subject().to_string();
        let session = match modern {
            Some(_) => Session::attach_stateless(child, id.clone(), owner, no),
            None => Session::attach(child, id.clone(), owner, no),
        };
        tracing::debug!(child = %session.child().tag, "a new MCP session");
        map.insert(id, session.clone());
        drop(map);
        if modern.is_none() {
            self.refill_spare();
        }
        Ok(session)
    }

    /// Per-session mode: the warm spare or a new child. Shared mode: the shared child,
    /// started if it is not running.
    pub(super) fn child_for_new_session(&self) -> std::io::Result<Arc<Child>> {
        let mut spare = self
            .spare
            .lock()
            .map_err(|_| std::io::Error::other("lock poisoned"))?;
        let live = if self.shared {
            spare.clone()
        } else {
            spare.take()
        };
        if let Some(c) = live.filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let child = self.start_child()?;
        if self.shared {
            *spare = Some(child.clone());
        }
        Ok(child)
    }
}

/// The session key of a user's modern child: a line break, which no header value can carry,
/// so no client can name it as `Mcp-Session-Id`.
fn modern_key(caller: &Caller) -> String {
    modern_key_of(caller.subject())
}

/// The key of user `subject`'s child for modern requests.
pub(super) fn modern_key_of(subject: &str) -> String {
    // Joined, not formatted: `format!` cost a hundredth of a stateless call's instructions.
    ["modern\n", subject].concat()
}

/// A process's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
