//! The answer to a client at its redirect URI (RFC 6749 section 4.1.2): a code or an error,
//! with `state` and, per RFC 9207, the issuer (`iss`), so a client talking to several
//! authorization servers can tell which one answered.

use axum::http::StatusCode;
use axum::response::Response;
use url::Url;

use crate::error::OAuthErrorCode;
use crate::web::pages::{FormTarget, error_page, see_other};

/// Where the client gets its answer.
pub struct ClientRedirect<'a> {
    pub uri: &'a str,
    pub state: Option<&'a str>,
    pub issuer: &'a str,
}

impl ClientRedirect<'_> {
    fn build(&self, params: &[(&str, &str)]) -> Option<String> {
        let mut url = Url::parse(self.uri).ok()?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = self.state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", self.issuer);
        }
        Some(url.to_string())
    }

    /// 303 to the client with a code.
    pub fn code(&self, code: &str) -> Response {
        self.go(&[("code", code)])
    }

    /// The client's redirect address carrying an error (for a link on a page).
    pub fn error_url(&self, code: OAuthErrorCode, description: &str) -> Option<String> {
        self.build(&[("error", code.as_str()), ("error_description", description)])
    }

    /// 303 to the client with an error.
    pub fn error(&self, code: OAuthErrorCode, description: &str) -> Response {
        self.go(&[("error", code.as_str()), ("error_description", description)])
    }

    fn go(&self, params: &[(&str, &str)]) -> Response {
        match self.build(params) {
            Some(url) => see_other(&url, FormTarget::Client),
            None => error_page(
                self.issuer
                    .split_once("://")
                    .map_or(self.issuer, |(_, host)| host),
                StatusCode::BAD_REQUEST,
                "Bad redirect",
                "The app's redirect address is not valid.",
            ),
        }
    }
}
