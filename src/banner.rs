//! The few lines a person who started the proxy at a terminal reads first: where clients
//! connect, where people sign in, the backend and whether it answers now, the sign-in
//! methods and the certificate. On a terminal only; a log collector gets the JSON lines,
//! which say the same one fact per line.

use std::fmt;

/// Whether the backend answered when the proxy started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendState {
    /// No backend: sign-in and the authorization server only.
    None,
    Ready,
    NotReady(String),
}

#[derive(Debug, Clone)]
pub struct Banner {
    pub version: &'static str,
    /// The URL to give MCP clients.
    pub mcp_url: String,
    pub login_url: String,
    /// The HTTP URL or the stdio command.
    pub backend: String,
    pub backend_state: BackendState,
    pub sign_in: Vec<String>,
    /// What serves HTTPS, in words.
    pub certificate: String,
    /// Where it listens.
    pub listening: Vec<String>,
    /// The servers of `--config`: name, the URL to give clients, the backend.
    pub servers: Vec<(String, String, String)>,
}

impl fmt::Display for Banner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        writeln!(f, "  mcp-auth-proxy {} is running", self.version)?;
        writeln!(f)?;
        for (i, (name, url, backend)) in self.servers.iter().enumerate() {
            let head = if i == 0 { "MCP servers" } else { "" };
            writeln!(f, "  {head:<16} {name}: give clients {url} ({backend})")?;
        }
        match self.backend_state {
            _ if !self.servers.is_empty() => {}
            BackendState::None => writeln!(
                f,
                "  MCP server       none yet: give an http(s) URL, or a stdio command after --"
            )?,
            BackendState::Ready => writeln!(f, "  MCP server       {} (answers)", self.backend)?,
            BackendState::NotReady(ref why) => {
                writeln!(f, "  MCP server       {} (NOT READY: {why})", self.backend)?
            }
        }
        if self.backend_state != BackendState::None {
            writeln!(f, "  Give clients     {}", self.mcp_url)?;
        }
        writeln!(f, "  Sign-in page     {}", self.login_url)?;
        let methods = if self.sign_in.is_empty() {
            "NONE: nobody can sign in (set --password or a provider)".to_string()
        } else {
            self.sign_in.join(", ")
        };
        writeln!(f, "  Sign-in with     {methods}")?;
        writeln!(f, "  HTTPS            {}", self.certificate)?;
        writeln!(f, "  Listening on     {}", self.listening.join(", "))?;
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banner(state: BackendState) -> Banner {
        Banner {
            version: "1.0.0",
            mcp_url: "https://mcp.example.com/mcp".into(),
            login_url: "https://mcp.example.com/.auth/login".into(),
            backend: "http://localhost:3000/mcp".into(),
            backend_state: state,
            sign_in: vec!["password".into(), "GitHub".into()],
            certificate: "Let's Encrypt for mcp.example.com".into(),
            listening: vec!["http://[::]:80".into(), "https://[::]:443".into()],
            servers: Vec::new(),
        }
    }

    #[test]
    fn the_banner_lists_the_servers_of_a_configuration_file() {
        let mut b = banner(BackendState::None);
        b.servers = vec![
            (
                "files".into(),
                "https://mcp.example.com/files/mcp".into(),
                "stdio: node files.js".into(),
            ),
            (
                "db".into(),
                "https://mcp.example.com/db/mcp".into(),
                "http://localhost:8080/mcp".into(),
            ),
        ];
        let text = b.to_string();
        assert!(text.contains("MCP servers      files: give clients https://mcp.example.com/files/mcp (stdio: node files.js)"), "{text}");
        assert!(
            text.contains("                 db: give clients https://mcp.example.com/db/mcp"),
            "{text}"
        );
        assert!(!text.contains("none yet"), "{text}");
    }

    #[test]
    fn the_banner_says_what_to_give_clients_and_what_is_wrong() {
        let ready = banner(BackendState::Ready).to_string();
        assert!(
            ready.contains("Give clients     https://mcp.example.com/mcp"),
            "{ready}"
        );
        assert!(
            ready.contains("http://localhost:3000/mcp (answers)"),
            "{ready}"
        );
        assert!(
            ready.contains("Sign-in with     password, GitHub"),
            "{ready}"
        );
        let down = banner(BackendState::NotReady("connection refused".into())).to_string();
        assert!(down.contains("(NOT READY: connection refused)"), "{down}");
        let none = banner(BackendState::None).to_string();
        assert!(!none.contains("Give clients"), "{none}");
        assert!(none.contains("none yet"), "{none}");
    }
}
