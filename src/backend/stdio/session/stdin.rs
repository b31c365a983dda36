//! The way into a child's stdin: a queue that one writer task drains, and a shortcut past it.
//!
//! Why the shortcut: a queued message waits until the runtime gets round to the writer
//! task, behind every task woken before it. On a worker under load those are mostly the
//! connections whose answers just came back, each writing its answer to its client, and
//! meanwhile the child has nothing to do. So when nothing is queued and the writer is not
//! in the middle of a write, the sending task writes the message to the pipe itself if the
//! pipe takes it at once; otherwise it is queued as before. The proxy then makes one pipe
//! write per call instead of gathering about four into one; throughput moved within this
//! machine's noise (median +1.6% over 5 interleaved pairs of `bash bench/stdio-cpu.sh 1 8`;
//! CONTRIBUTING.md has the numbers).
//!
//! Order is kept. The shortcut is taken only on the worker whose single-threaded runtime
//! runs the writer (the child's worker, [`crate::worker::serving`]), where the writer is
//! either waiting for messages (nothing queued, the pipe unlocked) or holds the pipe's lock
//! from the moment it takes messages off the queue until they are written; and only when
//! the queue is empty.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Messages the writer may hold before a sender waits (backpressure on a slow child).
const QUEUE: usize = 64;

/// The most bytes the writer gathers into one write.
const BURST: usize = 64 * 1024;

/// An unbuffered pipe (a child's stdin): what `poll_write` takes has been written.
type Pipe = Box<dyn AsyncWrite + Send + Unpin>;

/// The child does not read its stdin any more (it exited or is being stopped).
#[derive(Debug)]
pub struct Closed;

pub struct Stdin {
    queue: mpsc::Sender<Bytes>,
    /// The pipe, shared with the writer task.
    pipe: Option<Arc<tokio::sync::Mutex<Pipe>>>,
    /// The worker whose runtime runs the writer (`None` outside the workers: no shortcut).
    home: Option<usize>,
}

impl Stdin {
    /// Starts the writer of `pipe` on the current runtime. The shortcut is on when that
    /// runtime is a worker's.
    pub fn spawn(pipe: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        let (queue, mut queued_rx) = mpsc::channel::<Bytes>(QUEUE);
        let pipe = Arc::new(tokio::sync::Mutex::new(Box::new(pipe) as Pipe));
        let writer = pipe.clone();
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(16);
            while queued_rx.recv_many(&mut queued, QUEUE).await > 0 {
                // Locked in the same poll as the messages were taken (it is free unless a
                // sender is finishing a long message, which then goes first, as it came).
                let mut pipe = writer.lock().await;
                if write_burst(&mut *pipe, &queued, BURST).await.is_err() {
                    break;
                }
                queued.clear();
            }
        });
        Self {
            queue,
            pipe: Some(pipe),
            home: crate::worker::serving(),
        }
    }

    /// Queue only: whatever is sent arrives on the queue's receiver.
    #[cfg(test)]
    pub fn queued(queue: mpsc::Sender<Bytes>) -> Self {
        Self {
            queue,
            pipe: None,
            home: None,
        }
    }

    /// The worker whose runtime runs the writer (and so reads and writes the child), `None`
    /// outside the workers.
    pub fn home(&self) -> Option<usize> {
        self.home
    }

    /// Sends one framed message, waiting while the queue is full.
    pub async fn send(&self, framed: Bytes) -> Result<(), Closed> {
        if let Some(mut pipe) = self.idle_pipe() {
            let polled = {
                let mut cx = Context::from_waker(Waker::noop());
                std::pin::Pin::new(&mut *pipe).poll_write(&mut cx, &framed)
            };
            match polled {
                Poll::Ready(Ok(n)) if n == framed.len() => return Ok(()),
                // A message longer than the pipe takes at once: the rest follows, the lock
                // held, so nothing gets between its parts.
                Poll::Ready(Ok(n)) if n > 0 => {
                    return pipe.write_all(&framed[n..]).await.map_err(|_| Closed);
                }
                Poll::Ready(_) => return Err(Closed),
                Poll::Pending => {}
            }
        }
        self.queue.send(framed).await.map_err(|_| Closed)
    }

    /// Queues one framed message unless the queue is full (a cancellation the child may
    /// miss).
    pub fn try_send(&self, framed: Bytes) {
        let _ = self.queue.try_send(framed);
    }

    /// The pipe, when a message may be written to it now without passing one sent before.
    fn idle_pipe(&self) -> Option<tokio::sync::MutexGuard<'_, Pipe>> {
        let pipe = self.pipe.as_ref()?;
        if self.home.is_none()
            || crate::worker::serving() != self.home
            || self.queue.capacity() != self.queue.max_capacity()
        {
            return None;
        }
        pipe.try_lock().ok()
    }
}

