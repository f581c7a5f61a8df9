//! Least privilege on real PostgreSQL: the migration is its own step with
//! the owner's credentials (`slipway db migrate --grant-to ROLE`), and every
//! other `slipway` process refuses to run as the owner of the event store,
//! as a superuser, or against a schema that is not migrated. The runtime
//! login then cannot do what the owner could: disable the append-only
//! triggers, or rewrite and delete history.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::process::{Command, Output};

use slipway_tests::*;

fn slipway(url: &str, schema: &str, data: &std::path::Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .env("SLIPWAY_DATABASE", url)
        .env("SLIPWAY_PG_SCHEMA", schema)
        .env("SLIPWAY_DATA_DIR", data)
        .env_remove("SLIPWAY_SERVER")
        .output()
        .unwrap();
    eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn admin_url() -> String {
    std::env::var("SLIPWAY_PG_ADMIN_URL").unwrap_or_else(|_| "postgres://slipway_admin:slipway_admin@127.0.0.1:5432/slipway".into())
}

#[tokio::test]
async fn only_the_migration_step_uses_the_owner_and_the_runtime_login_cannot_rewrite_history() {
    let schema = format!("roles_{}", uuid::Uuid::now_v7().simple());
    let data = tempfile::tempdir().unwrap();
    let run = |url: &str, args: &[&str]| slipway(url, &schema, data.path(), args);
    // Nothing migrated yet: a runtime process says what to run.
    let early = run(&pg_app_url(), &["project", "list"]);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("slipway db migrate"), "{}", String::from_utf8_lossy(&early.stderr));
    // The migration, with the owner's credentials.
    let migrated = run(&pg_url(), &["db", "migrate", "--grant-to", "slipway_app"]);
    assert!(migrated.status.success());
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("run Slipway as `slipway_app`"));
    // The owner and a superuser are refused, naming why and what to do.
    for (url, why) in [(pg_url(), "owns the event store"), (admin_url(), "is a superuser")] {
        let refused = run(&url, &["project", "list"]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains(why) && stderr.contains("db migrate --grant-to"), "{stderr}");
        assert!(!stderr.contains("slipway_admin@") && !stderr.contains(":slipway@"), "no credentials in the error: {stderr}");
    }
    // The runtime login works,
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", "", ""), "one");
    let created = run(&pg_app_url(), &["project", "create", "shop", "--repo", repo.path().to_str().unwrap()]);
    assert!(created.status.success());
    assert!(String::from_utf8_lossy(&run(&pg_app_url(), &["project", "list"]).stdout).contains("shop"));
    // Its routers write, replace and prune their traffic samples (the
    // operational table the migration grants), and the API reads them.
    {
        use slipway_store::postgres::{PgOptions, PgStore};
        use slipway_store::traffic::TrafficSample;
        use slipway_store::EventStore;
        let options = PgOptions { schema: Some(schema.clone()), migrate: false, runtime: true, ..Default::default() };
        let store = PgStore::connect(&pg_app_url(), options).await.unwrap();
        let sample = |minute, requests| TrafficSample {
            router: "r1".into(),
            project: "shop".into(),
            environment: "live".into(),
            minute,
            requests,
            errors: 1,
        };
        store.operational().record_traffic(&[sample(100, 5), sample(200, 7)], 0).await.unwrap();
        store.operational().record_traffic(&[sample(200, 9)], 150).await.unwrap();
        assert_eq!(store.operational().traffic(0).await.unwrap(), [sample(200, 9)], "replaced in place, the old minute pruned");
    }
    // and cannot tamper with the log the way the owner could.
    let app = sqlx::PgPool::connect(&pg_app_url()).await.unwrap();
    let attacks = [
        format!("ALTER TABLE \"{schema}\".events DISABLE TRIGGER ALL"),
        format!("UPDATE \"{schema}\".events SET stream = stream"),
        format!("DELETE FROM \"{schema}\".events"),
        format!("TRUNCATE \"{schema}\".events"),
        format!("DROP TABLE \"{schema}\".events"),
        format!("CREATE TABLE \"{schema}\".shadow (x int)"),
    ];
    for attack in &attacks {
        let mut tx = app.begin().await.unwrap();
        sqlx::query("SET ROLE slipway_writer").execute(&mut *tx).await.unwrap();
        let denied = sqlx::query(attack).execute(&mut *tx).await.unwrap_err().to_string();
        assert!(
            denied.contains("must be owner") || denied.contains("permission denied") || denied.contains("append-only"),
            "{attack}: {denied}"
        );
        tx.rollback().await.ok();
    }
    app.close().await;
    let owner = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&owner).await.unwrap();
}

