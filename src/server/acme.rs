//! Certificates from an ACME CA (Let's Encrypt by default) with rustls-acme: TLS-ALPN-01 on
//! the TLS listener or HTTP-01 on the plain one. The account key and the certificate (with
//! its private key) live in our store, sealed with the store's key, so a restart serves the
//! cached certificate without a new order; rustls-acme renews a third before expiry and
//! retries failures with backoff.

use std::sync::Arc;

use futures_util::StreamExt;
use rustls_acme::caches::CompositeCache;
use rustls_acme::{AccountCache, AcmeConfig, CertCache, ResolvesServerCertAcme, UseChallenge};
use sha2::{Digest, Sha256};

use crate::config::AcmeOptions;
use crate::server::tls::TlsError;
use crate::store::Repo;

/// Our store as rustls-acme's cache.
#[derive(Clone)]
pub struct StoreCache(pub Repo);

fn cache_key(kind: &str, parts: &[String], directory: &str) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.update(directory.as_bytes());
    format!("acme_{kind}_{}", hex::encode(h.finalize()))
}

impl StoreCache {
    /// A sealed cache entry (`kind` is `cert` or `account`).
    async fn load(
        &self,
        kind: &str,
        names: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        let v = self
            .0
            .get_secret(&cache_key(kind, names, directory_url))
            .await?;
        Ok(v.map(|z| z.to_vec()))
    }

    /// Seals and stores an entry, on disk before this returns.
    async fn store(
        &self,
        kind: &str,
        names: &[String],
        directory_url: &str,
        value: &[u8],
    ) -> Result<(), crate::store::StoreError> {
        self.0
            .put_secret(&cache_key(kind, names, directory_url), value)
            .await?;
        self.0.flush().await
    }
}

#[async_trait::async_trait]
impl CertCache for StoreCache {
    type EC = crate::store::StoreError;
    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        self.load("cert", domains, directory_url).await
    }
    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.store("cert", domains, directory_url, cert).await
    }
}

#[async_trait::async_trait]
impl AccountCache for StoreCache {
    type EA = crate::store::StoreError;
    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        self.load("account", contact, directory_url).await
    }
    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.store("account", contact, directory_url, account).await
    }
}

/// The cached certificate's expiry, for the log.
async fn expiry(cache: StoreCache, host: String, directory: String) -> String {
    cache
        .load_cert(&[host], &directory)
        .await
        .ok()
        .flatten()
        .and_then(|pem| crate::server::tls::pem_not_after(&pem))
        .unwrap_or_default()
}

/// A running ACME client.
pub struct Acme {
    pub resolver: Arc<ResolvesServerCertAcme>,
    /// HTTP-01: the plain listener's `/.well-known/acme-challenge/{token}` service.
    pub http01: Option<rustls_acme::tower::TowerHttp01ChallengeService>,
    state: rustls_acme::AcmeState<crate::store::StoreError, crate::store::StoreError>,
    host: String,
    cache: StoreCache,
    directory: String,
    /// Set once a certificate is deployed (readiness).
    pub ready: super::health::CertReady,
    /// `acme_events` by event.
    pub events: Option<
        prometheus_client::metrics::family::Family<
            crate::metrics::EventLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    >,
}

/// The client configuration used to talk to the ACME directory: the platform's roots, or
/// only the CA in `--tls-directory-ca-file`.
fn client_config(opts: &AcmeOptions) -> Result<rustls::ClientConfig, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    match &opts.directory_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).map_err(TlsError::pem(path))? {
                roots
                    .add(c.map_err(TlsError::pem(path))?)
                    .map_err(TlsError::rustls(path))?;
            }
            Ok(rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth())
        }
        None => {
            use rustls_platform_verifier::ConfigVerifierExt;
            rustls::ClientConfig::with_platform_verifier().map_err(TlsError::PlatformRoots)
        }
    }
}

impl Acme {
    pub fn new(opts: &AcmeOptions, repo: Repo) -> Result<Self, TlsError> {
        let client = Arc::new(client_config(opts)?);
        let cache = StoreCache(repo);
        let kept = cache.clone();
        let mut cfg = AcmeConfig::new_with_client_config([opts.host.clone()], client)
            .cache(CompositeCache::new(cache.clone(), cache))
            .directory(&opts.directory_url)
            .challenge_type(if opts.http01 {
                UseChallenge::Http01
            } else {
                UseChallenge::TlsAlpn01
            });
        if let Some(c) = &opts.contact {
            cfg = cfg.contact_push(format!("mailto:{c}"));
        }
        let state = cfg.state();
        Ok(Self {
            resolver: state.resolver(),
            http01: opts.http01.then(|| state.http01_challenge_tower_service()),
            state,
            host: opts.host.clone(),
            cache: kept,
            directory: opts.directory_url.clone(),
            ready: super::health::CertReady::pending(),
            events: None,
        })
    }

    fn count(&self, event: &str) {
        if let Some(events) = &self.events {
            crate::metrics::count(events, event);
        }
    }

    /// Orders, caches and renews until told to stop; logs and counts every event.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(host = %self.host, "certificate: looking for a cached one, else ordering");
        loop {
            let event = tokio::select! {
                e = self.state.next() => e,
                _ = stop.changed() => return,
            };
            match event {
                Some(Ok(rustls_acme::EventOk::DeployedCachedCert)) => {
                    self.count("cached");
                    self.ready.set();
                    let expires = expiry(
                        self.cache.clone(),
                        self.host.clone(),
                        self.directory.clone(),
                    )
                    .await;
                    tracing::info!(host = %self.host, expires, "certificate: cached one in use")
                }
                Some(Ok(rustls_acme::EventOk::DeployedNewCert)) => {
                    self.count("issued");
                    self.ready.set();
                    // Stored right after deployment; the expiry shows on the next event.
                    tracing::info!(host = %self.host, "certificate: ready (newly issued)")
                }
                Some(Ok(rustls_acme::EventOk::CertCacheStore)) => {
                    self.count("stored");
                    let expires = expiry(
                        self.cache.clone(),
                        self.host.clone(),
                        self.directory.clone(),
                    )
                    .await;
                    tracing::info!(host = %self.host, expires, "certificate: stored for restarts")
                }
                Some(Ok(ok)) => {
                    self.count("other");
                    tracing::debug!(event = ?ok, "ACME")
                }
                Some(Err(e)) => {
                    self.count("error");
                    tracing::warn!(host = %self.host, error = %e, "certificate: the ACME CA refused or failed; retrying with backoff")
                }
                None => return,
            }
        }
    }
}
