//! The embedded mode loses nothing: `slipway deploy` on SQLite with the
//! in-process queue (what `examples/hello/deploy.sh` runs) retires the
//! release it replaced before it exits, so three deploys in a row leave
//! exactly one release's containers running; `slipway logs` of a release
//! that failed at its second command shows both commands' output. Real
//! Docker, the built binary.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use slipway_tests::{containers_with_label, remove_containers_with_label, require_docker, AppRepo};

/// The example app's files (examples/hello) with a static busybox, as deploy.sh commits them.
fn example_files() -> BTreeMap<String, Vec<u8>> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let mut files = BTreeMap::new();
    for name in ["Dockerfile", "slipway.toml", ".dockerignore", "www/index.html"] {
        files.insert(name.to_string(), std::fs::read(example.join(name)).unwrap());
    }
    files.insert("busybox".into(), std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)"));
    files
}

fn slipway(dir: &Path, args: &[&str]) -> String {
    let (out, stdout, stderr) = run(dir, args);
    assert!(out.status.success(), "slipway {args:?} exited {:?}\n{stdout}{stderr}", out.status);
    stdout
}

/// Runs `slipway` on the store in `dir`: its outcome, standard output and error.
fn run(dir: &Path, args: &[&str]) -> (std::process::Output, String, String) {
    run_with(dir, &dir.join("data"), args)
}

/// `run` with the data directory `data` (relative: to `dir`, where the command runs).
fn run_with(dir: &Path, data: &Path, args: &[&str]) -> (std::process::Output, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .current_dir(dir)
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("slipway.db").display()))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("SLIPWAY_DATABASE")
        .env_remove("SLIPWAY_QUEUE")
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    (out, stdout, stderr)
}

