//! Time as a parameter.
//!
//! Everything that compares against "now" (token expiry, code lifetimes, the store sweeper)
//! asks a [`Clock`] instead of the system, so tests move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch: the unit every stored timestamp uses.
pub type UnixTime = u64;

/// The source of "now" for the whole process.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The real wall clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still at `start` until [`Clock::advance`] moves it (tests).
    pub fn manual(start: UnixTime) -> Self {
        Self {
            manual: Some(Arc::new(AtomicU64::new(start))),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> UnixTime {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            // The one place that reads the wall clock (but for the log's own time stamps,
            // src/log_line.rs).
            #[allow(clippy::disallowed_methods)]
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, secs: u64) {
        if let Some(t) = &self.manual {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }
}
