//! The audit log (`--audit-log`): one JSON line per `tools/call`, `resources/read`,
//! `prompts/get` and refused attempt, written by a thread of its own so a call never waits
//! on the disk.
//!
//! Nothing is lost silently: a record that finds the queue full is counted (`dropped`), one
//! the file refuses is counted (`failed`), and both are said in the main log. With
//! `--audit-fail-closed` a call is refused while the log cannot take its record. The file is
//! rotated by size (`<file>.1` is the newest old one). A record holds the user, the client
//! and what was called; never a token, a password or a cookie, and the arguments only as
//! `--audit-arguments` (or the policy file) says.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::AuditArguments as Arguments;
use crate::metrics::{EventLabels, count};

/// Records waiting for the writer thread.
const QUEUE: usize = 16 * 1024;

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub user: &'a str,
    pub client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    /// `2025` (a session's protocol) or `2026-07-28` (stateless).
    pub era: &'a str,
    /// The server of `--config` the call went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<&'a str>,
    pub method: &'a str,
    /// The tool or prompt name, or the resource URI.
    pub name: &'a str,
    pub duration_ms: u64,
    /// `ok`, `error <code>`, `denied`, `step_up`, `no_answer` (the exchange ended without one).
    pub outcome: &'a str,
    /// The rule that refused (denied and step-up records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub arguments: serde_json::Value,
}

/// The arguments as `mode` records them.
pub fn arguments(args: Option<&serde_json::Value>, mode: Arguments) -> serde_json::Value {
    let Some(args) = args else {
        return serde_json::Value::Null;
    };
    match mode {
        Arguments::Full => args.clone(),
        Arguments::Redact => match args.as_object() {
            Some(map) => serde_json::Value::from(map.keys().cloned().collect::<Vec<_>>()),
            None => serde_json::Value::from("(not an object)"),
        },
        Arguments::Digest => {
            let digest = Sha256::digest(args.to_string().as_bytes());
            serde_json::Value::from(format!("sha256:{}", hex::encode(digest)))
        }
    }
}

/// Where the lines go.
pub enum Sink {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

/// The log, as the request path sees it.
pub struct AuditLog {
    queue: SyncSender<Vec<u8>>,
    /// The last write worked (or nothing was written yet).
    healthy: Arc<AtomicBool>,
    /// Records queued and not yet written.
    pending: Arc<AtomicU64>,
    fail_closed: bool,
    pub arguments: Arguments,
    metrics: Family<EventLabels, Counter>,
}

impl AuditLog {
    /// Opens the sink (an error if the file cannot be opened) and starts the writer thread.
    pub fn start(
        sink: Sink,
        arguments: Arguments,
        fail_closed: bool,
        metrics: Family<EventLabels, Counter>,
    ) -> std::io::Result<Arc<Self>> {
        let writer = Writer::open(sink)?;
        let (queue, rx) = sync_channel(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let pending = Arc::new(AtomicU64::new(0));
        let (h, p, m) = (healthy.clone(), pending.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("mcp-audit".into())
            .spawn(move || writer.run(rx, h, p, m))?;
        Ok(Arc::new(AuditLog {
            queue,
            healthy,
            pending,
            fail_closed,
            arguments,
            metrics,
        }))
    }

    /// Whether a call may go ahead: always, unless `--audit-fail-closed` and the log cannot
    /// take a record now (its last write failed, or its queue is full).
    pub fn admits_calls(&self) -> bool {
        let ok = !self.fail_closed
            || (self.healthy.load(Ordering::Acquire)
                && self.pending.load(Ordering::Acquire) < QUEUE as u64);
        if !ok {
            count(&self.metrics, "refused");
        }
        ok
    }

    /// Queues a record; never waits.
    pub fn write(&self, record: &Record<'_>) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        self.pending.fetch_add(1, Ordering::AcqRel);
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                count(&self.metrics, "dropped");
                tracing::error!(
                    method = record.method,
                    user = record.user,
                    "an audit record was dropped: the audit log's queue is full"
                );
            }
        }
    }
}

/// Marks the log healthy, saying so when it was not.
fn written_again(healthy: &AtomicBool) {
    if !healthy.swap(true, Ordering::AcqRel) {
        tracing::warn!("the audit log is written again");
    }
}

/// The writer thread's end.
struct Writer {
    sink: Sink,
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    size: u64,
}

impl Writer {
    fn open(sink: Sink) -> std::io::Result<Self> {
        let mut w = Writer {
            sink,
            out: None,
            size: 0,
        };
        w.reopen()?;
        Ok(w)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let (out, size): (Box<dyn Write + Send>, u64) = match &self.sink {
            Sink::Stdout => (Box::new(std::io::stdout()), 0),
            Sink::File { path, .. } => {
                let f: File = OpenOptions::new().create(true).append(true).open(path)?;
                let size = f.metadata()?.len();
                (Box::new(f), size)
            }
        };
        self.out = Some(BufWriter::with_capacity(64 * 1024, out));
        self.size = size;
        Ok(())
    }

