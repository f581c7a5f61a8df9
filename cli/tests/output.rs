//! The command's output contract through the built binary, on an SQLite
//! store in a temporary directory and dry-run deployments (no Docker): the
//! deploy progress as plain lines when stdout is not a terminal, `--json`
//! (JSON Lines while following, one document for each read verb), the exit
//! statuses, shell completions, and `--server` against a real `slipway
//! all-in-one` over HTTP (the routes that exist: request a deployment, read
//! its events, read an environment).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    /// A store with project `app` (environments test and live) on a Git
    /// repository with one commit.
    fn new() -> Dir {
        let dir = Dir { tmp: tempfile::tempdir().unwrap() };
        let repo = dir.path("repo");
        std::fs::create_dir_all(&repo).unwrap();
        for args in
            [&["init", "-q"][..], &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "one"]]
        {
            assert!(Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap().success());
        }
        dir.ok(&["project", "create", "app", "--repo", repo.to_str().unwrap(), "--branch", "HEAD"]);
        dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
        command
            .arg("--database")
            .arg(format!("sqlite://{}", self.path("slipway.db").display()))
            .arg("--data-dir")
            .arg(self.path("data"))
            .args(args)
            .env_remove("SLIPWAY_DATABASE")
            .env_remove("SLIPWAY_QUEUE")
            .env_remove("SLIPWAY_SERVER")
            .env_remove("SLIPWAY_TOKEN");
        command
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).stdin(Stdio::null()).output().unwrap();
        eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "slipway {args:?} exited {:?}", out.status);
        String::from_utf8(out.stdout).unwrap()
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("slipway {args:?} printed no JSON document ({e}): {text}"))
    }

    #[track_caller]
    fn exit(&self, args: &[&str]) -> i32 {
        self.run(args).status.code().unwrap()
    }
}

/// Every line of a `--json` follow, parsed.
#[track_caller]
fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect()
}

#[test]
fn deploy_prints_a_line_per_step_when_stdout_is_not_a_terminal() {
    let dir = Dir::new();
    let text = dir.ok(&["deploy", "app", "test", "--dry-run"]);
    let id = text.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    assert!(text.starts_with(&format!("deployment {id}: app test (Local mode)")), "{text}");
    for step in ["check_services", "checkout", "build", "deploy", "release", "processes", "health_check"] {
        assert!(text.lines().any(|l| l == format!("→ {step}")), "no start line for {step}: {text}");
        assert!(text.lines().any(|l| l.starts_with(&format!("- {step}")) && l.contains("skipped: dry run")), "{step}: {text}");
    }
    assert!(text.trim_end().ends_with(&format!("deployment {id} succeeded")), "{text}");
    assert!(!text.contains('\u{1b}'), "no terminal escapes when stdout is a pipe: {text:?}");

    // --quiet: only the result.
    let quiet = dir.ok(&["deploy", "app", "test", "--dry-run", "--quiet"]);
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
    assert!(quiet.starts_with("deployment ") && quiet.trim_end().ends_with(" succeeded"), "{quiet}");
}

