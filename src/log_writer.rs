//! The log's way out: lines are appended to a shared buffer and one thread writes the buffer
//! to stderr in batches, so a request never waits for the terminal or the log collector and
//! a burst of lines costs one `write`, not one per line.
//!
//! Why not `tracing_appender::non_blocking`, which does the same job: it copies each line into
//! a new `Vec`, sends it over a channel, and its thread spins and yields (`sched_yield`) before
//! it sleeps and is woken again for the next line. On the stdio bridge's benchmark that came
//! to 0.42 `sched_yield` and 0.25 extra `write` per request (`strace -c -f`), and the request
//! log cost the proxy 11 µs of CPU per request (`bash bench/stdio-cpu.sh`, `RUST_LOG=info`
//! against `warn`). Here a line is one `memcpy` under an uncontended lock; the thread is woken
//! only when the buffer goes from empty to not empty while it sleeps, and then waits
//! [`GATHER`] before it writes, so the lines of a busy millisecond go out together.
//! CONTRIBUTING.md has the numbers of the change.
//!
//! Nothing is dropped: past [`LIMIT`] bytes waiting, a writer waits for room (backpressure,
//! as a full pipe would give). [`Guard`] writes what is left when it is dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the thread lets lines gather once woken (a line is out within about this long).
/// At 10 000 requests a second the thread then wakes at most 100 times a second, not 1 000
/// as with 1 ms: on the stdio bridge's benchmark its context switches went from 0.12 to
/// 0.02 per call and its syscalls from about 0.5 to 0.09 (CONTRIBUTING.md). A hundredth of
/// a second is still no delay anyone watching the log can see.
pub const GATHER: Duration = Duration::from_millis(10);

/// Bytes that may wait before a writer waits for the thread.
pub const LIMIT: usize = 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The thread sleeps on `wake` and must be woken for new bytes.
    thread_asleep: bool,
    /// Writers waiting on `room` (a wake-up is a syscall: only when someone waits).
    writers_waiting: usize,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// The thread waits here for bytes.
    wake: Condvar,
    /// Writers wait here for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A writer that panicked mid-append leaves at worst a torn line: keep logging.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`tracing_subscriber::fmt::MakeWriter`]: each event's line is appended to the batch.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writing thread when dropped, after it has written every line given so far.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the thread that writes to `out`; returns the writer to log through and the guard
/// that flushes at exit.
pub fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(BatchWriter, Guard)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new().name("mcp-log".into()).spawn({
        let shared = shared.clone();
        move || write_batches(&shared, out)
    })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The thread: sleep until there are bytes, let more gather, write them all, again.
fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && !pending.closed {
            pending.thread_asleep = true;
            pending = shared.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        pending.thread_asleep = false;
        let closing = pending.closed;
        if !closing {
            drop(pending);
            std::thread::sleep(GATHER);
            pending = shared.lock();
        }
        std::mem::swap(&mut batch, &mut pending.bytes);
        let writers_wait = pending.writers_waiting > 0;
        drop(pending);
        if writers_wait {
            shared.room.notify_all();
        }
        // A log that cannot be written (a closed pipe) is not the proxy's failure.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // Keep the buffer of an ordinary burst; give back one a flood grew.
        batch.shrink_to(LIMIT);
        if closing && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl std::io::Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= LIMIT && !pending.closed {
            pending.writers_waiting += 1;
            pending = self
                .shared
                .room
                .wait(pending)
                .unwrap_or_else(|p| p.into_inner());
            pending.writers_waiting -= 1;
        }
        let wake = pending.thread_asleep && pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `out` the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_and_in_each_threads_order() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        // Lines larger in all than LIMIT, so writers also wait for room.
                        let line = format!("{t} {i:05} {}\n", "x".repeat(100));
                        w.write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut parts = line.split(' ');
            let t: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(i, next[t], "thread {t}'s lines in order");
            assert_eq!(parts.next().unwrap().len(), 100, "a whole line");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line");
    }

    /// An `out` that takes nothing until it is opened (a log collector that stalls).
    #[derive(Clone, Default)]
    struct Stalled {
        open: Arc<(Mutex<bool>, Condvar)>,
        /// The writing thread is held in `write`.
        holding: Arc<std::sync::atomic::AtomicBool>,
        sink: Sink,
    }

    impl Stalled {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                self.holding
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                is_open = opened.wait(is_open).unwrap();
            }
            self.sink.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_log_holds_writers_at_the_limit_and_loses_nothing() {
        let out = Stalled::default();
        let (writer, guard) = spawn(out.clone()).unwrap();
        let line = format!("{}\n", "y".repeat(1023));
        let lines = 3 * LIMIT / line.len();
        let logging = std::thread::spawn({
            let mut w = writer.clone();
            let line = line.clone();
            move || {
                for _ in 0..lines {
                    w.write_all(line.as_bytes()).unwrap();
                }
            }
        });
        // Once the thread is held in the stalled `write` it cannot take the buffer, so a
        // writer waiting for room then sees a buffer that no longer changes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let held = loop {
            let pending = writer.shared.lock();
            // (A writer woken by the batch before may not have counted itself out yet: the
            // buffer at the limit shows it has filled it and waits again.)
            if out.holding.load(std::sync::atomic::Ordering::SeqCst)
                && pending.writers_waiting > 0
                && pending.bytes.len() >= LIMIT
            {
                break Some(pending.bytes.len());
            }
            drop(pending);
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // Opened before anything is asserted: a failed assertion must not leave the guard's
        // drop waiting on a log that never takes its lines.
        out.open();
        logging.join().unwrap();
        drop(guard);
        let held = held.expect("no writer waited for room while the log was stalled");
        assert!(held >= LIMIT && held < LIMIT + line.len(), "held {held}");
        assert_eq!(out.sink.0.lock().unwrap().len(), lines * line.len());
    }

    #[test]
    fn a_line_is_out_while_the_process_runs() {
        let sink = Sink::default();
        let (mut writer, _guard) = spawn(sink.clone()).unwrap();
        writer.write_all(b"one\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().as_slice() != b"one\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never came out"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
