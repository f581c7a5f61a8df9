//! Who a CLI action is recorded as: `cli:<account>@<host>`. Auditors ask
//! who did something, and `$USER` is neither always set (cron, systemd,
//! `env -i`, containers) nor trustworthy (anyone can set it), so the
//! account is the name of the process's effective uid from the system's
//! user database, and the host says which machine it ran on. A uid with no
//! name (a container without a passwd entry) is recorded as `uid<N>`.

use std::os::unix::fs::MetadataExt;

/// The actor CLI actions record: `cli:ann@build-3`.
pub fn actor() -> String {
    named(account(), whoami::fallible::hostname().ok())
}

/// The actor made of an account and, when known, a host.
fn named(account: String, host: Option<String>) -> String {
    match host.filter(|h| !h.is_empty()) {
        Some(host) => format!("cli:{account}@{host}"),
        None => format!("cli:{account}"),
    }
}

/// The effective uid's name, or `uid<N>` when the user database has none.
fn account() -> String {
    match whoami::fallible::username() {
        Ok(name) if !name.is_empty() => name,
        // `/proc/self` belongs to the process's effective uid.
        _ => match std::fs::metadata("/proc/self") {
            Ok(meta) => format!("uid{}", meta.uid()),
            Err(_) => "uid-unknown".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_account_and_the_host() {
        assert_eq!(named("ann".into(), Some("build-3".into())), "cli:ann@build-3");
        assert_eq!(named("ann".into(), Some(String::new())), "cli:ann");
        assert_eq!(named("uid1000".into(), None), "cli:uid1000");
    }

    #[test]
    fn the_account_is_the_uids_not_user() {
        let actor = actor();
        assert!(actor.starts_with("cli:") && !actor.contains("unknown"), "{actor}");
    }
}
