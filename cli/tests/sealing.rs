//! Setting values sealed at rest, on the real embedded store and on real
//! PostgreSQL: what the value table holds is ciphertext bound to its row;
//! the right key opens it (`env list` shows a plain value), another key or
//! none says which key is missing; a rotation seals everything again and is
//! recorded; a PostgreSQL process without a key stores no value in clear.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::path::Path;
use std::process::{Command, Output};

use slipway_tests::*;

const SENTINEL: &str = "sentinel-9f1c2e-secret";

fn slipway(db: &str, data: &Path, extra_env: &[(&str, String)], args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_SECRETS_KEY_FILE")
        .env_remove("SLIPWAY_PG_SCHEMA")
        .env("SLIPWAY_DATABASE", db)
        .env("SLIPWAY_DATA_DIR", data)
        .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    eprintln!("$ slipway {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn stored_values(pool: &sqlx::SqlitePool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT fingerprint, value FROM setting_values ORDER BY fingerprint").fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn the_embedded_store_keeps_values_sealed_opens_them_with_its_key_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}", dir.path().join("slipway.db").display());
    let run = |args: &[&str]| slipway(&db, &data, &[], args);
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", "", ""), "one");
    assert!(run(&["project", "create", "shop", "--repo", repo.path().to_str().unwrap()]).status.success());
    assert!(run(&["env", "set", "shop", "test", &format!("API_TOKEN={SENTINEL}"), "--secret"]).status.success());
    assert!(run(&["env", "set", "shop", "test", "GREETING=plain-hello"]).status.success());
    // The key was made beside the data, for its owner only.
    use std::os::unix::fs::PermissionsExt;
    let key = data.join("secrets.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // The table holds ciphertext only,
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let values = stored_values(&pool).await;
    assert_eq!(values.len(), 2);
    assert!(values.iter().all(|(_, v)| v.starts_with("sealed:v1:") && !v.contains(SENTINEL) && !v.contains("plain-hello")), "{values:?}");
    // and the key opens it.
    assert!(text(&run(&["env", "list", "shop", "test"])).contains("plain-hello"));
    // Another key says which one is needed; so does a value moved to another row.
    let other = dir.path().join("other.key");
    assert!(run(&["secrets", "keygen", other.to_str().unwrap()]).status.success());
    let wrong = run(&["--secrets-key", other.to_str().unwrap(), "env", "list", "shop", "test"]);
    let id = values[0].1.split(':').nth(2).unwrap().to_string();
    assert!(!wrong.status.success() && text(&wrong).contains(&format!("sealed with key {id}")), "{}", text(&wrong));
    // A rotation seals everything again with the new key, and says so in the log.
    let rotated = run(&["secrets", "rotate-key", "--to", other.to_str().unwrap()]);
    assert!(rotated.status.success() && text(&rotated).contains("2 setting value(s)"), "{}", text(&rotated));
    let new_id = stored_values(&pool).await[0].1.split(':').nth(2).unwrap().to_string();
    assert_ne!(new_id, id);
    assert!(text(&run(&["--secrets-key", other.to_str().unwrap(), "env", "list", "shop", "test"])).contains("plain-hello"));
    assert!(!run(&["env", "list", "shop", "test"]).status.success(), "the old key opens nothing any more");
    let events = text(&run(&["--secrets-key", other.to_str().unwrap(), "events", "installation"]));
    assert!(events.contains("SecretsKeyRotated") && events.contains(&new_id) && !events.contains(SENTINEL), "{events}");
    // A sealed value copied into another row does not open there: the
    // secret's value is moved into the plain setting's row, which `env list`
    // opens (fingerprints are keyed per installation, so their order is not
    // the settings' order).
    let listed = text(&run(&["--secrets-key", other.to_str().unwrap(), "env", "list", "shop", "test"]));
    let fingerprint_of = |name: &str| {
        let line = listed.lines().find(|l| l.starts_with(&format!("{name}="))).unwrap();
        line.rsplit('[').next().unwrap().trim_end_matches(']').to_string()
    };
    let (secret, plain) = (fingerprint_of("API_TOKEN"), fingerprint_of("GREETING"));
    let rows = stored_values(&pool).await;
    let secret_value = &rows.iter().find(|(f, _)| *f == secret).unwrap().1;
    sqlx::query("UPDATE setting_values SET value = ?1 WHERE fingerprint = ?2")
        .bind(secret_value)
        .bind(&plain)
        .execute(&pool)
        .await
        .unwrap();
    let moved = run(&["--secrets-key", other.to_str().unwrap(), "env", "list", "shop", "test"]);
    assert!(text(&moved).contains("altered or moved"), "{}", text(&moved));
}

#[tokio::test]
async fn a_postgres_process_without_a_key_stores_no_value_and_with_one_seals_it() {
    let schema = format!("sealing_{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().unwrap();
    let schema_env = [("SLIPWAY_PG_SCHEMA", schema.clone())];
    assert!(slipway(&pg_url(), dir.path(), &schema_env, &["db", "migrate", "--grant-to", "slipway_app"]).status.success());
    let app = |extra: &[(&str, String)], args: &[&str]| {
        let mut env = schema_env.to_vec();
        env.extend_from_slice(extra);
        slipway(&pg_app_url(), dir.path(), &env, args)
    };
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", "", ""), "one");
    assert!(app(&[], &["project", "create", "shop", "--repo", repo.path().to_str().unwrap()]).status.success());
    let refused = app(&[], &["env", "set", "shop", "test", &format!("API_TOKEN={SENTINEL}"), "--secret"]);
    assert!(!refused.status.success() && text(&refused).contains("--secrets-key"), "{}", text(&refused));
    let key = dir.path().join("farm.key");
    assert!(app(&[], &["secrets", "keygen", key.to_str().unwrap()]).status.success());
    let keyed = [("SLIPWAY_SECRETS_KEY_FILE", key.display().to_string())];
    assert!(app(&keyed, &["env", "set", "shop", "test", &format!("API_TOKEN={SENTINEL}"), "--secret"]).status.success());
    let owner = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar(&format!("SELECT value FROM \"{schema}\".setting_values")).fetch_all(&owner).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("sealed:v1:") && !stored[0].contains(SENTINEL), "{stored:?}");
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&owner).await.unwrap();
}
