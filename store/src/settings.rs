//! Setting fingerprints. Settings (environment variables, secrets among
//! them) never enter an event: events carry each key with a fingerprint, an
//! HMAC of the value under this installation's key, so an auditor can see
//! that a value changed (or did not) without learning it, and nobody can
//! confirm a guessed secret from the log alone. Values are kept by
//! fingerprint in a separate, insert-only table.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A fresh random installation key (hex), from the OS's randomness.
pub(crate) fn new_key() -> String {
    // Each v7 UUID carries 74 bits from the OS's random source; two of
    // them, hashed, make a 256-bit key without another dependency.
    let mut h = <Sha256 as sha2::Digest>::new();
    for _ in 0..2 {
        sha2::Digest::update(&mut h, uuid::Uuid::now_v7().as_u128().to_le_bytes());
    }
    hex::encode(sha2::Digest::finalize(h))
}

/// The fingerprint of `value` for setting `key` of `project`/`environment`.
pub fn fingerprint(installation_key: &[u8], project: &str, environment: &str, key: &str, value: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(installation_key).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this cannot happen.
        <Hmac<Sha256> as Mac>::new_from_slice(b"slipway").expect("a fixed key is valid")
    });
    for part in [project, environment, key, value] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part.as_bytes());
    }
    format!("hmac-sha256:{}", hex::encode(&mac.finalize().into_bytes()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_key_value_and_place() {
        let k = b"installation";
        let f = fingerprint(k, "p", "live", "SECRET", "hunter2");
        assert_eq!(f, fingerprint(k, "p", "live", "SECRET", "hunter2"));
        assert!(f.starts_with("hmac-sha256:") && !f.contains("hunter2"));
        assert_ne!(f, fingerprint(k, "p", "live", "SECRET", "hunter3"));
        assert_ne!(f, fingerprint(k, "p", "test", "SECRET", "hunter2"));
        assert_ne!(f, fingerprint(b"other", "p", "live", "SECRET", "hunter2"));
        // Length-prefixing keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(fingerprint(k, "ab", "c", "K", "v"), fingerprint(k, "a", "bc", "K", "v"));
    }

    #[test]
    fn installation_keys_differ() {
        assert_ne!(new_key(), new_key());
    }
}
