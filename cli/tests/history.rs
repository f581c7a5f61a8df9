//! The operator views through the built `slipway` binary on an SQLite store
//! in a temporary directory, without Docker: the test records two finished
//! deployments the way the request path, the engine and a worker would (a
//! real Git repository with two commits, different images, settings and
//! release commands), then reads them back with `history`, `history --json`,
//! `diff` and `status --at` before, between and after the two releases.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_engine::requests::{self, DeployRequest, NewProject, SettingValue};
use slipway_proto::envelope::{Message, Metadata};
use slipway_proto::event::{deployment_stream, environment_stream, BuildMode};
use slipway_proto::{Envelope, Event, Step};
use slipway_store::{EventStore, ExpectedVersion, SqliteStore};
use uuid::Uuid;

/// A step "runs" this long, so every duration is measurably above zero.
const STEP_TIME: Duration = Duration::from_millis(30);

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    #[track_caller]
    fn slipway(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("--database")
            .arg(format!("sqlite://{}", self.path("slipway.db").display()))
            .arg("--data-dir")
            .arg(self.path("data"))
            .args(args)
            .env_remove("SLIPWAY_DATABASE")
            .output()
            .unwrap();
        eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.slipway(args);
        assert!(out.status.success(), "slipway {args:?} exited {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

#[track_caller]
fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository with two commits; returns them oldest first.
fn repository(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", "first"]);
    let a = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", "second"]);
    (a, git(dir, &["rev-parse", "HEAD"]))
}

/// An event from its JSON payload, so fields added later with a default
/// need no change here.
fn event(kind: &str, payload: serde_json::Value) -> Event {
    Event::from_payload(kind, payload).unwrap()
}

struct Canned<'a> {
    commit: &'a str,
    image: &'a str,
    commands: &'a [&'a str],
}

/// Appends what the engine and a worker record for a deployment that runs
/// every step and switches traffic, then the environment's `DeploymentFinished`.
async fn run_deployment(store: &SqliteStore, project: &str, env: &str, id: Uuid, canned: &Canned<'_>) {
    let stream = deployment_stream(id);
    let append = |actor: &'static str, event: Event| {
        let stream = stream.clone();
        async move {
            let meta = Metadata { correlation_id: id, causation_id: None, actor: actor.into(), trace: None };
            let envelope = Envelope::new(Uuid::now_v7(), Utc::now(), &stream, &event, meta).unwrap();
            store.append(&stream, ExpectedVersion::Any, &[envelope], &[]).await.unwrap().unwrap();
        }
    };
    for step in Step::PIPELINE {
        let command_id = Uuid::now_v7();
        append("engine", event("StepDispatched", serde_json::json!({ "step": step, "command_id": command_id, "attempt": 1 }))).await;
        tokio::time::sleep(STEP_TIME).await;
        let outcome = match step {
            Step::CheckServices => event("ServicesChecked", serde_json::json!({ "services": [] })),
            Step::Checkout => event(
                "CheckedOut",
                serde_json::json!({
                    "commit": canned.commit,
                    "workspace": "/w",
                    "config": {
                        "web": { "memory": "128m", "cpus": "0.5" },
                        "release": { "commands": canned.commands },
                        "processes": { "worker": { "command": ["w"], "pids": 20 } },
                    },
                }),
            ),
            Step::Build => event(
                "ImageBuilt",
                serde_json::json!({
                    "image_id": canned.image,
                    "tag": format!("{project}:{}", &canned.commit[..8]),
                    "cache_used": false,
                    "duration_ms": 25,
                    "warnings": [{ "file": "Dockerfile", "line": 1, "rule": "base-image-digest", "message": "FROM python:3.12 is not pinned by digest" }],
                }),
            ),
            Step::Deploy => {
                event("WebContainerStarted", serde_json::json!({ "container": format!("{project}-{env}-web"), "host_port": 4100 }))
            }
            Step::Release => {
                let results: Vec<_> =
                    canned.commands.iter().map(|c| serde_json::json!({ "command": c, "exit_code": 0, "duration_ms": 5 })).collect();
                event("ReleaseCommandsRan", serde_json::json!({ "results": results }))
            }
            Step::Processes => event("StepSkipped", serde_json::json!({ "step": "processes", "reason": "no process types" })),
            _ => event("HealthCheckPassed", serde_json::json!({ "path": "/", "status": 200, "attempts": 1, "elapsed_ms": 3 })),
        };
        append("worker:test", outcome).await;
    }
    let deadline = Utc::now() + chrono::Duration::seconds(60);
    append(
        "engine",
        event(
            "TrafficSwitchRequested",
            serde_json::json!({ "route_version": 1, "upstreams": ["127.0.0.1:4100"], "routers": [], "deadline": deadline }),
        ),
    )
    .await;
    tokio::time::sleep(STEP_TIME).await;
    append("engine", event("TrafficSwitched", serde_json::json!({ "route_version": 1, "routers": [] }))).await;
    append("engine", event("DeploymentSucceeded", serde_json::json!({ "image_id": canned.image, "commit": canned.commit }))).await;
    let env_stream = environment_stream(project, env);
    let finished = event(
        "DeploymentFinished",
        serde_json::json!({ "deployment_id": id, "succeeded": true, "containers": [format!("{project}-{env}-web")], "upstreams": ["127.0.0.1:4100"] }),
    );
    let meta = Metadata { correlation_id: id, causation_id: None, actor: "engine".into(), trace: None };
    let envelope = Envelope::new(Uuid::now_v7(), Utc::now(), &env_stream, &finished, meta).unwrap();
    store.append(&env_stream, ExpectedVersion::Any, &[envelope], &[]).await.unwrap().unwrap();
}

