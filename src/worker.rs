//! Which worker thread runs the caller (the server's thread-per-core workers, see
//! `server::workers`): per-worker pools of upstream connections index by it. A leaf, so the
//! backends below the server can ask without importing it.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker thread running the caller (0 outside the workers).
pub fn current() -> usize {
    WORKER.with(Cell::get).unwrap_or(0)
}

/// The index of the worker thread running the caller; `None` outside the workers (the
/// main runtime, tests).
pub fn serving() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Called once by each worker thread as it starts.
pub fn set_current(index: usize) {
    WORKER.set(Some(index));
}

/// How many workers to run when the operator did not say: one per core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
