//! The log's JSON line: `{"timestamp":…,"level":…,<the event's fields in order>,"target":…}`,
//! the shape `tracing_subscriber`'s JSON formatter gives with `flatten_event(true)` and no
//! spans, built in a buffer of the thread and handed to the writer in one piece.
//!
//! Why not that formatter: every request writes a line (the request log, on as installed),
//! and there the formatter cost about 19 000 instructions a line (callgrind,
//! `bench/instructions.sh`): it formats the time into a new `String`, formats each `Debug`
//! field into another, and passes each key, colon, comma and value through `serde_json`'s
//! serializer and a UTF-8 check of its own. Here the date and time to the second are formatted
//! once a second per thread and the rest is appended in place. CONTRIBUTING.md has the numbers.
//! The line is the same (`tests` compare the two field by field).
//!
//! For the same reason the request lines take their client address as text from
//! [`crate::client_addr::with_text`], formatted once per run of requests from that address
//! on a thread, as the date is.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line format (a [`FormatEvent`] for `tracing_subscriber::fmt`).
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is built in a `String` of this thread and handed over in one piece:
        // `Writer` reaches its buffer through `dyn Write`, a call per piece, and a line has
        // some thirty pieces (about 1 800 of its instructions, callgrind).
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                let written = write_line(&mut line, event);
                let handed = written.and_then(|()| out.write_str(&line));
                // A huge field leaves a huge buffer: not kept for the lines after it.
                if line.capacity() > KEPT_LINE_CAPACITY {
                    *line = String::new();
                }
                handed
            }
            // A field's `Debug` that logs (this thread's buffer is in use): a buffer of its own.
            Err(_) => {
                let mut line = String::new();
                write_line(&mut line, event)?;
                out.write_str(&line)
            }
        })
    }
}

thread_local! {
    /// The line being built on this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The most a thread's line buffer keeps between lines.
const KEPT_LINE_CAPACITY: usize = 16 * 1024;

/// Appends `event`'s line to `out`.
fn write_line(out: &mut String, event: &Event<'_>) -> fmt::Result {
    // An event of the `log` crate (sled's) carries its real target among its fields.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    out.push_str("{\"timestamp\":\"");
    // A log line is stamped with the wall clock, whatever clock the code under test
    // runs on (as the formatter this replaces stamped it).
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    timestamp(out, now)?;
    out.push_str("\",\"level\":\"");
    out.push_str(meta.level().as_str());
    out.push('"');
    let mut fields = Fields {
        out,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    out.push_str(",\"target\":");
    string(out, meta.target())?;
    out.push_str("}\n");
    Ok(())
}

/// Appends each field as `,"name":value`.
struct Fields<'a> {
    out: &'a mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            self.out.push(',');
            self.result = string(self.out, field.name()).and_then(|()| {
                self.out.push(':');
                value(self.out)
            });
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| string(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value}")?;
            out.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| {
            out.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| {
            out.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    // i128 and u128 fall to `record_debug`: a string, as the tracing formatter writes them.

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // As serde_json writes a float: shortest round-trip digits, `null` if not finite.
        self.entry(field, |out| {
            if !value.is_finite() {
                out.push_str("null");
            } else if !push_hundredths(out, value) {
                out.push_str(ryu::Buffer::new().format_finite(value));
            }
            Ok(())
        });
    }
}

/// Writes `value` as ryu would and says so, when it is a whole number of hundredths from 0 to
/// 10^9: the request log's `ms` (`metrics::elapsed_ms`), on every request, where ryu's general
/// algorithm took 717 of the fast lane's 35 344 instructions (callgrind; with this, 34 872
/// against 35 332 a request, BENCHMARKS.md). Such a number's shortest round-trip digits are
/// its own, trailing zeros dropped (doubles there are far closer together than 0.01), in
/// ryu's plain notation with at least one decimal; `tests` compare the two.
fn push_hundredths(out: &mut String, value: f64) -> bool {
    if !(value.is_sign_positive() && value < 1e9) {
        return false;
    }
    let hundredths = (value * 100.0).round();
    if hundredths / 100.0 != value {
        return false;
    }
    // Exact: a whole number below 10^11.
    let hundredths = hundredths as u64;
    out.push_str(itoa::Buffer::new().format(hundredths / 100));
    out.push('.');
    let (tenths, last) = ((hundredths / 10) % 10, hundredths % 10);
    out.push(char::from(b'0' + tenths as u8));
    if last != 0 {
        out.push(char::from(b'0' + last as u8));
    }
    true
}

/// `value` as a JSON string.
fn string(out: &mut String, value: &str) -> fmt::Result {
    out.push('"');
    Escaped(&mut *out).write_str(value)?;
    out.push('"');
    Ok(())
}

/// Writes what it is given as the inside of a JSON string (RFC 8259 §7: the quote, the
/// backslash and the control characters escaped, as serde_json escapes them).
struct Escaped<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Runs of plain bytes are found with one tight scan each and written whole: most
        // values (methods, paths, addresses, messages) hold nothing to escape.
        let mut rest = s;
        while let Some(at) = rest.bytes().position(needs_escape) {
            // Every byte escaped is ASCII, so `at` and `at + 1` are character boundaries.
            self.0.write_str(&rest[..at])?;
            match rest.as_bytes()[at] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                byte => write!(self.0, "\\u{byte:04x}")?,
            }
            rest = &rest[at + 1..];
        }
        self.0.write_str(rest)
    }
}

