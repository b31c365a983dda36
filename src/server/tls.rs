//! HTTPS: the rustls server configuration (TLS 1.2+, ALPN h2 and http/1.1), certificates
//! from PEM files reloaded when they change, and the plain listener's redirect to https.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::PublicOrigin;
use crate::metrics::EventLabels;

/// How often certificate files are looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// HSTS on every https answer: a year, as browsers expect for a site that is https only.
pub const HSTS: &str = "max-age=31536000";

/// A certificate, key or CA file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: std::path::PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", path.display())]
    NoCertificate { path: std::path::PathBuf },
    #[error("{}: {source}", path.display())]
    Rustls {
        path: std::path::PathBuf,
        source: rustls::Error,
    },
    #[error("{} and {} do not belong together: {source}", cert.display(), key.display())]
    Mismatch {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: rustls::Error,
    },
    #[error("the system's CA roots: {0}")]
    PlatformRoots(rustls::Error),
}

impl TlsError {
    /// `source` as the error of the file at `path`.
    pub fn pem(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Pem { path, source }
    }

    pub fn rustls(path: &Path) -> impl FnOnce(rustls::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Rustls { path, source }
    }
}

/// The ALPN protocols offered to clients (MCP clients use both).
pub fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// A server configuration answering with `resolver`'s certificate, for handshakes that name
/// `origin`'s host, one of `more_names` (an ACME certificate's `--tls-host`, which may be
/// another name and must pass its own validation handshakes, and the hosts of the servers
/// routed by host name) or no host at all ([`OnlyOurName`]).
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    origin: &PublicOrigin,
    more_names: &[String],
    extra_alpn: &[&[u8]],
) -> rustls::ServerConfig {
    let resolver = Arc::new(OnlyOurName {
        inner: resolver,
        origin: origin.clone(),
        more_names: more_names.iter().map(|n| n.to_ascii_lowercase()).collect(),
    });
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn();
    cfg.alpn_protocols
        .extend(extra_alpn.iter().map(|p| p.to_vec()));
    cfg
}

/// Refuses a handshake whose server name (SNI) is another host's: no certificate, so rustls
/// ends it with an alert. We serve one host, so a client naming another one is lost or is
/// probing (domain fronting, certificate harvesting); neither is helped by our certificate.
/// A client that names no host (one dialling an IP address) is served as before, and the
/// `Host` check (`request_head::host_allowed`) still decides each request.
#[derive(Debug)]
struct OnlyOurName {
    inner: Arc<dyn ResolvesServerCert>,
    origin: PublicOrigin,
    more_names: Vec<String>,
}

impl ResolvesServerCert for OnlyOurName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name()
            && !self.origin.names_host(name)
            && !self
                .more_names
                .iter()
                .any(|h| name.trim_end_matches('.').eq_ignore_ascii_case(h))
        {
            tracing::debug!(server_name = name, "TLS handshake for another host refused");
            return None;
        }
        self.inner.resolve(hello)
    }
}

/// How the TLS listener completes handshakes.
#[derive(Clone)]
pub struct TlsAccept {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// TLS-ALPN-01 answers kept in a store other processes share: a validation's handshake is
    /// read first and answered from there, since another replica may have placed the order.
    pub shared_alpn_answers: Option<Arc<crate::server::acme::answers::Answers>>,
}

impl TlsAccept {
    pub fn new(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self {
            acceptor,
            shared_alpn_answers: None,
        }
    }

