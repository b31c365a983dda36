//! Request bodies: every one must arrive within `--body-read-timeout`, and the answer when
//! one cannot be read (too large: 413; too slow: 408; cut off: 400).
//!
//! A client that sends a complete head and then trickles its body (or stops) would otherwise
//! hold a connection slot of `--max-connections` for as long as it likes, without a token.
//! The deadline is total, counted from the end of the head: tower-http's
//! `RequestBodyTimeoutLayer` restarts its timer at every frame, so one byte every few
//! seconds would keep a connection forever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::error::jsonrpc_error;

/// The body did not arrive within `--body-read-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within --body-read-timeout")]
pub struct BodyTimedOut;

/// `body`, failing with [`BodyTimedOut`] once `limit` has passed. A body already complete
/// (no body, or one read with its head) is returned as it is: no timer for it.
pub fn with_deadline(body: Body, limit: Duration) -> Body {
    if http_body::Body::is_end_stream(&body) {
        return body;
    }
    Body::new(Deadlined {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limit)),
    })
}

struct Deadlined {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Deadlined {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// Over the size limit of its route (`--max-body`, or the forms' limit).
    TooLarge,
    /// Not complete within `--body-read-timeout`.
    TooSlow,
    /// The connection failed or the framing was bad.
    Broken,
}

impl Unread {
    /// Classifies a body error by its sources.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return Self::TooLarge;
            }
            if s.is::<BodyTimedOut>() {
                return Self::TooSlow;
            }
            source = s.source();
        }
        Self::Broken
    }

    /// The JSON-RPC answer (MCP endpoint and proxied paths).
    pub fn jsonrpc(self) -> Response {
        match self {
            Self::TooLarge => jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this server accepts",
            ),
            Self::TooSlow => jsonrpc_error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ),
            Self::Broken => jsonrpc_error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            ),
        }
    }
}

/// The whole body (every route has a size limit around it) or the answer saying why not.
/// Nothing is sent upstream before this returns, so a body over the limit reaches no one.
pub async fn read_whole(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        let why = Unread::of(&e);
        tracing::debug!(error = %crate::error::chain(&e), ?why, "request body not read");
        why.jsonrpc()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_stops_fails_at_the_deadline() {
        use futures_util::StreamExt;
        let first = futures_util::stream::once(async { Ok::<_, axum::Error>(Bytes::from("{")) });
        let stalled = first.chain(futures_util::stream::pending());
        let body = with_deadline(Body::from_stream(stalled), Duration::from_millis(50));
        let Err(answer) = read_whole(body).await else {
            panic!("a stalled body was read")
        };
        assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn whole_and_limited_bodies() {
        let body = with_deadline(Body::from("abc"), Duration::from_secs(5));
        assert_eq!(read_whole(body).await.unwrap(), "abc");
        let limited = Body::new(http_body_util::Limited::new(Body::from("abcdef"), 3));
        let Err(answer) = read_whole(limited).await else {
            panic!("a body over the limit was read")
        };
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
