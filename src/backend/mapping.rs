//! Where a proxied request goes upstream (docs/design.md, "URLs").
//!
//! - Upstream URL with a path other than `/`: the MCP path maps to exactly that URL; every
//!   other proxied path is joined onto the upstream's origin.
//! - Upstream URL without a path: every proxied path is joined onto it (sigbit's rule).

use url::Url;

/// The upstream URL for a request to `path?query` on our side.
pub fn upstream_url(base: &Url, mcp_path: &str, path: &str, query: Option<&str>) -> Url {
    let has_path = !(base.path().is_empty() || base.path() == "/");
    if has_path && path == mcp_path {
        let mut url = base.clone();
        if url.query().is_none() {
            url.set_query(query.filter(|q| !q.is_empty()));
        }
        return url;
    }
    let mut url = base.clone();
    url.set_path(path);
    url.set_query(query.filter(|q| !q.is_empty()));
    url.set_fragment(None);
    url
}

/// Whether two URLs share scheme, host and port (a same-origin redirect may be followed).
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn path_bearing_upstream() {
        let base = u("http://up:9000/api/mcp");
        let map = |p: &str, q| Some(upstream_url(&base, "/mcp", p, q).to_string());
        assert_eq!(map("/mcp", None).as_deref(), Some("http://up:9000/api/mcp"));
        assert_eq!(
            map("/mcp", Some("a=1")).as_deref(),
            Some("http://up:9000/api/mcp?a=1")
        );
        assert_eq!(map("/other", None).as_deref(), Some("http://up:9000/other"));
        assert_eq!(
            map("/mcp/x", Some("b=2")).as_deref(),
            Some("http://up:9000/mcp/x?b=2")
        );
        let with_query = u("http://up/sse?key=k");
        assert_eq!(
            upstream_url(&with_query, "/mcp", "/mcp", Some("a=1")).as_str(),
            "http://up/sse?key=k"
        );
    }

    #[test]
    fn origin_only_upstream() {
        for base in ["http://up:9000", "http://up:9000/"] {
            let base = u(base);
            let map = |p: &str| Some(upstream_url(&base, "/mcp", p, None).to_string());
            assert_eq!(map("/mcp").as_deref(), Some("http://up:9000/mcp"));
            assert_eq!(map("/x/y").as_deref(), Some("http://up:9000/x/y"));
        }
    }

    #[test]
    fn origins() {
        assert!(same_origin(&u("http://a:80/x"), &u("http://a/y")));
        assert!(!same_origin(&u("http://a/x"), &u("https://a/x")));
        assert!(!same_origin(&u("http://a/x"), &u("http://b/x")));
    }

    proptest! {
        #[test]
        fn never_leaves_the_upstream_origin(path in "/[a-zA-Z0-9/._%-]{0,40}", q in proptest::option::of("[a-z0-9=&]{0,10}")) {
            for base in ["http://up:9000/api/mcp", "http://up:9000"] {
                let base = u(base);
                let out = upstream_url(&base, "/mcp", &path, q.as_deref());
                prop_assert!(same_origin(&out, &base));
            }
        }
    }
}
