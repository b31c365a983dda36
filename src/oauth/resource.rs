//! Resource indicators (RFC 8707) as the MCP spec uses them: every token is for our one
//! resource, the public MCP URL.

use url::Url;

/// Whether a client's `resource` parameter names our resource: equal after lower-casing
/// scheme and host (URL parsing does both) and ignoring one trailing slash.
pub fn matches(ours: &str, given: &str) -> bool {
    let (Ok(a), Ok(b)) = (Url::parse(ours), Url::parse(given)) else {
        return false;
    };
    let path = |u: &Url| {
        let p = u.path();
        p.strip_suffix('/').unwrap_or(p).to_string()
    };
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && path(&a) == path(&b)
        && a.query() == b.query()
        && b.fragment().is_none()
        && b.username().is_empty()
}

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
