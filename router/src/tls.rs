//! TLS termination: the certificates a router serves, picked by the
//! client's SNI name with the route table's rule (the exact name, then the
//! one-level wildcard), the answers it gives to ACME challenges (HTTP-01
//! key authorizations, and TLS-ALPN-01 certificates it makes itself), and
//! the rustls server configuration (ALPN: HTTP/2, then HTTP/1.1; and
//! `acme-tls/1`, which only a CA validating a challenge offers).
//!
//! Like the route table, the certificate table is immutable and swapped
//! whole ([`TlsHandle::replace`]): a handshake reads it without a lock, so a
//! new certificate serves from the next handshake on. Nothing a client
//! sends in its hello can make it panic; a name without a certificate
//! fails the handshake with an `unrecognized_name` alert ([`Terminator`]:
//! no default certificate is shown to a client that named another host).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::table::{by_name, normalize_host};

/// Why a PEM chain and key cannot serve. The text never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("the certificate file holds no PEM certificate")]
    NoCertificate,
    #[error("the certificate file is not valid PEM: {0}")]
    BadCertificatePem(String),
    #[error("the key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("the private key cannot be used for TLS: {0}")]
    BadKey(String),
    #[error("the private key does not belong to the certificate (its public key differs)")]
    KeyMismatch,
    #[error("the TLS-ALPN-01 answer for {domain} cannot be made: {reason}")]
    AlpnAnswer { domain: String, reason: String },
}

/// A chain (leaf first) and its private key, checked to belong together,
/// ready to serve.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificatePem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    // The error of a failed key parse could quote the input: say only what failed.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| CertError::BadKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(CertError::KeyMismatch),
        // The key's public half cannot be derived (an unusual key type):
        // rustls cannot check it; the handshake still signs with it.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(certified)),
        Err(e) => Err(CertError::BadKey(e.to_string())),
    }
}

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate that answers a TLS-ALPN-01 challenge for `domain`
/// (RFC 8737 §3): self-signed, for `domain` alone, carrying the critical
/// acmeIdentifier extension with the SHA-256 of `key_authorization`. Its
/// key is made here and never leaves the router: the CA checks only the
/// extension, so every router may answer with a key of its own.
pub fn acme_alpn_certificate(domain: &str, key_authorization: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let made = |e: &dyn std::fmt::Display| CertError::AlpnAnswer { domain: domain.to_string(), reason: e.to_string() };
    let key = rcgen::KeyPair::generate().map_err(|e| made(&e))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| made(&e))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&Sha256::digest(key_authorization.as_bytes()))];
    let cert = params.self_signed(&key).map_err(|e| made(&e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(der).map_err(|e| made(&e))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

/// Entries keyed by domain as the table looks names up: lower case, no
/// trailing dot.
fn by_domain<V>(entries: impl IntoIterator<Item = (String, V)>) -> HashMap<String, V> {
    entries.into_iter().map(|(domain, v)| (domain.trim_end_matches('.').to_ascii_lowercase(), v)).collect()
}

/// The certificates and ACME answers a router serves.
#[derive(Debug, Default, Clone)]
pub struct TlsTable {
    /// By domain: an exact name or a one-level wildcard (`*.example.com`).
    certificates: HashMap<String, Arc<CertifiedKey>>,
    /// HTTP-01 tokens to their key authorizations.
    challenges: HashMap<String, String>,
    /// TLS-ALPN-01 answers by exact domain ([`acme_alpn_certificate`]).
    alpn_challenges: HashMap<String, Arc<CertifiedKey>>,
    /// Domains (exact or one-level wildcard) whose redirect to HTTPS was
    /// set: `false` leaves plain HTTP unredirected though it has a
    /// certificate. A domain not here is redirected.
    redirect: HashMap<String, bool>,
}

impl TlsTable {
    pub fn new(
        certificates: impl IntoIterator<Item = (String, Arc<CertifiedKey>)>,
        challenges: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let certificates = by_domain(certificates);
        TlsTable { certificates, challenges: challenges.into_iter().collect(), alpn_challenges: HashMap::new(), redirect: HashMap::new() }
    }

    /// The same table, answering TLS-ALPN-01 challenges for these domains
    /// (exact names) with these certificates.
    pub fn with_alpn_challenges(mut self, answers: impl IntoIterator<Item = (String, Arc<CertifiedKey>)>) -> Self {
        self.alpn_challenges = by_domain(answers);
        self
    }

    /// The certificate answering a TLS-ALPN-01 challenge for `host`.
    pub fn alpn_challenge(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        self.alpn_challenges.get(normalize_host(host)?.as_ref())
    }

    /// The same table, with these domains' (exact names or one-level
    /// wildcards) redirect settings: `false` leaves plain HTTP unredirected.
    pub fn with_redirects(mut self, settings: impl IntoIterator<Item = (String, bool)>) -> Self {
        self.redirect = by_domain(settings);
        self
    }

    /// Whether plain HTTP for `host` (normalized) goes to HTTPS: it has a
    /// certificate and its domain's redirect is not turned off (the
    /// domain's own setting, else its wildcard's).
    pub fn redirects(&self, host: &str) -> bool {
        by_name(&self.certificates, host).is_some() && by_name(&self.redirect, host).copied().unwrap_or(true)
    }

    /// The certificate for a host name (a `Host` header or an SNI name).
    pub fn certificate(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        by_name(&self.certificates, normalize_host(host)?.as_ref())
    }

    /// The key authorization to answer for an HTTP-01 `token`.
    pub fn challenge(&self, token: &str) -> Option<&str> {
        self.challenges.get(token).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty() && self.challenges.is_empty() && self.alpn_challenges.is_empty()
    }
}

/// The certificates a router serves, replaced whole when they change.
pub type TlsHandle = crate::proxy::Swapped<TlsTable>;

/// What a router's listeners do about HTTPS: the certificates, where the
/// HTTPS listener is for redirects, and the headers it adds.
#[derive(Clone, Debug)]
pub struct Edge {
    pub certificates: TlsHandle,
    /// The HTTPS listener's port, for redirects (`None`: no HTTPS listener,
    /// so plain HTTP is never redirected).
    pub https_port: Option<u16>,
    /// Plain-HTTP requests for a host with a certificate are redirected
    /// (308) to HTTPS, unless its domain's redirect is turned off
    /// ([`TlsTable::with_redirects`]).
    pub redirect: bool,
    /// `Strict-Transport-Security: max-age=...` on HTTPS answers.
    pub hsts: Option<Duration>,
}

impl Edge {
    pub fn new(certificates: TlsHandle) -> Self {
        Edge { certificates, https_port: None, redirect: true, hsts: None }
    }

    /// Where a plain-HTTP request for `host` (normalized) and `path` goes
    /// instead, if it is redirected.
    pub fn redirect_to(&self, host: &str, path: &str) -> Option<String> {
        let port = self.https_port.filter(|_| self.redirect)?;
        if !self.certificates.current().redirects(host) {
            return None;
        }
        // An IPv6 literal has no certificate, so `host` is a name.
        Some(match port {
            443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        })
    }

    /// The rustls configuration of the HTTPS listener: certificates by
    /// SNI from this edge's table, ALPN `h2` then `http/1.1`, and
    /// stateless session tickets (sealed with a key rustls keeps in memory
    /// and rotates every 6 hours), so that a returning client resumes its
    /// session instead of a full handshake, on whichever thread it lands.
    /// TLS 1.3 resumption still runs an ephemeral key exchange, so it keeps
    /// forward secrecy. Each router has its own key: a client resumes on
    /// the router it last spoke to, and does a full handshake elsewhere.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(BySni(self.certificates.clone())));
        // rustls picks the first of these the client offers: `acme-tls/1`
        // only when the client offers nothing else (a CA validating).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Arc::new(config))
    }
}

/// Picks the certificate by the client's SNI name; a client offering
/// `acme-tls/1` alone (a CA validating: RFC 8737 §3) gets the name's
/// TLS-ALPN-01 answer, and nothing when no challenge for it is open.
#[derive(Debug)]
struct BySni(TlsHandle);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        choose(&self.0.peek(), &hello)
    }
}

