//! What a proxy does for older proxies sharing its store while a rolling upgrade replaces
//! them: for [`UPGRADE_WINDOW`] after it opens a shared store, it indexes by person what they
//! write (`by_person`), and it writes a rotated refresh token's answer where they look for
//! it too. A sweep that finds records an older proxy wrote starts the window again, so an
//! upgrade that keeps older proxies running for longer (a canary beside them for a day) is
//! covered for as long as they write, and an hour after. Once the window has closed, one
//! sweep an hour still looks: an older proxy that was silent for longer and writes again
//! is found within the hour, and opens the window again.
//!
//! A rotated refresh token answers a retry within the grace period with the pair it was
//! rotated into. Older releases kept that answer inside the rotated token's record, for as
//! long as the record (weeks); this one keeps it apart, for the grace period only
//! ([`super::RotationAnswer`]). An older process reading a token this one rotated would find
//! no answer inside and fail the client's retry. So in the window the answer is written in
//! both places, and the copy inside is taken out again by the first sweep after the grace
//! period. What to take out is a store record ([`InlineAnswerDue`]), written before the
//! token: the sweep of any newer process on the store takes it out, also when the process
//! that wrote it has stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{InlineAnswerDue, Repo, StoreError, TokenRecord};
use crate::clock::UnixTime;

/// How long after a proxy opens a shared store, or last finds what an older proxy wrote,
/// it works for older proxies on it. Each new process's window starts when it does, so the
/// last one started covers the old ones until they stop (an ordinary rolling upgrade
/// replaces every process in minutes); older proxies that go on writing keep it open.
pub(super) const UPGRADE_WINDOW: UnixTime = 3600;

/// This process's upgrade window, shared by its clones of `Repo`.
#[derive(Clone)]
pub(super) struct Window(Arc<WindowTimes>);

struct WindowTimes {
    /// When the window last started: when the process opened the store, then each sweep
    /// that found records an older proxy wrote.
    started: AtomicU64,
    /// When a sweep last looked for such records.
    looked: AtomicU64,
}

impl Window {
    pub(super) fn opened_at(now: UnixTime) -> Self {
        Self(Arc::new(WindowTimes {
            started: AtomicU64::new(now),
            looked: AtomicU64::new(now),
        }))
    }

    fn is_open(&self, now: UnixTime) -> bool {
        now.saturating_sub(self.0.started.load(Ordering::Relaxed)) < UPGRADE_WINDOW
    }

    /// Whether a sweep at `now` looks for what older proxies wrote: every sweep in the
    /// window, one an hour after it.
    fn is_time_to_look(&self, now: UnixTime) -> bool {
        self.is_open(now)
            || now.saturating_sub(self.0.looked.load(Ordering::Relaxed)) >= UPGRADE_WINDOW
    }
}

impl Repo {
    /// Whether this process is within an hour of opening a store other processes share, or
    /// of last finding what an older proxy wrote there: older proxies may still run.
    pub fn in_upgrade_window(&self) -> bool {
        self.is_shared() && self.window.is_open(self.clock().now())
    }

    /// In the upgrade window, and once an hour after it, indexes by person what older
    /// proxies wrote; finding any starts the window again (they are still running).
    pub(super) async fn index_for_older_proxies(&self) -> Result<(), StoreError> {
        let now = self.clock().now();
        if !self.is_shared() || !self.window.is_time_to_look(now) {
            return Ok(());
        }
        self.window.0.looked.fetch_max(now, Ordering::Relaxed);
        if self.index_what_older_proxies_wrote().await? > 0 {
            self.window.0.started.fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// What the rotated token under `hash` carries inside for older proxies: in the upgrade
    /// window, `sealed` (the answer kept apart too), with the first sweep from `at` on set to
    /// take it out again; else nothing. The take-out is stored before the token is written:
    /// a rotation that then loses a race to another process's leaves that one's answer
    /// alone, as its successor differs.
    pub async fn inline_answer(
        &self,
        hash: &[u8; 32],
        successor: &[u8; 32],
        at: UnixTime,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        if !self.in_upgrade_window() {
            return Ok(Vec::new());
        }
        let key = [hash.as_slice(), successor].concat();
        self.put(&key, &InlineAnswerDue { due: at }, None).await?;
        Ok(sealed)
    }

    /// Takes the answer out of the rotated tokens whose grace period has ended, whichever
    /// process wrote them. One the store fails on stays for the next sweep.
    pub(super) async fn take_out_inline_answers(&self) -> Result<(), StoreError> {
        if !self.is_shared() {
            return Ok(());
        }
        let now = self.clock().now();
        for (key, due) in self.scan::<InlineAnswerDue>(b"").await? {
            if due.due > now {
                continue;
            }
            let done = match (key.get(..32), key.get(32..)) {
                (Some(hash), Some(successor)) => self.take_out(hash, successor).await?,
                _ => true,
            };
            if done {
                self.remove::<InlineAnswerDue>(&key).await?;
            }
        }
        Ok(())
    }

    /// Takes the answer out of the rotated token under `hash`, if it is the rotation into
    /// `successor`; a token that is not (gone, or another process's rotation) is left as it
    /// is. Whether that is done: not when the record changed between its read and its write,
    /// which the next sweep tries again.
    async fn take_out(&self, hash: &[u8], successor: &[u8]) -> Result<bool, StoreError> {
        let Some(mut found) = self.get_versioned::<TokenRecord>(hash).await? else {
            return Ok(true);
        };
        let Some(rotation) = found.record.rotation.as_mut() else {
            return Ok(true);
        };
        if rotation.successor_hash != successor || rotation.sealed_response.is_empty() {
            return Ok(true);
        }
        rotation.sealed_response = Vec::new();
        let expires_at = found.entry.expires_at;
        self.replace(hash, &found.entry, &found.record, expires_at)
            .await
    }
}
