#![allow(clippy::unwrap_used)]
//! A test CA issuing certificates, and an HTTPS client that trusts only
//! that CA (or any PEM root given), speaking HTTP/2 or HTTP/1.1 as ALPN
//! settles. Shared by the router's tests and the end-to-end tests
//! (`#[path]`-included there).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Slipway test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names`: (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// What an HTTPS request got: status, headers, body, the protocol spoken
/// and the server's leaf certificate (DER).
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
    pub version: Version,
    pub leaf: Vec<u8>,
}

/// A TLS connection to `addr` (SNI `name`) trusting only `root_pem`,
/// offering `alpn` (`h2`, `http/1.1`).
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    root_pem: &str,
    alpn: &[&str],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    connect_with(&connector(root_pem, alpn)?, addr, name).await
}

/// A TLS connection to `addr` (SNI `name`) made by `connector`, which
/// remembers the sessions its connections were given.
pub async fn connect_with(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    connector.connect(server_name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))
}

/// A client trusting only `root_pem`, offering `alpn`, that keeps the
/// sessions it is given (rustls' default in-memory store) and offers them
/// to resume.
pub fn connector(root_pem: &str, alpn: &[&str]) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One GET of `https://{name}{path}` at `addr` (SNI `name`), trusting only
/// `root_pem`, offering `alpn` (`h2`, `http/1.1`).
pub async fn https_get(addr: SocketAddr, name: &str, path: &str, root_pem: &str, alpn: &[&str]) -> Result<Answer, String> {
    let tls = tls_connect(addr, name, root_pem, alpn).await?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let uri = format!("https://{name}{path}");
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(uri).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", name).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (status, version, headers) = (response.status(), response.version(), response.headers().clone());
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned(), version, leaf })
}

/// The DER of the first certificate in `pem`.
pub fn leaf_der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next().map(|c| c.unwrap().to_vec()).unwrap_or_default()
}
