//! One HTTP response stream of a session (a POST's SSE answer or the GET stream), with the
//! last events kept so a client that lost the connection can resume with `Last-Event-ID`
//! (MCP transports, "Resumability and Redelivery").
//!
//! Event ids are `<stream>-<seq>`: unique within the session, and they name the stream to
//! resume. A stream outlives its HTTP connection: messages for it keep being logged (the
//! last [`REPLAY`]) until it is finished (its request answered, or the session ended).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Events kept per stream for replay.
pub const REPLAY: usize = 64;

#[derive(Default)]
struct Inner {
    events: VecDeque<(u64, Bytes)>,
    next_seq: u64,
    live: Option<mpsc::Sender<Bytes>>,
    finished: bool,
}

/// A stream's log and its current connection.
pub struct StreamLog {
    pub no: u64,
    /// SSE framing (with ids) or raw messages (a JSON answer, not resumable).
    sse: bool,
    inner: Mutex<Inner>,
}

impl StreamLog {
    pub fn new(no: u64, sse: bool, live: mpsc::Sender<Bytes>) -> Arc<Self> {
        Arc::new(Self {
            no,
            sse,
            inner: Mutex::new(Inner {
                live: Some(live),
                ..Inner::default()
            }),
        })
    }

    fn record(&self, raw: Bytes) -> (Bytes, Option<mpsc::Sender<Bytes>>) {
        let Ok(mut i) = self.inner.lock() else {
            return (raw, None);
        };
        if !self.sse {
            return (raw, i.live.clone());
        }
        let seq = i.next_seq;
        i.next_seq += 1;
        let mut ev = Vec::with_capacity(raw.len() + 64);
        ev.extend_from_slice(b"id: ");
        ev.extend_from_slice(itoa::Buffer::new().format(self.no).as_bytes());
        ev.push(b'-');
        ev.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        ev.extend_from_slice(b"\nevent: message\ndata: ");
        ev.extend_from_slice(&raw);
        ev.extend_from_slice(b"\n\n");
        let ev = Bytes::from(ev);
        if i.events.len() == REPLAY {
            i.events.pop_front();
        }
        i.events.push_back((seq, ev.clone()));
        (ev, i.live.clone())
    }

    fn lost(&self, tx: &mpsc::Sender<Bytes>) {
        if let Ok(mut i) = self.inner.lock()
            && i.live.as_ref().is_some_and(|l| l.same_channel(tx))
        {
            i.live = None;
        }
    }

    /// Logs a message and sends it on the live connection, waiting if it is slow
    /// (backpressure reaches the child instead of memory).
    pub async fn deliver(&self, raw: Bytes) {
        let (ev, live) = self.record(raw);
        if let Some(tx) = live
            && tx.send(ev).await.is_err()
        {
            self.lost(&tx);
        }
    }

    /// Like [`StreamLog::deliver`] without waiting: a full connection loses the message
    /// (it stays in the log).
    pub fn try_deliver(&self, raw: Bytes) {
        let (ev, live) = self.record(raw);
        if let Some(tx) = live
            && tx.try_send(ev).is_err()
            && tx.is_closed()
        {
            self.lost(&tx);
        }
    }

    /// No more messages will come: the connection ends after what was sent.
    pub fn finish(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.finished = true;
            i.live = None;
        }
    }

    pub fn is_finished(&self) -> bool {
        self.inner.lock().map(|i| i.finished).unwrap_or(true)
    }

    /// Whether a client is connected to this stream.
    pub fn has_live(&self) -> bool {
        self.inner
            .lock()
            .map(|i| i.live.as_ref().is_some_and(|l| !l.is_closed()))
            .unwrap_or(false)
    }

    /// Reconnects a client: replays the events after `after`, then goes on live unless the
    /// stream is finished (then the connection ends after the replay).
    pub fn attach(&self, tx: mpsc::Sender<Bytes>, after: Option<u64>) {
        let Ok(mut i) = self.inner.lock() else { return };
        for (seq, ev) in &i.events {
            if after.is_none_or(|a| *seq > a) && tx.try_send(ev.clone()).is_err() {
                break;
            }
        }
        if !i.finished {
            i.live = Some(tx);
        }
    }
}

/// Parses a `Last-Event-ID` of ours: `(stream, seq)`.
pub fn parse_event_id(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        out
    }

    #[tokio::test]
    async fn a_lost_connection_resumes_after_its_last_event() {
        let (tx, mut rx) = mpsc::channel(8);
        let log = StreamLog::new(3, true, tx);
        log.deliver(Bytes::from_static(b"{\"a\":1}")).await;
        assert_eq!(
            drain(&mut rx),
            vec!["id: 3-0\nevent: message\ndata: {\"a\":1}\n\n"]
        );
        drop(rx);
        log.deliver(Bytes::from_static(b"{\"a\":2}")).await;
        log.deliver(Bytes::from_static(b"{\"a\":3}")).await;
        assert!(!log.has_live());
        let (tx2, mut rx2) = mpsc::channel(8);
        log.attach(tx2, parse_event_id("3-0").map(|(_, s)| s));
        let replayed = drain(&mut rx2);
        assert_eq!(replayed.len(), 2);
        assert!(replayed[0].starts_with("id: 3-1") && replayed[1].starts_with("id: 3-2"));
        log.deliver(Bytes::from_static(b"{\"a\":4}")).await;
        assert!(drain(&mut rx2)[0].starts_with("id: 3-3"), "live again");
        log.finish();
        assert!(rx2.recv().await.is_none(), "finished: the connection ends");
    }

    #[test]
    fn event_ids() {
        assert_eq!(parse_event_id("12-7"), Some((12, 7)));
        assert_eq!(parse_event_id(" 1-0 "), Some((1, 0)));
        assert_eq!(parse_event_id("x-1"), None);
        assert_eq!(parse_event_id("17"), None);
    }
}
