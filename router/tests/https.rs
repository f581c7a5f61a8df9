#![allow(clippy::unwrap_used)]
//! HTTPS through the proxy over loopback: certificates picked by SNI,
//! HTTP/2 and HTTP/1.1 by ALPN, `X-Forwarded-Proto: https`, HSTS, a
//! certificate swapped in without a restart, redirects from plain HTTP,
//! ACME HTTP-01 and TLS-ALPN-01 answers, HTTP/2's idle timeout, and sessions resumed
//! across the router's threads.

#[path = "support/tls.rs"]
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use slipway_router::tls::{acme_alpn_certificate, ACME_TLS_ALPN};
use slipway_router::{certified_key, serve_threads, serve_with, Edge, Route, RouteHandle, RouteTable, ServeOptions, TlsHandle, TlsTable};
use tokio::net::{TcpListener, TcpStream};

use rustls::HandshakeKind;
use tls::{connect_with, connector, https_get, leaf_der, tls_connect, TestCa};

/// An application that answers with the `X-Forwarded-Proto` it was sent.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let proto = req.headers().get("x-forwarded-proto").map(|v| v.to_str().unwrap_or("?").to_string());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("app via {}", proto.unwrap_or_default())))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

fn table(hosts: &[&str], upstream: SocketAddr) -> RouteTable {
    let route = Route { upstreams: vec![upstream], standby: vec![], route_version: 1, label: "test".into(), stats: Default::default() };
    RouteTable::new(hosts.iter().map(|h| (h.to_string(), route.clone())))
}

