//! A timer held on each worker runtime so that arming another timer costs no system call.
//!
//! Why: when tokio's time driver parks, it records the deadline of its earliest timer.
//! Arming a timer that expires before that deadline (or any timer when none was armed)
//! wakes the driver, and on a runtime with I/O a wake is a `write` to an eventfd, even on a
//! current-thread runtime busy running the very task that arms it (tokio 1.54, reported as
//! tokio-rs/tokio#5207). hyper arms a timer each time it waits for a request head
//! (`--header-read-timeout`), and under load a worker's connections are mostly all waiting on
//! their upstream, so the driver often parks with no timer armed. On the stdio bridge's
//! benchmark that came to 0.4 eventfd writes per request (`perf record -e
//! syscalls:sys_enter_write` on the proxy; CONTRIBUTING.md has the numbers of the change).
//!
//! With an anchor that expires every [`PERIOD`], the recorded deadline is never more than a
//! period away, so a timer armed for longer (a head's timeout, a call's deadline) no longer
//! wakes the driver; the anchor itself costs one wake-up a period.

use std::time::Duration;

/// How far ahead the anchor keeps the driver's next deadline. Timers armed for less than
/// this may still wake the driver; every timeout the proxy arms per request is longer.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Keeps a timer armed on the current runtime until the runtime is dropped.
pub async fn hold() {
    loop {
        tokio::time::sleep(PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Write system calls made by the calling thread so far (Linux's per-thread counters).
    fn writes_of_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("syscw in /proc/thread-self/io")
    }

    /// Arms and drops `n` timers of 30 s, letting the driver park (without blocking) with
    /// none of them armed, as a worker's driver parks while its connections wait on their
    /// upstream; returns the write calls this cost.
    async fn writes_to_arm_timers(n: u64) -> u64 {
        let before = writes_of_this_thread();
        for _ in 0..n {
            {
                let sleep = tokio::time::sleep(Duration::from_secs(30));
                tokio::pin!(sleep);
                assert!(futures_util::poll!(sleep.as_mut()).is_pending());
            }
            tokio::task::yield_now().await;
        }
        writes_of_this_thread() - before
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn with_the_anchor_arming_a_timer_makes_no_write() {
        let rt = runtime();
        rt.spawn(super::hold());
        let writes = rt.block_on(async {
            tokio::task::yield_now().await; // the anchor is armed
            writes_to_arm_timers(200).await
        });
        assert!(writes < 10, "{writes} writes to arm 200 timers");
    }

    /// The cost the anchor removes, still there in the tokio this builds with: if this fails,
    /// tokio no longer wakes a busy driver and the anchor can go.
    #[test]
    fn without_it_arming_a_timer_wakes_the_driver() {
        let writes = runtime().block_on(writes_to_arm_timers(200));
        assert!(writes >= 150, "{writes} writes to arm 200 timers");
    }
}
