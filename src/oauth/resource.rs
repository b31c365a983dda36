//! Resource indicators (RFC 8707) as the MCP spec uses them: every token is for one
//! server's resource, its public MCP URL.

/// Whether a client's `resource` parameter names our resource; the rule lives with the
/// site's catalog of servers, which resolves a parameter to its server with it.
pub use crate::config::resource_matches as matches;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tolerated_variations() {
        let ours = "https://mcp.example.com/mcp";
        for ok in [
            "https://mcp.example.com/mcp",
            "https://mcp.example.com/mcp/",
            "HTTPS://MCP.Example.com/mcp",
            "https://mcp.example.com:443/mcp",
        ] {
            assert!(matches(ours, ok), "{ok}");
        }
        for bad in [
            "https://mcp.example.com/MCP",
            "https://mcp.example.com/mcp//",
            "http://mcp.example.com/mcp",
            "https://mcp.example.com/",
            "https://mcp.example.com",
            "https://other.example.com/mcp",
            "https://mcp.example.com/mcp#x",
            "https://mcp.example.com/mcp?x=1",
            "mcp",
        ] {
            assert!(!matches(ours, bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn other_paths_never_match(p in "/[a-z]{1,8}") {
            prop_assume!(p != "/mcp");
            let given = format!("https://mcp.example.com{p}");
            prop_assert!(!matches("https://mcp.example.com/mcp", &given));
        }
    }
}
