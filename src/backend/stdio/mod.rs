//! The stdio bridge: stdio MCP servers behind Streamable HTTP, a child per MCP session (or
//! one shared by all, `--stdio-mode shared`).
//!
//! - [`framing`]: newline-delimited JSON-RPC from a child, bounded and garbage-tolerant;
//!   messages are kept as the child's exact bytes, classified by a borrowed parse; a value
//!   is replaced by splicing its byte range (shared mode's id rewriting).
//! - [`child`]: the child's command line and environment (our own secrets withheld), spawn,
//!   stderr captured into the log.
//! - [`session`]: a running child, the MCP sessions attached to it, and the table that
//!   routes the child's messages to their streams.
//! - [`stream`]: one HTTP stream with its replay log (`Last-Event-ID`).
//! - [`bridge`]: the HTTP side: POST/GET/DELETE, session ids and owners, limits, the warm
//!   spare, crash-loop backoff.

pub mod bridge;
pub mod child;
pub mod framing;
pub mod placement;
pub mod session;
pub mod stream;
