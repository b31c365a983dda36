//! Certificates from an ACME CA (Let's Encrypt by default): TLS-ALPN-01 on the TLS listener
//! or HTTP-01 on the plain one. The account key and the certificate (with its private key)
//! live in our store, sealed with the store's key, so a restart serves the stored certificate
//! without a new order. Both ways renew a third before expiry and retry failures with backoff.
//!
//! - [`single`]: one process on its own store. rustls-acme's state machine orders, renews and
//!   keeps the challenge answers in memory.
//! - [`shared`]: several processes on one database (replicas behind a load balancer). One
//!   orders at a time under the store's lock; the answers go to the store, so the CA's
//!   validation may reach any replica ([`answers`]); every replica serves what is stored.
//!
//! Both keep the certificate under the same name, so a data directory moved into PostgreSQL
//! keeps its certificate.

pub mod answers;
mod shared;
mod single;

pub use shared::lock_name;

use std::sync::Arc;

use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::server::ResolvesServerCert;
use rustls_acme::{AccountCache, CertCache};
use sha2::{Digest, Sha256};

use crate::config::AcmeOptions;
use crate::metrics::EventLabels;
use crate::server::health::CertReady;
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

/// The stored certificate's expiry, for the log.
async fn expiry(cache: &StoreCache, host: &str, directory: &str) -> String {
    cache
        .load_cert(&[host.to_string()], directory)
        .await
        .ok()
        .flatten()
        .and_then(|pem| crate::server::tls::pem_not_after(&pem))
        .unwrap_or_default()
}

/// A running ACME client.
pub struct Acme {
    /// The certificate for handshakes (and, in one process, the TLS-ALPN-01 answers).
    pub resolver: Arc<dyn ResolvesServerCert>,
    /// HTTP-01: the plain listener's `/.well-known/acme-challenge/{token}` route.
    pub http01: Option<Router>,
    /// TLS-ALPN-01 answers kept in a shared store, looked up when a validation connects.
    pub tls_alpn01: Option<Arc<answers::Answers>>,
    /// Set once a certificate is deployed (readiness).
    pub ready: CertReady,
    /// `acme_events` by event.
    pub events: Option<Family<EventLabels, Counter>>,
    host: String,
    driver: Driver,
}

enum Driver {
    Single(single::Single),
    Shared(shared::Shared),
}

/// What a driver tells the rest of the proxy.
struct Progress {
    host: String,
    ready: CertReady,
    events: Option<Family<EventLabels, Counter>>,
}

impl Progress {
    fn count(&self, event: &str) {
        if let Some(events) = &self.events {
            crate::metrics::count(events, event);
        }
    }
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
    /// The client for `opts`: on a store other processes share, the replicated one.
    pub fn new(opts: &AcmeOptions, repo: Repo) -> Result<Self, TlsError> {
        let client = Arc::new(client_config(opts)?);
        let cache = StoreCache(repo.clone());
        let ready = CertReady::pending();
        let (resolver, http01, tls_alpn01, driver) = if repo.is_shared() {
            let answers = Arc::new(answers::Answers::new(repo, &opts.names()));
            let driver = shared::Shared::new(opts, client, cache, answers.clone());
            let http01 = opts.http01.then(|| answers.clone().http01_route());
            let tls_alpn01 = (!opts.http01).then_some(answers);
            let resolver: Arc<dyn ResolvesServerCert> = driver.resolver();
            (resolver, http01, tls_alpn01, Driver::Shared(driver))
        } else {
            let driver = single::Single::new(opts, client, cache);
            let resolver: Arc<dyn ResolvesServerCert> = driver.resolver();
            let http01 = opts.http01.then(|| driver.http01_route());
            (resolver, http01, None, Driver::Single(driver))
        };
        Ok(Self {
            resolver,
            http01,
            tls_alpn01,
            ready,
            events: None,
            host: opts.host.clone(),
            driver,
        })
    }

    /// Orders, stores and renews until told to stop; logs and counts every event.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        let progress = Progress {
            host: self.host,
            ready: self.ready,
            events: self.events,
        };
        match self.driver {
            Driver::Single(d) => d.run(progress, stop).await,
            Driver::Shared(d) => d.run(progress, stop).await,
        }
    }
}
