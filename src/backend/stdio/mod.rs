//! The stdio bridge: stdio MCP servers behind Streamable HTTP, a child per MCP session.
//!
//! - [`framing`]: newline-delimited JSON-RPC from a child, bounded and garbage-tolerant;
//!   messages are kept as the child's exact bytes, classified by a borrowed parse.
//! - [`child`]: the child's command line and environment (our own secrets withheld), spawn,
//!   stderr captured into the log.
//! - [`session`]: one running child and the table that routes its messages to streams.
//! - [`stream`]: one HTTP stream with its replay log (`Last-Event-ID`).
//! - [`bridge`]: the HTTP side: POST/GET/DELETE, session ids and owners, limits, the warm
//!   spare, crash-loop backoff.

pub mod bridge;
pub mod child;
pub mod framing;
pub mod session;
pub mod stream;
