//! Automatic HTTPS against a real ACME server: Debian's `pebble` (the Let's Encrypt test CA)
//! with `pebble-challtestsrv` answering DNS for the test name with 127.0.0.1, and pebble's
//! validation ports pointed at our listeners. Skipped (with a note) where pebble is not
//! installed; `.ci/run` installs it.

use std::path::Path;
use std::process::Stdio;

use reqwest::StatusCode;
use tokio::process::{Child, Command};

use crate::helpers::{TestProxy, start_proxy_with};

const HOST: &str = "acme-test.example";
/// The host name of a server of `--config` routed by host.
const FILES: &str = "files.acme-test.example";

fn free_port() -> u16 {
    crate::helpers::unused_port()
}

fn udp_free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pebble {
    _pebble: Child,
    _dns: Child,
    dir: tempfile::TempDir,
    directory: String,
    management: String,
    ca_pem: String,
}

fn installed() -> bool {
    ["pebble", "pebble-challtestsrv"].iter().all(|b| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Without pebble the tests are skipped with a note, except in CI, which installs it.
fn skip() -> bool {
    if installed() {
        return false;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must install pebble (apt-get install pebble)"
    );
    eprintln!("pebble is not installed (apt-get install pebble): skipped");
    true
}

/// pebble's own listener certificate: a leaf (CA:FALSE) for 127.0.0.1 from a throwaway CA.
fn listener_cert(dir: &Path) -> String {
    let cert = crate::helpers::loopback_cert();
    std::fs::write(dir.join("pebble-cert.pem"), &cert.leaf).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), &cert.key).unwrap();
    std::fs::write(dir.join("pebble-ca.pem"), &cert.ca).unwrap();
    cert.ca
}

/// Starts pebble and its DNS server, retrying on fresh ports when either exits early (a port
/// taken between choosing and binding it). pebble makes its keys at startup, which is slow on
/// a busy machine: it gets a minute; its log is in the panic message if it never answers.
async fn start_pebble(http_port: u16, tls_port: u16) -> Pebble {
    start_pebble_resolving_to(http_port, tls_port, "127.0.0.1").await
}

/// pebble whose DNS answers every name with `address`.
async fn start_pebble_resolving_to(http_port: u16, tls_port: u16, address: &str) -> Pebble {
    let mut log = String::new();
    for _ in 0..3 {
        match try_start_pebble(http_port, tls_port, address).await {
            Ok(p) => return p,
            Err(e) => log = e,
        }
    }
    panic!("pebble did not start:\n{log}");
}