async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender.send_request(Request::get(path).header("host", host).body(Empty::<Bytes>::new()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn https_serves_each_name_its_certificate_over_h2_and_http1_and_plain_http_is_redirected() {
    let ca = TestCa::new();
    let (shop_pem, shop_key) = ca.issue(&["shop.example"]);
    let (wild_pem, wild_key) = ca.issue(&["*.api.example"]);
    let certs = TlsHandle::new(TlsTable::new(
        [
            ("shop.example".to_string(), certified_key(shop_pem.as_bytes(), shop_key.as_bytes()).unwrap()),
            ("*.api.example".to_string(), certified_key(wild_pem.as_bytes(), wild_key.as_bytes()).unwrap()),
        ],
        [("tok-1".to_string(), "tok-1.thumbprint".to_string())],
    ));
    let app = upstream().await;
    let routes = RouteHandle::new(table(&["shop.example", "*.api.example", "plain.example"], app));
    let (https, http) = (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (https_addr, http_addr) = (https.local_addr().unwrap(), http.local_addr().unwrap());
    let mut edge = Edge::new(certs.clone());
    edge.https_port = Some(https_addr.port());
    edge.hsts = Some(Duration::from_secs(600));
    let options = ServeOptions { edge: Some(edge), ..Default::default() };
    tokio::spawn(serve_with(https, routes.clone(), ServeOptions { terminate_tls: true, ..options.clone() }, std::future::pending()));
    tokio::spawn(serve_with(http, routes, options, std::future::pending()));

    let root = ca.pem();
    for (alpn, version) in [(&["h2", "http/1.1"][..], Version::HTTP_2), (&["http/1.1"][..], Version::HTTP_11)] {
        let got = https_get(https_addr, "shop.example", "/", &root, alpn).await.unwrap();
        assert_eq!((got.status, got.version, got.body.as_str()), (StatusCode::OK, version, "app via https"));
        assert_eq!(got.leaf, leaf_der(&shop_pem), "SNI shop.example gets its own certificate");
        assert_eq!(got.headers.get("strict-transport-security").unwrap(), "max-age=600");
    }
    let wild = https_get(https_addr, "v1.api.example", "/", &root, &["h2"]).await.unwrap();
    assert_eq!((wild.body.as_str(), wild.leaf), ("app via https", leaf_der(&wild_pem)));
    // No certificate for the name: no handshake (no other name's certificate
    // shown), and the client is told the name is not served.
    let refused = https_get(https_addr, "plain.example", "/", &root, &["h2"]).await.err().unwrap();
    assert!(refused.contains("TLS handshake") && refused.contains("UnrecognisedName"), "{refused}");

    // Plain HTTP: a host with a certificate is redirected; one without is served.
    let moved = plain_get(http_addr, "shop.example", "/cart?id=1").await;
    assert_eq!(moved.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(moved.headers()["location"], format!("https://shop.example:{}/cart?id=1", https_addr.port()).as_str());
    let served = plain_get(http_addr, "plain.example", "/").await;
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.headers().get("strict-transport-security").is_none(), "no HSTS over plain HTTP");
    assert_eq!(served.into_body().collect().await.unwrap().to_bytes(), "app via http");
    // An ACME challenge is answered, not redirected.
    let challenge = plain_get(http_addr, "shop.example", "/.well-known/acme-challenge/tok-1").await;
    assert_eq!(challenge.status(), StatusCode::OK);
    assert_eq!(challenge.into_body().collect().await.unwrap().to_bytes(), "tok-1.thumbprint");

    // A new certificate serves from the next handshake on, without a restart.
    let (renewed_pem, renewed_key) = ca.issue(&["shop.example", "plain.example"]);
    let renewed = certified_key(renewed_pem.as_bytes(), renewed_key.as_bytes()).unwrap();
    certs.replace(TlsTable::new([("shop.example".to_string(), renewed.clone()), ("plain.example".to_string(), renewed)], []));
    let got = https_get(https_addr, "shop.example", "/", &root, &["h2"]).await.unwrap();
    assert_eq!(got.leaf, leaf_der(&renewed_pem));
    assert_eq!(https_get(https_addr, "plain.example", "/", &root, &["http/1.1"]).await.unwrap().body, "app via https");
}

/// An HTTPS listener with `options` serving `a.example` (a certificate of
/// a new test CA) from the test app; the CA and the listener's address.
async fn serve_a_example(options: ServeOptions) -> (TestCa, SocketAddr) {
    let ca = TestCa::new();
    let (pem, key) = ca.issue(&["a.example"]);
    let certs = TlsHandle::new(TlsTable::new([("a.example".to_string(), certified_key(pem.as_bytes(), key.as_bytes()).unwrap())], []));
    let app = upstream().await;
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = https.local_addr().unwrap();
    let options = ServeOptions { edge: Some(Edge::new(certs)), terminate_tls: true, ..options };
    tokio::spawn(serve_with(https, RouteHandle::new(table(&["a.example"], app)), options, std::future::pending()));
    (ca, addr)
}

#[tokio::test]
async fn a_client_hello_of_garbage_or_silence_is_cut_off_and_the_listener_serves_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ca, addr) = serve_a_example(ServeOptions { header_read_timeout: Duration::from_millis(300), ..Default::default() }).await;
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"\x16\x03\x01\xff\xffGET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await.expect("a silent client is cut off");
    assert!(matches!(closed, Ok(0) | Err(_)));
    let got = https_get(addr, "a.example", "/", &ca.pem(), &["h2"]).await.unwrap();
    assert_eq!(got.body, "app via https");
}

#[tokio::test]
async fn an_upgrade_over_tls_carries_bytes_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that switches protocols by hand, then echoes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
        let (mut read, mut write) = stream.split();
        let _ = tokio::io::copy(&mut read, &mut write).await;
    });
    let ca = TestCa::new();
    let (pem, key) = ca.issue(&["ws.example"]);
    let certs = TlsHandle::new(TlsTable::new([("ws.example".to_string(), certified_key(pem.as_bytes(), key.as_bytes()).unwrap())], []));
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = https.local_addr().unwrap();
    let options = ServeOptions { edge: Some(Edge::new(certs)), terminate_tls: true, ..Default::default() };
    tokio::spawn(serve_with(https, RouteHandle::new(table(&["ws.example"], echo)), options, std::future::pending()));
    let mut tls = tls_connect(addr, "ws.example", &ca.pem(), &["http/1.1"]).await.unwrap();
    tls.write_all(b"GET /socket HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    for message in [&b"hello"[..], b"over TLS"] {
        tls.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let idle = Duration::from_secs(1);
    let (ca, addr) = serve_a_example(ServeOptions { idle_timeout: idle, ..Default::default() }).await;
    // A real HTTP/2 client: one connection, requests on it.
    let h2 = || async {
        let tls = tls_connect(addr, "a.example", &ca.pem(), &["h2"]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        (sender, tokio::spawn(conn))
    };
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>| async move {
        let response = sender.send_request(Request::get("https://a.example/").body(Empty::new()).unwrap()).await.unwrap();
        assert_eq!((response.version(), response.status()), (Version::HTTP_2, StatusCode::OK));
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "app via https");
    };

    // Busy: a request every 400 ms keeps it open past three idle timeouts.
    let (busy, busy_conn) = h2().await;
    let started = Instant::now();
    while started.elapsed() < idle * 3 {
        get(busy.clone()).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(!busy_conn.is_finished(), "a connection in use was closed");
    // Idle: the router says GOAWAY and closes it about one idle timeout after its last answer.
    let quiet = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), busy_conn).await.expect("an idle HTTP/2 connection is closed");
    assert!(closed.unwrap().is_ok(), "closed cleanly (GOAWAY), not reset");
    let after = quiet.elapsed();
    assert!(after >= idle - Duration::from_millis(450) && after < idle * 3, "closed {after:?} after its last answer");
    assert!(busy.is_closed());
    // A connection that never sends a request is closed too.
    let (unused, unused_conn) = h2().await;
    tokio::time::timeout(Duration::from_secs(5), unused_conn).await.expect("an unused HTTP/2 connection is closed").unwrap().unwrap();
    assert!(unused.is_closed());
}

