//! The stdio side of the bridge (issue "Wrap stdio MCP servers"): building blocks so far.
//!
//! - [`framing`]: newline-delimited JSON-RPC from a child, bounded and garbage-tolerant;
//!   messages are kept as the child's exact bytes, classified by a borrowed parse.
//! - [`child`]: the child's command line and environment (our own secrets withheld), spawn,
//!   stderr captured into the log.
//!
//! The relay (sessions, Streamable HTTP, supervision) builds on these.

pub mod bridge;
pub mod child;
pub mod framing;
pub mod session;
pub mod stream;
