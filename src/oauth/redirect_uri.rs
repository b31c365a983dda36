//! Redirect URI policy (OAuth 2.1 §2.3.1 and §7.5, RFC 8252 §7.3, RFC 9700 §4.1).
//!
//! Registration: `https` anywhere; `http` only on loopback; private-use schemes only from the
//! operator's allow-list; `javascript:`, `data:`, `file:` never; no fragments or credentials.
//! Authorization: exact string match, except that a loopback redirect URI may use any port
//! (native apps bind an ephemeral port; Claude Code registers port-less URIs).

use url::Url;

/// Hosts a plain-http redirect URI may name: the loopback literals and `localhost` (RFC 8252
/// §7.3, §8.3). Not `*.localhost`: such a name is only as loopback as its resolver says.
pub fn is_loopback_redirect_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "[::1]" | "::1") || host.eq_ignore_ascii_case("localhost")
}

/// Whether `uri` answers to a program on the person's own machine (plain http on loopback):
/// any local process can open that port.
pub fn is_loopback_redirect(uri: &str) -> bool {
    Url::parse(uri)
        .is_ok_and(|u| u.scheme() == "http" && u.host_str().is_some_and(is_loopback_redirect_host))
}

/// Why a redirect URI is refused at registration; each names the URI.
#[derive(Debug, thiserror::Error)]
pub enum Unregistrable {
    #[error("{0:?} is not an absolute URI")]
    NotAbsolute(String),
    #[error("{0:?} has a fragment")]
    Fragment(String),
    #[error("{0:?} carries credentials")]
    Credentials(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?}: plain http is allowed only for loopback (127.0.0.1, [::1], localhost)")]
    PlainHttp(String),
    #[error("{0:?}: this scheme is never allowed")]
    NeverAllowed(String),
    #[error(
        "{uri:?}: the scheme {scheme:?} is not allowed (the operator can allow it with --allowed-redirect-schemes)"
    )]
    Scheme { uri: String, scheme: String },
}

/// Whether `uri` may be registered as a redirect URI.
pub fn check_registrable(uri: &str, private_schemes: &[String]) -> Result<(), Unregistrable> {
    let uri_owned = || uri.to_string();
    let url = Url::parse(uri).map_err(|_| Unregistrable::NotAbsolute(uri_owned()))?;
    if url.fragment().is_some() {
        return Err(Unregistrable::Fragment(uri_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Unregistrable::Credentials(uri_owned()));
    }
    match url.scheme() {
        "https" if url.host_str().is_none_or(str::is_empty) => {
            Err(Unregistrable::NoHost(uri_owned()))
        }
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback_redirect_host) => Ok(()),
        "http" => Err(Unregistrable::PlainHttp(uri_owned())),
        "javascript" | "data" | "file" | "vbscript" | "blob" => {
            Err(Unregistrable::NeverAllowed(uri_owned()))
        }
        scheme if private_schemes.iter().any(|s| s == scheme) => Ok(()),
        scheme => Err(Unregistrable::Scheme {
            uri: uri_owned(),
            scheme: scheme.to_string(),
        }),
    }
}

/// Whether a redirect URI presented at authorization matches a registered one.
pub fn matches(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    let (Ok(reg), Ok(req)) = (Url::parse(registered), Url::parse(requested)) else {
        return false;
    };
    reg.scheme() == "http"
        && req.scheme() == "http"
        && reg.host_str().is_some_and(is_loopback_redirect_host)
        && reg.host_str() == req.host_str()
        && reg.path() == req.path()
        && reg.query() == req.query()
        && req.fragment().is_none()
        && req.username().is_empty()
        && req.password().is_none()
}

/// The registered redirect URI that `requested` matches, if any.
pub fn find_match<'a>(registered: &'a [String], requested: &str) -> Option<&'a str> {
    registered
        .iter()
        .find(|r| matches(r, requested))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schemes() -> Vec<String> {
        vec!["cursor".into(), "vscode".into()]
    }

    #[test]
    fn registration_policy() {
        let ok = [
            "https://claude.ai/api/mcp/auth_callback",
            "https://chatgpt.com/connector/oauth/abc123",
            "http://127.0.0.1:33418/",
            "http://localhost:6274/oauth/callback",
            "http://[::1]/cb",
            "http://localhost/callback",
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "vscode://vscode.github-authentication/did-authenticate",
        ];
        for u in ok {
            assert!(check_registrable(u, &schemes()).is_ok(), "{u}");
        }
        let bad = [
            "http://example.com/cb",
            "http://127.0.0.1.nip.io/cb",
            // A name under .localhost is loopback only if its resolver says so.
            "http://evil.localhost/cb",
            "http://app.LOCALHOST:8080/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "https://claude.ai/cb#frag",
            "https://user:pw@claude.ai/cb",
            "windsurf://x/cb",
            "/relative",
            "",
        ];
        for u in bad {
            assert!(check_registrable(u, &schemes()).is_err(), "{u}");
        }
    }

    #[test]
    fn matching() {
        assert!(matches("https://a.example/cb", "https://a.example/cb"));
        assert!(!matches("https://a.example/cb", "https://a.example/cb/"));
        assert!(!matches(
            "https://a.example/cb",
            "https://a.example:8443/cb"
        ));
        assert!(!matches("https://a.example/cb", "https://a.example/cb?x=1"));
        assert!(matches("http://127.0.0.1/cb", "http://127.0.0.1:5555/cb"));
        assert!(matches(
            "http://localhost:1234/callback",
            "http://localhost:4321/callback"
        ));
        assert!(matches("http://[::1]/cb", "http://[::1]:9/cb"));
        assert!(
            !matches("http://localhost/cb", "http://127.0.0.1:9/cb"),
            "host must be the same"
        );
        assert!(!matches("http://localhost/cb", "http://localhost:9/other"));
        assert!(!matches("http://localhost/cb", "https://localhost:9/cb"));
        assert!(!matches(
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "cursor://anysphere.cursor-mcp/oauth/callback2"
        ));
    }

    proptest! {
        #[test]
        fn non_loopback_needs_the_exact_string(host in "[a-z]{1,10}\\.example", p1 in "/[a-z]{0,8}", p2 in "/[a-z]{0,8}", port in proptest::option::of(1u16..)) {
            let reg = format!("https://{host}{p1}");
            let req = match port { Some(port) => format!("https://{host}:{port}{p2}"), None => format!("https://{host}{p2}") };
            prop_assert_eq!(matches(&reg, &req), reg == req);
        }

        #[test]
        fn loopback_ignores_only_the_port(p1 in "/[a-z]{0,8}", p2 in "/[a-z]{0,8}", a in 1u16.., b in 1u16..) {
            let reg = format!("http://127.0.0.1:{a}{p1}");
            let req = format!("http://127.0.0.1:{b}{p2}");
            prop_assert_eq!(matches(&reg, &req), p1 == p2);
        }
    }
}