/// A GET over `stream`, kept alive: returns once the answer's body is in,
/// which is also when the client has read the session tickets sent before it.
async fn get_kept_alive(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, host: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("app via https") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the router closed the connection before answering: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_returning_client_resumes_its_session_on_another_of_the_routers_threads() {
    let ca = TestCa::new();
    let (pem, key) = ca.issue(&["shop.example"]);
    let certs = TlsHandle::new(TlsTable::new([("shop.example".to_string(), certified_key(pem.as_bytes(), key.as_bytes()).unwrap())], []));
    let routes = RouteHandle::new(table(&["shop.example"], upstream().await));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = ServeOptions { edge: Some(Edge::new(certs)), terminate_tls: true, ..Default::default() };
    tokio::spawn(serve_threads(listener, routes, options, 2, std::future::pending()));

    let client = connector(&ca.pem(), &["http/1.1"]).unwrap();
    let mut first = connect_with(&client, addr, "shop.example").await.unwrap();
    assert_eq!(first.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    get_kept_alive(&mut first, "shop.example").await;
    // The first connection stays open, so the router hands the second to
    // its other thread, which must know the session the first thread gave.
    let mut second = connect_with(&client, addr, "shop.example").await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "a session given by one of the router's threads resumes on the other"
    );
    assert!(get_kept_alive(&mut second, "shop.example").await.starts_with("HTTP/1.1 200"));
    // A client the router never saw does a full handshake.
    let stranger = connect_with(&connector(&ca.pem(), &["http/1.1"]).unwrap(), addr, "shop.example").await.unwrap();
    assert_eq!(stranger.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    drop(first);
}

/// Accepts any certificate, as a CA validating TLS-ALPN-01 does (it checks
/// the acmeIdentifier extension itself, not a chain). Its signatures are
/// not checked either: webpki refuses to parse a certificate with a
/// critical extension it does not know, which the acmeIdentifier is.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify_tls13_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS-ALPN-01 validation's handshake with `addr` for `name`: ALPN
/// `acme-tls/1` only. The connection and the certificate it was shown.
async fn acme_handshake(addr: SocketAddr, name: &str) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let tls = connect_with(&tokio_rustls::TlsConnector::from(Arc::new(config)), addr, name).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    Ok((tls, leaf))
}

#[tokio::test]
async fn a_tls_alpn_01_validation_gets_the_challenge_certificate_and_no_other_handshake_does() {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let ca = TestCa::new();
    let (pem, key) = ca.issue(&["a.example"]);
    let served = || ("a.example".to_string(), certified_key(pem.as_bytes(), key.as_bytes()).unwrap());
    let answer = acme_alpn_certificate("a.example", "tok-1.thumbprint").unwrap();
    let certs = TlsHandle::new(TlsTable::new([served()], []).with_alpn_challenges([("a.example".to_string(), answer)]));
    let app = upstream().await;
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = https.local_addr().unwrap();
    let options = ServeOptions { edge: Some(Edge::new(certs.clone())), terminate_tls: true, ..Default::default() };
    tokio::spawn(serve_with(https, RouteHandle::new(table(&["a.example"], app)), options, std::future::pending()));

    // A CA's handshake gets a certificate for the name carrying the
    // acmeIdentifier extension (critical) with the key authorization's
    // SHA-256, and the connection ends there.
    let (mut tls, leaf) = acme_handshake(addr, "a.example").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ACME_TLS_ALPN));
    let digest = Sha256::digest(b"tok-1.thumbprint");
    // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, then the digest as an OCTET STRING.
    let extension =
        [&[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f, 0x01, 0x01, 0xff, 0x04, 0x22, 0x04, 0x20][..], &digest[..]].concat();
    assert!(leaf.windows(extension.len()).any(|w| w == extension), "no acmeIdentifier extension with the digest");
    assert!(leaf.windows(9).any(|w| w == b"a.example"), "the certificate names the domain");
    assert_ne!(leaf, leaf_der(&pem));
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await.expect("the router closes the connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // A browser's handshake for the same name gets the domain's certificate
    // and is served, and so does one offering `acme-tls/1` among others.
    let got = https_get(addr, "a.example", "/", &ca.pem(), &["h2", "http/1.1"]).await.unwrap();
    assert_eq!((got.leaf, got.body.as_str()), (leaf_der(&pem), "app via https"));
    let got = https_get(addr, "a.example", "/", &ca.pem(), &["acme-tls/1", "http/1.1"]).await.unwrap();
    assert_eq!((got.leaf, got.body.as_str()), (leaf_der(&pem), "app via https"));
    // `acme-tls/1` for a name without an open challenge is refused, and so
    // is it for this one once the challenge is withdrawn.
    assert!(acme_handshake(addr, "b.example").await.is_err());
    certs.replace(TlsTable::new([served()], []));
    assert!(acme_handshake(addr, "a.example").await.is_err());
    assert_eq!(https_get(addr, "a.example", "/", &ca.pem(), &["http/1.1"]).await.unwrap().body, "app via https");
}
