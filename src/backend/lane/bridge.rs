//! The exchange with a stdio backend (the bridge): the request, read and checked by the lane,
//! handed to [`Backend::serve`] exactly as the router's `proxy` handler hands it, and the
//! answer written by the lane.

use std::time::Instant;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Lane, Plan, gone, unless_gone};
use crate::backend::http::Upstream;
use crate::backend::{Backend, Handoff};
use crate::gate::Caller;

impl Lane {
    /// Hands one request to the bridge and writes its answer; `Ok(false)` when the client
    /// connection ends after it, `Err` when it broke or its client left before the end. The
    /// client is watched meanwhile (what it sends is kept in `buf`), as hyper watches it:
    /// one that leaves has its call cancelled at the child.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn bridge<I>(
        &self,
        backend: &dyn Backend,
        client: &mut I,
        buf: &mut BytesMut,
        mut plan: Plan,
        caller: &Caller,
        body: Bytes,
        started: Instant,
    ) -> std::io::Result<bool>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(parts) = plan.parts.take() else {
            // Every plan of a bridging lane carries its parts (`parse`).
            return Ok(false);
        };
        let handoff = Handoff {
            caller,
            site: &self.shared.site,
            repo: &self.shared.repo,
            client: plan.from,
            upstream: Upstream {
                assertion: None,
                provider_token: None,
            },
        };
        let req = http::Request::from_parts(parts, Body::from(body));
        let resp = unless_gone(backend.serve(handoff, req), client, buf)
            .await
            .ok_or_else(gone)?;
        self.answer(client, &plan, resp, started, Some(buf)).await
    }
}
