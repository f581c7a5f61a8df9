//! The embedded mode loses nothing: `slipway deploy` on SQLite with the
//! in-process queue (what `examples/hello/deploy.sh` runs) retires the
//! release it replaced before it exits, so three deploys in a row leave
//! exactly one release's containers running. Real Docker, the built binary.

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
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .arg("--database")
        .arg(format!("sqlite://{}", dir.join("slipway.db").display()))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env_remove("SLIPWAY_DATABASE")
        .env_remove("SLIPWAY_QUEUE")
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "slipway {args:?} exited {:?}\n{stdout}{stderr}", out.status);
    stdout.into_owned()
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
