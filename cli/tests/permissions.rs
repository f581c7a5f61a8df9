//! The embedded store holds setting values: `.slipway/` is created for its
//! owner only (0700) and the SQLite file 0600, with its WAL files alike; a
//! file left readable by others (an older Slipway, a copy) is tightened
//! when it is opened.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_embedded_store_is_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let slipway = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("SLIPWAY_DATABASE")
            .env_remove("SLIPWAY_DATA_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    slipway(&["project", "create", "shop", "--repo", dir.path().to_str().unwrap()]);
    let data = dir.path().join(".slipway");
    assert_eq!(mode(&data), 0o700);
    for file in ["slipway.db", "slipway.db-wal", "slipway.db-shm"] {
        let path = data.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    std::fs::set_permissions(data.join("slipway.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    slipway(&["project", "list"]);
    assert_eq!(mode(&data.join("slipway.db")), 0o600, "tightened when opened");
}

/// `KEY=-` reads a value from standard input and `KEY=@FILE` from a file,
/// so a secret never has to be on a command line (`ps`, shell history).
#[test]
fn setting_values_come_from_standard_input_or_a_file() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("SLIPWAY_DATABASE")
            .env_remove("SLIPWAY_DATA_DIR")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(run(&["project", "create", "shop", "--repo", dir.path().to_str().unwrap()], "").0);
    std::fs::write(dir.path().join("value"), "from a file\n").unwrap();
    let (ok, _, err) = run(&["env", "set", "shop", "test", "PIPED=-", "FILED=@value", "AT=@@home"], "from stdin\n");
    assert!(ok, "{err}");
    let (_, listed, _) = run(&["env", "list", "shop", "test"], "");
    for line in ["PIPED=from stdin ", "FILED=from a file ", "AT=@home "] {
        assert!(listed.contains(line), "{line:?} in {listed}");
    }
    let (ok, _, err) = run(&["env", "set", "shop", "test", "A=-", "B=-"], "x");
    assert!(!ok && err.contains("only one KEY=-"), "{err}");
}
