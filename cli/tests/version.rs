//! `slipway --version` names the version and the commit the binary was
//! built from, and the build script that finds the commit falls back to
//! `unknown commit` outside a git checkout instead of failing the build.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::path::Path;
use std::process::Command;

fn stdout(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_commit() {
    let head = stdout(Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")));
    let version = stdout(Command::new(env!("CARGO_BIN_EXE_slipway")).arg("--version"));
    assert_eq!(version.trim(), format!("slipway {} (commit {})", env!("CARGO_PKG_VERSION"), &head.trim()[..12]));
}

#[test]
fn the_build_script_falls_back_without_git() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("build-script");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs");
    stdout(
        Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())).arg("--edition=2021").arg(&source).arg("-o").arg(&script),
    );
    // Outside any repository (GIT_CEILING_DIRECTORIES stops git looking above it).
    let run = |commit: Option<&str>| {
        let mut command = Command::new(&script);
        command.current_dir(dir.path()).env("GIT_CEILING_DIRECTORIES", dir.path().parent().unwrap()).env_remove("SLIPWAY_COMMIT");
        if let Some(commit) = commit {
            command.env("SLIPWAY_COMMIT", commit);
        }
        stdout(&mut command)
    };
    assert!(run(None).lines().any(|l| l == "cargo:rustc-env=SLIPWAY_COMMIT=unknown commit"), "{}", run(None));
    assert!(run(Some("abc123")).lines().any(|l| l == "cargo:rustc-env=SLIPWAY_COMMIT=commit abc123"));
}