/// Events that grant authority are recorded only by a token issuer: a
/// worker host's login (writer grants only) appending a correctly hashed
/// `TokenIssued{scope: admin}` through the store is refused by the
/// database, whichever way it tries; the server's login issues tokens; the
/// refused token opens nothing.
#[tokio::test]
async fn a_worker_hosts_login_cannot_mint_itself_a_token() {
    use slipway_proto::event::TokenScope;
    use slipway_store::postgres::{PgOptions, PgStore};
    use slipway_store::EventStore;
    let schema = format!("roles_{}", uuid::Uuid::now_v7().simple());
    let data = tempfile::tempdir().unwrap();
    let migrated =
        slipway(&pg_url(), &schema, data.path(), &["db", "migrate", "--grant-to", "slipway_app", "--grant-worker", "slipway_worker"]);
    assert!(migrated.status.success());
    let runtime = |url: String| {
        let schema = schema.clone();
        async move {
            let options = PgOptions { schema: Some(schema), migrate: false, runtime: true, ..Default::default() };
            PgStore::connect(&url, options).await.unwrap()
        }
    };
    let worker = runtime(pg_worker_url()).await;
    // Through the engine's own request, as a compromised worker could call it,
    let refused = slipway_engine::requests::issue_token(&worker, "agent:evil", "evil", TokenScope::Admin).await;
    let error = refused.expect_err("a worker host's login issued a token").to_string();
    assert!(error.contains("may not record") && error.contains("slipway_worker"), "{error}");
    // and as a raw, correctly chained append of the event.
    let issued = slipway_proto::event::TokenIssued {
        name: "evil".into(),
        scope: TokenScope::Admin,
        sha256: "0".repeat(64),
        issued_by: "agent:evil".into(),
        expires_at: None,
    };
    let meta = slipway_proto::envelope::Metadata {
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
        actor: "agent:evil".into(),
        trace: None,
    };
    let event = slipway_proto::Event::TokenIssued(issued);
    let envelope = slipway_proto::Envelope::new(uuid::Uuid::now_v7(), chrono::Utc::now(), "tokens", &event, meta).unwrap();
    let raw = worker.append("tokens", slipway_store::ExpectedVersion::Any, &[envelope], &[]).await;
    assert!(raw.is_err_and(|e| e.to_string().contains("may not record")), "the raw append was not refused");
    assert_eq!(worker.stream_version("tokens").await.unwrap(), 0, "nothing reached the tokens stream");
    // A worker's login may forget the workers silent for a week (each worker does, as it starts).
    worker.operational().forget_workers(chrono::Utc::now()).await.expect("a worker's login forgets silent workers");
    // The server's login issues tokens as before.
    let app = runtime(pg_app_url()).await;
    let token = slipway_engine::requests::issue_token(&app, "cli:ops", "ops", TokenScope::Admin).await.unwrap().unwrap();
    assert!(!token.is_empty());
    assert_eq!(app.stream_version("tokens").await.unwrap(), 1);
    let owner = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&owner).await.unwrap();
}

/// `slipway server` on PostgreSQL serves its HTTP API from a pool of its
/// own (`slipway-api` in `pg_stat_activity`, at most 4 connections, each
/// with a 30 s statement timeout), beside the engine's.
#[tokio::test]
async fn the_servers_api_has_a_pool_of_its_own() {
    use std::process::Stdio;
    use std::time::Duration;

    use slipway_store::postgres::{PgOptions, PgStore};
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("apipool_{tag}");
    let engine_name = format!("engine-{}", &tag[20..]);
    let data = tempfile::tempdir().unwrap();
    let options = PgOptions { schema: Some(schema.clone()), max_connections: 2, ..Default::default() };
    let owner = PgStore::connect(&pg_url(), options).await.unwrap();
    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["server", "--listen", &listen, "--queue", "memory"])
        .env("SLIPWAY_DATABASE", pg_app_url())
        .env("SLIPWAY_PG_SCHEMA", &schema)
        .env("SLIPWAY_DATA_DIR", data.path())
        // The driver's default name for the engine's connections (the
        // API's name their own), so this test finds this server's.
        .env("PGAPPNAME", &engine_name)
        .env_remove("SLIPWAY_SERVER")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("http://{listen}/healthz");
    eventually("the API to answer", Duration::from_secs(30), || async {
        slipway_workers::http::get_status(&health, Duration::from_secs(1)).await.ok().filter(|s| *s == 200)
    })
    .await;
    let sessions = |name: String| {
        let pool = owner.pool().clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE usename = 'slipway_app' AND application_name = $1")
                    .bind(name)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n
        }
    };
    let (api, engine) = (sessions("slipway-api".into()).await, sessions(engine_name).await);
    let _ = server.kill();
    let _ = server.wait();
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(owner.pool()).await;
    assert!((1..=4).contains(&api), "{api} sessions named slipway-api");
    assert!(engine >= 1, "the engine has no session of its own");
}
