//! `slipway project webhook` and `slipway project auto-deploy` through the
//! built binary on an SQLite store in a temporary directory: the secret is
//! printed once, alone on standard output, and is nowhere in the log or an
//! export; rules are set, listed (text and `--json`), replaced and removed,
//! and bad ones are refused with the right exit status.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::process::{Command, Output};

use serde_json::{json, Value};

struct Dir(tempfile::TempDir);

impl Dir {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("--database")
            .arg(format!("sqlite://{}", self.0.path().join("slipway.db").display()))
            .args(args)
            .current_dir(self.0.path())
            .env_remove("SLIPWAY_DATA_DIR")
            .env_remove("SLIPWAY_DATABASE")
            .env_remove("SLIPWAY_SERVER")
            .output()
            .unwrap();
        eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn exit(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_webhook_secret_is_printed_once_and_recorded_nowhere() {
    let dir = Dir(tempfile::tempdir().unwrap());
    dir.ok(&["project", "create", "app", "--repo", "/tmp"]);
    let first = dir.ok(&["project", "webhook", "app", "rotate"]);
    let secret = first.trim();
    assert!(secret.starts_with("slwh_") && secret.len() == 5 + 64 && !secret.contains('\n'), "only the secret: {first:?}");
    let second: Value = serde_json::from_str(&dir.ok(&["--json", "project", "webhook", "app", "rotate"])).unwrap();
    assert_ne!(second["secret"].as_str(), Some(secret));
    assert_eq!(second["hooks"]["gitlab"], "/api/hooks/gitlab/app");
    let shown = dir.ok(&["--json", "project", "show", "app"]);
    assert_eq!(serde_json::from_str::<Value>(&shown).unwrap()["webhook_secret"], true);
    let export = dir.0.path().join("log.jsonl");
    dir.ok(&["export", "--output", export.to_str().unwrap()]);
    let log = std::fs::read_to_string(&export).unwrap();
    assert!(log.contains("WebhookSecretRotated"));
    for s in [secret, second["secret"].as_str().unwrap()] {
        assert!(!log.contains(s) && !shown.contains(s), "the secret leaked");
    }
    assert_eq!(dir.exit(&["project", "webhook", "ghost", "rotate"]).0, 3, "no such project");
}

#[test]
fn auto_deploy_rules_are_set_listed_and_removed() {
    let dir = Dir(tempfile::tempdir().unwrap());
    dir.ok(&["project", "create", "app", "--repo", "/tmp"]);
    dir.ok(&["project", "auto-deploy", "app", "set", "main", "test"]);
    let listed = dir.ok(&["project", "auto-deploy", "app", "set", "release/*", "live"]);
    assert_eq!(listed, "main       -> test\nrelease/*  -> live\n");
    dir.ok(&["project", "auto-deploy", "app", "set", "main", "live"]);
    let rules: Value = serde_json::from_str(&dir.ok(&["--json", "project", "auto-deploy", "app", "list"])).unwrap();
    assert_eq!(rules, json!([{"branch": "main", "environment": "live"}, {"branch": "release/*", "environment": "live"}]));
    dir.ok(&["project", "auto-deploy", "app", "remove", "main"]);
    assert_eq!(dir.ok(&["project", "auto-deploy", "app", "list"]), "release/*  -> live\n");
    let (code, says) = dir.exit(&["project", "auto-deploy", "app", "set", "main", "prod"]);
    assert_eq!(code, 3, "{says}");
    assert!(says.contains("has no environment `prod`"), "{says}");
    let (code, says) = dir.exit(&["project", "auto-deploy", "app", "set", "a b", "test"]);
    assert_eq!(code, 2, "{says}");
    let (code, says) = dir.exit(&["project", "auto-deploy", "app", "remove", "nope"]);
    assert_eq!(code, 3, "{says}");
    assert!(says.contains("release/*"), "names the rules there are: {says}");
}
