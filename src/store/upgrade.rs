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

/// When this process's upgrade window last started: when it opened the store, then each
/// sweep that found records an older proxy wrote. Shared by the process's clones of `Repo`.
#[derive(Clone)]
pub(super) struct WindowStart(Arc<AtomicU64>);

impl WindowStart {
    pub(super) fn at(now: UnixTime) -> Self {
        Self(Arc::new(AtomicU64::new(now)))
    }
}

impl Repo {
    /// Whether this process is within an hour of opening a store other processes share, or
    /// of last finding what an older proxy wrote there: older proxies may still run.
    pub fn in_upgrade_window(&self) -> bool {
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
