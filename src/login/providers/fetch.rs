//! Talking to a provider over HTTP: our client (no redirects, timeouts), every answer read
//! bounded, JSON answers and GitHub's paged lists.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::{ProviderError, SignInError};

/// Longest answer read from a provider.
pub(super) const MAX_ANSWER: usize = 1024 * 1024;

/// The client every provider call goes through: no redirects, bounded time.
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("mcp-auth-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ProviderError::Client)
}

/// A call to a provider that did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer: refused, no such host, a certificate, a timeout. The whole chain is kept in
    /// the message: reqwest's own ("error sending request") hides the cause in its sources.
    #[error("{url}: {}", crate::error::chain(source))]
    Send { url: String, source: reqwest::Error },
    #[error("{url}: the answer broke off: {}", crate::error::chain(source))]
    Read { url: String, source: reqwest::Error },
    #[error("{url}: the answer is larger than {MAX_ANSWER} bytes")]
    TooLarge { url: String },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url}: not {what}: {source}")]
    Parse {
        url: String,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// oauth2's HTTP calls over our reqwest client.
pub(super) async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, FetchError> {
    let (parts, body) = req.into_parts();
    let url = parts.uri.to_string();
    let req = http
        .request(parts.method, &url)
        .headers(parts.headers)
        .body(body);
    exchange(req, &url).await
}

/// Sends `req` (to `url`) and reads the whole answer, refused past [`MAX_ANSWER`]: every
/// call to a provider goes through here.
async fn exchange(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<http::Response<Vec<u8>>, FetchError> {
    let mut resp = req.send().await.map_err(|source| FetchError::Send {
        url: url.into(),
        source,
    })?;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| FetchError::Read {
        url: url.into(),
        source,
    })? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(FetchError::TooLarge { url: url.into() });
        }
        body.extend_from_slice(&chunk);
    }
    let mut out = http::Response::new(body);
    *out.status_mut() = resp.status();
    *out.headers_mut() = std::mem::take(resp.headers_mut());
    Ok(out)
}

/// A 2xx answer's JSON body as `what`, with the answer's headers; any other status is an
/// error.
async fn fetch_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: &str,
    what: &'static str,
) -> Result<(T, reqwest::header::HeaderMap), FetchError> {
    let (parts, body) = exchange(req, url).await?.into_parts();
    if !parts.status.is_success() {
        return Err(FetchError::Status {
            url: url.into(),
            status: parts.status,
        });
    }
    let value = serde_json::from_slice(&body).map_err(|source| FetchError::Parse {
        url: url.into(),
        what,
        source,
    })?;
    Ok((value, parts.headers))
}

/// GETs JSON with a bearer token; returns it and the `rel="next"` link, if any.
pub(super) async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<(Value, Option<String>), SignInError> {
    let req = http
        .get(url)
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/json");
    let (value, headers) = fetch_json(req, url, "JSON").await?;
    let next = headers
        .get(reqwest::header::LINK)
        .and_then(|l| l.to_str().ok())
        .and_then(next_link);
    Ok((value, next))
}

/// The `rel="next"` target of a `Link` header.
pub(super) fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\""))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// GETs a public document (no credentials) as `what`, bounded; any status but 2xx is an
/// error.
pub(super) async fn get_document<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &Url,
    what: &'static str,
) -> Result<T, FetchError> {
    let (value, _) = fetch_json(http.get(url.as_str()), url.as_str(), what).await?;
    Ok(value)
}
