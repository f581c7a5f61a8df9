//! The event log contract both backends fulfil: optimistic appends with the
//! caused commands in the same transaction (the outbox), stream reads, a
//! gap-safe global read order for subscribers, a wake-up hint, and the raw
//! rows the integrity check walks. The rest of the database is reached
//! through it, each part behind its own trait: the outbox (`outbox.rs`),
//! the operational tables with consumers' checkpoints (`operational.rs`)
//! and the read models (`read_model/`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use slipway_proto::Envelope;
use tokio::sync::watch;
use uuid::Uuid;

use crate::chain::ChainRow;

pub use slipway_verify::Position;

/// What the appender believes the stream's version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version (1-based).
    Exactly(u64),
}

impl ExpectedVersion {
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exactly(v) => v == actual,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exactly(v) => write!(f, "version {v}"),
        }
    }
}

/// The stream moved on since the appender read it: a rejection, not a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream `{stream}` is at version {actual}, expected {expected}")]
pub struct Conflict {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub actual: u64,
}

/// An operational failure of the store (database down, bad stored data).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{backend} event store: {context}: {source}")]
    Database {
        backend: &'static str,
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{backend} event store: applying migrations failed: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("stored event {stream}@{version} is unreadable: {reason}")]
    Corrupt { stream: String, version: u64, reason: String },
    #[error("invalid append to `{stream}`: {reason}")]
    InvalidAppend { stream: String, reason: String },
    #[error("event or command {id} is already stored")]
    Duplicate { id: String },
    /// A runtime process may not run with this database login (`pg_login`).
    #[error("PostgreSQL event store: {reason}")]
    LoginRefused { reason: String },
    /// A setting value could not be sealed or opened (`sealing`).
    #[error("setting values: {reason}")]
    Sealing { reason: String },
}

impl StoreError {
    /// The database could not be reached (no connection within the pool's
    /// timeout, or the connection broke): retrying later may work. Callers
    /// that sort failures (the CLI's exit statuses) ask this, not the text.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Database { source: sqlx::Error::PoolTimedOut | sqlx::Error::Io(_), .. })
    }

    /// A statement ran past the store's `statement_timeout` and PostgreSQL
    /// cancelled it (SQLSTATE 57014, `query_canceled`): the request asked for
    /// more than the store allows one statement, or the database was slow.
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Database { source: sqlx::Error::Database(e), .. } if e.code().as_deref() == Some("57014"))
    }
}

/// A successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: u64,
    /// The global positions of the appended events, in order.
    pub positions: Vec<Position>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: String,
    pub version: u64,
    pub envelope: Envelope,
    /// SHA-256 over the stored bytes, chained to the previous event's hash.
    pub hash: String,
    pub prev_hash: String,
    pub recorded_at: DateTime<Utc>,
}

/// `EventStore::append_each` as one append per event.
pub async fn append_one_by_one<S: EventStore + ?Sized>(store: &S, items: &[(&str, &Envelope)]) -> Vec<Result<Appended, StoreError>> {
    let mut out = Vec::with_capacity(items.len());
    for (stream, event) in items {
        out.push(match store.append(stream, ExpectedVersion::Any, std::slice::from_ref(*event), &[]).await {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(conflict)) => {
                Err(StoreError::InvalidAppend { stream: conflict.stream, reason: "an append at any version reported a conflict".into() })
            }
            Err(e) => Err(e),
        });
    }
    out
}

/// What `EventStore::stream_holds` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holds {
    pub id: bool,
    pub any_of_types: bool,
}

/// A command waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub position: Position,
    pub message_id: uuid::Uuid,
    pub queue: String,
    pub body: String,
    pub traceparent: Option<String>,
}

/// One stream's part of a multi-stream append.
#[derive(Debug, Clone, Copy)]
pub struct StreamAppend<'a> {
    pub stream: &'a str,
    pub expected: ExpectedVersion,
    pub events: &'a [Envelope],
}

