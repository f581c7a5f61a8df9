//! Opens the store and the queue a command line names: `sqlite://PATH` or
//! `postgres://...` for the store, `memory` or `amqp://...` for the queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use slipway_store::postgres::{redact_url, Grant, PgOptions};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_store::sealing::{self, Keyring, Sealing, SealingKey};
use slipway_store::{EventStore, PgStore, SqliteStore};

/// Whether `url` names a PostgreSQL database (`postgres://` or
/// `postgresql://`, the two schemes libpq and sqlx accept).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `schema` keeps a PostgreSQL store's tables in their own schema;
/// `sealing` says how setting values are kept at rest.
pub async fn store(url: &str, schema: Option<&str>, sealing: Sealing) -> anyhow::Result<Arc<dyn EventStore>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        let store = SqliteStore::open(path).await.with_context(|| format!("opening the SQLite store {}", path.display()))?;
        return Ok(Arc::new(store.sealed(sealing)));
    }
    if is_postgres(url) {
        let options = runtime_options(schema);
        let store = PgStore::connect(url, options).await?;
        return Ok(Arc::new(store.sealed(sealing)));
    }
    bail!("--database `{}`: expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB", redact_url(url))
}

/// How setting values are sealed at rest: with `--secrets-key` (and the
/// `--old-secrets-key`s that still open older values); without one, the
/// embedded store uses `<data dir>/secrets.key`, made on first use, and a
/// PostgreSQL process may read values stored in clear but store none.
pub fn sealing(url: &str, key: Option<&Path>, older: &[PathBuf], data_dir: &Path) -> anyhow::Result<Sealing> {
    let load = |path: &Path| SealingKey::from_file(path).map_err(crate::exit::usage);
    let older = older.iter().map(|p| load(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let current = match key {
        Some(path) => load(path)?,
        None if url.starts_with("sqlite://") => {
            let path = data_dir.join("secrets.key");
            if path.exists() {
                load(&path)?
            } else {
                private_dir(data_dir)?;
                sealing::write_new_key(&path).map_err(anyhow::Error::msg)?
            }
        }
        None => return Ok(Sealing { keyring: None, required: true }),
    };
    Ok(Sealing { keyring: Some(Arc::new(Keyring::new(current, older))), required: true })
}

/// How every process but `slipway db migrate` connects to PostgreSQL: as
/// a login with the writer grants only, never migrating (see
/// `slipway_store::pg_login`).
pub fn runtime_options(schema: Option<&str>) -> PgOptions {
    PgOptions { schema: schema.map(str::to_string), migrate: false, runtime: true, ..Default::default() }
}

/// Connections of the HTTP API's own PostgreSQL pool (`api_store`); one of
/// them is the store's LISTEN connection, which wakes live streams.
pub const API_POOL_CONNECTIONS: u32 = 4;

/// The longest one statement of the HTTP API may run on PostgreSQL: a
/// request past it is refused (503, `unavailable`) and its connection
/// freed, rather than held while the engine waits.
pub const API_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the HTTP API's connections are called in `pg_stat_activity`.
pub const API_APPLICATION_NAME: &str = "slipway-api";

/// The options of the HTTP API's PostgreSQL store: the runtime login's
/// (`runtime_options`), with a small pool of its own, a statement timeout,
/// and a name of its own in `pg_stat_activity`.
pub fn api_options(schema: Option<&str>) -> PgOptions {
    PgOptions {
        max_connections: API_POOL_CONNECTIONS,
        statement_timeout: Some(API_STATEMENT_TIMEOUT),
        application_name: Some(API_APPLICATION_NAME.into()),
        ..runtime_options(schema)
    }
}

/// The store the HTTP API uses beside the engine's `shared` one. On
/// PostgreSQL it is a second `PgStore` on the same database, logging in
/// the same way, with its own pool (`api_options`): an export, a chain
/// verification or a crowd of live streams can then use up the API's
/// connections but never the engine's, and no API statement runs longer
/// than `API_STATEMENT_TIMEOUT`. SQLite keeps the shared store: the
/// embedded database is a file, one writer at a time, with nothing to gain
/// from a second pool (its readers do not wait on a server's connections).
pub async fn api_store(
    url: &str,
    schema: Option<&str>,
    sealing: Sealing,
    shared: &Arc<dyn EventStore>,
) -> anyhow::Result<Arc<dyn EventStore>> {
    if is_postgres(url) {
        let store = PgStore::connect(url, api_options(schema))
            .await
            .with_context(|| format!("connecting the HTTP API to PostgreSQL at {}", redact_url(url)))?;
        return Ok(Arc::new(store.sealed(sealing)));
    }
    Ok(shared.clone())
}

/// The store with the owner's login, for the steps that change what the
/// runtime role may not (`secrets rotate-key`); SQLite as usual.
pub async fn owner_store(url: &str, schema: Option<&str>, sealing: Sealing) -> anyhow::Result<Arc<dyn EventStore>> {
    if is_postgres(url) {
        let options = PgOptions { schema: schema.map(str::to_string), migrate: false, role: None, ..Default::default() };
        let store = PgStore::connect(url, options).await?;
        return Ok(Arc::new(store.sealed(sealing)));
    }
    store(url, schema, sealing).await
}

/// `slipway db migrate`: the one step that uses the owner's credentials.
pub async fn migrate(url: &str, schema: Option<&str>, grant_to: Option<&str>, workers: &[String]) -> anyhow::Result<i64> {
    if url.starts_with("sqlite://") {
        // The embedded store migrates itself when it is opened.
        store(url, schema, Sealing::default()).await?;
        return Ok(0);
    }
    if !is_postgres(url) {
        bail!("--database `{}`: expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB", redact_url(url))
    }
    let issuers = grant_to.map(|role| Grant::Issuer(role.to_string()));
    let grants: Vec<Grant> = issuers.into_iter().chain(workers.iter().map(|role| Grant::Worker(role.clone()))).collect();
    PgStore::migrate(url, schema, &grants).await.with_context(|| format!("migrating PostgreSQL at {}", redact_url(url)))
}

/// `namespace` prefixes RabbitMQ queue names.
pub async fn queue(url: &str, namespace: Option<&str>) -> anyhow::Result<Arc<dyn Queue>> {
    if url == "memory" {
        return Ok(Arc::new(MemoryQueue::default()));
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        // Refused, reset, unknown host: whatever it was, the broker is not
        // there now (exit status 5, retry later).
        let queue = RabbitQueue::connect(url, RabbitOptions::default()).await.map_err(|e| {
            crate::exit::coded(crate::exit::Exit::Unavailable, format!("connecting to RabbitMQ at {}: {e}", redact_url(url)))
        })?;
        return Ok(match namespace {
            Some(ns) => Arc::new(Namespaced::new(Arc::new(queue), ns.to_string())),
            None => Arc::new(queue),
        });
    }
    bail!("--queue `{}`: expected `memory` or amqp://USER:PASSWORD@HOST:PORT/VHOST", redact_url(url))
}

/// Creates `dir` (and its parents) if missing; a directory made here is
/// its owner's only (0700): it holds the store, checkouts and logs.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))
}
