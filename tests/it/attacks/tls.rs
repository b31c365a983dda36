//! The TLS listener under attack: handshakes for names or protocols we do not serve, and
//! HTTP/2's known floods (rapid reset, CVE-2023-44487; CONTINUATION, CVE-2024-27316; a
//! header list past its limit). The frames are written by hand, since a well-behaved client
//! library will not send them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::helpers::TestProxy;
use crate::tls::{Ca, ca, leaf};

/// A proxy on HTTPS with a certificate for `localhost` from a test CA.
async fn https_proxy() -> (Ca, tempfile::TempDir, TestProxy) {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    leaf(&ca, dir.path(), "attacks");
    let p = crate::tls::tls_proxy_for(dir.path(), &[]).await;
    (ca, dir, p)
}

/// A TLS connection naming `server_name` (SNI) and offering `alpn`.
async fn connect(
    ca: &Ca,
    addr: SocketAddr,
    server_name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Verification is by the CA, so any name needs a certificate for it: for names we do
    // not serve, the server must refuse before it shows one, which is what is tested.
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

/// One HTTP/1.1 request on `stream`; the status of its answer.
async fn http1_status(stream: &mut TlsStream<TcpStream>, host: &str, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_handshake_naming_another_host_gets_no_certificate() {
    let (ca, _dir, p) = https_proxy().await;
    let addr = p.tls_addr.unwrap();
    let port = addr.port();
    // Our name: served.
    let mut ok = connect(&ca, addr, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        http1_status(&mut ok, &format!("localhost:{port}"), "/healthz").await,
        200
    );
    // Another name: refused in the handshake (rustls's access_denied alert when no certificate
    // is chosen), whatever the CA would say of the certificate.
    let refused = connect(&ca, addr, "evil.example", &[b"http/1.1"]).await;
    let Err(err) = refused else {
        panic!("a handshake for evil.example must fail")
    };
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    // Our name in the handshake, another host in the request: 421, not served.
    let mut fronted = connect(&ca, addr, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        http1_status(
            &mut fronted,
            &format!("evil.example:{port}"),
            "/.well-known/oauth-protected-resource"
        )
        .await,
        421
    );
    // No name at all (a client dialling the address): served, and the Host check decides.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.enable_sni = false;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut anonymous = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        http1_status(&mut anonymous, &format!("localhost:{port}"), "/healthz").await,
        200
    );
}

#[tokio::test]
async fn only_h2_and_http_1_1_are_spoken() {
    let (ca, _dir, p) = https_proxy().await;
    let addr = p.tls_addr.unwrap();
    for (offer, agreed) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], Some(b"h2".as_slice())),
        (&[b"http/1.1".as_slice()][..], Some(b"http/1.1".as_slice())),
        (&[][..], None),
    ] {
        let s = connect(&ca, addr, "localhost", offer).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), agreed);
    }
    // Protocols we do not speak, including ACME's validation protocol on a proxy that is
    // not getting certificates: refused in the handshake (no_application_protocol).
    for offer in [&b"h3"[..], b"spdy/3.1", b"acme-tls/1", b"http/1.0"] {
        let r = connect(&ca, addr, "localhost", &[offer]).await;
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{:?} accepted", String::from_utf8_lossy(offer)));
        assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    }
}

// ---- HTTP/2 frames, by hand (RFC 9113 §4, §6; HPACK RFC 7541) ----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal, not Huffman-coded (lengths under 127 only... or longer, with
/// the integer continuation of RFC 7541 §5.1).
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

fn hpack_int(out: &mut Vec<u8>, high_bits: u8, prefix: u32, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(high_bits | n as u8);
        return;
    }
    out.push(high_bits | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// `GET path` to `authority` over https: indexed `:method`/`:scheme` and literal
/// `:authority`/`:path` (without indexing, so the decoder's table stays empty).
fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    b.push(0x01); // :authority, literal without indexing
    hpack_string(&mut b, authority.as_bytes());
    b.push(0x04); // :path, literal without indexing
    hpack_string(&mut b, path.as_bytes());
    b
}

/// A literal header `name: value` without indexing, new name.
fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0x00];
    hpack_string(&mut b, name);
    hpack_string(&mut b, value);
    b
}