/// A command to enqueue when the append commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub queue: String,
    pub envelope: Envelope,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version matches `expected`, and
    /// writes `commands` to the outbox in the same transaction. A conflict
    /// writes nothing.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
        commands: &[Outgoing],
    ) -> Result<Result<Appended, Conflict>, StoreError> {
        let one = [StreamAppend { stream, expected, events }];
        Ok(self.append_streams(&one, commands).await?.map(|mut v| v.remove(0)))
    }

    /// Appends to several streams and writes `commands`, all in one
    /// transaction: every stream's expected version must hold, or nothing
    /// is written. Results come in the order of `appends`.
    async fn append_streams(
        &self,
        appends: &[StreamAppend<'_>],
        commands: &[Outgoing],
    ) -> Result<Result<Vec<Appended>, Conflict>, StoreError>;

    /// `stream_holds` for several (stream, event id) at once, in order.
    async fn stream_holds_each(&self, asks: &[(&str, Uuid)], types: &[&str]) -> Result<Vec<Holds>, StoreError> {
        let mut out = Vec::with_capacity(asks.len());
        for (stream, id) in asks {
            out.push(self.stream_holds(stream, *id, types).await?);
        }
        Ok(out)
    }

    /// Appends one event to each of several streams at whatever version is
    /// next, as `append(stream, Any, [event], [])` each would (workers'
    /// outcomes); a store may write them in one statement. Results in
    /// order: an event already stored is `Duplicate`.
    async fn append_each(&self, items: &[(&str, &Envelope)]) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        Ok(append_one_by_one(self, items).await)
    }

    /// Events of one stream with version >= `from_version`, in order.
    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Whether `stream` holds the event `id`, and whether it holds an event
    /// of one of `types`: what a worker asks before it runs a command,
    /// answered without reading the stream's events where the store can.
    async fn stream_holds(&self, stream: &str, id: Uuid, types: &[&str]) -> Result<Holds, StoreError> {
        let history = self.read_stream(stream, 1).await?;
        Ok(Holds {
            id: history.iter().any(|r| r.envelope.id == id),
            any_of_types: history.iter().any(|r| types.contains(&r.envelope.message_type.as_str())),
        })
    }

    /// The stream's current version (0 when it does not exist).
    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError>;

    /// Up to `limit` events after `after`, in global order. Never returns an
    /// event that could later be preceded by one not yet visible.
    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Every event after `after` that is safe to read now, as one streamed
    /// query: the fast path for replays and projection rebuilds.
    fn stream_all(&self, after: Position) -> BoxStream<'_, Result<RecordedEvent, StoreError>>;

    /// A counter that moves when something may have been appended (events or
    /// outbox). Only a hint: readers poll too.
    fn wakeups(&self) -> watch::Receiver<u64>;

    /// A hint that `event` was read: a store that remembers stream heads to
    /// append without reading them may take it as its stream's head. A
    /// wrong hint costs a retry, never a wrong append.
    fn saw(&self, _event: &RecordedEvent) {}

    /// Up to `limit` events' chain fields after `after` (a stream and a
    /// version in it), ordered by stream then version: one short keyset query
    /// on the `(stream, version)` index, so a verification of any size is
    /// many statements well under an API's `statement_timeout`, holding no
    /// connection between them (`export::paged_chains`).
    async fn chain_page(&self, after: Option<(&str, u64)>, limit: usize) -> Result<Vec<ChainRow>, StoreError>;

    /// Every stored event's chain fields, ordered by stream then version, in
    /// memory: for tests and small logs. Verifications read
    /// `export::paged_chains` and hold one stream at a time.
    async fn chain_rows(&self) -> Result<Vec<ChainRow>, StoreError> {
        use futures::TryStreamExt as _;
        crate::export::paged_chains(self, crate::export::CHAIN_PAGE).try_collect().await
    }

    /// Up to `limit` events after `after` in global order, raw (bodies
    /// exactly as stored), gap-safe as `read_all`: one short query per page,
    /// so a reader holds no database connection between pages. Exports read
    /// the log this way (`export::paged_log`).
    async fn log_page(&self, after: Position, limit: usize) -> Result<Vec<crate::export::LogRow>, StoreError>;

    /// Backend name for messages ("postgres", "sqlite").
    fn backend(&self) -> &'static str;

    /// The outbox, written by appends in their transactions.
    fn outbox(&self) -> &dyn crate::outbox::Outbox;

    /// The operational tables kept in the same database.
    fn operational(&self) -> &dyn crate::operational::Operational;

    /// The read models kept in the same database.
    fn read_models(&self) -> &dyn crate::read_model::ReadModelStore;
}

/// Checks an append request before any I/O: events must belong to the stream.
pub(crate) fn validate_append(stream: &str, events: &[Envelope]) -> Result<(), StoreError> {
    if stream.is_empty() {
        return Err(StoreError::InvalidAppend { stream: stream.into(), reason: "stream name is empty".into() });
    }
    if let Some(e) = events.iter().find(|e| e.stream != stream) {
        return Err(StoreError::InvalidAppend {
            stream: stream.into(),
            reason: format!("event {} ({}) names stream `{}`", e.id, e.message_type, e.stream),
        });
    }
    Ok(())
}

/// Decodes a stored body back into its envelope.
pub(crate) fn decode_body(stream: &str, version: u64, body: &str) -> Result<Envelope, StoreError> {
    Envelope::from_json(body.as_bytes()).map_err(|e| StoreError::Corrupt { stream: stream.into(), version, reason: e.to_string() })
}

/// A stored event row as both backends read it, before decoding.
pub(crate) struct RawEvent {
    pub tx: u64,
    pub seq: i64,
    pub stream: String,
    pub version: i64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
    pub recorded_at: DateTime<Utc>,
}

impl RawEvent {
    pub(crate) fn decode(self) -> Result<RecordedEvent, StoreError> {
        let version = u64::try_from(self.version).unwrap_or(0);
        Ok(RecordedEvent {
            position: Position { tx: self.tx, seq: self.seq },
            envelope: decode_body(&self.stream, version, &self.body)?,
            stream: self.stream,
            version,
            hash: self.hash,
            prev_hash: self.prev_hash,
            recorded_at: self.recorded_at,
        })
    }
}

/// The chain fields of the events an append adds, computed before writing.
pub(crate) struct PreparedEvent<'a> {
    pub envelope: &'a Envelope,
    pub version: i64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Serialises and chains `events` onto a stream whose last event is
/// `version` with hash `last_hash`.
pub(crate) fn prepare<'a>(stream: &str, version: u64, last_hash: &str, events: &'a [Envelope]) -> Vec<PreparedEvent<'a>> {
    let mut prev = last_hash.to_string();
    events
        .iter()
        .enumerate()
        .map(|(i, envelope)| {
            let v = version + 1 + i as u64;
            let body = envelope.to_json();
            let hash = crate::chain::event_hash(&prev, stream, v, &body);
            let prepared = PreparedEvent { envelope, version: v as i64, body, prev_hash: prev.clone(), hash: hash.clone() };
            prev = hash;
            prepared
        })
        .collect()
}
