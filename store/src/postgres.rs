//! The PostgreSQL event store, for servers and build farms. Appends take a
//! per-stream advisory lock so the expected-version check and the chain's
//! previous hash are read and extended atomically; readers order by
//! `(tx, position)` and stop below the oldest running transaction, so no
//! subscriber skips an event that commits late. LISTEN/NOTIFY wakes readers;
//! polling stays the source of truth.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use chrono::{DateTime, Utc};
use slipway_proto::Envelope;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::chain::{ChainRow, GENESIS};
use crate::event_store::{
    prepare, validate_append, Appended, Conflict, EventStore, ExpectedVersion, OutboxEntry, Outgoing, Position, RawEvent,
    RecordedEvent, StoreError, StreamAppend,
};

const BACKEND: &str = "postgres";
const NOTIFY_CHANNEL: &str = "slipway_append";

fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Database { backend: BACKEND, context, source }
}

/// Hides the password of a connection URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Options for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Schema to keep the tables in (created if missing); `None` uses the default.
    pub schema: Option<String>,
    pub max_connections: u32,
    /// Apply migrations on connect.
    pub migrate: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { schema: None, max_connections: 8, migrate: true }
    }
}

pub struct PgStore {
    pool: PgPool,
    wake: watch::Receiver<u64>,
    listener: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if Arc::strong_count(&self.listener) == 1 {
            self.listener.abort();
        }
    }
}

impl Clone for PgStore {
    fn clone(&self) -> Self {
        PgStore { pool: self.pool.clone(), wake: self.wake.clone(), listener: self.listener.clone() }
    }
}

impl PgStore {
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let redacted = redact_url(url);
        let mut connect = PgConnectOptions::from_str(url).map_err(db(format!("bad database URL {redacted}")))?;
        if let Some(schema) = &options.schema {
            if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::InvalidAppend {
                    stream: String::new(),
                    reason: format!("schema name `{schema}` must be letters, digits and underscores"),
                });
            }
            let mut conn = connect.connect().await.map_err(db(format!("connecting to {redacted}")))?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut conn)
                .await
                .map_err(db(format!("creating schema {schema}")))?;
            conn.close().await.ok();
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .connect_with(connect)
            .await
            .map_err(db(format!("connecting to {redacted}")))?;
        if options.migrate {
            sqlx::migrate!("../migrations/postgres")
                .run(&pool)
                .await
                .map_err(|source| StoreError::Migrate { backend: BACKEND, source })?;
        }
        let (tx, wake) = watch::channel(0u64);
        let mut listener = PgListener::connect_with(&pool).await.map_err(db("opening the LISTEN connection"))?;
        listener.listen(NOTIFY_CHANNEL).await.map_err(db("LISTEN"))?;
        let listener = tokio::spawn(async move {
            loop {
                // A lost connection is re-established by `recv`; whatever
                // happened meanwhile is found by polling, so just wake.
                match listener.recv().await {
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Ok(PgStore { pool, wake, listener: Arc::new(listener) })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends inside the caller's transaction, so other writes can commit
    /// (or roll back) atomically with the events. Nothing is visible to
    /// subscribers until the caller commits.
    pub async fn append_in(
        tx: &mut PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
        commands: &[Outgoing],
    ) -> Result<Result<Appended, Conflict>, StoreError> {
        validate_append(stream, events)?;
        let context = || format!("appending to `{stream}`");
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(stream)
            .execute(&mut *tx)
            .await
            .map_err(db(context()))?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT version, hash FROM events WHERE stream = $1 ORDER BY version DESC LIMIT 1")
                .bind(stream)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(context()))?;
        let (actual, last_hash) = last.map_or((0, GENESIS.to_string()), |(v, h)| (v as u64, h));
        if !expected.accepts(actual) {
            return Ok(Err(Conflict { stream: stream.into(), expected, actual }));
        }
        let prepared = prepare(stream, actual, &last_hash, events);
        let mut positions = Vec::with_capacity(events.len());
        if !prepared.is_empty() {
            let rows = sqlx::query(
                "INSERT INTO events (stream, version, id, type, correlation_id, body, prev_hash, hash)
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[])
                 RETURNING tx::text AS tx, position",
            )
            .bind(stream)
            .bind(prepared.iter().map(|p| p.version).collect::<Vec<_>>())
            .bind(prepared.iter().map(|p| p.envelope.id).collect::<Vec<_>>())
            .bind(prepared.iter().map(|p| p.envelope.message_type.as_str()).collect::<Vec<_>>())
            .bind(prepared.iter().map(|p| p.envelope.correlation_id).collect::<Vec<_>>())
            .bind(prepared.iter().map(|p| p.body.as_str()).collect::<Vec<_>>())
            .bind(prepared.iter().map(|p| p.prev_hash.as_str()).collect::<Vec<_>>())
            .bind(prepared.iter().map(|p| p.hash.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) if is_violation_of(&e, "stream_version") => {
                    // Only reachable if a writer bypassed the advisory lock.
                    return Ok(Err(Conflict { stream: stream.into(), expected, actual: actual + 1 }));
                }
                Err(e) => return Err(insert_error(e, stream)),
            };
            for row in rows {
                let tx_id: &str = row.try_get("tx").map_err(db(context()))?;
                positions.push(Position { tx: parse_tx(tx_id), seq: row.try_get("position").map_err(db(context()))? });
            }
            positions.sort();
        }
        insert_outbox(&mut *tx, commands).await?;
        Ok(Ok(Appended { version: actual + events.len() as u64, positions }))
    }
}

async fn insert_outbox(tx: &mut PgConnection, commands: &[Outgoing]) -> Result<(), StoreError> {
    if commands.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (message_id, queue, body, traceparent)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])",
    )
    .bind(commands.iter().map(|c| c.envelope.id).collect::<Vec<Uuid>>())
    .bind(commands.iter().map(|c| c.queue.as_str()).collect::<Vec<_>>())
    .bind(commands.iter().map(|c| c.envelope.to_json()).collect::<Vec<_>>())
    .bind(commands.iter().map(|c| c.envelope.trace.as_ref().map(|t| t.traceparent.clone())).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .map_err(|e| insert_error(e, "the outbox"))?;
    Ok(())
}

