//! mcp-auth-proxy: OAuth 2.1 in front of any MCP server.
//!
//! A request's path through the crate: [`server::guard`] (Host, Origin) → [`gate`] (bearer
//! token) → [`backend`] (the MCP server). The authorization server that issues the tokens
//! lives in [`oauth`]; state lives in [`store`]. [`app`] wires them together.

pub mod app;
pub mod assertion;
pub mod audit;
pub mod backend;
pub mod banner;
pub mod budget;
pub mod cli;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod dpop;
pub mod error;
pub mod gate;
pub mod json_names;
pub mod json_text;
pub mod log_line;
pub mod log_writer;
pub mod login;
pub mod media_type;
pub mod metrics;
pub mod migrate;
pub mod oauth;
pub mod policy;
pub mod relay;
pub mod request_body;
pub mod request_head;
pub mod server;
pub mod single_header;
pub mod store;
pub mod tokens;
pub mod web;
pub mod worker;

pub use crate::app::{EnvSecrets, Prepared, RunError, migrate, prepare, run, serve};