    /// Completes the handshake. `None` when the connection was an ACME validation answered
    /// here, or a handshake that failed: nothing more to serve on it.
    pub async fn handshake<IO>(&self, stream: IO) -> Option<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Some(answers) = &self.shared_alpn_answers else {
            let stream = self.acceptor.accept(stream).await.ok()?;
            // A TLS-ALPN-01 validation answered by rustls-acme: the handshake was the point.
            let validation = stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN);
            return (!validation).then_some(stream);
        };
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await
                .ok()?;
        let hello = start.client_hello();
        let validation = hello
            .alpn()
            .is_some_and(|mut p| p.next() == Some(ACME_TLS_ALPN) && p.next().is_none());
        if !validation {
            return start.into_stream(self.acceptor.config().clone()).await.ok();
        }
        let name = hello.server_name().map(str::to_string);
        let config = answers.tls_alpn01_config(name.as_deref()).await?;
        // The CA reads the certificate in the handshake and closes.
        let _ = start.into_stream(config).await;
        None
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validations (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Loads a PEM certificate chain and its key, checking that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(TlsError::pem(cert))?
        .collect::<Result<_, _>>()
        .map_err(TlsError::pem(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(TlsError::pem(key))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(TlsError::rustls(key))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    Ok(pair)
}

/// A certificate that can be replaced while the server runs (none yet: handshakes fail).
#[derive(Debug, Default)]
pub struct Swappable(RwLock<Option<Arc<CertifiedKey>>>);

impl Swappable {
    pub fn new(pair: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Some(Arc::new(pair)))))
    }

    /// Serves `pair` from the next handshake on.
    pub fn swap(&self, pair: CertifiedKey) {
        if let Ok(mut c) = self.0.write() {
            *c = Some(Arc::new(pair));
        }
    }

    /// The end-entity certificate now served.
    pub fn current_leaf(&self) -> Option<CertificateDer<'static>> {
        self.0
            .read()
            .ok()
            .and_then(|c| c.as_ref().and_then(|c| c.cert.first().cloned()))
    }
}

impl ResolvesServerCert for Swappable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|c| c.clone())
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reloads the files into `cert` whenever they change (looked at every few seconds, never
/// on a handshake); a broken pair is logged and the served certificate kept.
pub async fn watch_files(
    cert: Arc<Swappable>,
    cert_file: PathBuf,
    key_file: PathBuf,
    events: Family<EventLabels, Counter>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = (stamp(&cert_file), stamp(&key_file));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
            _ = stop.changed() => return,
        }
        let now = (stamp(&cert_file), stamp(&key_file));
        if now == seen {
            continue;
        }
        seen = now;
        match load_pair(&cert_file, &key_file) {
            Ok(pair) => {
                let expires = pair
                    .cert
                    .first()
                    .and_then(|c| not_after(c))
                    .unwrap_or_default();
                cert.swap(pair);
                tracing::info!(cert = %cert_file.display(), expires, "certificate files changed: reloaded");
                crate::metrics::count(&events, "reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate files changed but cannot be used; keeping the current certificate");
                crate::metrics::count(&events, "refused");
            }
        }
    }
}

/// The plain listener when HTTPS is on: everything is redirected to the same path and query
/// at the external origin (its port, which Docker may map, not the TLS listener's), or at
/// the origin of the server routed by the host the request names.
pub fn redirect_router(site: &crate::config::Site, acme: Option<Router>) -> Router {
    let site = site.clone();
    let redirect = move |req: Request| {
        // Two `Host` lines name no one server: the proxy's own origin then.
        let origin = crate::single_header::text(req.headers(), header::HOST)
            .and_then(|h| site.hosted_at(h))
            .map_or_else(|| site.home.clone(), |s| s.origin.clone());
        std::future::ready(same_path_at(&origin, &req, StatusCode::PERMANENT_REDIRECT))
    };
    let base = acme.unwrap_or_default();
    base.fallback(redirect)
}

/// A redirect (`status`) to the request's path and query at `origin`.
pub fn same_path_at(
    origin: &PublicOrigin,
    req: &Request,
    status: StatusCode,
) -> axum::response::Response {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut resp = status.into_response();
    if let Ok(v) = HeaderValue::from_str(&origin.join(pq)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Adds HSTS to every answer of the https side.
pub fn with_hsts(app: Router) -> Router {
    app.layer(
        tower_http::set_header::SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        ),
    )
}

/// When a certificate (DER) expires, for the log.
pub fn not_after(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.to_string())
}

/// The expiry of the first certificate in a PEM text.
pub fn pem_not_after(pem: &[u8]) -> Option<String> {
    let first = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    not_after(&first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_der_and_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&key).unwrap();
        assert!(not_after(cert.der()).unwrap().contains("2031"));
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        assert!(pem_not_after(pem.as_bytes()).unwrap().contains("May 17"));
    }
}
