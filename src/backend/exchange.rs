//! The decisions about one exchange with an HTTP MCP server, made here once for both paths
//! that talk to it: the general path ([`super::http`]) and the HTTP/1 fast lane
//! (`backend::lane`). The two differ only in how they do their I/O; what they follow,
//! refuse and tell the client comes from here (docs/design.md, "What goes upstream").

use axum::http::StatusCode;
use axum::response::Response;
use url::Url;

use super::mapping::same_origin;
use crate::error::jsonrpc_error;

/// At most this many same-origin 307/308 hops are followed.
pub const MAX_REDIRECTS: usize = 3;

/// Why an exchange failed, as the client hears it: a JSON-RPC error with the same words on
/// either path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Nothing accepted the connection.
    Unreachable,
    /// The connection broke, or the answer was not HTTP we accept.
    ConnectionFailed,
    /// No answer within `--upstream-timeout`.
    TimedOut,
    /// A redirect to another origin (clients never see the upstream's redirects).
    RedirectedElsewhere,
    TooManyRedirects,
    /// The upstream's 401 or 403: its challenge would send clients to its own authorization.
    RefusedCredentials,
    /// The request's path maps to no upstream URL.
    NoRoute,
}

impl UpstreamFailure {
    pub fn status(self) -> StatusCode {
        match self {
            Self::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Unreachable => "the MCP server is unreachable",
            Self::ConnectionFailed => "the MCP server connection failed",
            Self::TimedOut => "the MCP server did not answer in time",
            Self::RedirectedElsewhere => "the MCP server redirected elsewhere",
            Self::TooManyRedirects => "the MCP server redirected too many times",
            Self::RefusedCredentials => "the MCP server refused the proxy's credentials",
            Self::NoRoute => "no upstream route for this path",
        }
    }

    /// The answer to the client.
    pub fn response(self) -> Response {
        jsonrpc_error(self.status(), self.message())
    }

    /// Logs it for the operator (the URL without credentials), with the upstream's status or
    /// the error's cause and what to check.
    pub fn log(self, upstream: &Url, status: Option<u16>, cause: Option<&str>) {
        let upstream = super::http::redact(upstream);
        match self {
            Self::RefusedCredentials => tracing::warn!(
                upstream,
                status,
                "the MCP server refused the proxy's request; check --proxy-bearer-token / --proxy-headers"
            ),
            Self::RedirectedElsewhere => {
                tracing::warn!(upstream, "upstream redirected to another origin; refusing")
            }
            other => tracing::warn!(
                upstream,
                why = other.message(),
                error = cause,
                "upstream request failed"
            ),
        }
    }
}

/// What to do once the upstream's status (and `Location`) is in.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Pass the answer on.
    Answer,
    /// Send the same request, body and all, to this URL (a same-origin 307/308: Starlette
    /// answers `/mcp` with `/mcp/`).
    Follow(Url),
    Fail(UpstreamFailure),
}

/// The rule for an answer's status: same-origin 307/308 are followed (at most
/// [`MAX_REDIRECTS`] hops, `hops` so far), other redirects refused, 401/403 never passed on.
pub fn after_status(
    status: u16,
    location: Option<&str>,
    at: &Url,
    base: &Url,
    hops: usize,
) -> Next {
    match status {
        307 | 308 => {
            let next = location.and_then(|l| at.join(l).ok());
            match next.filter(|n| same_origin(n, base)) {
                None => Next::Fail(UpstreamFailure::RedirectedElsewhere),
                Some(_) if hops >= MAX_REDIRECTS => Next::Fail(UpstreamFailure::TooManyRedirects),
                Some(n) => Next::Follow(n),
            }
        }
        401 | 403 => Next::Fail(UpstreamFailure::RefusedCredentials),
        _ => Next::Answer,
    }
}

/// The upstream session id to record as the caller's: one a successful answer issued that
/// is not the one the request already carried.
pub fn session_to_bind<'a>(
    status: u16,
    issued: Option<&'a str>,
    presented: Option<&str>,
) -> Option<&'a str> {
    issued.filter(|id| (200..300).contains(&status) && presented != Some(*id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_followed_on_the_same_origin_only_and_not_forever() {
        let base = Url::parse("http://up.example:8080/mcp").unwrap();
        let at = base.clone();
        assert_eq!(
            after_status(307, Some("/mcp/"), &at, &base, 0),
            Next::Follow(Url::parse("http://up.example:8080/mcp/").unwrap())
        );
        for elsewhere in [
            Some("http://evil.example/mcp"),
            Some("https://up.example:8080/"),
            None,
        ] {
            assert_eq!(
                after_status(308, elsewhere, &at, &base, 0),
                Next::Fail(UpstreamFailure::RedirectedElsewhere)
            );
        }
        assert_eq!(
            after_status(307, Some("/mcp/"), &at, &base, MAX_REDIRECTS),
            Next::Fail(UpstreamFailure::TooManyRedirects)
        );
        for refused in [401, 403] {
            assert_eq!(
                after_status(refused, None, &at, &base, 0),
                Next::Fail(UpstreamFailure::RefusedCredentials)
            );
        }
        for passed in [200, 202, 302, 404, 500] {
            assert_eq!(
                after_status(passed, Some("/x"), &at, &base, 0),
                Next::Answer
            );
        }
    }

    #[test]
    fn a_session_is_bound_when_a_success_issues_a_new_one() {
        assert_eq!(session_to_bind(200, Some("s1"), None), Some("s1"));
        assert_eq!(session_to_bind(200, Some("s1"), Some("s1")), None);
        assert_eq!(session_to_bind(200, Some("s2"), Some("s1")), Some("s2"));
        assert_eq!(session_to_bind(404, Some("s1"), None), None);
        assert_eq!(session_to_bind(200, None, None), None);
    }
}
