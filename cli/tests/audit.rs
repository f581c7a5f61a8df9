//! The audit verbs through the built `slipway` binary on an SQLite store in
//! a temporary directory: `export` then `audit verify --file` with no
//! database (the --database given is never opened), a flipped byte named by
//! stream and version, a project's export, `audit keygen`, and a stream tail
//! rewritten behind the store's back that the chains miss and a checkpoint
//! catches.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::Utc;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{DeploymentRequested, ProjectCreated, SettingsChanged};
use slipway_proto::{Envelope, Event};
use slipway_store::{EventStore, ExpectedVersion, SqliteStore};
use uuid::Uuid;

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Dir { tmp: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn database(&self) -> String {
        format!("sqlite://{}", self.path("slipway.db").display())
    }

    async fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.path("slipway.db")).await.unwrap()
    }

    /// Runs `slipway --database <this dir's store> ARGS`.
    fn slipway(&self, args: &[&str]) -> Output {
        self.slipway_on(&self.database(), args)
    }

    fn slipway_on(&self, database: &str, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("--database")
            .arg(database)
            .args(args)
            .current_dir(self.tmp.path())
            .env_remove("SLIPWAY_DATABASE")
            .env_remove("SLIPWAY_PG_SCHEMA")
            .output()
            .unwrap();
        eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        out
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}{}", out.status, stdout(&out), String::from_utf8_lossy(&out.stderr));
    stdout(&out)
}

#[track_caller]
fn fails(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure: {}", stdout(&out));
    stdout(&out)
}

fn envelope(stream: &str, event: &Event) -> Envelope {
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "audit-test".into(), trace: None };
    Envelope::new(Uuid::now_v7(), Utc::now(), stream, event, meta).unwrap()
}

fn settings(stream: &str, n: u64) -> Envelope {
    let event = Event::SettingsChanged(SettingsChanged {
        environment: format!("env-{n}"),
        set: [("KEY".to_string(), format!("sha256:{n:08}"))].into(),
        removed: vec![],
        secrets: vec![],
    });
    envelope(stream, &event)
}

/// Projects `a` and `a-b`, an environment and a deployment of each, and a
/// routes stream: 4 + 4 + 2 + 2 + 4 + 4 + 1 = 21 events.
async fn seed(dir: &Dir) {
    let store = dir.store().await;
    for project in ["a", "a-b"] {
        let stream = format!("project-{project}");
        let created = Event::ProjectCreated(ProjectCreated {
            name: project.into(),
            repository: "file:///srv/git/app.git".into(),
            mirror_of: None,
            environments: vec!["prod".into()],
            default_branch: "main".into(),
        });
        let mut events = vec![envelope(&stream, &created)];
        events.extend((1..4).map(|n| settings(&stream, n)));
        store.append(&stream, ExpectedVersion::NoStream, &events, &[]).await.unwrap().unwrap();
    }
    for project in ["a", "a-b"] {
        let env = format!("environment-{project}-prod");
        store.append(&env, ExpectedVersion::NoStream, &[settings(&env, 1), settings(&env, 2)], &[]).await.unwrap().unwrap();
    }
    for (stream, project) in [("deployment-1", "a"), ("deployment-2", "a-b")] {
        let payload = serde_json::json!({
            "deployment_id": Uuid::now_v7(), "project": project, "environment": "prod",
            "repository": "file:///srv/git/app.git", "git_ref": "main", "mode": "cloud"
        });
        let requested = Event::DeploymentRequested(serde_json::from_value::<DeploymentRequested>(payload).unwrap());
        let mut events = vec![envelope(stream, &requested)];
        events.extend((1..4).map(|n| settings(stream, n)));
        store.append(stream, ExpectedVersion::NoStream, &events, &[]).await.unwrap().unwrap();
    }
    store.append("routes", ExpectedVersion::NoStream, &[settings("routes", 1)], &[]).await.unwrap().unwrap();
    store.pool().close().await;
}

fn streams_in(export: &Path) -> Vec<String> {
    let mut streams: Vec<String> = std::fs::read_to_string(export)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("stream")?.as_str().map(String::from))
        .collect();
    streams.dedup();
    streams.sort();
    streams.dedup();
    streams
}

#[tokio::test]
async fn an_export_verifies_offline_without_opening_the_database() {
    let dir = Dir::new();
    seed(&dir).await;
    ok(dir.slipway(&["export", "--output", "log.jsonl"]));
    assert_eq!(streams_in(&dir.path("log.jsonl")).len(), 7);

    // Neither a store that does not exist (it would be created) nor a
    // PostgreSQL that does not answer is touched.
    let absent = format!("sqlite://{}", dir.path("absent/never.db").display());
    let out = ok(dir.slipway_on(&absent, &["audit", "verify", "--file", "log.jsonl"]));
    assert!(out.contains("21 events in 7 streams checked; every hash chain is intact"), "{out}");
    assert!(!dir.path("absent").exists(), "verify --file created the --database directory");
    ok(dir.slipway_on("postgres://nobody:secret@127.0.0.1:1/none", &["audit", "verify", "--file", "log.jsonl"]));

    // The database's own verification agrees.
    let out = ok(dir.slipway(&["audit", "verify"]));
    assert!(out.contains("21 events in 7 streams checked; every hash chain is intact"), "{out}");
}

