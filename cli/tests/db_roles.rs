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
