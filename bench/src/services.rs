//! Reaching the services the bench measures against: PostgreSQL (fresh
//! schemas for each run, one per section, dropped at the end, so runs never
//! see each other's rows, every section starts from empty tables, and the
//! autovacuum of the replay's million rows cannot land in the append phase)
//! and RabbitMQ. An unreachable service is reported by name with its
//! (password-redacted) URL, never as a panic.

use std::time::Duration;

use anyhow::{anyhow, Context};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::PgStore;
use sqlx::{Connection, PgConnection};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks that PostgreSQL answers; returns its version string.
pub async fn check_postgres(url: &str) -> anyhow::Result<String> {
    let unreachable = || format!("PostgreSQL is unreachable at {}", redact_url(url));
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
        .await
        .map_err(|_| anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
        .with_context(unreachable)?
        .with_context(unreachable)?;
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
    conn.close().await.ok();
    Ok(version)
}

/// Checks that RabbitMQ accepts a connection.
pub async fn check_rabbitmq(url: &str) -> anyhow::Result<()> {
    let unreachable = || format!("RabbitMQ is unreachable at {}", redact_url(url));
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
        .with_context(unreachable)?
        .with_context(unreachable)?;
    conn.close(200, "bench check".into()).await.ok();
    Ok(())
}

/// One section's store, in its own schema.
pub struct BenchDb {
    pub store: PgStore,
    pub schema: String,
}

impl BenchDb {
    /// Creates the fresh schema `schema` and migrates it. The store keeps
    /// the login role (not `slipway_writer`): the baselines create their
    /// tables through the same connections, so both sides act alike.
    async fn create(url: &str, schema: String) -> anyhow::Result<Self> {
        let options = PgOptions { schema: Some(schema.clone()), max_connections: 8, migrate: true, role: None, ..Default::default() };
        let store =
            PgStore::connect(url, options).await.with_context(|| format!("creating the bench schema {schema} on {}", redact_url(url)))?;
        Ok(BenchDb { store, schema })
    }
}

/// The stores of one run: `slipway_bench_<run>_<section>`.
pub struct BenchDbs {
    pub replay: BenchDb,
    pub append: BenchDb,
    pub dispatch: BenchDb,
    /// `slipway_bench_<run>_*`, for messages.
    pub pattern: String,
    url: String,
}

impl BenchDbs {
    pub async fn create(url: &str) -> anyhow::Result<Self> {
        let prefix = format!("slipway_bench_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let mut created = Vec::new();
        for section in ["replay", "append", "dispatch"] {
            match BenchDb::create(url, format!("{prefix}_{section}")).await {
                Ok(db) => created.push(db),
                Err(e) => {
                    drop_all(url, created).await.ok();
                    return Err(e);
                }
            }
        }
        let mut created = created.into_iter();
        let (Some(replay), Some(append), Some(dispatch)) = (created.next(), created.next(), created.next()) else {
            anyhow::bail!("expected three bench schemas");
        };
        Ok(BenchDbs { replay, append, dispatch, pattern: format!("{prefix}_*"), url: url.to_string() })
    }

    /// Drops every schema of the run and everything in them.
    pub async fn drop_all(self) -> anyhow::Result<()> {
        drop_all(&self.url, vec![self.replay, self.append, self.dispatch]).await
    }
}

async fn drop_all(url: &str, dbs: Vec<BenchDb>) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url).await.context("reconnecting to drop the bench schemas")?;
    for BenchDb { store, schema } in dbs {
        store.pool().close().await;
        drop(store);
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("dropping schema {schema}"))?;
    }
    conn.close().await.ok();
    Ok(())
}
