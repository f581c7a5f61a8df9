//! The SQLite event store, Slipway's embedded default for one machine. Same
//! schema and guarantees as PostgreSQL. SQLite admits one writer at a time
//! (`BEGIN IMMEDIATE`), so position order is commit order and a subscriber
//! cannot skip an event; the wake-up hint is an in-process signal.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Row, Sqlite};
use tokio::sync::watch;

use crate::chain::{ChainRow, GENESIS};
use crate::dialect::Tables;
use crate::event_store::{
    prepare, validate_append, Appended, Conflict, EventStore, Outgoing, Position, RawEvent, RecordedEvent, StoreError, StreamAppend,
};

const BACKEND: &str = <Sqlite as crate::dialect::Dialect>::BACKEND;

fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    crate::dialect::db::<Sqlite>(context)
}

#[derive(Clone)]
pub struct SqliteStore {
    /// The pool, with the outbox and the operational tables on it.
    tables: Tables<Sqlite>,
    wake: watch::Sender<u64>,
    /// For an in-memory store: an idle connection that keeps the shared
    /// in-memory database alive while the pool replaces its connection (a
    /// task cancelled mid-query drops the connection it held).
    _keeper: Option<Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>>,
}

impl SqliteStore {
    /// Setting values sealed (and opened) this way from now on.
    pub fn sealed(mut self, sealing: crate::sealing::Sealing) -> Self {
        self.tables.sealing = sealing;
        self
    }

