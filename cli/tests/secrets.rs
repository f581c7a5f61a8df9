//! A secret's value never leaves the value table: a sentinel secret is set,
//! used by a release command, deployed, replayed and exported; then the
//! event log, the outbox, the checkpoints and workers tables, the build and
//! release logs, the export and the HTTP API's answers are searched for it.
//! (The `setting_values` table holds it by design: workers resolve values
//! by fingerprint from there.)

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::process::Command;
use std::time::Duration;

use slipway_engine::requests;
use slipway_engine::Status;
use slipway_proto::Step;
use slipway_tests::*;
use uuid::Uuid;

mod common;
use common::http;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_sentinel_appears_nowhere_but_the_value_table() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let sentinel = format!("sentinel-{}", Uuid::now_v7().simple());
    // The release command prints the secret: its stored log must not keep it.
    let toml = "[web]\nport = 80\n\n[release]\ncommands = [\"test -n \\\"$API_KEY\\\"\", \"echo release ran with $API_KEY\"]\n";
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", toml, ""), "v1");
    h.create_project(&repo.path()).await;
    h.set("test", "API_KEY", &sentinel, true).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    let replay = requests::request_replay(&*h.store, "test", d.id, Some(Step::Release)).await.unwrap().unwrap();
    assert_eq!(h.wait_finished(replay.deployment_id, Duration::from_secs(120)).await.status, Status::Succeeded);
    // A service whose address setting is the secret (not a URL, so no URL
    // redaction applies): the failure the worker records is scrubbed.
    let toml_with_service = format!("{toml}\n[services]\nqueue = {{ type = \"tcp\", env = \"API_KEY\" }}\n");
    repo.commit(&busybox_app("v2", &toml_with_service, ""), "v2 needs a queue");
    let unreachable = h.deploy("test", "main").await;
    let (step, reason) = failure(&unreachable);
    assert_eq!(step, Step::CheckServices, "{reason}");
    assert!(reason.contains("queue") && reason.contains("***") && !reason.contains(&sentinel), "{reason}");

    let schema = h.schema().unwrap().to_string();
    let slipway = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .env("SLIPWAY_DATABASE", pg_app_url())
            .env("SLIPWAY_PG_SCHEMA", &schema)
            .output()
            .unwrap()
    };
    // The export.
    let export = h.data.path().join("export.jsonl");
    let out = slipway(&["export", "--output", export.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.contains("API_KEY"), "the export holds the key's name (and fingerprint)");
    assert!(!text.contains(&sentinel), "the export holds the secret");

    // The CLI's views.
    for args in [vec!["project", "show", h.project.as_str()], vec!["env", "list", h.project.as_str(), "test"]] {
        let out = slipway(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(!shown.contains(&sentinel), "{args:?}: {shown}");
        assert!(args[0] != "env" || shown.contains("API_KEY"), "{args:?}: {shown}");
    }

    // The HTTP API, with a token made by `slipway token create`.
    let out = slipway(&["token", "create", "auditor", "--scope", "read"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("slw_") && token.len() == 68, "{token}");
    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["server", "--listen", &listen, "--queue", "memory"])
        .env("SLIPWAY_DATA_DIR", h.data.path())
        .env("SLIPWAY_DATABASE", pg_app_url())
        .env("SLIPWAY_PG_SCHEMA", &schema)
        .spawn()
        .unwrap();
    eventually("the API", Duration::from_secs(30), || async {
        slipway_workers::http::get_status(&format!("http://{listen}/healthz"), Duration::from_secs(1)).await.ok().filter(|s| *s == 200)
    })
    .await;
    let (status, _) = http(&listen, "GET", "/api/projects", None, None).await;
    assert_eq!(status, 401, "no token, no answer");
    for path in [
        format!("/projects/{}", h.project),
        format!("/projects/{}/environments/test", h.project),
        format!("/projects/{}/environments/test/settings", h.project),
        format!("/projects/{}/environments/test/releases", h.project),
        format!("/deployments/{}", d.id),
        format!("/deployments/{}/events", d.id),
        format!("/deployments/{}/history", d.id),
        format!("/deployments/{}/logs", d.id),
        format!("/deployments/{}/events", replay.deployment_id),
        format!("/diff?a={}&b={}", d.id, replay.deployment_id),
        "/export".to_string(),
    ] {
        let (status, body) = http(&listen, "GET", &format!("/api{path}"), Some(&token), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(&sentinel), "{path} shows the secret: {body}");
    }
    let (_, settings) = http(&listen, "GET", &format!("/api/projects/{}/environments/test/settings", h.project), Some(&token), None).await;
    assert!(settings.contains(r#""API_KEY":"(secret)""#), "{settings}");
    let (_, logs) = http(&listen, "GET", &format!("/api/deployments/{}/logs", d.id), Some(&token), None).await;
    assert!(logs.contains("== build"), "the server reads the workers' logs from its data directory: {logs}");
    let _ = server.kill();
    let _ = server.wait();

    // Logs and checkouts on disk.
    assert_eq!(files_containing(h.data.path(), &sentinel), Vec::<String>::new());

    // Every table but the value table, as text.
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
        .bind(&schema)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(tables.contains(&"events".to_string()) && tables.contains(&"outbox".to_string()), "{tables:?}");
    for table in tables.iter().filter(|t| *t != "setting_values") {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t")).fetch_all(&pool).await.unwrap();
        assert!(!rows.iter().any(|r| r.contains(&sentinel)), "table {table} holds the secret");
    }
    let values: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".setting_values WHERE value = $1"))
        .bind(&sentinel)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(values, 1, "the value table is where the value lives");
    h.shutdown().await;
}