/// The certificate `table` answers `hello` with: the TLS-ALPN-01 answer for
/// a hello offering `acme-tls/1` alone, else the name's own certificate.
fn choose(table: &TlsTable, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
    let name = hello.server_name()?;
    let acme = hello.alpn().is_some_and(|mut offered| offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none());
    if acme {
        table.alpn_challenge(name).cloned()
    } else {
        table.certificate(name).cloned()
    }
}

/// A fatal `unrecognized_name` alert (RFC 6066 §3), as the plaintext record
/// a server sends before any key exists: content type 21 (alert), record
/// version TLS 1.2, length 2, level 2 (fatal), description 112.
const UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// The TLS side of an HTTPS listener. It reads the client's hello first and
/// refuses a name it has no certificate for with `unrecognized_name`, which
/// clients show as such ("unrecognized name"); rustls' own refusal, when
/// its certificate resolver finds nothing, is `access_denied`, which reads
/// as a permissions problem.
#[derive(Clone, Debug)]
pub struct Terminator {
    config: Arc<ServerConfig>,
    certificates: TlsHandle,
}

impl Terminator {
    pub fn new(edge: &Edge) -> Result<Self, rustls::Error> {
        Ok(Terminator { config: edge.server_config()?, certificates: edge.certificates.clone() })
    }

    /// The handshake with the client on `io`.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        if choose(&self.certificates.peek(), &start.client_hello()).is_none() {
            let sni = start.client_hello().server_name().map(str::to_string);
            tracing::debug!(?sni, "router: no certificate (or open TLS-ALPN-01 challenge) for this name; refusing the handshake");
            let mut io = start.io;
            // Best effort: the client may be gone already.
            let _ = tokio::io::AsyncWriteExt::write_all(&mut io, &UNRECOGNIZED_NAME).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no certificate for the name the client asked for"));
        }
        start.into_stream(self.config.clone()).await
    }
}