fn parse_tx(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}

fn raw_event(row: &PgRow) -> Result<RawEvent, sqlx::Error> {
    Ok(RawEvent {
        tx: parse_tx(row.try_get::<&str, _>("tx")?),
        seq: row.try_get("position")?,
        stream: row.try_get("stream")?,
        version: row.try_get("version")?,
        body: row.try_get("body")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    })
}

const EVENT_COLUMNS: &str = "tx::text AS tx, position, stream, version, body, prev_hash, hash, recorded_at";
const STREAM_ALL: &str = "SELECT tx::text AS tx, position, stream, version, body, prev_hash, hash, recorded_at FROM events
     WHERE (tx, position) > ($1::text::xid8, $2) AND tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY tx, position";

#[async_trait]
impl EventStore for PgStore {
    async fn append_streams(
        &self,
        appends: &[StreamAppend<'_>],
        commands: &[Outgoing],
    ) -> Result<Result<Vec<Appended>, Conflict>, StoreError> {
        let context = "appending";
        let mut tx = self.pool.begin().await.map_err(db(context))?;
        // Lock streams in name order so two multi-stream appends cannot deadlock.
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by_key(|&i| appends[i].stream);
        let mut results: Vec<Option<Appended>> = vec![None; appends.len()];
        for i in order {
            let a = appends[i];
            match Self::append_in(&mut tx, a.stream, a.expected, a.events, &[]).await? {
                Ok(done) => results[i] = Some(done),
                Err(conflict) => return Ok(Err(conflict)),
            }
        }
        insert_outbox(&mut tx, commands).await?;
        tx.commit().await.map_err(db(context))?;
        Ok(Ok(results.into_iter().flatten().collect()))
    }

    async fn put_value(&self, fingerprint: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO setting_values (fingerprint, value) VALUES ($1, $2) ON CONFLICT (fingerprint) DO NOTHING")
            .bind(fingerprint)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db("storing a setting value"))?;
        Ok(())
    }

