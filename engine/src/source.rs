//! Checks on how a project reaches its repository, before anything is
//! recorded: which repository addresses are accepted (local paths,
//! `file://`, `https://`, `http://`, `ssh://` and git's `user@host:path`),
//! that no address carries a credential (addresses are recorded and shown;
//! credentials belong in the value table), and that credentials and
//! trusted host keys are well formed. Pure: the request functions record
//! what passes.

use std::collections::BTreeMap;

use base64::Engine as _;
use slipway_proto::event::SOURCE_CREDENTIALS;

/// A change to a project's source access, with credential values in clear
/// (they go to the value table; the event gets fingerprints).
#[derive(Debug, Clone, Default)]
pub struct SourceChange {
    /// Credential name (one of [`SOURCE_CREDENTIALS`]) -> value.
    pub set: BTreeMap<String, String>,
    pub removed: Vec<String>,
    /// Replaces every trusted host key (OpenSSH `known_hosts` lines).
    pub known_hosts: Option<Vec<String>>,
    pub submodules: Option<bool>,
    /// The public half of the `ssh_key` set, when Slipway made the key
    /// (an OpenSSH line), kept to be shown again.
    pub deploy_key: Option<String>,
}

impl SourceChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty() && self.known_hosts.is_none() && self.submodules.is_none()
    }
}

/// SSH host key types libssh2 can verify.
const HOST_KEY_TYPES: [&str; 6] =
    ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa", "ssh-dss"];

/// Whether `repository` is reached over a network (so credentials and host
/// keys apply), and a reason when it is refused outright.
pub fn check_repository(repository: &str) -> Result<(), String> {
    if repository.trim().is_empty() {
        return Err("the repository must be a path, a file://, https:// or ssh:// URL, or user@host:path".into());
    }
    if repository.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the repository address contains whitespace or a control character".into());
    }
    if let Some((scheme, rest)) = repository.split_once("://") {
        if !matches!(scheme, "file" | "https" | "http" | "ssh") {
            return Err(format!("repository scheme `{scheme}://` is not supported; use https://, ssh:// or file://"));
        }
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        if scheme != "ssh" && authority.contains('@') {
            return Err(format!(
                "the repository URL carries a credential; give {scheme}:// URLs without one and the token with \
                 --token-file (addresses are recorded and shown, credentials are kept as secrets)"
            ));
        }
        if scheme == "ssh" && authority.split('@').next().is_some_and(|user| user.contains(':')) && authority.contains('@') {
            return Err("the ssh:// URL carries a password; use a deploy key (--ssh-key) instead".into());
        }
        // A query string or fragment is no part of a git address, and where
        // one is given it is usually a credential (`?private_token=...`),
        // which would be recorded and shown with the address.
        if scheme != "file" && rest.contains(['?', '#']) {
            return Err(format!(
                "the repository URL has a query string or fragment (`?` or `#`), which a git address does not; give {scheme}:// \
                 URLs without one, and a token with --token-file (addresses are recorded and shown, credentials are kept as secrets)"
            ));
        }
    }
    Ok(())
}

/// Checks credential names and values, and host key lines.
pub fn check_change(change: &SourceChange) -> Result<(), String> {
    if let Some(public) = &change.deploy_key {
        if !change.set.contains_key("ssh_key") {
            return Err("deploy_key: the public half of a key goes with the key (`ssh_key` in `set`)".into());
        }
        if !public.starts_with("ssh-") || public.contains(['\n', '\r']) || public.split_whitespace().count() < 2 {
            return Err("deploy_key: expected the key's public half as one OpenSSH line (`ssh-ed25519 AAAA... comment`)".into());
        }
    }
    for name in change.set.keys().chain(&change.removed) {
        if !SOURCE_CREDENTIALS.contains(&name.as_str()) {
            return Err(format!("source credential `{name}` is not one of {}", SOURCE_CREDENTIALS.join(", ")));
        }
    }
    for (name, value) in &change.set {
        let fine = match name.as_str() {
            "ssh_key" => value.contains("-----BEGIN ") && value.contains(" PRIVATE KEY-----"),
            "ca_cert" => value.contains("-----BEGIN CERTIFICATE-----"),
            _ => !value.is_empty() && !value.contains(['\n', '\r', '\0']),
        };
        if !fine {
            return Err(match name.as_str() {
                "ssh_key" => "the SSH key is not a private key in PEM or OpenSSH form (-----BEGIN ... PRIVATE KEY-----)".into(),
                "ca_cert" => "the CA certificate is not PEM (-----BEGIN CERTIFICATE-----)".into(),
                _ => format!("source credential `{name}` must be one non-empty line"),
            });
        }
    }
    for line in change.known_hosts.iter().flatten() {
        check_known_host(line)?;
    }
    Ok(())
}

/// Whether `passphrase` opens `key`, for a key in OpenSSH's own form
/// (what `ssh-keygen` writes): a wrong passphrase is refused when it is
/// given, not found by the first deployment. A key in another form, or
/// one this check cannot read (an unusual cipher), is left to the workers,
/// which say so at the services check. Pure, but slow on purpose (the key
/// derivation is bcrypt): run it off the async threads.
pub fn check_passphrase(key: &str, passphrase: &str) -> Result<(), String> {
    if !key.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return Ok(());
    }
    let Ok(parsed) = ssh_key::PrivateKey::from_openssh(key.trim()) else { return Ok(()) };
    if !parsed.is_encrypted() {
        return Ok(());
    }
    match parsed.decrypt(passphrase) {
        Err(ssh_key::Error::Crypto) => Err("ssh_key_passphrase does not open the SSH key: the passphrase is wrong".into()),
        _ => Ok(()),
    }
}

