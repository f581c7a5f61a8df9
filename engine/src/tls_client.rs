//! How Slipway's own HTTPS clients (the notifier's posts, the CLI's
//! `--server https://...`) decide whom to trust: the system's CA
//! certificates, plus a private CA the operator names, with rustls and
//! the ring provider the router uses too. One place, so every client
//! trusts the same roots the same way.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A rustls client configuration trusting the system's roots and, when
/// given, every certificate in `extra_ca_pem` (a PEM file's contents,
/// named by `source` in errors). A machine without system roots still gets
/// a configuration: with no extra CA, every https:// peer then fails its
/// handshake, which names the certificate as untrusted.
pub fn config(extra_ca_pem: Option<(&[u8], &str)>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some((pem, source)) = extra_ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{source}: not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{source}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{source}: a certificate rustls cannot use as a root: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_named_in_the_error() {
        let e = config(Some((b"not pem at all", "ca.pem"))).err().unwrap_or_default();
        assert!(e.starts_with("ca.pem: holds no PEM certificate"), "{e}");
    }

    #[test]
    fn without_an_extra_ca_a_configuration_is_made() {
        assert!(config(None).is_ok());
    }
}
