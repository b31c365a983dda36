//! One process on its own store: rustls-acme's state machine orders and renews, keeps the
//! challenge answers in memory and caches the account and certificate in our store.

use std::sync::Arc;

use futures_util::StreamExt;
use rustls_acme::caches::CompositeCache;
use rustls_acme::{AcmeConfig, AcmeState, EventOk, ResolvesServerCertAcme, UseChallenge};

use super::{Progress, StoreCache, expiry};
use crate::config::AcmeOptions;
use crate::store::StoreError;

pub(super) struct Single {
    state: AcmeState<StoreError, StoreError>,
    cache: StoreCache,
    directory: String,
}

impl Single {
    pub(super) fn new(
        opts: &AcmeOptions,
        client: Arc<rustls::ClientConfig>,
        cache: StoreCache,
    ) -> Self {
        let mut cfg = AcmeConfig::new_with_client_config(opts.names(), client)
            .cache(CompositeCache::new(cache.clone(), cache.clone()))
            .directory(&opts.directory_url)
            .challenge_type(if opts.http01 {
                UseChallenge::Http01
            } else {
                UseChallenge::TlsAlpn01
            });
        if let Some(c) = &opts.contact {
            cfg = cfg.contact_push(format!("mailto:{c}"));
        }
        Self {
            state: cfg.state(),
            cache,
            directory: opts.directory_url.clone(),
        }
    }

    pub(super) fn resolver(&self) -> Arc<ResolvesServerCertAcme> {
        self.state.resolver()
    }

    pub(super) fn http01_route(&self) -> axum::Router {
        axum::Router::new().route_service(
            super::answers::HTTP01_PATH,
            self.state.http01_challenge_tower_service(),
        )
    }

    pub(super) async fn run(
        mut self,
        progress: Progress,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let host = progress.host.as_str();
        tracing::info!(host, "certificate: looking for a stored one, else ordering");
        loop {
            let event = tokio::select! {
                e = self.state.next() => e,
                _ = stop.changed() => return,
            };
            match event {
                Some(Ok(EventOk::DeployedCachedCert)) => {
                    progress.count("cached");
                    progress.ready.set();
                    let expires = expiry(&self.cache, host, &self.directory).await;
                    tracing::info!(host, expires, "certificate: stored one in use")
                }
                Some(Ok(EventOk::DeployedNewCert)) => {
                    progress.count("issued");
                    progress.ready.set();
                    // Stored right after deployment; the expiry shows on the next event.
                    tracing::info!(host, "certificate: ready (newly issued)")
                }
                Some(Ok(EventOk::CertCacheStore)) => {
                    progress.count("stored");
                    let expires = expiry(&self.cache, host, &self.directory).await;
                    tracing::info!(host, expires, "certificate: stored for restarts")
                }
                Some(Ok(ok)) => {
                    progress.count("other");
                    tracing::debug!(event = ?ok, "ACME")
                }
                Some(Err(e)) => {
                    progress.count("error");
                    tracing::warn!(host, error = %e, "certificate: the ACME CA refused or failed; retrying with backoff")
                }
                None => return,
            }
        }
    }
}