/// The token of an HTTP-01 challenge path (`/.well-known/acme-challenge/TOKEN`).
pub fn challenge_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')).then_some(token)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A certificate for `names` signed by itself, as PEM (chain, key).
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let issued = rcgen::generate_simple_self_signed(names).unwrap();
        (issued.cert.pem(), issued.signing_key.serialize_pem())
    }

    #[test]
    fn a_chain_and_its_key_serve_and_a_wrong_or_bad_key_is_refused_saying_why() {
        let (cert, key) = self_signed(&["a.example"]);
        let (_, other_key) = self_signed(&["b.example"]);
        assert!(certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
        assert_eq!(certified_key(cert.as_bytes(), other_key.as_bytes()).err(), Some(CertError::KeyMismatch));
        assert_eq!(certified_key(b"", key.as_bytes()).err(), Some(CertError::NoCertificate));
        assert_eq!(certified_key(cert.as_bytes(), b"not a key").err(), Some(CertError::NoKey));
        let garbled = cert.replace("MII", "M!I");
        assert!(certified_key(garbled.as_bytes(), key.as_bytes()).is_err());
        // A key never shows in an error.
        let e = certified_key(cert.as_bytes(), cert.as_bytes()).unwrap_err().to_string();
        assert!(!e.contains("BEGIN"), "{e}");
    }

    #[test]
    fn sni_picks_the_exact_name_then_the_one_level_wildcard() {
        let (c1, k1) = self_signed(&["www.shop.example"]);
        let (c2, k2) = self_signed(&["*.shop.example"]);
        let exact = certified_key(c1.as_bytes(), k1.as_bytes()).unwrap();
        let wild = certified_key(c2.as_bytes(), k2.as_bytes()).unwrap();
        let table = TlsTable::new(
            [("www.shop.example".to_string(), exact.clone()), ("*.shop.example".to_string(), wild.clone())],
            [("tok".to_string(), "tok.thumb".to_string())],
        );
        assert!(Arc::ptr_eq(table.certificate("WWW.shop.example.").unwrap(), &exact));
        assert!(Arc::ptr_eq(table.certificate("api.shop.example:8443").unwrap(), &wild));
        assert!(table.certificate("a.b.shop.example").is_none());
        assert!(table.certificate("shop.example").is_none());
        assert_eq!(table.challenge("tok"), Some("tok.thumb"));
    }

    #[test]
    fn redirects_go_to_the_https_port_only_for_hosts_with_a_certificate() {
        let (c, k) = self_signed(&["a.example"]);
        let handle = TlsHandle::new(TlsTable::new([("a.example".to_string(), certified_key(c.as_bytes(), k.as_bytes()).unwrap())], []));
        let mut edge = Edge::new(handle);
        assert_eq!(edge.redirect_to("a.example", "/x?y"), None, "no HTTPS listener");
        edge.https_port = Some(443);
        assert_eq!(edge.redirect_to("a.example", "/x?y").as_deref(), Some("https://a.example/x?y"));
        edge.https_port = Some(8443);
        assert_eq!(edge.redirect_to("a.example", "/").as_deref(), Some("https://a.example:8443/"));
        assert_eq!(edge.redirect_to("b.example", "/"), None);
        edge.redirect = false;
        assert_eq!(edge.redirect_to("a.example", "/"), None);
    }

    #[test]
    fn a_domain_whose_redirect_is_off_is_not_redirected_and_a_wildcard_setting_covers_its_names() {
        let (c, k) = self_signed(&["a.example", "*.w.example"]);
        let key = certified_key(c.as_bytes(), k.as_bytes()).unwrap();
        let certs = [
            ("a.example".to_string(), key.clone()),
            ("*.w.example".to_string(), key),
            ("b.example".to_string(), certified_key(c.as_bytes(), k.as_bytes()).unwrap()),
        ];
        let table = TlsTable::new(certs, []).with_redirects([
            ("A.example.".to_string(), false),
            ("*.w.example".to_string(), false),
            ("y.w.example".to_string(), true),
        ]);
        assert!(!table.redirects("a.example") && !table.redirects("x.w.example") && table.redirects("y.w.example"));
        assert!(table.redirects("b.example") && !table.redirects("c.example"));
        let mut edge = Edge::new(TlsHandle::new(table));
        edge.https_port = Some(443);
        assert_eq!(edge.redirect_to("a.example", "/"), None);
        assert_eq!(edge.redirect_to("b.example", "/").as_deref(), Some("https://b.example/"));
    }

    #[test]
    fn challenge_paths_carry_a_token_of_url_safe_characters() {
        assert_eq!(challenge_token("/.well-known/acme-challenge/abc_D-9"), Some("abc_D-9"));
        for bad in ["/.well-known/acme-challenge/", "/.well-known/acme-challenge/../x", "/other", "/.well-known/acme-challenge/a?b"] {
            assert_eq!(challenge_token(bad), None, "{bad}");
        }
    }
}
