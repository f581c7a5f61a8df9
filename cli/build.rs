//! Records the git commit `slipway` is built from, for `slipway --version`:
//! an operator reporting a problem, or checking which build a host runs,
//! needs the commit and not only the crate's version. The commit is
//! `git rev-parse HEAD` of the source tree, `SLIPWAY_COMMIT` when set (a build from a
//! source archive or a Docker context without `.git`), and otherwise
//! `unknown commit`: a build never fails for want of git.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SLIPWAY_COMMIT");
    let commit = match std::env::var("SLIPWAY_COMMIT") {
        Ok(given) if !given.trim().is_empty() => format!("commit {}", given.trim()),
        _ => from_git().unwrap_or_else(|| "unknown commit".into()),
    };
    println!("cargo:rustc-env=SLIPWAY_COMMIT={commit}");
}

/// `commit <hash>` of HEAD, or None when this is not a git checkout or git
/// is missing. Asks cargo to run again when HEAD or the branch moves.
fn from_git() -> Option<String> {
    let head = git(&["rev-parse", "HEAD"])?;
    for path in ["HEAD", "packed-refs"] {
        rerun_if_changed(git(&["rev-parse", "--git-path", path]));
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        rerun_if_changed(git(&["rev-parse", "--git-path", &branch]));
    }
    Some(format!("commit {}", &head[..head.len().min(12)]))
}

fn rerun_if_changed(path: Option<String>) {
    if let Some(path) = path.filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// One line git prints, or None when git fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let line = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !line.is_empty()).then_some(line)
}