#[test]
fn a_failed_deployment_names_its_step_and_exits_1() {
    let dir = Dir::new();
    let out = dir.run(&["deploy", "app", "test", "--ref", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed = stdout.lines().find(|l| l.starts_with("✗ ")).unwrap_or_else(|| panic!("no ✗ line: {stdout}"));
    assert!(failed.contains("no-such-branch") && failed.contains(" ms"), "{failed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed at "), "the verdict goes to stderr");

    let out = dir.run(&["deploy", "app", "test", "--ref", "no-such-branch", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    let result = lines.last().unwrap();
    assert_eq!((result["kind"].as_str(), result["status"].as_str()), (Some("result"), Some("failed")));
    assert!(result["reason"].as_str().unwrap().contains("no-such-branch"), "{result}");
}

#[test]
fn deploy_json_is_one_json_document_per_line() {
    let dir = Dir::new();
    let lines = json_lines(&dir.ok(&["deploy", "app", "test", "--dry-run", "--json"]));
    let first = &lines[0];
    assert_eq!(first["kind"], "requested");
    let id = first["deployment"].as_str().unwrap().to_string();
    let events: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "event").collect();
    assert_eq!(events[0]["type"], "DeploymentRequested");
    assert_eq!(events.iter().filter(|e| e["type"] == "StepSkipped").count(), 7);
    let versions: Vec<u64> = events.iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>(), "every event once, in order");
    let result = lines.last().unwrap();
    assert_eq!((result["kind"].as_str(), result["status"].as_str()), (Some("result"), Some("succeeded")));
    assert_eq!(result["deployment"].as_str(), Some(id.as_str()));
}

#[test]
fn every_read_verb_prints_one_json_document() {
    let dir = Dir::new();
    dir.ok(&["env", "set", "app", "test", "GREETING=hi"]);
    dir.ok(&["env", "set", "app", "test", "TOKEN=s3cret", "--secret"]);
    let a =
        json_lines(&dir.ok(&["deploy", "app", "test", "--dry-run", "--json"])).last().unwrap()["deployment"].as_str().unwrap().to_string();
    let b =
        json_lines(&dir.ok(&["deploy", "app", "test", "--dry-run", "--json"])).last().unwrap()["deployment"].as_str().unwrap().to_string();

    let status = dir.json(&["status", "app", "test", "--json"]);
    assert_eq!((status["project"].as_str(), status["environment"].as_str()), (Some("app"), Some("test")));
    assert!(status["active"].is_null() && status["queue"].as_array().unwrap().is_empty(), "{status}");
    let then = dir.json(&["status", "app", "test", "--at", "2030-01-01T00:00:00Z", "--json"]);
    assert!(then["active"].is_null(), "{then}");

    let deployments = dir.json(&["deployments", "app", "--json"]);
    let ids: Vec<&str> = deployments.as_array().unwrap().iter().map(|d| d["deployment"].as_str().unwrap()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    assert_eq!(deployments[0]["status"], "succeeded");

    assert!(dir.json(&["releases", "app", "test", "--json"]).as_array().unwrap().is_empty(), "dry runs are no releases");
    let history = dir.json(&["history", &a, "--json"]);
    assert_eq!(history["summary"]["deployment"].as_str(), Some(a.as_str()));
    let diff = dir.json(&["diff", &a, &b, "--json"]);
    assert_eq!(diff["diff"]["deployments"]["b"].as_str(), Some(b.as_str()));
    let logs = dir.json(&["logs", &a, "--json"]);
    assert_eq!(logs["events"][0]["type"], "DeploymentRequested");
    let events = dir.json(&["events", &format!("deployment-{a}"), "--json"]);
    assert_eq!(events.as_array().unwrap().len(), logs["events"].as_array().unwrap().len());

    let settings = dir.json(&["env", "list", "app", "test", "--json"]);
    assert_eq!(settings["GREETING"]["value"], "hi");
    assert_eq!(settings["TOKEN"]["value"], "(secret)");
    assert!(!serde_json::to_string(&settings).unwrap().contains("s3cret"));
    assert_eq!(dir.json(&["project", "list", "--json"])[0]["name"], "app");
    assert_eq!(dir.json(&["project", "show", "app", "--json"])["environments"]["test"]["settings"], 2);

    // The workers each embedded command ran for its deployment stopped
    // with it: none is left listed.
    assert_eq!(dir.json(&["workers", "--json"]), Value::Array(Vec::new()));
    assert!(dir.json(&["routers", "--json"])["routers"].as_array().unwrap().is_empty());
    let prune = dir.json(&["images", "prune", "--dry-run", "--json"]);
    assert_eq!((prune["dry_run"].as_bool(), prune["removals"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let verify = dir.json(&["audit", "verify", "--json"]);
    assert_eq!(verify["intact"], true);
    assert!(verify["events"].as_u64().unwrap() > 20, "{verify}");
}

#[test]
fn deployments_and_projects_page_and_filter_from_the_read_models() {
    let dir = Dir::new();
    let deploy = |env: &str| {
        json_lines(&dir.ok(&["deploy", "app", env, "--dry-run", "--json"])).last().unwrap()["deployment"].as_str().unwrap().to_string()
    };
    let (a, b, c) = (deploy("test"), deploy("live"), deploy("test"));
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["deployments", "app", "--json"];
        all.extend_from_slice(args);
        dir.json(&all).as_array().unwrap().iter().map(|d| d["deployment"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&[]), [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(ids(&["--limit", "2"]), [b.as_str(), c.as_str()], "the newest page, oldest first");
    assert_eq!(ids(&["--limit", "2", "--before", &b]), [a.as_str()]);
    assert_eq!(ids(&["--env", "test"]), [a.as_str(), c.as_str()]);
    assert_eq!(ids(&["--status", "succeeded", "--env", "live"]), [b.as_str()]);
    assert!(ids(&["--status", "failed"]).is_empty());
    assert!(ids(&["--before", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(dir.exit(&["deployments", "app", "--status", "done"]), 2, "unknown status");
    assert_eq!(dir.exit(&["deployments", "app", "--before", "yesterday"]), 2, "bad --before");
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(dir.exit(&["deployments", "app", "--before", &unknown]), 3, "a page before a deployment that does not exist");
    let bare = dir.run(&["events", &unknown]);
    assert_eq!(bare.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bare.stderr).contains(&format!("deployment-{unknown}")), "a bare id points to its stream");
    assert_eq!(dir.exit(&["deployments", "app", "--env", "qa"]), 3, "unknown environment");
    // An empty page says so on standard error; a backwards range is refused.
    let none = dir.run(&["deployments", "app", "--status", "failed"]);
    assert!(none.status.success() && none.stdout.is_empty() && String::from_utf8_lossy(&none.stderr).contains("no deployment matches"));
    let backwards = ["deployments", "app", "--since", "2026-12-05T07:00:00Z", "--before", "2026-12-05T06:00:00Z"];
    assert_eq!(dir.exit(&backwards), 2, "--since after --before");
    dir.ok(&["project", "create", "zoo", "--repo", "/tmp"]);
    // A path that is not here is most likely a typo: said, not refused
    // (workers resolve it on their own hosts).
    let typo = dir.run(&["project", "create", "typo", "--repo", "/nonexistent/slipway-repo"]);
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(typo.status.success() && said.contains("/nonexistent/slipway-repo does not exist on this host"), "{said}");
    dir.ok(&["project", "remove", "typo", "--yes"]);
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["project", "list", "--json"];
        all.extend_from_slice(args);
        dir.json(&all).as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&[]), ["app", "zoo"]);
    assert_eq!(names(&["--limit", "1"]), ["app"]);
    assert_eq!(names(&["--after", "app"]), ["zoo"]);
    // The page sizes the API takes, locally too.
    for limit in ["0", "501", "many"] {
        assert_eq!(dir.exit(&["project", "list", "--limit", limit]), 2, "--limit {limit}");
        assert_eq!(dir.exit(&["deployments", "app", "--limit", limit]), 2, "--limit {limit}");
    }
}

#[test]
fn a_deploy_key_slipway_made_is_shown_again_by_project_show() {
    let dir = Dir::new();
    let created = dir.ok(&["project", "create", "keyed", "--repo", "ssh://git@127.0.0.1:2222/app.git", "--generate-ssh-key"]);
    let public = created.lines().find(|l| l.starts_with("ssh-ed25519 ")).expect("the public half, printed once").to_string();
    assert!(dir.ok(&["project", "show", "keyed"]).lines().any(|l| l == format!("deploy key  {public}")));
    assert_eq!(dir.json(&["project", "show", "keyed", "--json"])["source"]["deploy_key"], public.as_str());
    // A key given by hand replaces it: no public half is known then.
    let key = dir.path("id_ed25519");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    dir.ok(&["project", "source", "keyed", "--ssh-key", key.to_str().unwrap()]);
    assert!(dir.json(&["project", "show", "keyed", "--json"])["source"].get("deploy_key").is_none());
    // A host key pinned for another host or port would never be checked: refused.
    let ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let elsewhere = format!("[127.0.0.1]:2200 {ed}");
    let create = ["project", "create", "pinned", "--repo", "ssh://git@127.0.0.1:2222/app.git", "--known-host", &elsewhere];
    let out = dir.run(&create);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no line is for `[127.0.0.1]:2222`"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(dir.exit(&["project", "source", "keyed", "--known-host", &format!("127.0.0.1 {ed}")]), 2, "port 22 is not 2222");
    dir.ok(&["project", "source", "keyed", "--known-host", &format!("[127.0.0.1]:2222 {ed}")]);
}

#[test]
fn env_add_and_env_remove_take_a_named_environment_in_and_out() {
    let dir = Dir::new();
    let added = dir.ok(&["env", "add", "app", "staging"]);
    assert!(added.starts_with("app staging: added"), "{added}");
    assert_eq!(dir.exit(&["env", "add", "app", "staging"]), 4, "it exists");
    assert_eq!(dir.exit(&["env", "add", "app", "Bad!"]), 2, "not a DNS label");
    assert_eq!(dir.exit(&["env", "add", "nosuch", "staging"]), 3, "no project");
    let shown = |env: &str| dir.json(&["project", "show", "app", "--json"])["environments"].get(env).is_some();
    assert!(shown("staging"));
    dir.ok(&["env", "set", "app", "staging", "GREETING=hi"]);
    assert_eq!(dir.exit(&["env", "remove", "app", "staging"]), 2, "not without --yes");
    assert_eq!(dir.exit(&["preview", "remove", "app", "staging"]), 2, "a named environment is not a preview");
    assert!(shown("staging"), "nothing was removed");
    let removed = dir.ok(&["env", "remove", "app", "staging", "--yes"]);
    assert_eq!(removed.trim(), "app staging removed: 0 deployment(s) cancelled");
    assert!(!shown("staging"));
    assert_eq!(dir.exit(&["env", "remove", "app", "staging", "--yes"]), 3, "gone");
    // Added again, it starts afresh: its old settings went with it.
    dir.ok(&["env", "add", "app", "staging"]);
    assert_eq!(dir.json(&["project", "show", "app", "--json"])["environments"]["staging"]["settings"], 0);

    // The whole project goes the same way, and its name stays taken.
    assert_eq!(dir.exit(&["project", "remove", "app"]), 2, "not without --yes");
    let removed = dir.ok(&["project", "remove", "app", "--yes"]);
    assert!(removed.contains("app staging removed: 0 deployment(s) cancelled") && removed.ends_with("project app removed\n"), "{removed}");
    assert_eq!(dir.exit(&["status", "app", "test"]), 3, "gone");
    assert!(dir.json(&["project", "list", "--json"]).as_array().unwrap().is_empty());
    let out = dir.run(&["project", "create", "app", "--repo", "/tmp"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was removed"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn errors_exit_with_the_documented_status() {
    let dir = Dir::new();
    assert_eq!(dir.exit(&["status", "nope", "test"]), 3, "unknown project");
    assert_eq!(dir.exit(&["releases", "app", "qa"]), 3, "unknown environment");
    assert_eq!(dir.exit(&["history", "0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f"]), 3, "unknown deployment");
    assert_eq!(dir.exit(&["project", "create", "app", "--repo", "/tmp"]), 4, "name taken");
    assert_eq!(dir.exit(&["rollback", "app", "test"]), 4, "nothing to roll back to");
    assert_eq!(dir.exit(&["status", "app", "test", "--at", "yesterday"]), 2, "bad time");
    assert_eq!(dir.exit(&["env", "set", "app", "test", "NO_EQUALS"]), 2, "bad assignment");
    assert_eq!(dir.exit(&["no-such-verb"]), 2, "clap's usage error");
    // Where no embedded store is, a verb that reads says so and leaves nothing behind.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["status", "app", "test"])
        .current_dir(elsewhere.path())
        .env_remove("SLIPWAY_DATABASE")
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Slipway store at .slipway/slipway.db"));
    assert!(!elsewhere.path().join(".slipway").exists(), "no stray store or key");
    let lonely = dir.run(&["worker"]);
    assert_eq!(lonely.status.code(), Some(2), "a worker on the in-process queue would never receive a command");
    assert!(String::from_utf8_lossy(&lonely.stderr).contains("--queue amqp://"), "{}", String::from_utf8_lossy(&lonely.stderr));
    assert_eq!(dir.exit(&["--server", "http://127.0.0.1:9", "events", "tokens"]), 2, "verb without --server support");
    for reads_the_log in [&["export"][..], &["audit", "verify"], &["audit", "checkpoint", "--key", "k", "--out", "c"]] {
        let args = [&["--server", "http://127.0.0.1:9"][..], reads_the_log].concat();
        assert_eq!(dir.exit(&args), 2, "{reads_the_log:?} reads --database, never quietly with --server set");
    }
    assert_eq!(dir.exit(&["--server", "http://127.0.0.1:9", "status", "app", "test"]), 5, "server unreachable");
    assert_eq!(dir.exit(&["--queue", "amqp://guest:guest@127.0.0.1:9/%2f", "worker"]), 5, "broker unreachable");
    let help = dir.ok(&["--help"]);
    assert!(help.contains("Exit status:") && help.contains("5  unavailable"), "{help}");
    // A PostgreSQL that refuses: said at once (not after the pool's 30 s
    // wait), with its reason, once.
    let started = Instant::now();
    let refused = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["--database", "postgres://nobody:secret@127.0.0.1:1/none", "status", "app", "test"])
        .env_remove("SLIPWAY_SERVER")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(5), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}: {said}", started.elapsed());
    assert_eq!(said.matches("Connection refused").count(), 1, "{said}");
    assert!(!said.contains("secret"), "{said}");
}

#[test]
fn an_encrypted_deploy_key_without_its_passphrase_or_with_a_wrong_one_is_refused_before_anything_is_recorded() {
    let dir = Dir::new();
    let key = dir.path("deploy_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "correct horse", "-f", key.to_str().unwrap()])
        .status()
        .expect("ssh-keygen (openssh-client) is installed by scripts/services");
    assert!(made.success());
    let out = dir.run(&["project", "source", "app", "--ssh-key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("protected by a passphrase") && said.contains("--ssh-key-passphrase-file"), "{said}");
    let shown = dir.json(&["project", "show", "app", "--json"]);
    assert_eq!(shown["source"]["credentials"], serde_json::json!([]), "nothing was recorded: {shown}");

    // A wrong passphrase is refused when given, not found by a deployment.
    std::fs::write(dir.path("wrong"), "battery staple\n").unwrap();
    let wrong = dir.path("wrong");
    let out =
        dir.run(&["project", "source", "app", "--ssh-key", key.to_str().unwrap(), "--ssh-key-passphrase-file", wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("passphrase is wrong") && !said.contains("battery"), "{said}");
    let shown = dir.json(&["project", "show", "app", "--json"]);
    assert_eq!(shown["source"]["credentials"], serde_json::json!([]), "nothing was recorded: {shown}");

    std::fs::write(dir.path("passphrase"), "correct horse\n").unwrap();
    let passphrase = dir.path("passphrase");
    dir.ok(&["project", "source", "app", "--ssh-key", key.to_str().unwrap(), "--ssh-key-passphrase-file", passphrase.to_str().unwrap()]);
    let shown = dir.json(&["project", "show", "app", "--json"]);
    assert_eq!(shown["source"]["credentials"], serde_json::json!(["ssh_key", "ssh_key_passphrase"]), "{shown}");
}

/// `slipway workers` leaves out workers that stopped over a day ago (a
/// farm's workers come and go); `--all` shows them.
#[test]
fn workers_leaves_out_those_stopped_long_ago_unless_all() {
    let dir = Dir::new();
    let beat = |id: &str, ago: chrono::Duration| slipway_store::operational::WorkerBeat {
        id: id.into(),
        host: "h".into(),
        steps: vec!["build".into()],
        busy: vec![],
        commands: vec![],
        started_at: chrono::Utc::now() - ago,
        last_seen: chrono::Utc::now() - ago,
        stopped: true,
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = slipway_store::SqliteStore::open(&dir.path("slipway.db")).await.unwrap();
        use slipway_store::EventStore;
        store.operational().heartbeat(&beat("old-worker", chrono::Duration::days(3))).await.unwrap();
        store.operational().heartbeat(&beat("recent-worker", chrono::Duration::hours(2))).await.unwrap();
        let silent = slipway_store::operational::WorkerBeat {
            stopped: false,
            busy: vec!["build of 0192".into()],
            ..beat("silent-worker", chrono::Duration::hours(1))
        };
        // Stopped with a command in its last report: it is not doing it now.
        let done = slipway_store::operational::WorkerBeat {
            busy: vec!["watch of 0193".into()],
            ..beat("done-worker", chrono::Duration::hours(3))
        };
        store.operational().heartbeat(&done).await.unwrap();
        store.operational().heartbeat(&silent).await.unwrap();
    });
    let listed = dir.json(&["workers", "--json"]);
    let state = |id: &str| listed.as_array().unwrap().iter().find(|w| w["id"] == id).map(|w| w["state"].clone());
    assert_eq!((state("silent-worker"), state("recent-worker")), (Some("missing".into()), Some("stopped".into())), "{listed}");
    let shown = dir.ok(&["workers"]);
    assert!(shown.contains("recent-worker") && !shown.contains("old-worker"), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("silent-worker") && l.contains("MISSING for 360")), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("silent-worker") && l.ends_with("last seen busy with build of 0192")), "{shown}");
    let done = shown.lines().find(|l| l.starts_with("done-worker")).unwrap_or_default();
    assert!(done.contains(" stopped at ") && !done.contains("watch of"), "{shown}");
    assert!(shown.contains("1 worker(s) that stopped over a day ago not shown"), "{shown}");
    let all = dir.ok(&["workers", "--all"]);
    assert!(all.contains("recent-worker") && all.contains("old-worker"), "{all}");
}

/// `slipway ... | head`: the reader goes before the output is written, and
/// the command ends quietly with SIGPIPE's status, not with a panic.
#[test]
fn output_into_a_pipe_closed_early_ends_quietly() {
    let dir = Dir::new();
    for args in [&["completions", "bash"][..], &["project", "list", "--json"][..]] {
        let mut child = dir.command(args).current_dir(dir.tmp.path()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Closed before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

/// `--help` shows where an option's value comes from, never the value of
/// one that can hold credentials (a database or queue URL, the server).
#[test]
fn help_never_shows_a_credential_from_the_environment() {
    let secrets = [
        ("SLIPWAY_DATABASE", "postgres://app:db-pw-7f3a@127.0.0.1/slipway"),
        ("SLIPWAY_QUEUE", "amqp://guest:mq-pw-7f3a@127.0.0.1:5672/%2f"),
        ("SLIPWAY_SERVER", "https://user:srv-pw-7f3a@panel.example"),
        ("SLIPWAY_REGISTRY", "registry-user:reg-pw-7f3a@registry.example"),
        ("SLIPWAY_TOKEN", "slw_tok-pw-7f3a"),
    ];
    for verb in [&["--help"][..], &["domain", "--help"][..], &["deploy", "--help"][..], &["server", "--help"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway")).args(verb).envs(secrets).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && help.contains("SLIPWAY_DATABASE"), "{verb:?}: {help}");
        assert!(!help.contains("pw-7f3a"), "{verb:?} shows a credential: {help}");
    }
}

#[test]
fn completions_cover_the_verbs() {
    let dir = Dir { tmp: tempfile::tempdir().unwrap() };
    let bash = dir.ok(&["completions", "bash"]);
    for verb in ["deploy", "status", "rollback", "history", "completions", "audit"] {
        assert!(bash.contains(verb), "bash completion lacks {verb}");
    }
    assert!(bash.contains("complete -F"), "not a bash completion script");
    assert!(dir.ok(&["completions", "zsh"]).contains("#compdef slipway"));
    assert!(dir.ok(&["completions", "fish"]).contains("complete -c slipway"));
    assert!(!dir.path("slipway.db").exists(), "completions open no store");
}

/// `slipway all-in-one` on the test's store, stopped on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_server(dir: &Dir) -> Server {
    start_as(dir, &["all-in-one", "--no-router"])
}

/// `mode` (`server`, `all-in-one` with its options) on the test's store,
/// its API on a free port; returns once the API answers.
fn start_as(dir: &Dir, mode: &[&str]) -> Server {
    let port = free_port();
    let log = std::fs::File::create(dir.path("server.log")).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<&str> = mode.iter().copied().chain(["--listen", listen.as_str()]).collect();
    let child = dir.command(&args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let server = Server { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exit(&["--server", &server.url, "status", "app", "test"]) == 5 {
        assert!(Instant::now() < deadline, "the server did not answer: {}", std::fs::read_to_string(dir.path("server.log")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// Through `--server`, the follower also names a step no live worker
/// serves: a `slipway server` (engine and API) with no worker anywhere.
#[test]
fn with_server_a_step_no_live_worker_serves_is_named() {
    let dir = Dir::new();
    let token = issue_token(&dir, "deployer", "deploy");
    let server = start_as(&dir, &["server", "--queue", "memory"]);
    let out = dir.run(&["--server", &server.url, "--token", &token, "deploy", "app", "test", "--timeout", "13", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    let notes: Vec<Value> = json_lines(&stdout).into_iter().filter(|l| l["kind"] == "note").collect();
    assert!(notes.iter().any(|n| n["text"].as_str().is_some_and(|t| t.contains("no live worker serves `check_services`"))), "{stdout}");
}

/// A new API token's value, issued on the store as `slipway token create` does.
fn issue_token(dir: &Dir, name: &str, scope: &str) -> String {
    let issued = dir.ok(&["token", "create", name, "--scope", scope]);
    issued.split_whitespace().find(|w| w.starts_with("slw_")).expect("the token value is printed").to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn with_server_deploy_and_status_go_through_the_http_api() {
    let dir = Dir::new();
    let server = start_server(&dir);
    let url = server.url.as_str();
    // No token: the server refuses (exit 7).
    assert_eq!(dir.exit(&["--server", url, "status", "app", "test"]), 7, "401 unauthorized");
    let token = issue_token(&dir, "cli-test", "deploy");
    let base = ["--server", url, "--token", token.as_str()];
    let via = |rest: &[&'static str]| base.iter().copied().chain(rest.iter().copied()).collect::<Vec<&str>>();

    let lines = json_lines(&dir.ok(&via(&["deploy", "app", "test", "--dry-run", "--json"])));
    let result = lines.last().unwrap();
    assert_eq!((result["kind"].as_str(), result["status"].as_str()), (Some("result"), Some("succeeded")), "{lines:?}");
    let id = result["deployment"].as_str().unwrap();
    assert_eq!(lines.iter().filter(|l| l["type"] == "StepSkipped").count(), 7);
    // The request went through the API: the server recorded the token's name as the actor.
    let events = dir.json(&["events", &format!("deployment-{id}"), "--json"]);
    assert_eq!(events[0]["actor"].as_str(), Some("token:cli-test"), "{}", events[0]);

    let text = dir.ok(&via(&["deploy", "app", "test", "--dry-run"]));
    assert!(text.lines().any(|l| l.starts_with("- health_check")) && text.contains(" succeeded"), "{text}");
    let status = dir.json(&via(&["status", "app", "test", "--json"]));
    assert_eq!(status["project"], "app");
    assert!(dir.ok(&via(&["status", "app", "test"])).contains("app test: "));

    assert_eq!(dir.exit(&via(&["deploy", "nope", "test"])), 3, "404 not_found");
    assert_eq!(dir.exit(&via(&["deploy", "app", "test", "--ref", " "])), 2, "400 bad_request");
    assert_eq!(dir.exit(&via(&["deploy", "app", "test", "--ref", "../../etc"])), 2, "no ref can be named so: 400 at once");
    let out = dir.run(&via(&["deploy", "app", "test", "--ref", "no-such-branch"]));
    assert_eq!(out.status.code(), Some(1), "a failed deployment through the API exits 1");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let failed = said.split("details: slipway logs ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_default();
    // `via` takes the arguments of a whole test run.
    let failed: &'static str = Box::leak(failed.to_string().into_boxed_str());
    assert!(failed.parse::<uuid::Uuid>().is_ok(), "the failure names `slipway logs ID`, which goes through --server too: {said}");
    let logs = dir.ok(&via(&["logs", failed]));
    assert!(
        logs.contains("check_services failed") && logs.contains("ref `no-such-branch` not found"),
        "the failure's output, from the API: {logs}"
    );
    assert_eq!(dir.json(&via(&["logs", failed, "--json"]))["text"].as_str(), Some(logs.as_str()));
    assert_eq!(dir.exit(&via(&["logs", "00000000-0000-0000-0000-000000000000"])), 3, "404 not_found");
    let at = dir.run(&via(&["status", "app", "test", "--at", "2026-01-01T00:00:00Z"]));
    let refused = String::from_utf8_lossy(&at.stderr);
    assert!(at.status.code() == Some(2) && refused.contains("status --at reads the event log"), "{refused}");

    // Environments come and go through the API, an admin's token only.
    assert_eq!(dir.exit(&via(&["env", "add", "app", "staging"])), 7, "403: a deploy token");
    let admin = issue_token(&dir, "cli-admin", "admin");
    let as_admin =
        |rest: &[&'static str]| ["--server", url, "--token", admin.as_str()].into_iter().chain(rest.iter().copied()).collect::<Vec<&str>>();
    assert!(dir.ok(&as_admin(&["env", "add", "app", "staging"])).starts_with("app staging: added"));
    assert_eq!(dir.exit(&as_admin(&["preview", "remove", "app", "staging"])), 2, "not a preview, whatever the scope");
    assert_eq!(dir.exit(&via(&["env", "remove", "app", "staging", "--yes"])), 7, "403: a deploy token");
    let removed = dir.ok(&as_admin(&["env", "remove", "app", "staging", "--yes"]));
    assert_eq!(removed.trim(), "app staging removed: 0 deployment(s) cancelled");
    assert!(dir.json(&["project", "show", "app", "--json"])["environments"].get("staging").is_none());
    drop(server);
    assert!(!read(&dir.path("server.log")).contains("panicked"));
}

/// Local reads and `--server` reads share their query and response types
/// (`slipway_engine::queries`): the same store answers with the same JSON,
/// and the same text, either way.
#[test]
fn status_deployments_and_releases_read_the_same_locally_and_through_the_server() {
    let dir = Dir::new();
    dir.ok(&["domain", "add", "app", "test", "app.example"]);
    dir.ok(&["deploy", "app", "test", "--dry-run", "--quiet"]);
    dir.ok(&["deploy", "app", "live", "--dry-run", "--quiet"]);
    let failed = dir.run(&["deploy", "app", "test", "--ref", "no-such-branch", "--quiet"]);
    assert_eq!(failed.status.code(), Some(1));
    let server = start_server(&dir);
    let token = issue_token(&dir, "reader", "read");
    let remote = |rest: &[&str]| {
        let mut args = vec!["--server", server.url.as_str(), "--token", token.as_str()];
        args.extend_from_slice(rest);
        dir.ok(&args)
    };
    for read in [
        &["status", "app", "test", "--json"][..],
        &["status", "app", "live", "--json"],
        &["deployments", "app", "--json"],
        &["deployments", "app", "--env", "test", "--limit", "1", "--json"],
        &["status", "app", "test"],
        &["deployments", "app"],
        &["releases", "app", "test", "--json"],
        &["releases", "app", "test"],
    ] {
        let (here, there) = (dir.ok(read), remote(read));
        assert_eq!(here, there, "slipway {read:?} differs between the store and the server");
    }
    // One deployment's history too, its details (a failure's reason) and JSON payloads included.
    let listed = dir.json(&["deployments", "app", "--json"]);
    for d in listed.as_array().unwrap() {
        let id = d["deployment"].as_str().unwrap();
        for read in [&["history", id][..], &["history", id, "--json"]] {
            let (here, there) = (dir.ok(read), remote(read));
            assert_eq!(here, there, "slipway {read:?} differs between the store and the server");
        }
    }
    let status: Value = serde_json::from_str(&dir.ok(&["status", "app", "test", "--json"])).unwrap();
    assert_eq!(status["domains"][0]["domain"], "app.example", "{status}");
    assert_eq!(status["domains"][0]["renewal"], "none yet", "{status}");
    let deployments: Value = serde_json::from_str(&remote(&["deployments", "app", "--json"])).unwrap();
    let last = &deployments.as_array().unwrap()[2];
    assert_eq!((last["ref"].as_str(), last["failure"]["step"].as_str()), (Some("no-such-branch"), Some("check_services")), "{last}");
    assert!(last["status"].as_str().unwrap().starts_with("failed at check_services: "), "{last}");
}

#[test]
fn cert_add_checks_the_files_and_cert_list_and_status_show_certificates_without_keys() {
    let dir = Dir::new();
    let openssl = |name: &str, san: &str| {
        let (cert, key) = (dir.path(&format!("{name}.pem")), dir.path(&format!("{name}-key.pem")));
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=t"])
            .args(["-addext", &format!("subjectAltName={san}"), "-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap()])
            .stderr(Stdio::null())
            .status()
            .expect("openssl (scripts/services installs it)");
        assert!(ok.success());
        (cert.to_str().unwrap().to_string(), key.to_str().unwrap().to_string())
    };
    let (cert, key) = openssl("shop", "DNS:shop.example");
    let (_, other_key) = openssl("other", "DNS:other.example");
    dir.ok(&["domain", "add", "app", "live", "shop.example"]);
    for (args, says) in [
        (vec!["cert", "add", "shop.example", "--cert", &cert, "--key", &other_key], "does not belong to the certificate"),
        (vec!["cert", "add", "www.example", "--cert", &cert, "--key", &key], "does not cover `www.example`: it names shop.example"),
        (vec!["cert", "add", "shop.example", "--cert", &key, "--key", &key], "no PEM certificate"),
        (
            vec!["cert", "add", "shop.example", "--cert", &cert, "--key", "/nonexistent/key.pem"],
            "cannot read the key file /nonexistent/key.pem",
        ),
    ] {
        let out = dir.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("PRIVATE") && !stderr.contains("BEGIN"), "{stderr}");
    }
    assert!(dir.ok(&["cert", "add", "shop.example", "--cert", &cert, "--key", &key]).contains("certificate stored"));
    let listed = dir.json(&["cert", "list", "--json"]);
    assert_eq!(listed[0]["domain"], "shop.example");
    assert_eq!((listed[0]["source"].as_str(), listed[0]["renewal"].as_str()), (Some("uploaded"), Some("renewed by hand")));
    assert!(listed[0]["fingerprint"].as_str().unwrap().starts_with("cert-sha256:"));
    let status = dir.ok(&["status", "app", "live"]);
    assert!(status.contains("domain shop.example (certificate until"), "{status}");
    let events = dir.ok(&["events", "certificates", "--json"]);
    assert!(events.contains("CertificateStored") && !events.contains("PRIVATE"), "{events}");

    // The cert verbs and the redirect toggle through a server's API, the same as against the store.
    let server = start_server(&dir);
    let issued = dir.ok(&["token", "create", "cert-admin", "--scope", "admin"]);
    let token = issued.split_whitespace().find(|w| w.starts_with("slw_")).expect("the token value is printed").to_string();
    let remote = |rest: &[&str]| {
        let mut args = vec!["--server", server.url.as_str(), "--token", token.as_str()];
        args.extend_from_slice(rest);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: &[String]| dir.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(&remote(&["cert", "list", "--json"])), dir.ok(&["cert", "list", "--json"]));
    assert!(run(&remote(&["domain", "redirect", "app", "live", "shop.example", "off"])).contains("not redirected"));
    assert_eq!(dir.json(&["cert", "list", "--json"])[0]["redirect"], false);
    assert!(dir.ok(&["domain", "redirect", "app", "live", "shop.example", "on"]).contains("is redirected to HTTPS"));
    assert_eq!(dir.json(&["cert", "list", "--json"])[0]["redirect"], true);
    // Removed through the server: listed without a certificate, recorded.
    assert!(run(&remote(&["cert", "remove", "shop.example"])).contains("removed"));
    let listed = dir.json(&["cert", "list", "--json"]);
    assert_eq!((listed[0]["fingerprint"].as_str(), listed[0]["renewal"].as_str()), (None, Some("none yet")), "{listed}");
    // Nothing left to remove: not found, locally (exit 3) and through the server.
    let out = dir.run(&["cert", "remove", "shop.example"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no certificate serves shop.example"));
    let out = dir.run(&remote(&["cert", "remove", "shop.example"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // Uploaded through the server (the key sent to it, never printed), removed locally.
    let added = run(&remote(&["cert", "add", "shop.example", "--cert", &cert, "--key", &key]));
    assert!(added.contains("certificate stored (shop.example)") && !added.contains("PRIVATE"), "{added}");
    assert_eq!(dir.json(&["cert", "list", "--json"])[0]["source"], "uploaded");
    assert!(dir.ok(&["cert", "remove", "shop.example"]).contains("removed"));
    let events = dir.ok(&["events", "certificates", "--json"]);
    assert_eq!(events.matches("\"CertificateRemoved\"").count(), 2, "{events}");
    assert!(events.contains("HttpsRedirectSet") && !events.contains("PRIVATE"), "{events}");

    // domain list: the same JSON from the store and through the server, by
    // project or by environment; unknown names are not found (exit 3).
    assert!(run(&remote(&["domain", "add", "app", "test", "WWW.Shop.Example."])).contains("served under www.shop.example "));
    let listed = dir.json(&["domain", "list", "app", "--json"]);
    let expected = serde_json::json!([
        { "domain": "shop.example", "environment": "live" },
        { "domain": "www.shop.example", "environment": "test" },
    ]);
    assert_eq!(listed, expected);
    assert_eq!(run(&remote(&["domain", "list", "app", "--json"])), dir.ok(&["domain", "list", "app", "--json"]));
    assert_eq!(run(&remote(&["domain", "list", "app", "test"])), dir.ok(&["domain", "list", "app", "test"]));
    for args in [vec!["domain", "list", "nope"], vec!["domain", "list", "app", "nope"]] {
        assert_eq!(dir.run(&args).status.code(), Some(3), "{args:?}");
        let through = remote(&args);
        assert_eq!(dir.run(&through.iter().map(String::as_str).collect::<Vec<_>>()).status.code(), Some(3), "{through:?}");
    }
    // A bad name is a usage error before any request (exit 2).
    for bad in ["", "*.*.shop.example"] {
        let out = dir.run(&remote(&["domain", "add", "app", "test", bad]).iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The project, env and preview verbs go through `--server` too: changes
/// made through the API are recorded with the token's name, and every read
/// prints the same text and JSON through the server as from the store.
#[test]
fn project_env_and_preview_verbs_change_and_read_the_same_through_the_server() {
    let dir = Dir::new();
    let server = start_server(&dir);
    let token = issue_token(&dir, "ops", "admin");
    let remote = |rest: &[&str]| {
        let mut args = vec!["--server", server.url.as_str(), "--token", token.as_str()];
        args.extend_from_slice(rest);
        args.iter().map(|a| a.to_string()).collect::<Vec<String>>()
    };
    let via = |rest: &[&str]| dir.ok(&remote(rest).iter().map(String::as_str).collect::<Vec<_>>());
    let repo = dir.path("repo");
    let secret_file = dir.path("secret");
    std::fs::write(&secret_file, "sentinel-7f3a\n").unwrap();

    via(&["project", "create", "web", "--repo", repo.to_str().unwrap(), "--branch", "HEAD", "--env", "test", "--env", "live"]);
    via(&["env", "set", "web", "test", "GREETING=hello", "PORT=8080"]);
    via(&["env", "set", "web", "test", "--secret", &format!("TOKEN=@{}", secret_file.display())]);
    via(&["env", "unset", "web", "test", "PORT"]);
    via(&["project", "auto-deploy", "web", "set", "main", "test", "--poll", "60s"]);
    via(&["project", "auto-deploy", "web", "set", "release/*", "live"]);
    via(&["project", "auto-deploy", "web", "remove", "release/*"]);
    via(&["project", "preview", "web", "set", "--pull-requests", "--inherit", "test", "--ttl", "2d"]);
    via(&["env", "protect", "web", "live", "--approvals", "1"]);
    via(&["env", "freeze", "web", "live", "0 18 * * FRI", "--for", "64h"]);
    let secret = via(&["project", "webhook", "web", "rotate"]);
    assert!(secret.trim().len() >= 32, "the new webhook secret is printed: {secret}");

    for read in [
        &["project", "list"][..],
        &["project", "list", "--json"],
        &["project", "list", "--limit", "1", "--after", "app"],
        &["project", "show", "web"],
        &["project", "show", "web", "--json"],
        &["env", "list", "web", "test"],
        &["env", "list", "web", "test", "--json"],
        &["project", "auto-deploy", "web", "list"],
        &["project", "auto-deploy", "web", "list", "--json"],
        &["project", "preview", "web", "list"],
        &["project", "preview", "web", "list", "--json"],
    ] {
        assert_eq!(dir.ok(read), via(read), "slipway {read:?} differs between the store and the server");
    }
    let shown = dir.json(&["project", "show", "web", "--json"]);
    assert_eq!((shown["environments"]["test"]["settings"].as_u64(), shown["webhook_secret"].as_bool()), (Some(2), Some(true)), "{shown}");
    assert_eq!(shown["auto_deploy"], serde_json::json!([{ "branch": "main", "environment": "test", "poll_seconds": 60 }]), "{shown}");
    assert_eq!(shown["preview_rules"][0]["ttl_seconds"], 172_800, "{shown}");
    let settings = dir.json(&["env", "list", "web", "test", "--json"]);
    assert_eq!((settings["GREETING"]["value"].as_str(), settings["TOKEN"]["value"].as_str()), (Some("hello"), Some("(secret)")));
    assert!(settings.get("PORT").is_none(), "{settings}");

    // Every change went through the API: the project's stream names the token.
    let events = dir.json(&["events", "project-web", "--json"]);
    let actors: std::collections::BTreeSet<&str> = events.as_array().unwrap().iter().filter_map(|e| e["actor"].as_str()).collect();
    assert_eq!(actors, std::collections::BTreeSet::from(["token:ops"]), "{events}");
    let kinds: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in ["EnvironmentProtected", "FreezeWindowSet", "WebhookSecretRotated", "PreviewRuleSet"] {
        assert!(kinds.contains(&kind), "{kind} is recorded: {kinds:?}");
    }
    let everything = dir.ok(&["events", "project-web", "--json"]);
    assert!(!everything.contains("sentinel-7f3a") && !everything.contains(secret.trim()), "no secret value in the log");

    via(&["env", "freeze", "web", "live", "0 18 * * FRI", "--remove"]);
    via(&["env", "protect", "web", "live", "--approvals", "0"]);
    let kinds = dir.json(&["events", "project-web", "--json"]);
    assert!(kinds.as_array().unwrap().iter().any(|e| e["type"] == "FreezeWindowRemoved"), "{kinds}");

    // Refusals keep their kind through the API.
    let code = |rest: &[&str]| dir.exit(&remote(rest).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&["project", "show", "nope"]), 3, "404 not_found");
    assert_eq!(code(&["env", "list", "web", "nope"]), 3, "no such environment");
    assert_eq!(code(&["env", "freeze", "web", "live", "not cron", "--for", "1h"]), 2, "400 bad_request");
    assert_eq!(code(&["env", "freeze", "web", "live", "0 18 * * FRI", "--remove"]), 3, "removed already: 404 not_found");
    assert_eq!(code(&["project", "create", "web", "--repo", repo.to_str().unwrap()]), 4, "409 conflict: the project exists");
    drop(server);
    assert!(!read(&dir.path("server.log")).contains("panicked"));
}

/// `--server https://...` behind a TLS proxy (nginx, a certificate from a
/// private CA): trusted with `--server-ca`, refused without it with a
/// message that says how to trust it; the reads answer as locally.
#[test]
fn the_server_is_reached_over_https_with_a_private_ca() {
    let dir = Dir::new();
    let server = start_server(&dir);
    let proxy = slipway_tests::git_servers::TlsProxy::start(server.url.trim_start_matches("http://"));
    let token = issue_token(&dir, "reader", "read");
    let ca = proxy.ca_path();
    let over_tls = |rest: &[&str], ca: Option<&Path>| {
        let mut args = vec!["--server", proxy.url.as_str(), "--token", token.as_str()];
        if let Some(ca) = ca {
            args.extend(["--server-ca", ca.to_str().unwrap()]);
        }
        args.extend_from_slice(rest);
        dir.run(&args)
    };
    let read = ["status", "app", "test", "--json"];
    let out = over_tls(&read, Some(&ca));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), dir.ok(&read));

    let untrusted = over_tls(&read, None);
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(5), "{said}");
    assert!(said.contains("certificate") && said.contains("--server-ca"), "{said}");
    assert!(!said.contains(&token), "the token is not in the error: {said}");
}

/// The shipped `all-in-one` sends notifications (the notifier runs in it,
/// not only in the test harness), and `deploy --override-freeze` through
/// `--server` carries the admin's reason to the API.
#[test]
fn all_in_one_notifies_and_an_admin_overrides_a_freeze_through_the_server() {
    use std::io::{Read, Write};
    let dir = Dir::new();
    // A webhook receiver on loopback: keeps each request's body, answers 204.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kept = received.clone();
    std::thread::spawn(move || {
        for mut conn in receiver.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                let length =
                    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>()));
                if length.and_then(Result::ok).is_none_or(|n| body.len() >= n) {
                    kept.lock().unwrap().push(body.to_string());
                    let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    break;
                }
            }
        }
    });
    let never = dir.run(&["notifications", "add", &hook, "--project", "app", "--kind", "certificate.renewal_failed"]);
    assert_eq!(never.status.code(), Some(2), "a kind that could never fire for a project");
    assert!(String::from_utf8_lossy(&never.stderr).contains("subscribe to it without a project"));
    dir.ok(&["notifications", "add", &hook, "--project", "app"]);
    dir.ok(&["env", "freeze", "app", "live", "* * * * *", "--for", "1h"]);
    let server = start_server(&dir);
    let (deployer, admin) = (issue_token(&dir, "deployer", "deploy"), issue_token(&dir, "admin", "admin"));
    let via = |token: &str, rest: &[&str]| {
        let mut args = vec!["--server".to_string(), server.url.clone(), "--token".into(), token.into()];
        args.extend(rest.iter().map(|a| a.to_string()));
        args
    };
    let run = |token: &str, rest: &[&str]| {
        let args = via(token, rest);
        dir.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let frozen = run(&deployer, &["deploy", "app", "live", "--dry-run", "--quiet", "--override-freeze", "hotfix"]);
    assert_eq!(frozen.status.code(), Some(7), "a deploy token may not override: {}", String::from_utf8_lossy(&frozen.stderr));
    let out = run(&admin, &["deploy", "app", "live", "--dry-run", "--quiet", "--override-freeze", "hotfix"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let id = out.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    assert!(out.trim_end().ends_with("succeeded"), "{out}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !received.lock().unwrap().iter().any(|b| b.contains(&id) && b.contains("deployment.succeeded")) {
        let sent = received.lock().unwrap().clone();
        assert!(Instant::now() < deadline, "no deployment.succeeded notification for {id} within 30 s; received {sent:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
}

/// A deployment that waits for approval says so while it waits, and how
/// to approve it: nothing else would show until someone acts.
#[test]
fn a_deployment_awaiting_approval_says_so_and_how_to_approve_it() {
    let dir = Dir::new();
    dir.ok(&["env", "protect", "app", "live", "--approvals", "1"]);
    let out = dir.run(&["deploy", "app", "live", "--dry-run", "--timeout", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    let id = stdout.split_whitespace().nth(1).unwrap().trim_end_matches(':');
    let note = format!("awaiting approval: 1 needed from someone with deploy scope other than the requester (`slipway approve {id}`");
    assert!(stdout.contains(&note), "{stdout}");
}