/// Writes `messages` in order, as few writes as `limit` allows: small ones are gathered into
/// one buffer, one over the limit is written on its own.
async fn write_burst(
    out: &mut (impl AsyncWrite + Unpin + ?Sized),
    messages: &[Bytes],
    limit: usize,
) -> std::io::Result<()> {
    if let [one] = messages {
        out.write_all(one).await?;
        return out.flush().await;
    }
    let mut burst = Vec::new();
    for msg in messages {
        if !burst.is_empty() && burst.len() + msg.len() > limit {
            out.write_all(&burst).await?;
            burst.clear();
        }
        if msg.len() > limit {
            out.write_all(msg).await?;
        } else {
            burst.extend_from_slice(msg);
        }
    }
    if !burst.is_empty() {
        out.write_all(&burst).await?;
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;

    use super::*;

    /// Records every write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl tokio::io::AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs `test` on a thread that counts as worker 0, in a single-threaded runtime, as a
    /// child's pumps run (the shortcut is taken only there).
    fn on_a_worker(test: impl std::future::Future<Output = ()> + Send + 'static) {
        std::thread::spawn(|| {
            crate::worker::set_current(0);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(test);
        })
        .join()
        .expect("the test passes");
    }

    /// Outside the workers (the main runtime) every message is queued: the writer may run
    /// on another thread of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_the_workers_a_message_is_queued() {
        let (pipe, _child) = tokio::io::duplex(1024);
        let stdin = Stdin::spawn(pipe);
        assert_eq!(stdin.home(), None);
        assert!(stdin.idle_pipe().is_none());
    }

    #[tokio::test]
    async fn a_burst_is_written_in_order_in_as_few_writes_as_the_limit_allows() {
        let msg = |c: u8, n: usize| Bytes::from(vec![c; n]);
        let cases: [(Vec<Bytes>, usize); 4] = [
            (vec![msg(b'a', 3)], 1),
            (vec![msg(b'a', 3), msg(b'b', 4), msg(b'c', 2)], 1),
            // 4 + 4 fit the limit of 10, the third would not: two writes.
            (vec![msg(b'a', 4), msg(b'b', 4), msg(b'c', 4)], 2),
            // One over the limit goes on its own, between the others.
            (vec![msg(b'a', 2), msg(b'b', 30), msg(b'c', 2)], 3),
        ];
        for (messages, writes) in cases {
            let mut out = Writes::default();
            write_burst(&mut out, &messages, 10).await.unwrap();
            assert_eq!(out.0.len(), writes, "{messages:?}");
            assert_eq!(out.0.concat(), messages.concat(), "order kept");
        }
    }

    #[test]
    fn a_message_goes_straight_into_an_idle_pipe() {
        on_a_worker(async {
            let (pipe, mut child) = tokio::io::duplex(1024);
            let stdin = Stdin::spawn(pipe);
            stdin.send(Bytes::from_static(b"one\n")).await.unwrap();
            // The writer task has not run (nothing here yielded to it): the bytes are already
            // in the pipe.
            let mut buf = [0u8; 16];
            let read = tokio::io::AsyncReadExt::read(&mut child, &mut buf);
            tokio::pin!(read);
            let read = futures_util::poll!(read);
            assert!(
                matches!(read, Poll::Ready(Ok(4))),
                "not written at once: {read:?}"
            );
            assert_eq!(&buf[..4], b"one\n");
        });
    }

    /// Three tasks send 60 messages each into a pipe too small for one of the larger ones,
    /// so the shortcut, partial writes and the queue all take turns: each message arrives
    /// whole, and each task's in the order it sent them.
    #[test]
    fn messages_arrive_whole_and_in_order_through_a_full_pipe() {
        on_a_worker(async {
            let (pipe, mut child) = tokio::io::duplex(48);
            let stdin = Arc::new(Stdin::spawn(pipe));
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                let mut buf = [0u8; 7];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut child, &mut buf).await {
                        Ok(0) | Err(_) => return all,
                        Ok(n) => all.extend_from_slice(&buf[..n]),
                    }
                    tokio::task::yield_now().await;
                }
            });
            let senders: Vec<_> = (0..3)
                .map(|task| {
                    let stdin = stdin.clone();
                    tokio::spawn(async move {
                        for i in 0..60 {
                            let pad = "x".repeat((i * 7 + task * 13) % 90);
                            let msg = format!("{task} {i} {pad}\n");
                            stdin.send(Bytes::from(msg)).await.unwrap();
                        }
                    })
                })
                .collect();
            for s in senders {
                s.await.unwrap();
            }
            drop(stdin); // the writer ends, the pipe closes, the reader returns
            let all = String::from_utf8(reader.await.unwrap()).unwrap();
            let mut next = [0usize; 3];
            for line in all.lines() {
                let mut fields = line.split(' ');
                let task: usize = fields.next().unwrap().parse().unwrap();
                let i: usize = fields.next().unwrap().parse().unwrap();
                let pad = fields.next().unwrap();
                assert_eq!(i, next[task], "task {task}'s messages out of order");
                assert_eq!(pad, "x".repeat((i * 7 + task * 13) % 90), "a torn message");
                assert!(fields.next().is_none());
                next[task] += 1;
            }
            assert_eq!(next, [60, 60, 60]);
        });
    }

    /// A message waits in the queue (the pipe was full) and the pipe then empties before the
    /// writer runs: the next message must not take the shortcut past it.
    #[test]
    fn a_message_does_not_pass_one_already_queued() {
        on_a_worker(async {
            let (pipe, mut child) = tokio::io::duplex(8);
            let stdin = Stdin::spawn(pipe);
            stdin.send(Bytes::from_static(b"filling\n")).await.unwrap(); // the pipe is full
            stdin.send(Bytes::from_static(b"m1\n")).await.unwrap(); // queued
            let mut got = vec![0u8; 8];
            tokio::io::AsyncReadExt::read_exact(&mut child, &mut got)
                .await
                .unwrap();
            stdin.send(Bytes::from_static(b"m2\n")).await.unwrap();
            let mut rest = vec![0u8; 6];
            tokio::io::AsyncReadExt::read_exact(&mut child, &mut rest)
                .await
                .unwrap();
            assert_eq!(rest, b"m1\nm2\n");
        });
    }
}