    async fn values(&self, fingerprints: &[String]) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT fingerprint, value FROM setting_values WHERE fingerprint = ANY($1)")
                .bind(fingerprints)
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading setting values"))?;
        Ok(rows.into_iter().collect())
    }

    async fn installation_key(&self) -> Result<Vec<u8>, StoreError> {
        let fresh = crate::settings::new_key();
        sqlx::query("INSERT INTO installation (id, fingerprint_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(&fresh)
            .execute(&self.pool)
            .await
            .map_err(db("creating the installation key"))?;
        let key: String = sqlx::query_scalar("SELECT fingerprint_key FROM installation WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the installation key"))?;
        Ok(key.into_bytes())
    }

    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND version >= $2 ORDER BY version"
        ))
        .bind(stream)
        .bind(from_version as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db(format!("reading `{stream}`")))?;
        rows.iter()
            .map(|r| raw_event(r).map_err(db(format!("reading `{stream}`")))?.decode())
            .collect()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream = $1")
            .bind(stream)
            .fetch_one(&self.pool)
            .await
            .map_err(db(format!("reading the version of `{stream}`")))?;
        Ok(v.unwrap_or(0) as u64)
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE (tx, position) > ($1::text::xid8, $2)
               AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY tx, position LIMIT $3"
        ))
        .bind(after.tx.to_string())
        .bind(after.seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db(format!("reading all events after {after}")))?;
        rows.iter().map(|r| raw_event(r).map_err(db("decoding an event row"))?.decode()).collect()
    }

    fn stream_all(&self, after: Position) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        sqlx::query(STREAM_ALL)
            .bind(after.tx.to_string())
            .bind(after.seq)
            .fetch(&self.pool)
            .map(|row| raw_event(&row.map_err(db("streaming events"))?).map_err(db("decoding an event row"))?.decode())
            .boxed()
    }

    async fn read_outbox(&self, after: Position, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT tx::text AS tx, position, message_id, queue, body, traceparent FROM outbox
             WHERE (tx, position) > ($1::text::xid8, $2)
               AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY tx, position LIMIT $3",
        )
        .bind(after.tx.to_string())
        .bind(after.seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db(format!("reading the outbox after {after}")))?;
        rows.iter()
            .map(|row| {
                Ok(OutboxEntry {
                    position: Position { tx: parse_tx(row.try_get("tx")?), seq: row.try_get("position")? },
                    message_id: row.try_get("message_id")?,
                    queue: row.try_get("queue")?,
                    body: row.try_get("body")?,
                    traceparent: row.try_get("traceparent")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("decoding an outbox row"))
    }

    async fn prune_outbox(&self, upto: Position) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM outbox WHERE (tx, position) <= ($1::text::xid8, $2)")
            .bind(upto.tx.to_string())
            .bind(upto.seq)
            .execute(&self.pool)
            .await
            .map_err(db("pruning the outbox"))?;
        Ok(done.rows_affected())
    }

    async fn load_checkpoint(&self, consumer: &str) -> Result<Position, StoreError> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT tx::text, position FROM checkpoints WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await
                .map_err(db(format!("loading checkpoint `{consumer}`")))?;
        Ok(row.map_or(Position::START, |(tx, seq)| Position { tx: parse_tx(&tx), seq }))
    }

    async fn save_checkpoint(&self, consumer: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (consumer, tx, position) VALUES ($1, $2::text::xid8, $3)
             ON CONFLICT (consumer) DO UPDATE SET tx = EXCLUDED.tx, position = EXCLUDED.position, updated_at = clock_timestamp()",
        )
        .bind(consumer)
        .bind(position.tx.to_string())
        .bind(position.seq)
        .execute(&self.pool)
        .await
        .map_err(db(format!("saving checkpoint `{consumer}`")))?;
        Ok(())
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.clone()
    }

    async fn chain_rows(&self) -> Result<Vec<ChainRow>, StoreError> {
        let rows = sqlx::query("SELECT stream, version, body, prev_hash, hash FROM events ORDER BY stream, version")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading the hash chains"))?;
        rows.iter()
            .map(|r| {
                Ok(ChainRow {
                    stream: r.try_get("stream")?,
                    version: r.try_get::<i64, _>("version")? as u64,
                    body: r.try_get("body")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("decoding a chain row"))
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

fn is_violation_of(e: &sqlx::Error, constraint_part: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation() && d.constraint().unwrap_or("").contains(constraint_part))
}

/// A unique violation on an id means the message was already stored.
fn insert_error(e: sqlx::Error, stream: &str) -> StoreError {
    if let sqlx::Error::Database(dbe) = &e {
        if dbe.is_unique_violation() {
            return StoreError::Duplicate { id: dbe.message().to_string() };
        }
    }
    db(format!("appending to `{stream}`"))(e)
}