    /// Opens (creating if needed) the store in the file at `path`. The file
    /// holds setting values: it is made readable by its owner only (0600),
    /// and tightened to that if it was not; SQLite gives its WAL and
    /// shared-memory files the database file's permissions.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        private_file(path).map_err(|e| StoreError::Database {
            backend: "sqlite",
            context: format!("making {} readable by its owner only", path.display()),
            source: sqlx::Error::Io(e),
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(db(format!("opening {}", path.display())))?;
        Self::with_pool(pool, None).await
    }

    /// A store that lives in memory only (tests, dry runs).
    pub async fn in_memory() -> Result<Self, StoreError> {
        // A named, shared-cache in-memory database: it lives while any
        // connection to it is open, so the keeper holds one.
        let options = SqliteConnectOptions::from_str("sqlite::memory:").map_err(db("opening an in-memory database"))?;
        let keeper = options.connect().await.map_err(db("opening an in-memory database"))?;
        // One pooled connection: writers take turns, as on a file.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db("opening an in-memory database"))?;
        Self::with_pool(pool, Some(Arc::new(tokio::sync::Mutex::new(keeper)))).await
    }

    async fn with_pool(pool: SqlitePool, keeper: Option<Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>>) -> Result<Self, StoreError> {
        sqlx::migrate!("../migrations/sqlite").run(&pool).await.map_err(|source| StoreError::Migrate { backend: BACKEND, source })?;
        let (wake, _) = watch::channel(0u64);
        Ok(SqliteStore { tables: Tables::new(pool), wake, _keeper: keeper })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.tables.pool
    }

    fn wake_up(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

const EVENT_COLUMNS: &str = "tx, position, stream, version, body, prev_hash, hash, recorded_at";

fn raw_event(row: &SqliteRow) -> Result<RawEvent, sqlx::Error> {
    Ok(RawEvent {
        tx: row.try_get::<i64, _>("tx")? as u64,
        seq: row.try_get("position")?,
        stream: row.try_get("stream")?,
        version: row.try_get("version")?,
        body: row.try_get("body")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    })
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_streams(
        &self,
        appends: &[StreamAppend<'_>],
        commands: &[Outgoing],
    ) -> Result<Result<Vec<Appended>, Conflict>, StoreError> {
        // IMMEDIATE takes the write lock up front, so two writers never both
        // read a stream's version and then race to extend it.
        let mut tx = self.tables.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db("appending"))?;
        let now = Utc::now();
        let mut results = Vec::with_capacity(appends.len());
        for a in appends {
            match append_one(&mut tx, a, now).await? {
                Ok(done) => results.push(done),
                Err(conflict) => return Ok(Err(conflict)),
            }
        }
        for c in commands {
            // A re-dispatch under the same id while the first still waits: one row.
            sqlx::query("INSERT OR IGNORE INTO outbox (message_id, queue, body, traceparent, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
                .bind(c.envelope.id.to_string())
                .bind(&c.queue)
                .bind(c.envelope.to_json())
                .bind(c.envelope.trace.as_ref().map(|t| t.traceparent.clone()))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| insert_error(e, "the outbox"))?;
        }
        tx.commit().await.map_err(db("appending"))?;
        self.wake_up();
        Ok(Ok(results))
    }

    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream = ?1 AND version >= ?2 ORDER BY version"))
            .bind(stream)
            .bind(from_version as i64)
            .fetch_all(&self.tables.pool)
            .await
            .map_err(db(format!("reading `{stream}`")))?;
        rows.iter().map(|r| raw_event(r).map_err(db(format!("reading `{stream}`")))?.decode()).collect()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream = ?1")
            .bind(stream)
            .fetch_one(&self.tables.pool)
            .await
            .map_err(db(format!("reading the version of `{stream}`")))?;
        Ok(v.unwrap_or(0) as u64)
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"))
            .bind(after.seq)
            .bind(limit as i64)
            .fetch_all(&self.tables.pool)
            .await
            .map_err(db(format!("reading all events after {after}")))?;
        rows.iter().map(|r| raw_event(r).map_err(db("decoding an event row"))?.decode()).collect()
    }

    fn stream_all(&self, after: Position) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        sqlx::query(
            "SELECT tx, position, stream, version, body, prev_hash, hash, recorded_at FROM events WHERE position > ?1 ORDER BY position",
        )
        .bind(after.seq)
        .fetch(&self.tables.pool)
        .map(|row| raw_event(&row.map_err(db("streaming events"))?).map_err(db("decoding an event row"))?.decode())
        .boxed()
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    async fn chain_page(&self, after: Option<(&str, u64)>, limit: usize) -> Result<Vec<ChainRow>, StoreError> {
        crate::export::chain_page(self.pool(), after, limit).await
    }

    async fn log_page(&self, after: Position, limit: usize) -> Result<Vec<crate::export::LogRow>, StoreError> {
        crate::export::log_page(self.pool(), after, limit).await
    }

    fn outbox(&self) -> &dyn crate::outbox::Outbox {
        &self.tables
    }

    fn operational(&self) -> &dyn crate::operational::Operational {
        &self.tables
    }

    fn read_models(&self) -> &dyn crate::read_model::ReadModelStore {
        self
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

/// One stream's part of an append, inside the caller's write transaction.
async fn append_one(
    tx: &mut sqlx::SqliteConnection,
    a: &StreamAppend<'_>,
    now: DateTime<Utc>,
) -> Result<Result<Appended, Conflict>, StoreError> {
    let stream = a.stream;
    validate_append(stream, a.events)?;
    let last: Option<(i64, String)> = sqlx::query_as("SELECT version, hash FROM events WHERE stream = ?1 ORDER BY version DESC LIMIT 1")
        .bind(stream)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(format!("appending to `{stream}`")))?;
    let (actual, last_hash) = last.map_or((0, GENESIS.to_string()), |(v, h)| (v as u64, h));
    if !a.expected.accepts(actual) {
        return Ok(Err(Conflict { stream: stream.into(), expected: a.expected, actual }));
    }
    let mut positions = Vec::with_capacity(a.events.len());
    for p in prepare(stream, actual, &last_hash, a.events) {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (stream, version, id, type, correlation_id, body, prev_hash, hash, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING position",
        )
        .bind(stream)
        .bind(p.version)
        .bind(p.envelope.id.to_string())
        .bind(&p.envelope.message_type)
        .bind(p.envelope.correlation_id.to_string())
        .bind(&p.body)
        .bind(&p.prev_hash)
        .bind(&p.hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| insert_error(e, stream))?;
        positions.push(Position { tx: 0, seq });
    }
    Ok(Ok(Appended { version: actual + a.events.len() as u64, positions }))
}

fn insert_error(e: sqlx::Error, stream: &str) -> StoreError {
    if let sqlx::Error::Database(dbe) = &e {
        if dbe.is_unique_violation() {
            return StoreError::Duplicate { id: dbe.message().to_string() };
        }
    }
    db(format!("appending to `{stream}`"))(e)
}

/// Creates `path` with mode 0600 if it is missing, or takes its group and
/// other permissions away if it is not.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