/// Whether JSON needs `byte` escaped inside a string: the quote, the backslash and the
/// control characters.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

thread_local! {
    /// The second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `now` as RFC 3339 in UTC with microseconds, as `tracing_subscriber`'s `SystemTime` writes
/// it (`2026-12-03T12:46:43.359253Z`).
fn timestamp(out: &mut String, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let date = i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, 0))
                .unwrap_or_default();
            second.1.clear();
            write!(second.1, "{}", date.format("%Y-%m-%dT%H:%M:%S"))?;
            second.0 = secs;
        }
        out.push_str(&second.1);
        out.push('.');
        // Six digits with their leading zeros: those of 1 000 000 + µs after its leading 1.
        let mut digits = itoa::Buffer::new();
        let padded = digits.format(1_000_000 + since.subsec_micros());
        out.push_str(padded.get(1..).unwrap_or(padded));
        out.push('Z');
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn ryu_text(value: f64) -> String {
        ryu::Buffer::new().format_finite(value).to_string()
    }

    /// What [`super::push_hundredths`] writes, if it takes `value`.
    fn fast_text(value: f64) -> Option<String> {
        let mut out = String::new();
        super::push_hundredths(&mut out, value).then_some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn hundredths_are_written_as_ryu_writes_them(k in 0u64..100_000_000_000) {
            let value = k as f64 / 100.0;
            prop_assert_eq!(fast_text(value), Some(ryu_text(value)));
        }

        #[test]
        fn other_numbers_are_left_to_ryu_or_written_alike(value in any::<f64>()) {
            if let Some(text) = fast_text(value) {
                prop_assert_eq!(text, ryu_text(value));
            }
        }
    }

    #[test]
    fn the_edges_of_the_hundredths() {
        for value in [
            0.0,
            0.01,
            0.1,
            0.17,
            1.0,
            10.5,
            999_999_999.99,
            // 12.345678 ms as `metrics::elapsed_ms` rounds it.
            (0.012_345_678_f64 * 100_000.0).round() / 100.0,
        ] {
            assert_eq!(fast_text(value), Some(ryu_text(value)), "{value}");
        }
        for value in [
            -0.0,
            -0.01,
            0.001,
            0.125,
            1e9,
            1e300,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(fast_text(value), None, "{value}");
        }
    }

    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn parsed(&self) -> Vec<serde_json::Map<String, Value>> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    /// The events every line shape must carry alike: the request line, odd strings, numbers
    /// of each kind, an error, a `Display` field.
    fn log_events() {
        let odd = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} é 🦀 \u{1f}";
        let error = std::io::Error::other("it \"broke\"\n");
        let client: std::net::IpAddr = [127, 0, 0, 1].into();
        tracing::info!(method = "POST", route = "mcp", path = "/mcp", status = 200u16, ms = 0.17, %client, "request");
        tracing::warn!(odd, why = %odd, n = -3i64, big = u64::MAX, yes = true, f = 1.0, nan = f64::NAN, "a {} message {odd}", 1);
        tracing::error!(error = &error as &dyn std::error::Error, "failed");
        tracing::debug!(i = 170141183460469231731687303715884105727i128, "wide");
    }

    #[test]
    fn a_line_is_what_the_tracing_json_formatter_writes() {
        let ours = Lines::default();
        let theirs = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(ours.clone())
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, log_events);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(theirs.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, log_events);
        let (ours, theirs) = (ours.parsed(), theirs.parsed());
        assert_eq!(ours.len(), 4);
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(a), keys(b), "the same keys in the same order");
            for (key, value) in a {
                if key != "timestamp" {
                    assert_eq!(Some(value), b.get(key), "{key}");
                }
            }
        }
        let request = &ours[0];
        assert_eq!(request["ms"], serde_json::json!(0.17));
        assert_eq!(request["client"], "127.0.0.1");
    }

    #[test]
    fn the_timestamp_is_rfc_3339_with_microseconds() {
        let at = UNIX_EPOCH + std::time::Duration::new(1_764_766_003, 359_253_999);
        let mut text = String::new();
        timestamp(&mut text, at).unwrap();
        assert_eq!(text, "2025-12-03T12:46:43.359253Z");
        // The same second again (from the cache), then the next one.
        let mut text = String::new();
        timestamp(&mut text, at + std::time::Duration::from_micros(1)).unwrap();
        assert_eq!(text, "2025-12-03T12:46:43.359254Z");
        let mut text = String::new();
        timestamp(&mut text, at + std::time::Duration::from_secs(1)).unwrap();
        assert_eq!(text, "2025-12-03T12:46:44.359253Z");
    }
}