    /// Moves `<file>` to `<file>.1` (and each `.n` to `.n+1`, the oldest dropped).
    fn rotate(&mut self) -> std::io::Result<()> {
        let Sink::File { path, keep, .. } = &self.sink else {
            return Ok(());
        };
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        let numbered = |n: usize| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if *keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            for n in (1..*keep).rev() {
                if numbered(n).exists() {
                    std::fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.reopen()
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if let Sink::File { max_bytes, .. } = self.sink
            && self.size > 0
            && self.size + line.len() as u64 > max_bytes
        {
            self.rotate()?;
        }
        if self.out.is_none() {
            self.reopen()?;
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not open"))?;
        out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn run(
        mut self,
        rx: Receiver<Vec<u8>>,
        healthy: Arc<AtomicBool>,
        pending: Arc<AtomicU64>,
        metrics: Family<EventLabels, Counter>,
    ) {
        let counter = |event: &str| {
            metrics
                .get_or_create(&EventLabels {
                    event: event.into(),
                })
                .clone()
        };
        let (written, failed) = (counter("written"), counter("failed"));
        // A write or a flush that fails: the file is opened again for the next record.
        let lost = |this: &mut Self, e: std::io::Error| {
            this.out = None;
            failed.inc();
            if healthy.swap(false, Ordering::AcqRel) {
                tracing::error!(error = %e, "the audit log cannot be written; records are being lost");
            }
        };
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            // Everything queued goes out before one flush.
            while let Some(line) = next {
                pending.fetch_sub(1, Ordering::AcqRel);
                match self.write_line(&line) {
                    Ok(()) => {
                        written.inc();
                    }
                    Err(e) => lost(&mut self, e),
                }
                next = rx.try_recv().ok();
            }
            match self.out.as_mut().map(|o| o.flush()) {
                Some(Ok(())) => written_again(&healthy),
                Some(Err(e)) => lost(&mut self, e),
                None => {}
            }
        }
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record<'a>(name: &'a str, args: serde_json::Value) -> Record<'a> {
        Record {
            server: None,
            time: 1,
            user: "oidc:alice",
            client_id: "c",
            client_name: None,
            session: None,
            era: "2025",
            method: "tools/call",
            name,
            duration_ms: 3,
            outcome: "ok",
            rule: None,
            arguments: args,
        }
    }

    #[test]
    fn arguments_as_each_mode_records_them() {
        let args = json!({"path": "/etc/shadow", "token": "s3cret"});
        let digest = arguments(Some(&args), Arguments::Digest);
        assert!(digest.as_str().unwrap().starts_with("sha256:"));
        assert!(!digest.to_string().contains("s3cret"));
        assert_eq!(
            digest,
            arguments(Some(&args.clone()), Arguments::Digest),
            "stable"
        );
        assert_eq!(
            arguments(Some(&args), Arguments::Redact),
            json!(["path", "token"])
        );
        assert_eq!(arguments(Some(&args), Arguments::Full), args);
        assert!(arguments(None, Arguments::Full).is_null());
    }

    #[test]
    fn lines_are_written_and_rotated_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Family::<EventLabels, Counter>::default();
        let sink = Sink::File {
            path: path.clone(),
            max_bytes: 600,
            keep: 2,
        };
        let log = AuditLog::start(sink, Arguments::Digest, true, metrics.clone()).unwrap();
        assert!(log.admits_calls());
        for i in 0..20 {
            log.write(&record(&format!("tool{i}"), json!(i)));
        }
        let written = || {
            metrics
                .get_or_create(&EventLabels {
                    event: "written".into(),
                })
                .get()
        };
        for _ in 0..500 {
            if written() == 20 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(written(), 20);
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        let numbered = |n: usize| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            read(std::path::Path::new(&p))
        };
        let (now, one, two, three) = (read(&path), numbered(1), numbered(2), numbered(3));
        assert!(three.is_empty(), "keep = 2");
        for part in [&now, &one, &two] {
            assert!(!part.is_empty() && part.len() <= 600, "{}", part.len());
            for line in part.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["user"], "oidc:alice");
            }
        }
        assert!(now.contains("\"tool19\""), "the newest in the file itself");
        assert!(
            !format!("{now}{one}{two}").contains("\"tool0\""),
            "the oldest rotated away"
        );
    }
}
