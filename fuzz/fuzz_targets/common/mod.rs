//! What several fuzz targets share: the configuration of a proxy for
//! `https://mcp.example.com` in front of an HTTP upstream, as the command line makes it.

use clap::Parser;
use mcp_auth_proxy::cli::Cli;
use mcp_auth_proxy::config::Config;

/// Our external host.
pub const HOST: &str = "mcp.example.com";

pub fn config() -> Config {
    let cli = Cli::try_parse_from([
        "mcp-auth-proxy",
        "--external-url",
        "https://mcp.example.com",
        "--no-auto-tls",
        "--password",
        "a password for the fuzz target",
        "http://127.0.0.1:9/mcp",
    ])
    .expect("flags");
    Config::from_cli(cli).expect("config")
}
