//! A budget of events per key and in all over a sliding window: what a stranger may make the
//! proxy keep or do (pending sign-ins per client, document fetches per host). Each key and the
//! total keep the times of their events within the window, so memory is bounded by the total.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use crate::clock::UnixTime;

/// Why an event was refused, and in how many seconds the budget has room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This key has used its share.
    ThisKey(u64),
    /// Everyone together has used the total.
    Everyone(u64),
}

/// At most `per_key` events per key and `total` in all within `window` seconds.
pub struct Budget<K> {
    window: u64,
    per_key: usize,
    total: usize,
    state: Mutex<State<K>>,
}

struct State<K> {
    by_key: HashMap<K, VecDeque<UnixTime>>,
    all: VecDeque<UnixTime>,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    pub fn new(window: u64, per_key: usize, total: usize) -> Self {
        Self {
            window,
            per_key,
            total,
            state: Mutex::new(State {
                by_key: HashMap::new(),
                all: VecDeque::new(),
            }),
        }
    }

    /// Counts an event of `key` at `now`, unless the key or everyone is over budget.
    pub fn admit(&self, key: &K, now: UnixTime) -> Result<(), Refused> {
        let Ok(mut s) = self.state.lock() else {
            return Err(Refused::Everyone(self.window));
        };
        let window = self.window;
        let forget_old = |q: &mut VecDeque<UnixTime>| {
            while q.front().is_some_and(|t| t + window <= now) {
                q.pop_front();
            }
        };
        let wait = |first: UnixTime| (first + window).saturating_sub(now);
        forget_old(&mut s.all);
        let mine = s.by_key.entry(key.clone()).or_default();
        forget_old(mine);
        if let Some(first) = mine.front().copied().filter(|_| mine.len() >= self.per_key) {
            return Err(Refused::ThisKey(wait(first)));
        }
        if let Some(first) = s.all.front().copied().filter(|_| s.all.len() >= self.total) {
            if s.by_key.get(key).is_some_and(VecDeque::is_empty) {
                s.by_key.remove(key);
            }
            return Err(Refused::Everyone(wait(first)));
        }
        s.all.push_back(now);
        s.by_key.entry(key.clone()).or_default().push_back(now);
        if s.by_key.len() > self.total {
            // Keys whose events all left the window; at most `total` hold a recent one.
            s.by_key
                .retain(|_, q| q.back().is_some_and(|t| t + window > now));
        }
        Ok(())
    }
}
