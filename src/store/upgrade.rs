//! What a proxy does for older proxies sharing its store while a rolling upgrade replaces
//! them: for [`UPGRADE_WINDOW`] after it opens a shared store, it indexes by person what they
//! write (`by_person`), and it writes a rotated refresh token's answer where they look for
//! it too. A sweep that finds records an older proxy wrote starts the window again, so an
//! upgrade that keeps older proxies running for longer (a canary beside them for a day) is
//! covered for as long as they write, and an hour after.
//!
//! A rotated refresh token answers a retry within the grace period with the pair it was
//! rotated into. Older releases kept that answer inside the rotated token's record, for as
//! long as the record (weeks); this one keeps it apart, for the grace period only
//! ([`super::RotationAnswer`]). An older process reading a token this one rotated would find
//! no answer inside and fail the client's retry. So in the window the answer is written in
//! both places, and the copy inside is taken out again by the first sweep after the grace
//! period, from a list this process keeps (at most [`MAX_INLINE_ANSWERS`]; past that, only
//! the new place is written). A copy whose process stopped before that sweep stays, sealed
//! with the store key, as every answer of an older release does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Repo, StoreError, TokenRecord};
use crate::clock::UnixTime;

/// How long after a proxy opens a shared store, or last finds what an older proxy wrote,
/// it works for older proxies on it. Each new process's window starts when it does, so the
/// last one started covers the old ones until they stop (an ordinary rolling upgrade
/// replaces every process in minutes); older proxies that go on writing keep it open.
pub(super) const UPGRADE_WINDOW: UnixTime = 3600;

/// When this process's upgrade window last started: when it opened the store, then each
/// sweep that found records an older proxy wrote. Shared by the process's clones of `Repo`.
#[derive(Clone)]
pub(super) struct WindowStart(Arc<AtomicU64>);

impl WindowStart {
    pub(super) fn at(now: UnixTime) -> Self {
        Self(Arc::new(AtomicU64::new(now)))
    }
}

/// The most rotated tokens whose inline answer one process remembers to take out: 40 bytes
/// each, 4 MB in all, some 28 refreshes a second over the hour (checked before a rotation is
/// written, so refreshes racing at the cap may pass it by a few).
pub(super) const MAX_INLINE_ANSWERS: usize = 100_000;

/// A rotated token (by hash) carrying its answer inline, and when to take it out.
struct Due {
    at: UnixTime,
    hash: [u8; 32],
}

/// The rotated tokens this process wrote an inline answer into, in order of when it is due.
#[derive(Clone, Default)]
pub(super) struct InlineAnswers(Arc<Mutex<VecDeque<Due>>>);

impl Repo {
    /// Whether this process is within an hour of opening a store other processes share, or
    /// of last finding what an older proxy wrote there: older proxies may still run.
    pub(super) fn in_upgrade_window(&self) -> bool {
        let start = self.window_start.0.load(Ordering::Relaxed);
        self.is_shared() && self.clock().now().saturating_sub(start) < UPGRADE_WINDOW
    }

    /// In the upgrade window, indexes by person what older proxies wrote; finding any starts
    /// the window again (they are still running).
    pub(super) async fn index_for_older_proxies(&self) -> Result<(), StoreError> {
        if self.in_upgrade_window() && self.index_what_older_proxies_wrote().await? > 0 {
            let now = self.clock().now();
            self.window_start.0.fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether a rotated token written now should carry its answer inline as well, for older
    /// proxies: in the upgrade window, while the list of those to take out has room.
    pub fn answers_inline(&self) -> bool {
        self.in_upgrade_window()
            && self
                .inline_answers
                .0
                .lock()
                .is_ok_and(|due| due.len() < MAX_INLINE_ANSWERS)
    }

    /// Remembers that the rotated token under `hash`, just written with its answer inline,
    /// has it taken out by the first sweep from `at` on. Only what was written is remembered:
    /// a rotation that lost a race to another process's leaves that one's record alone.
    pub fn take_out_inline_answer_at(&self, hash: [u8; 32], at: UnixTime) {
        if let Ok(mut due) = self.inline_answers.0.lock() {
            due.push_back(Due { at, hash });
        }
    }

    /// Takes the answer out of the rotated tokens whose grace period has ended. Those the store
    /// failed on wait for the next sweep.
    pub(super) async fn take_out_inline_answers(&self) -> Result<(), StoreError> {
        let now = self.clock().now();
        let mut due: VecDeque<Due> = match self.inline_answers.0.lock() {
            Ok(mut list) => {
                // Pushed in order of `at` (the grace period is the same for all).
                let ready = list.iter().take_while(|due| due.at <= now).count();
                list.drain(..ready).collect()
            }
            Err(_) => VecDeque::new(),
        };
        while let Some(next) = due.front() {
            if let Err(e) = self.take_out(&next.hash).await {
                if let Ok(mut list) = self.inline_answers.0.lock() {
                    while let Some(back) = due.pop_back() {
                        list.push_front(back);
                    }
                }
                return Err(e);
            }
            due.pop_front();
        }
        Ok(())
    }

    /// Takes the answer out of the rotated token under `hash`. A token changed meanwhile
    /// (rotated again by an older proxy, revoked, gone) is left as it is.
    async fn take_out(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        let Some(mut found) = self.get_versioned::<TokenRecord>(hash).await? else {
            return Ok(());
        };
        let Some(rotation) = found.record.rotation.as_mut() else {
            return Ok(());
        };
        if rotation.sealed_response.is_empty() {
            return Ok(());
        }
        rotation.sealed_response = Vec::new();
        let expires_at = found.entry.expires_at;
        self.replace(hash, &found.entry, &found.record, expires_at)
            .await?;
        Ok(())
    }
}