#[tokio::test]
async fn a_flipped_byte_in_an_export_is_named_by_stream_and_version() {
    let dir = Dir::new();
    seed(&dir).await;
    ok(dir.slipway(&["export", "--output", "log.jsonl"]));
    let bytes = std::fs::read(dir.path("log.jsonl")).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let line_start = text.find("{\"stream\":\"deployment-2\",\"version\":3,").unwrap();
    let actor = line_start + text[line_start..].find("audit-test").unwrap();

    let mut flipped = bytes.clone();
    flipped[actor] ^= 0x01;
    std::fs::write(dir.path("flipped.jsonl"), &flipped).unwrap();
    let out = fails(dir.slipway(&["audit", "verify", "--file", "flipped.jsonl"]));
    assert!(out.contains("TAMPERED deployment-2@3: changed"), "{out}");
    assert_eq!(out.matches("TAMPERED").count(), 1, "{out}");

    // A line cut in half is reported by its number.
    let line_no = text[..line_start].matches('\n').count() + 1;
    let broken: String =
        text.lines().enumerate().map(|(i, l)| if i + 1 == line_no { format!("{}\n", &l[..40]) } else { format!("{l}\n") }).collect();
    std::fs::write(dir.path("broken.jsonl"), broken).unwrap();
    let out = fails(dir.slipway(&["audit", "verify", "--file", "broken.jsonl"]));
    assert!(out.contains(&format!("MALFORMED line {line_no}: malformed event line")), "{out}");
}

#[tokio::test]
async fn a_project_export_holds_its_streams_and_verifies() {
    let dir = Dir::new();
    seed(&dir).await;
    ok(dir.slipway(&["export", "--project", "a", "--output", "a.jsonl"]));
    assert_eq!(streams_in(&dir.path("a.jsonl")), ["deployment-1", "environment-a-prod", "project-a"]);
    let out = ok(dir.slipway_on("sqlite:///nonexistent/x.db", &["audit", "verify", "--file", "a.jsonl"]));
    assert!(out.contains("10 events in 3 streams checked (partial export: project a); every hash chain is intact"), "{out}");

    // A filtered export cannot be held against checkpoints of the whole log.
    ok(dir.slipway(&["audit", "keygen", "--out", "audit.key"]));
    ok(dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]));
    let out = fails(dir.slipway(&["audit", "verify", "--file", "a.jsonl", "--checkpoints", "checkpoints"]));
    assert!(out.contains("only a full export"), "{out}");
}

#[tokio::test]
async fn keygen_writes_a_private_key_and_refuses_to_overwrite_it() {
    let dir = Dir::new();
    let out = ok(dir.slipway(&["audit", "keygen", "--out", "audit.key"]));
    let mode = std::fs::metadata(dir.path("audit.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(dir.path("audit.key.pub")).unwrap();
    let public_hex = public.trim().strip_prefix("slipway-audit-public-key:").expect("a labelled public key file");
    assert!(out.contains(public_hex), "{out}");
    let again = dir.slipway(&["audit", "keygen", "--out", "audit.key"]);
    assert_eq!(again.status.code(), Some(4), "the files exist already: a conflict");

    // The two files cannot be given for each other, and the secret is never printed.
    let secret = std::fs::read_to_string(dir.path("audit.key")).unwrap();
    let secret_hex = secret.trim().strip_prefix("slipway-audit-secret-key:").expect("a labelled secret key file").to_string();
    seed(&dir).await;
    let swapped = dir.slipway(&["audit", "checkpoint", "--key", "audit.key.pub", "--out", "checkpoints"]);
    assert_eq!(swapped.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&swapped.stderr).contains("this is a public key file"), "{swapped:?}");
    ok(dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]));
    let swapped = dir.slipway(&["audit", "verify", "--checkpoints", "checkpoints", "--public-key", "audit.key"]);
    let said = format!("{}{}", stdout(&swapped), String::from_utf8_lossy(&swapped.stderr));
    assert_eq!(swapped.status.code(), Some(2), "{said}");
    assert!(said.contains("SECRET key file") && !said.contains(&secret_hex), "{said}");
    // Files that are not there are bad input (2), not findings (1); a project that is not there is 3.
    for args in [&["audit", "verify", "--file", "nope.jsonl"][..], &["audit", "verify", "--checkpoints", "no-such-dir"]] {
        assert_eq!(dir.slipway(args).status.code(), Some(2), "{args:?}");
    }
    assert_eq!(dir.slipway(&["export", "--project", "nosuch", "--output", "x.jsonl"]).status.code(), Some(3));

    // An export older than a checkpoint: said as a possibility, not only as removal.
    ok(dir.slipway(&["export", "--output", "old.jsonl"]));
    ok(dir.slipway(&["project", "create", "later", "--repo", "/tmp"]));
    ok(dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]));
    let out = fails(dir.slipway(&["audit", "verify", "--file", "old.jsonl", "--checkpoints", "checkpoints"]));
    assert!(out.contains("events were removed, or the export was made before this checkpoint was signed"), "{out}");
}