fn setting(key: &str, value: &str) -> SettingValue {
    SettingValue { key: key.into(), value: value.into(), secret: false }
}

async fn deploy(store: &SqliteStore, project: &str) -> Uuid {
    let request = DeployRequest {
        project: project.into(),
        environment: "live".into(),
        git_ref: None,
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        dry_run: false,
    };
    requests::request_deployment(store, "cli:test", request).await.unwrap().unwrap()
}

/// A moment strictly between what was recorded before and what comes after.
async fn now_between() -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    t
}

#[tokio::test]
async fn history_diff_and_status_at_read_two_recorded_releases() {
    let dir = Dir { tmp: tempfile::tempdir().unwrap() };
    let repo = dir.path("repo");
    let (commit_a, commit_b) = repository(&repo);
    let store = SqliteStore::open(&dir.path("slipway.db")).await.unwrap();
    let new = NewProject {
        name: "shop".into(),
        repository: repo.display().to_string(),
        default_branch: "main".into(),
        environments: vec!["live".into()],
        mirror_of: None,
    };
    requests::create_project(&store, "cli:test", new).await.unwrap().unwrap();
    let set = vec![setting("DATABASE_URL", "postgres://db/one"), setting("DEBUG", "1"), setting("KEEP", "same")];
    requests::change_settings(&store, "cli:test", "shop", "live", set, vec![]).await.unwrap().unwrap();
    let before_any = now_between().await;

    let a = deploy(&store, "shop").await;
    run_deployment(&store, "shop", "live", a, &Canned { commit: &commit_a, image: "sha256:aaaa1111", commands: &["migrate"] }).await;
    let between = now_between().await;

    let set = vec![setting("DATABASE_URL", "postgres://db/two"), setting("NEW_KEY", "x")];
    requests::change_settings(&store, "cli:test", "shop", "live", set, vec!["DEBUG".into()]).await.unwrap().unwrap();
    let b = deploy(&store, "shop").await;
    run_deployment(&store, "shop", "live", b, &Canned { commit: &commit_b, image: "sha256:bbbb2222", commands: &["migrate", "seed"] })
        .await;
    let after = now_between().await;
    let settings_of = |id| {
        let store = &store;
        async move { slipway_engine::load::deployment(store, id).await.unwrap().unwrap().context.settings }
    };
    let (settings_a, settings_b) = (settings_of(a).await, settings_of(b).await);
    assert_ne!(settings_a["DATABASE_URL"], settings_b["DATABASE_URL"]);
    drop(store);

    // history: every step with its outcome and duration, the actor, the warning.
    let text = dir.ok(&["history", &a.to_string()]);
    assert!(text.contains(&format!("deployment {a}  shop live  succeeded")), "{text}");
    assert!(text.contains(&format!("commit {commit_a}  image sha256:aaaa1111")), "{text}");
    for step in ["check_services", "checkout", "build", "deploy", "release", "processes", "health_check", "cutover"] {
        let row = text.lines().find(|l| l.starts_with(&format!("  {step} "))).unwrap_or_else(|| panic!("no step row for {step}: {text}"));
        let expected = if step == "processes" { "skipped: no process types" } else { "ok" };
        assert!(row.contains(expected) && row.contains(" ms"), "{row}");
    }
    let built = text.lines().find(|l| l.contains("ImageBuilt")).unwrap();
    assert!(built.contains(" build ") && built.contains("worker:test") && built.contains("ok ("), "{built}");
    assert!(text.contains("warning: Dockerfile:1: FROM python:3.12 is not pinned by digest [base-image-digest]"), "{text}");
    assert!(text.lines().any(|l| l.contains("StepDispatched #1") && l.contains("engine")), "{text}");
    assert!(text.lines().any(|l| l.contains("DeploymentRequested") && l.contains("cli:test")), "{text}");

    // history --json: the same facts, machine-readable.
    let json: serde_json::Value = serde_json::from_str(&dir.ok(&["history", &a.to_string(), "--json"])).unwrap();
    assert_eq!(json["summary"]["status"], "succeeded");
    assert_eq!(json["summary"]["commit"], commit_a.as_str());
    assert_eq!(json["summary"]["image"], "sha256:aaaa1111");
    let total = json["summary"]["total_ms"].as_i64().unwrap();
    assert!(total >= 8 * STEP_TIME.as_millis() as i64, "total {total} ms");
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1 + 2 * 7 + 3);
    let build = entries.iter().find(|e| e["event"] == "ImageBuilt").unwrap();
    assert_eq!(build["step"], "build");
    assert_eq!(build["actor"], "worker:test");
    assert_eq!(build["outcome"]["result"], "ok");
    assert!(build["duration_ms"].as_i64().unwrap() >= STEP_TIME.as_millis() as i64, "{build}");
    assert_eq!(build["warnings"][0]["line"], 1);
    let skipped = entries.iter().find(|e| e["event"] == "StepSkipped").unwrap();
    assert_eq!(skipped["outcome"], serde_json::json!({ "result": "skipped", "reason": "no process types" }));
    assert_eq!(json["steps"].as_array().unwrap().len(), 8);

    // diff: commits (and how far apart), images, settings keys, commands, durations.
    let text = dir.ok(&["diff", &a.to_string(), &b.to_string()]);
    assert!(text.contains(&format!("commit    {commit_a} -> {commit_b}  (1 commit(s) ahead)")), "{text}");
    assert!(text.contains("image     sha256:aaaa1111 -> sha256:bbbb2222"), "{text}");
    assert!(text.contains("settings  added: NEW_KEY"), "{text}");
    assert!(text.contains("settings  removed: DEBUG"), "{text}");
    assert!(text.contains("settings  changed: DATABASE_URL"), "{text}");
    assert!(!text.contains("KEEP"), "an unchanged key is not listed: {text}");
    assert!(!text.contains("postgres://db"), "no setting value is shown: {text}");
    assert!(text.contains("release   A: migrate\n          B: migrate; seed"), "{text}");
    let build_row = text.lines().find(|l| l.starts_with("build ")).unwrap();
    assert_eq!(build_row.matches(" ms").count(), 2, "{build_row}");
    let reversed = dir.ok(&["diff", &b.to_string(), &a.to_string()]);
    assert!(reversed.contains("(1 commit(s) behind)") && reversed.contains("settings  added: DEBUG"), "{reversed}");

    // status --at: nothing before A, A between the two, B after.
    let at = |t: DateTime<Utc>| dir.ok(&["status", "shop", "live", "--at", &t.to_rfc3339()]);
    assert!(at(before_any).contains("nothing was serving"));
    let then = at(between);
    assert!(then.contains(&format!("serving deployment {a}")), "{then}");
    assert!(then.contains(&format!("commit {commit_a}")) && then.contains("image  sha256:aaaa1111"), "{then}");
    assert!(then.contains(&format!("DATABASE_URL  {}", settings_a["DATABASE_URL"])) && then.contains("DEBUG  "), "{then}");
    assert!(!then.contains("NEW_KEY"), "{then}");
    let now = at(after);
    assert!(now.contains(&format!("serving deployment {b}")), "{now}");
    assert!(now.contains(&format!("commit {commit_b}")) && now.contains("image  sha256:bbbb2222"), "{now}");
    assert!(now.contains(&format!("DATABASE_URL  {}", settings_b["DATABASE_URL"])) && now.contains("NEW_KEY  "), "{now}");
    assert!(!now.contains("DEBUG"), "{now}");
    assert!(now.contains("\n  limits web memory 128m, cpus 0.5; worker pids 20\n"), "{now}");

    // status: what serves now, with the limits it runs under.
    let status = dir.ok(&["status", "shop", "live"]);
    assert!(status.contains(&format!("serving deployment {b}")), "{status}");
    assert!(status.contains("\n  limits web memory 128m, cpus 0.5; worker pids 20\n"), "{status}");
    let json: serde_json::Value = serde_json::from_str(&dir.ok(&["status", "shop", "live", "--json"])).unwrap();
    let limits = serde_json::json!({ "web": { "memory": "128m", "cpus": "0.5" }, "processes": { "worker": { "pids": 20 } } });
    assert_eq!(json["active"]["limits"], limits, "{json}");

    let bad = dir.slipway(&["status", "shop", "live", "--at", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected an RFC 3339 time"));
    let missing = dir.slipway(&["history", &Uuid::now_v7().to_string()]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no deployment"));
}
