//! Setting values sealed at rest. The value table holds every setting and
//! source credential; whoever reads the database (a backup, a replica, a
//! build-only host) must not read them. Each value is encrypted with
//! AES-256-GCM (ring's, which uses the CPU's AES instructions: a worker
//! opens thousands of values per deployment) under a key kept outside the
//! database (a key file on the hosts that need values), with a random
//! 96-bit nonce per value and the value's fingerprint as associated data,
//! so a sealed value moved to another row does not open. A stored value
//! reads `sealed:v1:<key id>:<base64(nonce | ciphertext | tag)>`; one
//! without the prefix was stored before sealing and is returned as it is.
//! (Random nonces are safe far beyond the number of values an
//! installation seals under one key: the bound is about 2^32.)
//!
//! The key id (the first 8 bytes of the key's SHA-256, hex) names the key a
//! value needs, so a process without it says which one is missing. A
//! keyring holds the key new values are sealed with and older keys that
//! still open values (`slipway secrets rotate-key` re-seals them all).

use std::path::Path;

use std::sync::Arc;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "sealed:v1:";

/// One 256-bit key and its id.
#[derive(Clone)]
pub struct SealingKey {
    id: String,
    cipher: Arc<LessSafeKey>,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

impl SealingKey {
    /// A key from its 64 hex characters (a key file's content).
    pub fn from_hex(text: &str) -> Result<SealingKey, String> {
        let bytes =
            hex::decode(text.trim()).map_err(|_| "expected 64 hexadecimal characters (a key from `slipway secrets keygen`)".to_string())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| "expected 64 hexadecimal characters (32 bytes)".to_string())?;
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "not a valid AES-256 key".to_string())?;
        Ok(SealingKey { id, cipher: Arc::new(LessSafeKey::new(key)) })
    }

    /// Reads a key file: refused unless only its owner may read it.
    pub fn from_file(path: &Path) -> Result<SealingKey, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("secrets key {shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!("secrets key {shown}: readable by others (mode {:o}); chmod 600 it", meta.permissions().mode() & 0o777));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("secrets key {shown}: {e}"))?;
        SealingKey::from_hex(&text).map_err(|e| format!("secrets key {shown}: {e}"))
    }

    /// A fresh random key, as hex.
    pub fn generate_hex() -> String {
        hex::encode(random::<32>())
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// `N` bytes from the operating system's random source.
fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system's random source does not fail once the system runs.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        panic!("the operating system's random source failed");
    }
    bytes
}

/// Writes a fresh key to `path`, readable by its owner only; refuses to
/// overwrite a file.
pub fn write_new_key(path: &Path) -> Result<SealingKey, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hex = SealingKey::generate_hex();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("secrets key {}: {e}", path.display()))?;
    file.write_all(format!("{hex}\n").as_bytes()).map_err(|e| format!("secrets key {}: {e}", path.display()))?;
    SealingKey::from_hex(&hex)
}

/// The key new values are sealed with, and older keys that still open values.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: SealingKey,
    older: Vec<SealingKey>,
}

/// Why a stored value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value of {fingerprint} is sealed with key {key}, which this process does not have (give it with --secrets-key)")]
    MissingKey { fingerprint: String, key: String },
    #[error("the value of {fingerprint} does not open with key {key}: it was altered or moved from another row")]
    Tampered { fingerprint: String, key: String },
}

impl Keyring {
    pub fn new(current: SealingKey, older: Vec<SealingKey>) -> Keyring {
        Keyring { current, older }
    }

    pub fn current(&self) -> &SealingKey {
        &self.current
    }

    /// Seals `value`, bound to its `fingerprint`.
    pub fn seal(&self, fingerprint: &str, value: &str) -> String {
        let nonce = random::<NONCE_LEN>();
        let mut bytes = nonce.to_vec();
        let mut sealed = value.as_bytes().to_vec();
        // Sealing only fails for messages beyond the cipher's limit (64 GiB).
        let tagged = self.current.cipher.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(fingerprint.as_bytes()),
            &mut sealed,
        );
        if tagged.is_err() {
            sealed.clear();
        }
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.current.id, base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// Whether a stored value is sealed (and with which key).
pub fn sealed_with(stored: &str) -> Option<&str> {
    stored.strip_prefix(PREFIX)?.split_once(':').map(|(key, _)| key)
}

/// Opens a stored value: a sealed one with the key it names (from
/// `keyring`), one stored before sealing as it is.
pub fn open(keyring: Option<&Keyring>, fingerprint: &str, stored: &str) -> Result<String, OpenError> {
    let Some(rest) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
    let (key_id, body) = rest.split_once(':').unwrap_or((rest, ""));
    let missing = || OpenError::MissingKey { fingerprint: fingerprint.to_string(), key: key_id.to_string() };
    let tampered = || OpenError::Tampered { fingerprint: fingerprint.to_string(), key: key_id.to_string() };
    let keyring = keyring.ok_or_else(missing)?;
    let key = std::iter::once(&keyring.current).chain(&keyring.older).find(|k| k.id == key_id).ok_or_else(missing)?;
    let mut bytes = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| tampered())?;
    if bytes.len() < NONCE_LEN {
        return Err(tampered());
    }
    let nonce = Nonce::try_assume_unique_for_key(&bytes[..NONCE_LEN]).map_err(|_| tampered())?;
    let len = key.cipher.open_in_place(nonce, Aad::from(fingerprint.as_bytes()), &mut bytes[NONCE_LEN..]).map_err(|_| tampered())?.len();
    // The value in place of the nonce: no second allocation per value.
    bytes.copy_within(NONCE_LEN..NONCE_LEN + len, 0);
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|_| tampered())
}