#[tokio::test]
async fn a_rewritten_tail_is_caught_by_a_checkpoint_and_not_by_the_chains() {
    let dir = Dir::new();
    seed(&dir).await;
    ok(dir.slipway(&["audit", "keygen", "--out", "audit.key"]));
    ok(dir.slipway(&["audit", "keygen", "--out", "other.key"]));
    ok(dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]));
    let out = ok(dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]));
    assert!(out.contains("nothing written"), "{out}");
    let store = dir.store().await;
    store.append("deployment-1", ExpectedVersion::Any, &[settings("deployment-1", 9)], &[]).await.unwrap().unwrap();
    ok(dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]));
    let verify = ["audit", "verify", "--checkpoints", "checkpoints", "--public-key", "audit.key.pub"];
    let out = ok(dir.slipway(&verify));
    assert!(out.contains("every hash chain is intact; 2 checkpoint(s) hold"), "{out}");
    ok(dir.slipway(&["export", "--output", "before.jsonl"]));

    // Behind the store's back: the last two events of project-a go, two
    // others take their place with a valid chain.
    sqlx::query("DROP TRIGGER events_no_update").execute(store.pool()).await.unwrap();
    sqlx::query("DROP TRIGGER events_no_delete").execute(store.pool()).await.unwrap();
    sqlx::query("DELETE FROM events WHERE stream = 'project-a' AND version >= 3").execute(store.pool()).await.unwrap();
    let forged = [settings("project-a", 90), settings("project-a", 91)];
    store.append("project-a", ExpectedVersion::Exactly(2), &forged, &[]).await.unwrap().unwrap();
    store.pool().close().await;

    // The chains alone see nothing wrong ...
    let out = ok(dir.slipway(&["audit", "verify"]));
    assert!(out.contains("22 events in 7 streams checked; every hash chain is intact"), "{out}");
    // ... the checkpoints do, and name the stream and the first rewritten version.
    let out = fails(dir.slipway(&verify));
    assert!(out.contains("CHECKPOINT BROKEN checkpoint-000000000021.json"), "{out}");
    assert!(out.contains("CHECKPOINT BROKEN checkpoint-000000000022.json"), "{out}");
    assert!(out.contains("project-a@4 is not the event signed"), "{out}");
    assert!(out.contains("first differing: project-a@3"), "{out}");
    assert!(out.contains("every hash chain is intact; 2 of 2 checkpoint(s) BROKEN"), "{out}");
    // So does an export of the rewritten log, offline; the one made before holds.
    ok(dir.slipway(&["export", "--output", "after.jsonl"]));
    let out = fails(dir.slipway(&["audit", "verify", "--file", "after.jsonl", "--checkpoints", "checkpoints"]));
    assert!(out.contains("first differing: project-a@3"), "{out}");
    ok(dir.slipway(&["audit", "verify", "--file", "before.jsonl", "--checkpoints", "checkpoints"]));
    // No new checkpoint is signed over the rewritten log.
    let out = dir.slipway(&["audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not signed"));
    // And checkpoints are only as good as the key they are held to.
    let other = ["audit", "verify", "--file", "before.jsonl", "--checkpoints", "checkpoints", "--public-key", "other.key.pub"];
    let out = fails(dir.slipway(&other));
    assert!(out.contains("not by the key given"), "{out}");
}

#[tokio::test]
async fn checkpoints_are_signed_on_a_schedule_without_anyone_running_a_command() {
    let dir = Dir::new();
    seed(&dir).await;
    ok(dir.slipway(&["audit", "keygen", "--out", "audit.key"]));
    let mut every = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["--database", &dir.database(), "audit", "checkpoint", "--key", "audit.key", "--out", "checkpoints", "--every", "1"])
        .current_dir(dir.tmp.path())
        .env_remove("SLIPWAY_DATABASE")
        .env_remove("SLIPWAY_PG_SCHEMA")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let count = || {
        std::fs::read_dir(dir.path("checkpoints"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
            .unwrap_or(0)
    };
    let wait_for = |n: usize| async move {
        let what = format!("checkpoint {n}");
        slipway_support::eventually(&what, std::time::Duration::from_secs(10), || async { (count() >= n).then_some(()) }).await
    };
    wait_for(1).await;
    // A new event: the next round signs a second checkpoint; rounds with nothing new write none.
    let store = dir.store().await;
    store.append("deployment-1", ExpectedVersion::Any, &[settings("deployment-1", 9)], &[]).await.unwrap().unwrap();
    wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(count(), 2);
    let _ = every.kill();
    let _ = every.wait();
    let out = ok(dir.slipway(&["audit", "verify", "--checkpoints", "checkpoints", "--public-key", "audit.key.pub"]));
    assert!(out.contains("2 checkpoint(s) hold"), "{out}");
}