/// Running containers labelled with `project`, by the deployment they belong to.
fn running_releases(project: &str) -> BTreeSet<String> {
    let out = Command::new("docker")
        .args(["ps", "--filter", &format!("label=slipway.project={project}"), "--format", "{{.Label \"slipway.deployment\"}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn three_embedded_deploys_leave_one_release_running() {
    require_docker();
    let project = format!("emb{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let dir = tempfile::tempdir().unwrap();
    let repo = AppRepo::new();
    repo.commit(&example_files(), "example app");
    slipway(dir.path(), &["project", "create", &project, "--repo", repo.path().to_str().unwrap()]);
    slipway(dir.path(), &["env", "set", &project, "test", "GREETING=world"]);
    let started = std::time::Instant::now();
    for _ in 0..3 {
        slipway(dir.path(), &["deploy", &project, "test", "--migrate", "-q"]);
    }
    let elapsed = started.elapsed();
    let running = running_releases(&project);
    let all = containers_with_label(&format!("slipway.project={project}"));
    remove_containers_with_label(&format!("slipway.project={project}"));
    assert_eq!(running.len(), 1, "one release runs after three deploys; running: {running:?}, all: {all:?}");
    // The release's web and worker containers, nothing of the other two.
    assert_eq!(all.len(), 2, "{all:?}");
    eprintln!("three embedded deploys took {elapsed:?}");
}

/// Embedded, the workers run in the `deploy` command: one that stops
/// following at `--timeout` cancels its deployment (before, it was left
/// running with no worker, and the next deploy waited for its step
/// deadline). With a relative data directory (the default `.slipway`),
/// `slipway logs` finds the build log the steps wrote.
#[test]
fn an_embedded_deploy_past_its_timeout_is_cancelled_and_logs_are_found_under_a_relative_data_dir() {
    require_docker();
    let project = format!("tmo{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new("state");
    let repo = AppRepo::new();
    repo.commit(&example_files(), "example app");
    let ok = |args: &[&str]| {
        let (out, stdout, stderr) = run_with(dir.path(), data, args);
        assert!(out.status.success(), "slipway {args:?} exited {:?}\n{stdout}{stderr}", out.status);
        stdout
    };
    ok(&["project", "create", &project, "--repo", repo.path().to_str().unwrap()]);
    // The example's release is watched for 10 s: 2 s is never enough.
    let (out, _, stderr) = run_with(dir.path(), data, &["deploy", &project, "test", "--timeout", "2", "-q"]);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("was cancelled"), "{stderr}");
    let started = std::time::Instant::now();
    ok(&["deploy", &project, "test", "-q"]);
    let second = started.elapsed();
    let listed: serde_json::Value = serde_json::from_str(&ok(&["deployments", &project, "--json"])).unwrap();
    let rows = listed.as_array().unwrap();
    let reason = |row: &serde_json::Value| row["failure"].to_string() + &row["status"].to_string();
    assert!(reason(&rows[0]).contains("--timeout 2"), "{listed}");
    let logs = ok(&["logs", rows[1]["deployment"].as_str().unwrap()]);
    remove_containers_with_label(&format!("slipway.project={project}"));
    assert!(second < std::time::Duration::from_secs(120), "the next deploy waited {second:?}");
    assert!(logs.contains("Step 1/"), "the build log is shown:\n{logs}");
    assert!(!logs.contains("unavailable"), "{logs}");
}

#[test]
fn logs_of_a_failed_release_show_every_command_that_ran() {
    require_docker();
    let project = format!("rel{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let dir = tempfile::tempdir().unwrap();
    let mut files = example_files();
    let toml = String::from_utf8(files["slipway.toml"].clone()).unwrap();
    let two = r#"commands = ["echo first command ran", "echo second command broke >&2; exit 3"]"#;
    let toml = toml.replace(r#"commands = ["echo migrating for $GREETING && test -f /www/index.html"]"#, two);
    assert!(toml.contains(two), "examples/hello/slipway.toml changed its release commands:\n{toml}");
    files.insert("slipway.toml".into(), toml.into_bytes());
    let repo = AppRepo::new();
    repo.commit(&files, "two release commands, the second failing");
    slipway(dir.path(), &["project", "create", &project, "--repo", repo.path().to_str().unwrap()]);
    let (out, stdout, stderr) = run(dir.path(), &["deploy", &project, "test", "--migrate", "--logs"]);
    let listed: serde_json::Value = serde_json::from_str(&slipway(dir.path(), &["deployments", &project, "--json"])).unwrap();
    let id = listed[0]["deployment"].as_str().unwrap().to_string();
    let logs = slipway(dir.path(), &["logs", &id]);
    remove_containers_with_label(&format!("slipway.project={project}"));
    assert_eq!(out.status.code(), Some(1), "the deployment fails at the release\n{stdout}{stderr}");
    // Following with --logs shows what every command printed, once.
    for printed in ["     | first command ran", "     | second command broke"] {
        assert_eq!(stdout.lines().filter(|l| *l == printed).count(), 1, "{printed}\n{stdout}");
    }
    // The evidence printed under the release's StepFailed line.
    let failed = logs.lines().skip_while(|l| !(l.contains("StepFailed") && l.contains("release")));
    let shown: Vec<&str> = failed.skip(1).map_while(|l| l.trim_start().strip_prefix("| ")).collect();
    let expected = [
        "== release.commands[0] `echo first command ran` (exit 0)",
        "first command ran",
        "== release.commands[1] `echo second command broke >&2; exit 3` (exit 3)",
        "second command broke",
    ];
    assert_eq!(shown, expected, "{logs}");
    // The output is kept as a log the event names, not in the event.
    let events: serde_json::Value = serde_json::from_str(&slipway(dir.path(), &["events", &format!("deployment-{id}"), "--json"])).unwrap();
    let failed = events.as_array().unwrap().iter().find(|e| e["type"] == "StepFailed").unwrap();
    assert_eq!(failed["payload"]["details"], serde_json::json!([]), "{failed}");
    assert!(failed["payload"]["evidence"]["path"].as_str().unwrap().ends_with("/release-failed-1.log"), "{failed}");
}