/// How a store keeps setting values: sealed with `keyring`, or (without
/// one) in clear unless `required`, when storing a value is refused.
#[derive(Debug, Clone, Default)]
pub struct Sealing {
    pub keyring: Option<std::sync::Arc<Keyring>>,
    pub required: bool,
}

impl Sealing {
    /// What the value table stores for `value`.
    pub fn stored(&self, fingerprint: &str, value: &str) -> Result<String, crate::StoreError> {
        match &self.keyring {
            Some(keyring) => Ok(keyring.seal(fingerprint, value)),
            None if self.required => Err(crate::StoreError::Sealing {
                reason: "setting values are sealed at rest, and this process has no secrets key: give it with --secrets-key FILE \
                         (make one with `slipway secrets keygen FILE`; the server and the workers that run containers need the same file)"
                    .into(),
            }),
            None => Ok(value.to_string()),
        }
    }

    /// The value a stored one holds.
    pub fn opened(&self, fingerprint: &str, stored: &str) -> Result<String, crate::StoreError> {
        open(self.keyring.as_deref(), fingerprint, stored).map_err(|e| crate::StoreError::Sealing { reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealingKey {
        SealingKey::from_hex(&SealingKey::generate_hex()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_in_its_row() {
        let ring = Keyring::new(key(), vec![]);
        let sealed = ring.seal("hmac-sha256:aa", "hunter2");
        assert!(sealed.starts_with("sealed:v1:") && !sealed.contains("hunter2"));
        assert_eq!(sealed_with(&sealed), Some(ring.current().id()));
        assert_eq!(open(Some(&ring), "hmac-sha256:aa", &sealed).unwrap(), "hunter2");
        assert_ne!(ring.seal("hmac-sha256:aa", "hunter2"), sealed, "a fresh nonce each time");
        // Moved to another row, altered, or without the key: refused, naming the key.
        assert!(matches!(open(Some(&ring), "hmac-sha256:bb", &sealed), Err(OpenError::Tampered { .. })));
        let altered = format!("{}A", &sealed[..sealed.len() - 1]);
        assert!(matches!(open(Some(&ring), "hmac-sha256:aa", &altered), Err(OpenError::Tampered { .. })));
        let other = Keyring::new(key(), vec![]);
        let err = open(Some(&other), "hmac-sha256:aa", &sealed).unwrap_err();
        assert!(err.to_string().contains(ring.current().id()), "{err}");
        assert!(matches!(open(None, "hmac-sha256:aa", &sealed), Err(OpenError::MissingKey { .. })));
        assert!(matches!(open(Some(&ring), "f", "sealed:v1:nokey"), Err(OpenError::MissingKey { .. })));
    }

    #[test]
    fn older_keys_still_open_and_values_from_before_sealing_read_as_they_are() {
        let old = Keyring::new(key(), vec![]);
        let sealed = old.seal("f", "v");
        let rotated = Keyring::new(key(), vec![old.current().clone()]);
        assert_eq!(open(Some(&rotated), "f", &sealed).unwrap(), "v");
        assert_eq!(open(None, "f", "plain value").unwrap(), "plain value");
    }

    #[test]
    fn bad_key_files_say_what_is_expected() {
        assert!(SealingKey::from_hex("zz").unwrap_err().contains("64 hexadecimal"));
        assert!(SealingKey::from_hex(&"ab".repeat(16)).unwrap_err().contains("32 bytes"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let written = write_new_key(&path).unwrap();
        assert_eq!(SealingKey::from_file(&path).unwrap().id(), written.id());
        assert!(write_new_key(&path).is_err(), "never overwritten");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SealingKey::from_file(&path).unwrap_err().contains("chmod 600"));
    }
}