/// An HTTP/2 connection: the preface and our (empty) settings sent.
async fn h2(ca: &Ca, addr: SocketAddr) -> TlsStream<TcpStream> {
    let mut s = connect(ca, addr, "localhost", &[b"h2"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// An HTTP/2 connection's writing half, and a task that reads what the server sends on it
/// (until it closes or is quiet for `quiet`).
async fn h2_watched(
    ca: &Ca,
    addr: SocketAddr,
    quiet: Duration,
) -> (
    tokio::io::WriteHalf<TlsStream<TcpStream>>,
    tokio::task::JoinHandle<Seen>,
) {
    let (mut r, w) = tokio::io::split(h2(ca, addr).await);
    (
        w,
        tokio::spawn(async move { read_frames(&mut r, quiet).await }),
    )
}

/// What the server sent on a connection: frames by type, its GOAWAY error code if any, and
/// whether it closed.
#[derive(Debug, Default)]
struct Seen {
    headers: usize,
    /// Answers with `:status: 200` (HPACK static index 8, RFC 7541 Appendix A).
    ok_answers: usize,
    resets: usize,
    goaway: Option<u32>,
    closed: bool,
}

/// Reads frames until the server closes, or `quiet` passes without anything arriving.
async fn read_frames(r: &mut (impl AsyncReadExt + Unpin), quiet: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(quiet, r.read(&mut chunk)).await {
            Err(_) => return seen,
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                HEADERS => {
                    seen.headers += 1;
                    seen.ok_answers += usize::from(buf.get(9) == Some(&0x88));
                }
                RST_STREAM => seen.resets += 1,
                GOAWAY => {
                    let p = &buf[9..9 + len];
                    seen.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
}

/// `/healthz` over a new HTTP/1.1 connection answers (the server is still serving others).
async fn still_serving(ca: &Ca, addr: SocketAddr) {
    let mut s = connect(ca, addr, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    let host = format!("localhost:{}", addr.port());
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        http1_status(&mut s, &host, "/healthz"),
    )
    .await
    .expect("the server stopped answering others");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn http2_rapid_reset_ends_the_connection() {
    let (ca, _dir, p) = https_proxy().await;
    let addr = p.tls_addr.unwrap();
    let authority = format!("localhost:{}", addr.port());
    let (mut w, reader) = h2_watched(&ca, addr, Duration::from_secs(10)).await;
    // Streams opened and cancelled at once, in batches, as fast as the socket takes them.
    let block = get_block(&authority, "/.well-known/oauth-protected-resource");
    let mut sent = 0u32;
    'flood: for batch in 0..200u32 {
        let mut bytes = frame(SETTINGS, ACK, 0, &[]);
        for i in 0..100u32 {
            let id = 1 + 2 * (batch * 100 + i);
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        }
        if w.write_all(&bytes).await.is_err() {
            break 'flood;
        }
        sent += 100;
    }
    let seen = reader.await.unwrap();
    eprintln!("rapid reset: {sent} streams sent; server: {seen:?}");
    // The server ends the connection with ENHANCE_YOUR_CALM (0xb) long before the 20 000.
    assert_eq!(seen.goaway, Some(0xb), "{seen:?}");
    assert!(sent < 20_000, "the whole flood was taken: {seen:?}");
    still_serving(&ca, addr).await;
}

#[tokio::test]
async fn http2_continuation_floods_and_huge_header_lists_are_refused() {
    let (ca, _dir, p) = https_proxy().await;
    let addr = p.tls_addr.unwrap();
    let authority = format!("localhost:{}", addr.port());

    // CONTINUATION frames without end: the header list grows past the limit, and the server
    // stops reading long before 64 MB have been sent.
    let (mut w, reader) = h2_watched(&ca, addr, Duration::from_secs(10)).await;
    w.write_all(&frame(
        HEADERS,
        END_STREAM,
        1,
        &get_block(&authority, "/healthz"),
    ))
    .await
    .unwrap();
    let filler = literal(b"x-filler", &vec![b'a'; 16_000]);
    let piece = frame(CONTINUATION, 0, 1, &filler);
    let mut sent = 0usize;
    while sent < 64 << 20 {
        if w.write_all(&piece).await.is_err() {
            break;
        }
        sent += piece.len();
    }
    let seen = reader.await.unwrap();
    eprintln!("CONTINUATION flood: {sent} bytes sent; server: {seen:?}");
    assert!(seen.goaway.is_some() || seen.closed, "{seen:?}");
    assert!(sent < 64 << 20, "64 MB of headers were read: {seen:?}");
    still_serving(&ca, addr).await;

    // One header block over the advertised limit, ended properly: refused, not answered 200.
    let (mut w, reader) = h2_watched(&ca, addr, Duration::from_secs(5)).await;
    let mut block = get_block(&authority, "/healthz");
    for i in 0..5 {
        block.extend(literal(
            format!("x-big-{i}").as_bytes(),
            &vec![b'b'; 15_000],
        ));
    }
    let mut bytes = frame(HEADERS, END_STREAM, 1, &block[..16_000]);
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[16_000..]));
    // The server may stop reading (and close) before all of it is written: that is a refusal
    // too, and what it sent says which.
    let _ = w.write_all(&bytes).await;
    let seen = reader.await.unwrap();
    eprintln!("huge header list: server: {seen:?}");
    assert_eq!(seen.ok_answers, 0, "{seen:?}");
    assert!(
        seen.resets > 0 || seen.goaway.is_some() || seen.headers == 1 || seen.closed,
        "{seen:?}"
    );
    still_serving(&ca, addr).await;
    drop(p);
}
