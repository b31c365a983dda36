//! What the proxy puts in front of: an HTTP MCP server ([`http`]).

pub mod exchange;
pub mod http;
pub mod identity;
pub mod mapping;
pub mod sessions;
pub mod stdio;
