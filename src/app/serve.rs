//! Running: the listeners and their workers, the background tasks (sweeping the store,
//! ending idle stdio sessions, the metrics listener, certificate files and ACME), and an
//! orderly stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Prepared, RunError, SWEEP_INTERVAL};
use crate::server::AppState;
use crate::{backend, server};

/// Serves until `shutdown` resolves, then stops background tasks and flushes the store.
pub async fn serve(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Prepared {
        listener,
        state,
        shutdown_grace,
        workers,
        fast_lane,
        tls_listener,
        tls,
        limits,
        metrics_listener,
        ..
    } = prepared;
    let (header_read_timeout, max_connections) =
        (limits.header_read_timeout, limits.max_connections);
    let repo = state.repo().clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweep_loop(state.clone(), stop_rx.clone()));
    let revocations = repo.revocations().map(|rx| {
        tokio::spawn(forget_revoked(
            state.oauth.tokens.clone(),
            rx,
            stop_rx.clone(),
        ))
    });
    let housekeepers: Vec<_> = state
        .backends()
        .filter_map(|(_, b)| Some((b.housekeeping_interval()?, b.clone())))
        .map(|(every, b)| tokio::spawn(housekeeping_loop(b, every, stop_rx.clone())))
        .collect();

    // The policy files (the shared one and each server's own), looked at for changes until
    // the stop.
    let mut policies: Vec<Arc<crate::policy::PolicyFile>> = Vec::new();
    for file in state
        .every_server()
        .filter_map(|a| a.relay.as_ref()?.policy().cloned())
    {
        if !policies.iter().any(|p| Arc::ptr_eq(p, &file)) {
            policies.push(file);
        }
    }
    let _policy_watch: Vec<_> = policies
        .into_iter()
        .map(|file| tokio::spawn(file.watch(stop_tx.subscribe())))
        .collect();

    let metrics_task = metrics_listener.map(|l| {
        let app = server::metrics_router(state.clone());
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let served = axum::serve(
                l,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the metrics listener failed");
            }
        })
    });
    let state_for_shutdown = state.clone();
    let files = tls
        .as_ref()
        .and_then(|t| t.files.clone())
        .map(|(cert, c, k)| {
            tokio::spawn(server::tls::watch_files(
                cert,
                c,
                k,
                state.metrics().certificate_files.clone(),
                stop_tx.subscribe(),
            ))
        });
    let site = state.site().clone();
    let hsts = tls.is_some().then_some(server::tls::HSTS);
    // The policy and the audit log read every request and answer: with either on, the
    // router serves every request (the lane would pass them by).
    let lane = (fast_lane && state.relay.is_none())
        .then(|| {
            let shared = backend::lane::Shared {
                site: state.site().clone(),
                repo: state.repo().clone(),
                tokens: state.oauth.tokens.clone(),
                metrics: state.signin.metrics.clone(),
                max_body: state.max_body,
                body_read_timeout: state.body_read_timeout,
            };
            match (&state.http_backend, &state.backend) {
                (Some(http), _) => {
                    let signs = state.assertion.is_some();
                    backend::lane::Lane::new(http.clone(), shared, signs, hsts, workers)
                }
                (None, Some(stdio)) if stdio.kind() == "stdio" => {
                    Some(backend::lane::Lane::bridging(stdio.clone(), shared, hsts))
                }
                _ => None,
            }
        })
        .flatten()
        .map(Arc::new);
    let homes = server::affinity::Homes::of(&state);
    let placed = state.metrics().connections_placed.clone();
    let mut acme_task = None;
    let apps = match tls {
        Some(mut t) => {
            let http01 = t.acme.as_mut().and_then(|a| a.http01.take());
            if let Some(acme) = t.acme.take() {
                acme_task = Some(tokio::spawn(acme.run(stop_tx.subscribe())));
            }
            let plain_routes = http01
                .unwrap_or_default()
                .merge(server::health::routes(state.clone()));
            server::workers::Apps {
                main: server::tls::with_hsts(server::router(state)),
                plain: Some(server::tls::redirect_router(&site, Some(plain_routes))),
                tls: Some(t.accept),
                lane,
                header_read_timeout,
                homes,
                placed,
            }
        }
        None => server::workers::Apps {
            main: server::router(state),
            plain: None,
            tls: None,
            lane,
            header_read_timeout,
            homes,
            placed,
        },
    };
    let mut workers = server::workers::Workers::start(workers, apps).map_err(RunError::Serve)?;
    // Accept until the shutdown signal, then let requests finish; an open SSE stream never
    // finishes by itself, so after `--shutdown-grace` the remaining connections are dropped
    // and the process still exits cleanly.
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        // At --max-connections, accepting waits (new clients queue in the kernel's backlog).
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept_either(&listener, tls_listener.as_ref()) => match accepted {
                Ok((stream, peer, from)) => match stream.into_std() {
                    Ok(stream) => workers.dispatch(stream, peer, from, slot),
                    Err(e) => tracing::debug!(error = %e, "could not hand over a connection"),
                },
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drop(tls_listener);
    workers.stop();
    if tokio::time::timeout(shutdown_grace, workers.drained())
        .await
        .is_err()
    {
        tracing::info!(
            grace_secs = shutdown_grace.as_secs(),
            "connections still open after the grace period: closing them"
        );
    }
    for (_, backend) in state_for_shutdown.backends() {
        backend.shutdown().await;
    }
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    if let Some(r) = revocations {
        let _ = r.await;
    }
    if let Some(f) = files {
        let _ = f.await;
    }
    if let Some(a) = acme_task {
        let _ = a.await;
    }
    if let Some(m) = metrics_task {
        let _ = m.await;
    }
    for r in housekeepers {
        let _ = r.await;
    }
    if let Err(e) = repo.flush().await {
        tracing::error!(error = %e, "final store flush failed");
    }
    workers.finish().await;
    Ok(())
}

/// The next connection on the plain listener or the TLS one.
async fn accept_either(
    plain: &TcpListener,
    tls: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr, server::workers::Listener)> {
    use server::workers::Listener;
    let secure = async {
        match tls {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = plain.accept() => r.map(|(s, a)| (s, a, Listener::Plain)),
        r = secure => r.map(|(s, a)| (s, a, Listener::Tls)),
    }
}

/// The backend's upkeep (idle stdio sessions ended) until told to stop.
async fn housekeeping_loop(
    backend: Arc<dyn backend::Backend>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        backend.housekeep();
    }
}

/// Makes the gate's cache forget what other processes on the store revoke, until told to
/// stop. A receiver that fell behind lost some: it forgets everything.
async fn forget_revoked(
    tokens: Arc<crate::gate::TokenCache>,
    mut revocations: tokio::sync::broadcast::Receiver<crate::store::Revocation>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            r = revocations.recv() => match r {
                Ok(r) => tokens.apply(&r),
                Err(RecvError::Lagged(_)) => tokens.apply(&crate::store::Revocation::Missed),
                Err(RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Deletes expired records every [`SWEEP_INTERVAL`] until told to stop.
async fn sweep_loop(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let repo = state.repo().clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Some(l) = &state.rate_limiter {
            l.prune();
        }
        match repo.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired records"),
            Err(e) => tracing::warn!(error = %e, "store sweep failed"),
        }
    }
}