async fn try_start_pebble(http_port: u16, tls_port: u16, address: &str) -> Result<Pebble, String> {
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = listener_cert(dir.path());
    let (api, mgmt, dns, dns_mgmt) = (free_port(), free_port(), udp_free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{api}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.path().join("pebble-cert.pem"),
        "privateKey": dir.path().join("pebble-key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let mut dns_server = Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            address,
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{dns_mgmt}"),
        ])
        .stdout(Stdio::null())
        .stderr(log("challtestsrv.log"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut pebble = Command::new("pebble")
        .args([
            "-config",
            &dir.path().join("pebble.json").display().to_string(),
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
        ])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = pebble_client(&ca_pem);
    let directory = format!("https://127.0.0.1:{api}/dir");
    for _ in 0..600 {
        if client.get(&directory).send().await.is_ok() {
            return Ok(Pebble {
                _pebble: pebble,
                _dns: dns_server,
                directory,
                management: format!("https://127.0.0.1:{mgmt}"),
                ca_pem,
                dir,
            });
        }
        let exited = matches!(pebble.try_wait(), Ok(Some(_)))
            || matches!(dns_server.try_wait(), Ok(Some(_)));
        if exited {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = pebble.kill().await;
    let _ = dns_server.kill().await;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    Err(format!(
        "pebble: {}{}\nchalltestsrv: {}",
        read("pebble.log"),
        read("pebble.err"),
        read("challtestsrv.log")
    ))
}

/// A client trusting only `root` that reaches `name` at `address`.
fn trusting(
    root: &reqwest::Certificate,
    name: &str,
    address: [u8; 4],
    port: u16,
) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([root.clone()])
        .resolve(name, (address, port).into())
        .build()
        .unwrap()
}

/// A client trusting pebble's listener certificate.
fn pebble_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

impl Pebble {
    fn client(&self) -> reqwest::Client {
        pebble_client(&self.ca_pem)
    }

    /// The root pebble issues under (it changes every start).
    async fn issuing_root(&self) -> reqwest::Certificate {
        let pem = self
            .client()
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        reqwest::Certificate::from_pem(&pem).unwrap()
    }
}

impl Pebble {
    /// The flags of a proxy listening on `address` that gets its certificate for [`HOST`]
    /// from this pebble (by HTTP-01 or TLS-ALPN-01).
    fn proxy_args(
        &self,
        address: &str,
        http_port: u16,
        tls_port: u16,
        http01: bool,
    ) -> Vec<String> {
        let ca = self.dir.path().join("pebble-ca.pem").display().to_string();
        let mut args = vec![
            "--listen".to_string(),
            format!("{address}:{http_port}"),
            "--tls-listen".into(),
            format!("{address}:{tls_port}"),
            "--external-url".into(),
            format!("https://{HOST}:{tls_port}"),
            "--tls-accept-tos".into(),
            "--tls-directory-url".into(),
            self.directory.clone(),
            "--tls-directory-ca-file".into(),
            ca,
        ];
        if http01 {
            args.extend(["--tls-challenge".into(), "http-01".into()]);
        }
        args
    }
}

async fn proxy(
    pebble: &Pebble,
    http_port: u16,
    tls_port: u16,
    http01: bool,
    data: tempfile::TempDir,
) -> TestProxy {
    let mut args = pebble.proxy_args("127.0.0.1", http_port, tls_port, http01);
    args.extend(["--tls-contact-email".into(), "ops@example.com".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_proxy_with(&args, mcp_auth_proxy::clock::Clock::system(), data).await
}

/// Fetches our metadata over HTTPS trusting only pebble's root; returns the leaf served.
async fn fetch_metadata(pebble: &Pebble, tls_port: u16, wait_secs: u64) -> Vec<u8> {
    fetch_metadata_at(pebble, [127, 0, 0, 1], tls_port, wait_secs).await
}

/// [`fetch_metadata`] from the listener at `address`.
async fn fetch_metadata_at(
    pebble: &Pebble,
    address: [u8; 4],
    tls_port: u16,
    wait_secs: u64,
) -> Vec<u8> {
    let root = pebble.issuing_root().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([root])
        .tls_info(true)
        .resolve(HOST, (address, tls_port).into())
        .build()
        .unwrap();
    let url = format!("https://{HOST}:{tls_port}/.well-known/oauth-authorization-server");
    let mut last = String::new();
    for _ in 0..(wait_secs * 5) {
        match client.get(&url).send().await {
            Ok(r) => {
                assert_eq!(r.status(), StatusCode::OK);
                let leaf = r
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|i| i.peer_certificate())
                    .unwrap()
                    .to_vec();
                let meta: serde_json::Value = r.json().await.unwrap();
                // Ours (with `--config`, the default server's issuer under it).
                let issuer = meta["issuer"].as_str().unwrap_or_default();
                assert!(
                    issuer.starts_with(&format!("https://{HOST}:{tls_port}")),
                    "{meta}"
                );
                return leaf;
            }
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("no trusted certificate within {wait_secs} s: {last}");
}

/// pebble on two fresh ports and a proxy obtaining its certificate from it (by HTTP-01 or
/// TLS-ALPN-01) in a new data directory.
async fn issued(http01: bool) -> (Pebble, u16, u16, TestProxy) {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = start_pebble(http_port, tls_port).await;
    let data = tempfile::tempdir().unwrap();
    let p = proxy(&pebble, http_port, tls_port, http01, data).await;
    (pebble, http_port, tls_port, p)
}

#[tokio::test]
async fn a_certificate_by_tls_alpn_01_is_cached_across_a_restart() {
    if skip() {
        return;
    }
    let (pebble, http_port, tls_port, p) = issued(false).await;
    let first = fetch_metadata(&pebble, tls_port, 30).await;
    // Ready once the certificate is in place; the probe answers on the plain listener too.
    let ready: serde_json::Value =
        crate::helpers::get_json(format!("http://127.0.0.1:{http_port}/readyz")).await;
    assert_eq!(ready["checks"]["certificate"], "ok", "{ready}");
    assert_eq!(ready["status"], "ready");

    // A restart serves the cached certificate: the same one, no new order.
    let data = p.stop().await;
    let p = proxy(&pebble, http_port, tls_port, false, data).await;
    let again = fetch_metadata(&pebble, tls_port, 10).await;
    assert_eq!(again, first, "the cached certificate, not a new one");
    drop(p);
}

#[tokio::test]
async fn a_certificate_by_http_01_on_the_plain_listener() {
    if skip() {
        return;
    }
    let (pebble, http_port, tls_port, p) = issued(true).await;
    fetch_metadata(&pebble, tls_port, 30).await;
    // Everything else on the plain listener goes to https.
    let r = crate::helpers::client()
        .get(format!("http://127.0.0.1:{http_port}/mcp?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers()[reqwest::header::LOCATION],
        format!("https://{HOST}:{tls_port}/mcp?x=1").as_str()
    );
    drop(p);
}

/// Go's autocert file for a cached entry of ours: the key as SEC 1 (`EC PRIVATE KEY`), then
/// the chain, as sigbit/mcp-auth-proxy leaves it in `certs/<host>`.
fn autocert_file(cached: &[u8]) -> String {
    use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
    use rustls::pki_types::pem::PemObject;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(cached).unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.secret_pkcs8_der(),
    )
    .unwrap();
    let sec1: EcPrivateKeyRfc5915Der = pair.private_key().as_der().unwrap();
    let mut out = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.as_ref()));
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(cached) {
        out.push_str(&pem::encode(&pem::Pem::new(
            "CERTIFICATE",
            cert.unwrap().to_vec(),
        )));
    }
    out
}

#[tokio::test]
async fn sigbits_certificate_is_migrated_and_served_without_a_new_order() {
    use rustls_acme::CertCache;
    if skip() {
        return;
    }
    // A certificate pebble issued, left in a directory laid out as sigbit's.
    let (pebble, http_port, tls_port, p) = issued(false).await;
    let issued_leaf = fetch_metadata(&pebble, tls_port, 30).await;
    let cached = mcp_auth_proxy::server::acme::StoreCache(p.repo().clone())
        .load_cert(&[HOST.to_string()], &pebble.directory)
        .await
        .unwrap()
        .unwrap();
    drop(p.stop().await);
    let sigbit = tempfile::tempdir().unwrap();
    std::fs::create_dir(sigbit.path().join("certs")).unwrap();
    std::fs::write(
        sigbit.path().join("certs").join(HOST),
        autocert_file(&cached),
    )
    .unwrap();
    std::fs::write(sigbit.path().join("certs/acme_account+key"), "not read").unwrap();
    std::fs::write(sigbit.path().join("secret"), [7u8; 32]).unwrap();
    std::fs::write(sigbit.path().join("db"), "bbolt").unwrap();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa: aws_lc_rs::encoding::Pkcs8V1Der = aws_lc_rs::encoding::AsDer::as_der(&rsa).unwrap();
    let rsa_pem = rcgen::KeyPair::try_from(rsa.as_ref())
        .unwrap()
        .serialize_pem();
    std::fs::write(sigbit.path().join("private_key.pem"), rsa_pem).unwrap();

    // Before: the proxy says the directory is sigbit's. The migration says what it brought.
    let data = tempfile::tempdir().unwrap();
    let from = format!("sigbit:{}", sigbit.path().display());
    let external = format!("https://{HOST}:{tls_port}");
    let dir = data.path().display().to_string();
    let out = crate::helpers::binary_output(
        &[
            "migrate",
            "--from",
            &from,
            "--data-path",
            &dir,
            "--external-url",
            &external,
            "--tls-directory-url",
            &pebble.directory,
        ],
        &[],
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        &format!("certs/{HOST}: the certificate for {HOST}") as &str,
        "private_key.pem: the signing key (RS256",
        "certs/acme_account+key",
        "people signed in in a browser sign in again",
        "MCP clients register again",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }

    // The proxy on the migrated directory serves that certificate at once: no new order.
    let p = proxy(&pebble, http_port, tls_port, false, data).await;
    let served = fetch_metadata(&pebble, tls_port, 10).await;
    assert_eq!(
        served, issued_leaf,
        "the migrated certificate, not a new one"
    );
    drop(p);
}

/// Two replicas on one database, on different loopback addresses with the same ports, and
/// pebble's DNS pointing the name at B. The test holds the certificate lock while both start,
/// so both queue behind it, A first: PostgreSQL grants a lock to its waiters in turn, so A
/// orders, and the CA's validation reaches B, which never placed an order and answers from
/// the database. Then both serve the one certificate, and B ordered nothing.
///
/// With `hosted`, the replicas also serve a server of `--config` routed by its own host
/// name: the one order names both hosts, and B answers the validation of each.
async fn one_order_validated_at_the_replica_that_did_not_place_it(http01: bool, hosted: bool) {
    use sqlx::{Connection, Row};
    let pg = crate::pg::PgCluster::start().await;
    let dsn = pg.database("acme_replicas").await;
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        rand::random::<[u8; 32]>(),
    );
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = start_pebble_resolving_to(http_port, tls_port, "127.0.0.3").await;

    let mut holder = sqlx::PgConnection::connect(&dsn).await.unwrap();
    sqlx::query(mcp_auth_proxy::store::postgres::ADVISORY_LOCK)
        .bind(mcp_auth_proxy::server::acme::lock_name(HOST))
        .execute(&mut holder)
        .await
        .unwrap();
    let mut watcher = sqlx::PgConnection::connect(&dsn).await.unwrap();
    let mut waiting_for_the_lock = async |n: i64| {
        for _ in 0..300 {
            let row = sqlx::query(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if row.get::<i64, _>("n") == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{n} replicas never queued for the certificate lock");
    };

    let (_config, servers) = files_on_its_host("default = \"files\"\n");
    let start = async |address: &str, id: &str| {
        let data = tempfile::tempdir().unwrap();
        let mut args = pebble.proxy_args(address, http_port, tls_port, http01);
        if hosted {
            args.extend(["--config".into(), servers.clone()]);
        }
        args.extend([
            "--data-path".into(),
            data.path().display().to_string(),
            "--replica-id".into(),
            id.to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let envs = [
            ("DATABASE_DSN", dsn.as_str()),
            ("ENCRYPTION_KEY", key.as_str()),
        ];
        (crate::helpers::Binary::start(&args, &envs).await, data)
    };
    let (mut a, _a_data) = start("127.0.0.2", "replica-a").await;
    waiting_for_the_lock(1).await;
    let (mut b, _b_data) = start("127.0.0.3", "replica-b").await;
    waiting_for_the_lock(2).await;

    // Without a certificate neither is ready, and each says why.
    for address in ["127.0.0.2", "127.0.0.3"] {
        let ready = crate::helpers::client()
            .get(format!("http://{address}:{http_port}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready: serde_json::Value = ready.json().await.unwrap();
        assert_ne!(ready["checks"]["certificate"], "ok", "{ready}");
        assert_eq!(ready["checks"]["store"], "ok", "{ready}");
    }

    holder.close().await.unwrap();
    let at_a = fetch_metadata_at(&pebble, [127, 0, 0, 2], tls_port, 60).await;
    let at_b = fetch_metadata_at(&pebble, [127, 0, 0, 3], tls_port, 30).await;
    assert_eq!(at_a, at_b, "both replicas serve the one certificate");
    if hosted {
        let root = pebble.issuing_root().await;
        for address in [[127, 0, 0, 2], [127, 0, 0, 3]] {
            let doc: serde_json::Value = trusting(&root, FILES, address, tls_port)
                .get(format!(
                    "https://{FILES}:{tls_port}/.well-known/oauth-protected-resource"
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(doc["resource"], format!("https://{FILES}:{tls_port}/mcp"));
        }
    }
    for address in ["127.0.0.2", "127.0.0.3"] {
        let ready: serde_json::Value =
            crate::helpers::get_json(format!("http://{address}:{http_port}/readyz")).await;
        assert_eq!(ready["checks"]["certificate"], "ok", "{ready}");
    }

    let said = |lines: &[String], what: &str| lines.iter().filter(|l| l.contains(what)).count();
    let (a_log, b_log) = (a.log_so_far(), b.log_so_far());
    assert_eq!(
        said(&a_log, "certificate: ordering"),
        1,
        "A placed one order: {a_log:#?}"
    );
    assert_eq!(said(&a_log, "newly issued"), 1, "{a_log:#?}");
    assert_eq!(
        said(&b_log, "certificate: ordering"),
        0,
        "B placed none: {b_log:#?}"
    );
    assert_eq!(said(&b_log, "the stored one in use"), 1, "{b_log:#?}");
    // The CA's validation reached B (the only address pebble's DNS gives), not A.
    assert!(
        said(&b_log, "answered the CA's validation") >= if hosted { 2 } else { 1 },
        "{b_log:#?}"
    );
    assert_eq!(said(&a_log, "answered the CA's validation"), 0);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_certificate_validated_by_tls_alpn_01_at_the_other_replica() {
    if skip() {
        return;
    }
    one_order_validated_at_the_replica_that_did_not_place_it(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_certificate_for_two_host_names() {
    if skip() {
        return;
    }
    one_order_validated_at_the_replica_that_did_not_place_it(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_certificate_validated_by_http_01_at_the_other_replica() {
    if skip() {
        return;
    }
    one_order_validated_at_the_replica_that_did_not_place_it(true, false).await;
}

/// `--tls-host` names the certificate's host when it is not the external URL's. pebble's
/// TLS-ALPN-01 validation handshakes name that host, and the SNI check of the listener must
/// answer them (it once refused every name but the external URL's): the certificate is
/// issued, served for that name, and a third name still gets no certificate.
#[tokio::test]
async fn a_certificate_for_the_tls_host_named_apart_from_the_external_url() {
    if skip() {
        return;
    }
    const TLS_HOST: &str = "certificate-host.example";
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = start_pebble(http_port, tls_port).await;
    let mut args = pebble.proxy_args("127.0.0.1", http_port, tls_port, false);
    args.extend(["--tls-host".into(), TLS_HOST.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = start_proxy_with(
        &args,
        mcp_auth_proxy::clock::Clock::system(),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let root = pebble.issuing_root().await;
    let client = |name: &str| trusting(&root, name, [127, 0, 0, 1], tls_port);
    let probe = |name: &str| format!("https://{name}:{tls_port}/healthz");
    let mut last = String::new();
    let mut issued = false;
    for _ in 0..150 {
        match client(TLS_HOST).get(probe(TLS_HOST)).send().await {
            Ok(r) => {
                assert_eq!(r.status(), StatusCode::OK);
                issued = true;
                break;
            }
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        issued,
        "no trusted certificate for {TLS_HOST} within 30 s: {last}"
    );
    let other = "someone-else.example";
    let refused = client(other).get(probe(other)).send().await;
    assert!(refused.is_err(), "a third name is served: {refused:?}");
    drop(p);
}

/// Several servers behind one proxy (`--config`), one routed by its own host name: the one
/// certificate covers the proxy's host and the server's, validated for both names (the
/// server's on its own host's handshakes, or on the plain listener for HTTP-01); the
/// server's resource is served on its host, and a third name still gets no certificate.
async fn one_certificate_for_two_host_names(http01: bool) {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = start_pebble(http_port, tls_port).await;
    let (_config, path) = files_on_its_host("");
    let mut args = pebble.proxy_args("127.0.0.1", http_port, tls_port, http01);
    args.extend(["--config".into(), path]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = start_proxy_with(
        &args,
        mcp_auth_proxy::clock::Clock::system(),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let root = pebble.issuing_root().await;
    let client = |name: &str| trusting(&root, name, [127, 0, 0, 1], tls_port);
    let prm = format!("https://{FILES}:{tls_port}/.well-known/oauth-protected-resource");
    let mut last = String::new();
    let mut doc = serde_json::Value::Null;
    for _ in 0..150 {
        match client(FILES).get(&prm).send().await {
            Ok(r) => {
                doc = r.json().await.unwrap();
                break;
            }
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        doc["resource"],
        format!("https://{FILES}:{tls_port}/mcp"),
        "no trusted certificate for {FILES} within 30 s: {last}"
    );
    assert_eq!(
        doc["authorization_servers"],
        serde_json::json!([format!("https://{HOST}:{tls_port}/files")])
    );
    // The same certificate serves the proxy's own host, where the issuer is.
    let asm: serde_json::Value = client(HOST)
        .get(format!(
            "https://{HOST}:{tls_port}/.well-known/oauth-authorization-server/files"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], format!("https://{HOST}:{tls_port}/files"));
    let other = "someone-else.example";
    let refused = client(other)
        .get(format!("https://{other}:{tls_port}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "a third name is served: {refused:?}");
    drop(p);
}

#[tokio::test]
async fn one_certificate_for_two_host_names_by_tls_alpn_01() {
    if skip() {
        return;
    }
    one_certificate_for_two_host_names(false).await;
}

#[tokio::test]
async fn one_certificate_for_two_host_names_by_http_01() {
    if skip() {
        return;
    }
    one_certificate_for_two_host_names(true).await;
}

/// A `--config` file (`head` first) with one stdio server, `files`, routed by the host name
/// [`FILES`].
fn files_on_its_host(head: &str) -> (tempfile::TempDir, String) {
    crate::servers::config_file(&format!(
        "{head}[[server]]\nname = \"files\"\nhost = \"{FILES}\"\ncommand = [\"node\", \"{}\"]\n",
        crate::stdio::FIXTURE
    ))
}
