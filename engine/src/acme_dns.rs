//! DNS-01 for wildcard domains (`*.example.com`), which HTTP-01 cannot
//! prove. Slipway serves no DNS, and every DNS provider has its own API, so
//! the operator gives a program (`--acme-dns-hook`) that publishes and
//! withdraws one TXT record:
//!
//! ```text
//! HOOK set   _acme-challenge.example.com VALUE
//! HOOK clear _acme-challenge.example.com VALUE
//! ```
//!
//! `set` must return once the record is published; `clear` runs after the
//! order whatever happened. A hook that fails, or runs past
//! [`HOOK_LIMIT`], fails the order with its exit status and the first line
//! of what it wrote to standard error. The value is public by design (it
//! is a digest of the key authorization), so it may be passed as an
//! argument; the hook's own credentials stay in its environment.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// The longest a hook may run.
pub const HOOK_LIMIT: Duration = Duration::from_secs(120);
/// The most of the hook's standard error a failure reason quotes.
const QUOTED: usize = 200;

/// The TXT record a DNS-01 challenge for `domain` is answered in: a
/// wildcard is proved on its base name.
pub fn record_name(domain: &str) -> String {
    format!("_acme-challenge.{}", domain.strip_prefix("*.").unwrap_or(domain))
}

/// What a hook is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Set,
    Clear,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Set => "set",
            Action::Clear => "clear",
        }
    }
}

/// Runs `hook ACTION NAME VALUE`; the error is a failure reason.
pub async fn run(hook: &Path, action: Action, name: &str, value: &str) -> Result<(), String> {
    let shown = format!("the DNS hook `{} {} {name}`", hook.display(), action.as_str());
    let child = tokio::process::Command::new(hook)
        .args([action.as_str(), name, value])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{shown} could not start: {e}"))?;
    let output = match tokio::time::timeout(HOOK_LIMIT, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| format!("{shown} failed: {e}"))?,
        Err(_) => return Err(format!("{shown} ran past {} s and was stopped", HOOK_LIMIT.as_secs())),
    };
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let first: String = said.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(QUOTED).collect();
    let status = output.status.code().map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
    Err(if first.is_empty() { format!("{shown} exited with {status}") } else { format!("{shown} exited with {status}: {first}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_is_proved_on_its_base_name() {
        assert_eq!(record_name("*.shop.example"), "_acme-challenge.shop.example");
        assert_eq!(record_name("shop.example"), "_acme-challenge.shop.example");
    }

    #[tokio::test]
    async fn a_failing_hook_is_reported_with_its_status_and_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\necho \"$1 $2 $3\" >> \"$(dirname \"$0\")/calls\"\n[ \"$1\" = set ] || exit 0\necho '' >&2\necho 'zone not found' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let err = run(&hook, Action::Set, "_acme-challenge.a.example", "v1").await.unwrap_err();
        assert!(err.contains("set _acme-challenge.a.example") && err.ends_with("exited with status 3: zone not found"), "{err}");
        assert_eq!(run(&hook, Action::Clear, "_acme-challenge.a.example", "v1").await, Ok(()));
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(calls, "set _acme-challenge.a.example v1\nclear _acme-challenge.a.example v1\n");
        let missing = run(&dir.path().join("nope"), Action::Set, "n", "v").await.unwrap_err();
        assert!(missing.contains("could not start"), "{missing}");
    }
}