/// One OpenSSH `known_hosts` line: `host key-type base64-key`, as
/// `ssh-keyscan` prints it (hashed host names cannot be matched).
pub fn check_known_host(line: &str) -> Result<(), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let shown = line.escape_debug().to_string();
    let [host, kind, key, ..] = fields[..] else {
        return Err(format!("known host `{shown}` is not `HOST KEY-TYPE KEY` (as ssh-keyscan prints it)"));
    };
    if host.starts_with('|') {
        return Err(format!("known host `{shown}` has a hashed host name; give it in clear (ssh-keyscan without -H)"));
    }
    if !HOST_KEY_TYPES.contains(&kind) {
        return Err(format!("known host `{shown}`: key type `{kind}` is not one of {}", HOST_KEY_TYPES.join(", ")));
    }
    if base64::engine::general_purpose::STANDARD.decode(key).is_err() {
        return Err(format!("known host `{shown}`: the key is not base64"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        for fine in [
            "/srv/app",
            "file:///srv/app",
            "https://git.example.com/org/app.git",
            "ssh://git@host:2222/org/app.git",
            "git@host:org/app.git",
            "http://10.0.0.1/app.git",
        ] {
            assert_eq!(check_repository(fine), Ok(()), "{fine}");
        }
        let token = check_repository("https://x-access-token:ghp_secret@github.com/org/app.git").unwrap_err();
        assert!(token.contains("--token-file") && !token.contains("ghp_secret"), "{token}");
        assert!(check_repository("https://user@github.com/org/app.git").is_err());
        assert!(check_repository("ssh://git:pw@host/app.git").unwrap_err().contains("deploy key"));
        assert!(check_repository("ftp://host/app.git").unwrap_err().contains("ftp://"));
        assert!(check_repository("").is_err());
        assert!(check_repository("/srv/app\nx").is_err());
        // A token in the query string would be recorded and shown with the address.
        let query = check_repository("https://git.example.com/app.git?private_token=hunter2pw").unwrap_err();
        assert!(query.contains("query string") && query.contains("--token-file") && !query.contains("hunter2pw"), "{query}");
        assert!(check_repository("ssh://git@host/app.git#x").is_err());
    }

    #[test]
    fn credentials_and_host_keys() {
        let change = |name: &str, value: &str| SourceChange { set: BTreeMap::from([(name.into(), value.into())]), ..Default::default() };
        let key = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n";
        let with_public = |public: &str| SourceChange { deploy_key: Some(public.into()), ..change("ssh_key", key) };
        assert_eq!(check_change(&with_public("ssh-ed25519 AAAA slipway:shop")), Ok(()));
        assert!(check_change(&with_public("not a key")).unwrap_err().contains("one OpenSSH line"));
        let alone = SourceChange { deploy_key: Some("ssh-ed25519 AAAA".into()), ..Default::default() };
        assert!(check_change(&alone).unwrap_err().contains("goes with the key"));
        assert_eq!(check_change(&change("token", "ghp_abc")), Ok(()));
        assert!(check_change(&change("tokn", "x")).unwrap_err().contains("not one of token"));
        assert!(check_change(&change("token", "a\nb")).is_err());
        assert!(check_change(&change("ssh_key", "ssh-ed25519 AAAA")).unwrap_err().contains("private key"));
        assert_eq!(check_change(&change("ssh_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n")), Ok(()));
        assert!(check_change(&change("ca_cert", "nope")).is_err());
        assert_eq!(
            check_known_host("[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"),
            Ok(())
        );
        assert!(check_known_host("host ssh-ed25519").is_err());
        assert!(check_known_host("|1|abc= ssh-ed25519 AAAA").unwrap_err().contains("hashed"));
        assert!(check_known_host("host ssh-foo AAAA").unwrap_err().contains("key type"));
        assert!(check_known_host("host ssh-rsa not*base64").unwrap_err().contains("base64"));
    }

    /// A throwaway key made for this test (`ssh-keygen -t ed25519 -a 1`,
    /// one bcrypt round so that the test is quick), passphrase "correct horse".
    const ENCRYPTED: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABB0qF6Lzg\nlt4DfqKCd6JNr1AAAAAQAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIId9y4nfYIuvGhZs\n3U1HydKH5YS7Z4uxIdZ75emv1B6cAAAAkMlVNMo/KMBZMW4DnzHsaPxeGUNzFbB3CCSxYG\nlJEcNgHA7n5tulosMZdj0tdN62qbnqnAVgbnZmQHCTDN7qXypptsIfBu0D3DkNYJjobXe4\n7CdFExmt0k9Yrrayv74VftnLFhNuMPxR98rM/e0C9OY2Q/s1xtnRK6hW3pARjd6wAfj8lO\nyfxGfkTxPxXtUMyQ==\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn a_wrong_passphrase_is_refused_and_the_right_one_accepted() {
        assert_eq!(check_passphrase(ENCRYPTED, "correct horse"), Ok(()));
        assert!(check_passphrase(ENCRYPTED, "battery staple").unwrap_err().contains("passphrase is wrong"));
        // Not OpenSSH's form, or not readable here: the workers decide.
        assert_eq!(check_passphrase("-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n-----END ENCRYPTED PRIVATE KEY-----\n", "x"), Ok(()));
        assert_eq!(check_passphrase("-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64\n-----END OPENSSH PRIVATE KEY-----\n", "x"), Ok(()));
    }
}
