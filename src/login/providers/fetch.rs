//! Talking to a provider over HTTP: our client (no redirects, timeouts), every answer read
//! bounded, JSON answers and GitHub's paged lists.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::{ProviderError, SignInError, bad};

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
        .map_err(|e| {
            bad(format!(
                "the HTTP client could not be set up: {}",
                crate::error::chain(&e)
            ))
        })
}

/// oauth2's HTTP calls over our reqwest client.
pub(super) async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_bounded(resp).await.map_err(HttpError)?;
    let mut out = http::Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct HttpError(String);

pub(super) async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err("the answer is too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GETs JSON with a bearer token; returns it and the `rel="next"` link, if any.
pub(super) async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<(Value, Option<String>), SignInError> {
    let resp = http
        .get(url)
        .bearer_auth(token)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| SignInError::Answer(format!("{url}: {e}")))?;
    let status = resp.status();
    let next = resp
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|l| l.to_str().ok())
        .and_then(next_link);
    let body = read_bounded(resp).await.map_err(SignInError::Answer)?;
    if !status.is_success() {
        return Err(SignInError::Answer(format!("{url} answered {status}")));
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| SignInError::Answer(format!("{url}: not JSON: {e}")))?;
    Ok((v, next))
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

/// GETs a public document (no credentials), bounded; any status but 2xx is an error.
pub(super) async fn get_document(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    // The whole chain: reqwest's own message ("error sending request") hides the cause
    // (refused, no such host, certificate) in its sources.
    let resp = http
        .get(url.as_str())
        .send()
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let status = resp.status();
    let body = read_bounded(resp).await?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    Ok(body)
}
