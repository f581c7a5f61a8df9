//! The PostgreSQL event store, for servers and build farms. Appends take a
//! per-stream advisory lock so the expected-version check and the chain's
//! previous hash are read and extended atomically. A store remembers the
//! head (version, hash) of the streams it appended to; when the expected
//! version matches a remembered head, the lock and the insert go in one
//! statement without reading the head, and the unique (stream, version)
//! index turns a stale head into a conflict (see `append_fast`). Readers order by
//! `(tx, position)` and stop below the oldest running transaction, so no
//! subscriber skips an event that commits late. LISTEN/NOTIFY wakes readers
//! (the store notifies after its appends commit: `send_hints`); polling
//! stays the source of truth.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use slipway_proto::Envelope;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres, Row};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::chain::{ChainRow, GENESIS};
use crate::dialect::{parse_tx, Tables};
use crate::event_store::{
    prepare, validate_append, Appended, Conflict, EventStore, ExpectedVersion, Holds, Outgoing, Position, RawEvent, RecordedEvent,
    StoreError, StreamAppend,
};

const BACKEND: &str = <Postgres as crate::dialect::Dialect>::BACKEND;

/// Writes run on connections of their own that plan each statement once:
/// appends, the look into streams workers make before appending an outcome
/// (`stream_holds_each`), and the read models' batches. PostgreSQL plans a
/// prepared statement anew for every execution while it judges a plan made
/// for the given values cheaper than a generic one, and with arrays of rows
/// (`unnest`) it always does: it knows a given array's length, and assumes
/// ten rows for an unknown one. Planning a one-event append (a CTE over
/// several arrays) took 0.11 ms and running it 0.07 ms; the look, 0.06 ms
/// and 0.02 ms. These statements find their rows by unique keys whatever
/// the values, so a generic plan is always the right one. Reads keep the
/// server's default, on the store's main pool.
const GENERIC_PLANS: (&str, &str) = ("plan_cache_mode", "force_generic_plan");
const NOTIFY_CHANNEL: &str = "slipway_append";

fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    crate::dialect::db::<Postgres>(context)
}

pub use crate::redact::redact_url;

/// Options for [`PgStore::connect`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Schema to keep the tables in (created if missing); `None` uses the default.
    pub schema: Option<String>,
    pub max_connections: u32,
    /// Apply migrations on connect.
    pub migrate: bool,
    /// The role the store's connections act as once migrated (`SET ROLE`):
    /// by default `slipway_writer`, which may INSERT and SELECT events and
    /// nothing more. `None` keeps the login role.
    pub role: Option<String>,
    /// A runtime process: it never migrates nor creates the schema, and
    /// refuses a login that is a superuser, owns the event store, or finds
    /// it at another migration than this build's (`pg_login`).
    pub runtime: bool,
    /// The longest any one statement on the store's connections may run
    /// (PostgreSQL's `statement_timeout`, set when each connection starts,
    /// under whatever role it acts as); a statement past it fails with
    /// `StoreError::is_timeout`. `None` leaves the server's setting (no limit
    /// by default). The HTTP API's own store sets one, so a slow request
    /// cannot hold a connection for long (`API_STATEMENT_TIMEOUT` in the CLI).
    pub statement_timeout: Option<std::time::Duration>,
    /// What the store's connections call themselves (`application_name`,
    /// shown in `pg_stat_activity`); `None` leaves the driver's default.
    pub application_name: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            max_connections: 8,
            migrate: true,
            role: Some(WRITER_ROLE.into()),
            runtime: false,
            statement_timeout: None,
            application_name: None,
        }
    }
}

/// The application's role (created by the first migration).
pub const WRITER_ROLE: &str = "slipway_writer";
/// The role whose members may record API tokens (migration 0009).
pub const TOKEN_ISSUER_ROLE: &str = "slipway_token_issuer";

/// A login `slipway db migrate` lets the runtime processes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The server's or an operator's login: the writer grants, and it may
    /// issue API tokens.
    Issuer(String),
    /// A worker host's login: the writer grants, no tokens.
    Worker(String),
}

impl Grant {
    pub fn role(&self) -> &str {
        match self {
            Grant::Issuer(role) | Grant::Worker(role) => role,
        }
    }
}

pub struct PgStore {
    /// The pool, with the outbox and the operational tables on it.
    tables: Tables<Postgres>,
    /// The connections writes run on (`GENERIC_PLANS`).
    writes: PgPool,
    wake: watch::Receiver<u64>,
    /// Wakes this process's readers (`wake`) at once, and the LISTEN loop
    /// wakes them on hints from any process.
    woken: Arc<watch::Sender<u64>>,
    /// Asks `send_hints` for a wake-up hint (one for all asked meanwhile).
    hint: Arc<Notify>,
    /// The LISTEN loop and `send_hints`, stopped with the last clone.
    tasks: Arc<Background>,
    heads: Arc<Heads>,
}

/// Tasks a store runs while any clone of it lives.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// How often prepared statements were planned: generically, or for the
/// values given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCounts {
    pub generic: i64,
    pub custom: i64,
}

/// A stream's last event as this store committed it: a hint only. Events are
/// never changed or removed, so a remembered head stays a true (if possibly
/// old) state of its stream; `append_fast` checks it in the database anyway.
#[derive(Debug, Clone)]
struct Head {
    version: u64,
    hash: String,
}

/// Remembered heads, bounded: when full it starts over (a miss only costs
/// the locked path once).
#[derive(Debug, Default)]
struct Heads(Mutex<HashMap<String, Head>>);

const HEADS_LIMIT: usize = 16_384;

impl Heads {
    fn get(&self, stream: &str) -> Option<Head> {
        self.0.lock().ok()?.get(stream).cloned()
    }

    fn put(&self, stream: &str, head: Head) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= HEADS_LIMIT && !map.contains_key(stream) {
                map.clear();
            }
            map.insert(stream.to_owned(), head);
        }
    }

    /// Remembers a head read elsewhere, unless a later one is known.
    fn put_newer(&self, stream: &str, head: Head) {
        if self.get(stream).is_none_or(|known| known.version < head.version) {
            self.put(stream, head);
        }
    }

    fn forget(&self, stream: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(stream);
        }
    }

    /// The head to append at without reading it, if `expected` allows one:
    /// `Exactly(v)` with a remembered head at `v`; `Any` with any remembered
    /// head; `NoStream` (or `Exactly(0)`) with none remembered: the genesis.
    fn fast_head(&self, stream: &str, expected: ExpectedVersion) -> Option<Head> {
        let known = self.get(stream);
        match (expected, known) {
            (ExpectedVersion::Any, known) => known,
            (ExpectedVersion::Exactly(v), Some(head)) if head.version == v && v > 0 => Some(head),
            (ExpectedVersion::NoStream | ExpectedVersion::Exactly(0), None) => Some(Head { version: 0, hash: GENESIS.to_string() }),
            _ => None,
        }
    }
}

/// How a fast append ended.
enum Fast {
    Appended(Appended, Head),
    /// The stream is past the head we appended at (unique (stream, version)
    /// refused a row); the transaction is aborted.
    Taken,
    /// The head we appended at is not in the database; nothing was written
    /// and the transaction is still usable.
    Missing,
}

/// How one attempt of `append_streams` ended.
enum Attempt {
    Done(Result<Vec<Appended>, Conflict>),
    /// A remembered head of an `Any` append was stale: try again, reading heads.
    Retry,
}

impl Clone for PgStore {
    fn clone(&self) -> Self {
        PgStore {
            tables: self.tables.clone(),
            writes: self.writes.clone(),
            wake: self.wake.clone(),
            woken: self.woken.clone(),
            hint: self.hint.clone(),
            tasks: self.tasks.clone(),
            heads: self.heads.clone(),
        }
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
        }
        // One connection first, alone: a server that refuses, or a login it
        // turns down, fails here at once with its own error, where the
        // pool would retry until its acquire timeout (30 s) and then say
        // only that it timed out.
        let mut first = connect.connect().await.map_err(db(format!("connecting to {redacted}")))?;
        if let (Some(schema), false) = (&options.schema, options.runtime) {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut first)
                .await
                .map_err(db(format!("creating schema {schema}")))?;
        }
        first.close().await.ok();
        if let Some(schema) = &options.schema {
            connect = connect.options([("search_path", schema.as_str())]);
        }
        if let Some(name) = &options.application_name {
            connect = connect.application_name(name);
        }
        if let Some(limit) = options.statement_timeout {
            // A startup option of every connection (as `search_path`), so
            // it holds from the first statement on, whichever role the
            // connection then acts as. At least 1 ms: 0 would mean none.
            let ms = limit.as_millis().clamp(1, i32::MAX as u128);
            connect = connect.options([("statement_timeout", ms.to_string())]);
        }
        let size = options.max_connections.max(2);
        let pool = pool_options(size).connect_with(connect.clone()).await.map_err(db(format!("connecting to {redacted}")))?;
        if options.migrate && !options.runtime {
            crate::pg_login::MIGRATOR.run(&pool).await.map_err(|source| StoreError::Migrate { backend: BACKEND, source })?;
        }
        if options.runtime {
            let login = crate::pg_login::login(&pool).await?;
            let schema = options.schema.as_deref().unwrap_or("public");
            if let Some(reason) = crate::pg_login::refusal(&login, schema, crate::pg_login::latest()) {
                pool.close().await;
                return Err(StoreError::LoginRefused { reason });
            }
        }
        // Wake-up hints need no role: NOTIFY is per database.
        let hints = connect.clone();
        let serving = match &options.role {
            None => connect,
            Some(role) => connect.options([("role", role.as_str())]),
        };
        let writes = pool_options(size).connect_lazy_with(serving.clone().options([GENERIC_PLANS]));
        let pool = match &options.role {
            None => pool,
            Some(role) => {
                pool.close().await;
                pool_options(size).connect_with(serving).await.map_err(db(format!(
                    "connecting to {redacted} as role {role} (the login role must be a member: GRANT {role} TO <login role>)"
                )))?
            }
        };
        let (woken, wake) = watch::channel(0u64);
        let woken = Arc::new(woken);
        let tx = woken.clone();
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
        let hint = Arc::new(Notify::new());
        let hinter = tokio::spawn(send_hints(hints, hint.clone()));
        let tasks = Arc::new(Background(vec![listener, hinter]));
        Ok(PgStore { tables: Tables::new(pool), writes, wake, woken, hint, tasks, heads: Arc::default() })
    }

    /// Wakes the readers of this database (subscriptions, relays): this
    /// process's at once, other processes' through a hint within
    /// `HINT_SPACING`. After a write this store did not make itself, such
    /// as `append_in`'s, once its transaction has committed. Every append
    /// of the store's own does this.
    pub fn wake_readers(&self) {
        self.woken.send_modify(|n| *n = n.wrapping_add(1));
        self.hint.notify_one();
    }

    /// `slipway db migrate`: applies this build's migrations to `schema` (or
    /// the default) as the login in `url` — the owner's credentials, used for
    /// this step only — and lets each of `grants` act as the writer role;
    /// a `Grant::Issuer` login (the server's, an operator's CLI) may also
    /// record API tokens, a `Grant::Worker` login (a worker host's) may not.
    /// Returns the migration level.
    pub async fn migrate(url: &str, schema: Option<&str>, grants: &[Grant]) -> Result<i64, StoreError> {
        for grant in grants {
            let role = grant.role();
            if role.is_empty() || !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StoreError::LoginRefused { reason: format!("role name `{role}` must be letters, digits and underscores") });
            }
        }
        let options = PgOptions { schema: schema.map(str::to_string), max_connections: 2, migrate: true, role: None, ..Default::default() };
        let store = PgStore::connect(url, options).await?;
        for grant in grants {
            let role = grant.role();
            let roles: &[&str] = match grant {
                Grant::Issuer(_) => &[WRITER_ROLE, TOKEN_ISSUER_ROLE],
                Grant::Worker(_) => &[WRITER_ROLE],
            };
            for granted in roles {
                sqlx::query(&format!("GRANT {granted} TO \"{role}\"")).execute(store.pool()).await.map_err(db(format!(
                    "granting {granted} to {role} (does the login role exist? CREATE ROLE {role} LOGIN PASSWORD ...)"
                )))?;
            }
            if let Grant::Worker(_) = grant {
                // A login that was an issuer before is one no longer.
                sqlx::query(&format!("REVOKE {TOKEN_ISSUER_ROLE} FROM \"{role}\""))
                    .execute(store.pool())
                    .await
                    .map_err(db(format!("revoking {TOKEN_ISSUER_ROLE} from {role}")))?;
            }
        }
        let login = crate::pg_login::login(store.pool()).await?;
        Ok(login.migration.unwrap_or(0))
    }

    /// Setting values sealed (and opened) this way from now on.
    pub fn sealed(mut self, sealing: crate::sealing::Sealing) -> Self {
        self.tables.sealing = sealing;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.tables.pool
    }

    /// The connections writes run on (see `GENERIC_PLANS`).
    pub(crate) fn writes(&self) -> &PgPool {
        &self.writes
    }

    /// How often the statements prepared on the write connections were
    /// planned, generically and for given values (see `GENERIC_PLANS`),
    /// summed over the connections open now (PostgreSQL counts per
    /// connection: each is held while the others are read, so every one is
    /// counted once). For tests and diagnosis; run it while the store is idle.
    pub async fn write_plans(&self) -> Result<PlanCounts, StoreError> {
        let mut held = Vec::new();
        for _ in 0..self.writes.size() {
            held.push(self.writes.acquire().await.map_err(db("reading the write statements' plan counts"))?);
        }
        let mut counts = PlanCounts { generic: 0, custom: 0 };
        for conn in &mut held {
            let (generic, custom): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT sum(generic_plans)::bigint, sum(custom_plans)::bigint FROM pg_prepared_statements
                 WHERE statement NOT LIKE '%pg_prepared_statements%'",
            )
            .fetch_one(&mut **conn)
            .await
            .map_err(db("reading the write statements' plan counts"))?;
            counts.generic += generic.unwrap_or(0);
            counts.custom += custom.unwrap_or(0);
        }
        Ok(counts)
    }

    /// Appends inside the caller's transaction, so other writes can commit
    /// (or roll back) atomically with the events. Nothing is visible to
    /// subscribers until the caller commits. Always takes the locked path
    /// (the store cannot know whether the caller commits).
    pub async fn append_in(
        tx: &mut PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[Envelope],
        commands: &[Outgoing],
    ) -> Result<Result<Appended, Conflict>, StoreError> {
        validate_append(stream, events)?;
        let appended = match append_locked(&mut *tx, stream, expected, events).await? {
            Ok((appended, _head)) => appended,
            Err(conflict) => return Ok(Err(conflict)),
        };
        insert_outbox(&mut *tx, commands).await?;
        Ok(Ok(appended))
    }

    /// One transaction of `append_streams`; remembered heads are used only
    /// if `use_heads`.
    async fn try_append_streams(
        &self,
        appends: &[StreamAppend<'_>],
        commands: &[Outgoing],
        use_heads: bool,
    ) -> Result<Attempt, StoreError> {
        let context = "appending";
        let mut tx = self.writes.begin().await.map_err(db(context))?;
        // Lock streams in name order so two multi-stream appends cannot deadlock.
        let mut order: Vec<usize> = (0..appends.len()).collect();
        order.sort_by_key(|&i| appends[i].stream);
        let mut results: Vec<Option<(Appended, Head)>> = vec![None; appends.len()];
        for i in order {
            let a = appends[i];
            validate_append(a.stream, a.events)?;
            let fast = if use_heads && !a.events.is_empty() { self.heads.fast_head(a.stream, a.expected) } else { None };
            if let Some(head) = fast {
                match append_fast(&mut tx, a.stream, &head, a.events).await? {
                    Fast::Appended(done, head) => {
                        results[i] = Some((done, head));
                        continue;
                    }
                    Fast::Taken => {
                        self.heads.forget(a.stream);
                        tx.rollback().await.ok();
                        if a.expected == ExpectedVersion::Any {
                            return Ok(Attempt::Retry);
                        }
                        // Versions only grow: the stream is now past `head`,
                        // which was the only version `expected` accepted.
                        let actual = self.stream_version(a.stream).await?;
                        if a.expected.accepts(actual) {
                            return Ok(Attempt::Retry);
                        }
                        return Ok(Attempt::Done(Err(Conflict { stream: a.stream.into(), expected: a.expected, actual })));
                    }
                    Fast::Missing => self.heads.forget(a.stream),
                }
            }
            match append_locked(&mut tx, a.stream, a.expected, a.events).await? {
                Ok(done) => results[i] = Some(done),
                Err(conflict) => {
                    self.heads.forget(a.stream);
                    return Ok(Attempt::Done(Err(conflict)));
                }
            }
        }
        insert_outbox(&mut tx, commands).await?;
        if let Err(e) = tx.commit().await {
            for a in appends {
                self.heads.forget(a.stream);
            }
            return Err(db(context)(e));
        }
        // Committed: these heads are now true states of their streams.
        let mut appended = Vec::with_capacity(appends.len());
        for (a, (done, head)) in appends.iter().zip(results.into_iter().flatten()) {
            self.heads.put(a.stream, head);
            appended.push(done);
        }
        Ok(Attempt::Done(Ok(appended)))
    }
}

impl PgStore {
    /// One event on each of several distinct streams at whatever version is
    /// next (workers' outcomes): one statement, no transaction around it.
    /// Heads are read and chain hashes computed in SQL (`AT_NEXT`, the same
    /// formula as `chain::event_hash`; the integrity tests verify the chains
    /// it writes). Its snapshot is taken before the locks are granted, so an
    /// append that committed meanwhile shows as a taken version: try again,
    /// a few times. `None`: a stream appears twice, an event is already
    /// stored, or the versions stayed taken; appending one by one says which.
    async fn append_at_next(&self, items: &[(&str, &Envelope)]) -> Result<Option<Vec<Appended>>, StoreError> {
        // Locks in name order, as every appender takes them.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_unstable_by_key(|&i| items[i].0);
        if order.windows(2).any(|w| items[w[0]].0 == items[w[1]].0) {
            return Ok(None);
        }
        let bodies: Vec<String> = order.iter().map(|&i| items[i].1.to_json()).collect();
        for _ in 0..4 {
            let rows = sqlx::query(AT_NEXT)
                .bind(order.iter().map(|&i| items[i].0).collect::<Vec<_>>())
                .bind(order.iter().map(|&i| items[i].1.id).collect::<Vec<_>>())
                .bind(order.iter().map(|&i| items[i].1.message_type.as_str()).collect::<Vec<_>>())
                .bind(order.iter().map(|&i| items[i].1.correlation_id).collect::<Vec<_>>())
                .bind(&bodies)
                .bind(GENESIS)
                .fetch_all(&self.writes)
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) if is_violation_of(&e, "stream_version") => continue,
                Err(e) if matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) => return Ok(None),
                Err(e) => return Err(insert_error(e, items.first().map_or("", |i| i.0))),
            };
            let mut appended: HashMap<String, Appended> = HashMap::new();
            for row in &rows {
                let context = || "appending outcomes".to_string();
                let stream: String = row.try_get("stream").map_err(db(context()))?;
                let version: i64 = row.try_get("version").map_err(db(context()))?;
                let hash: String = row.try_get("hash").map_err(db(context()))?;
                let position = position_of(row).map_err(db(context()))?;
                self.heads.put(&stream, Head { version: version as u64, hash });
                appended.insert(stream, Appended { version: version as u64, positions: vec![position] });
            }
            let out: Option<Vec<Appended>> = items.iter().map(|(stream, _)| appended.remove(*stream)).collect();
            return match out {
                Some(out) => Ok(Some(out)),
                None => Err(StoreError::InvalidAppend {
                    stream: items.first().map_or_else(String::new, |i| i.0.to_owned()),
                    reason: "the database did not return every appended event".into(),
                }),
            };
        }
        Ok(None)
    }
}

/// `AT_NEXT`: each stream's advisory lock (the streams $1 come sorted by
/// name), so locked appenders, which read a head and then insert, never
/// race it; each head or the genesis ($6); each event at the next version,
/// chained as `chain::event_hash` does: sha256 of prev_hash, stream,
/// version and body joined by newlines.
const AT_NEXT: &str = "WITH input AS MATERIALIZED (
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::text[]) AS t(stream, id, type, correlation_id, body)),
     locked AS MATERIALIZED (
         SELECT count(*) AS n FROM (SELECT pg_advisory_xact_lock(hashtextextended(stream, 0)) FROM input) l),
     heads AS MATERIALIZED (
         SELECT i.*, coalesce(h.version, 0) AS v, coalesce(h.hash, $6::text) AS hh
         FROM locked CROSS JOIN input i
         LEFT JOIN LATERAL (SELECT version, hash FROM events WHERE stream = i.stream ORDER BY version DESC LIMIT 1) h ON true)
     INSERT INTO events (stream, version, id, type, correlation_id, body, prev_hash, hash)
     SELECT stream, v + 1, id, type, correlation_id, body, hh,
            encode(sha256(convert_to(hh || E'\\n' || stream || E'\\n' || (v + 1)::text || E'\\n' || body, 'UTF8')), 'hex')
     FROM heads
     RETURNING stream, version, hash, tx::text AS tx, position";

impl PgStore {
    /// Streams at remembered heads, with their commands, in one statement
    /// and no transaction around it (`AT_HEADS`): most of the engine's
    /// appends, alone or batched. `None` when a stream has no head to use
    /// (or no events to check a head by), or a head was stale: the
    /// transactional path decides then, and reports any conflict.
    async fn append_at_heads(&self, appends: &[StreamAppend<'_>], commands: &[Outgoing]) -> Result<Option<Vec<Appended>>, StoreError> {
        let mut heads = Vec::with_capacity(appends.len());
        for a in appends {
            validate_append(a.stream, a.events)?;
            let head = match a.events {
                [] => None,
                _ => self.heads.fast_head(a.stream, a.expected),
            };
            let Some(head) = head else { return Ok(None) };
            heads.push(head);
        }
        let mut names: Vec<&str> = appends.iter().map(|a| a.stream).collect();
        // Locks are taken in name order (as every appender does), and a
        // stream may appear once.
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Ok(None);
        }
        let prepared: Vec<_> = appends.iter().zip(&heads).map(|(a, h)| prepare(a.stream, h.version, &h.hash, a.events)).collect();
        let rows = prepared.iter().zip(appends).flat_map(|(p, a)| p.iter().map(move |p| (a.stream, p)));
        let (mut streams, mut versions, mut ids, mut types, mut correlations, mut bodies, mut prevs, mut hashes) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (stream, p) in rows {
            streams.push(stream);
            versions.push(p.version);
            ids.push(p.envelope.id);
            types.push(p.envelope.message_type.as_str());
            correlations.push(p.envelope.correlation_id);
            bodies.push(p.body.as_str());
            prevs.push(p.prev_hash.as_str());
            hashes.push(p.hash.as_str());
        }
        let mut by_name: Vec<(&str, &Head)> = appends.iter().map(|a| a.stream).zip(&heads).collect();
        by_name.sort_unstable_by_key(|(stream, _)| *stream);
        let sql = if commands.is_empty() { AT_HEADS } else { AT_HEADS_WITH_COMMANDS };
        let query = sqlx::query(sql)
            .bind(streams)
            .bind(versions)
            .bind(ids)
            .bind(types)
            .bind(correlations)
            .bind(bodies)
            .bind(prevs)
            .bind(hashes)
            .bind(by_name.iter().map(|(s, _)| *s).collect::<Vec<_>>())
            .bind(by_name.iter().map(|(_, h)| h.version as i64).collect::<Vec<_>>())
            .bind(by_name.iter().map(|(_, h)| h.hash.as_str()).collect::<Vec<_>>());
        let query = if commands.is_empty() { query } else { bind_outbox(query, commands) };
        let rows = query.fetch_all(&self.writes).await;
        let rows = match rows {
            Ok(rows) if !rows.is_empty() => rows,
            Ok(_) => {
                // A head is not stored (nothing was written).
                appends.iter().for_each(|a| self.heads.forget(a.stream));
                return Ok(None);
            }
            Err(e) if is_violation_of(&e, "stream_version") => {
                // A stream is past its head (nothing was written).
                appends.iter().for_each(|a| self.heads.forget(a.stream));
                return Ok(None);
            }
            Err(e) => return Err(insert_error(e, appends.first().map_or("", |a| a.stream))),
        };
        let mut positions: HashMap<String, Vec<Position>> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let stream: String = row.try_get("stream").map_err(db("appending"))?;
            let tx = parse_tx(row.try_get("tx").map_err(db("appending"))?);
            let seqs: Vec<i64> = row.try_get("positions").map_err(db("appending"))?;
            positions.insert(stream, seqs.into_iter().map(|seq| Position { tx, seq }).collect());
        }
        let mut appended = Vec::with_capacity(appends.len());
        for ((a, head), p) in appends.iter().zip(heads).zip(&prepared) {
            let version = head.version + a.events.len() as u64;
            let hash = p.last().map_or(head.hash, |p| p.hash.clone());
            self.heads.put(a.stream, Head { version, hash });
            appended.push(Appended { version, positions: positions.remove(a.stream).unwrap_or_default() });
        }
        Ok(Some(appended))
    }
}

/// `AT_HEADS`: every stream's advisory lock, in the order given ($9, sorted
/// by name); every head ($9, $10, $11) stored (version 0: the genesis);
/// then the events ($1..$8) and, in `AT_HEADS_WITH_COMMANDS`, the outbox
/// rows ($12..$15), or nothing. A stream past its head makes the unique
/// (stream, version) index refuse the rows, and the statement with them.
/// It returns one row per stream, its positions in an array and the
/// transaction once (a row per event cost a few percent of a 100-event
/// append). Without commands there is no outbox insert at all.
macro_rules! at_heads {
    ($outbox:literal) => {
        concat!(
            "WITH locked AS MATERIALIZED (
                 SELECT count(*) AS n FROM (SELECT pg_advisory_xact_lock(hashtextextended(s, 0)) FROM unnest($9::text[]) AS s) l),
             ok AS MATERIALIZED (
                 SELECT coalesce(bool_and(h.v = 0 OR EXISTS (SELECT 1 FROM events e WHERE e.stream = h.s AND e.version = h.v AND e.hash = h.hh)), false) AS ok
                 FROM locked, unnest($9::text[], $10::bigint[], $11::text[]) AS h(s, v, hh)),
             ins AS (
                 INSERT INTO events (stream, version, id, type, correlation_id, body, prev_hash, hash)
                 SELECT u.* FROM ok,
                     unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[]) AS u
                 WHERE ok.ok
                 RETURNING stream, position)",
            $outbox,
            "
             SELECT stream, pg_current_xact_id()::text AS tx, array_agg(position ORDER BY position) AS positions
             FROM ins GROUP BY stream"
        )
    };
}
const AT_HEADS: &str = at_heads!("");
const AT_HEADS_WITH_COMMANDS: &str = at_heads!(
    ",
     ob AS (
         INSERT INTO outbox (message_id, queue, body, traceparent)
         SELECT * FROM unnest($12::uuid[], $13::text[], $14::text[], $15::text[]) WHERE EXISTS (SELECT 1 FROM ins)
         ON CONFLICT (message_id) DO NOTHING)"
);

/// Checks the expected version under the stream's advisory lock, reading the
/// head, and appends. Returns the new head with the result.
async fn append_locked(
    tx: &mut PgConnection,
    stream: &str,
    expected: ExpectedVersion,
    events: &[Envelope],
) -> Result<Result<(Appended, Head), Conflict>, StoreError> {
    let context = || format!("appending to `{stream}`");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(stream).execute(&mut *tx).await.map_err(db(context()))?;
    let last: Option<(i64, String)> = sqlx::query_as("SELECT version, hash FROM events WHERE stream = $1 ORDER BY version DESC LIMIT 1")
        .bind(stream)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(context()))?;
    let (actual, last_hash) = last.map_or((0, GENESIS.to_string()), |(v, h)| (v as u64, h));
    if !expected.accepts(actual) {
        return Ok(Err(Conflict { stream: stream.into(), expected, actual }));
    }
    let prepared = prepare(stream, actual, &last_hash, events);
    let head = Head { version: actual + events.len() as u64, hash: prepared.last().map_or(last_hash, |p| p.hash.clone()) };
    let mut positions = Vec::new();
    if !prepared.is_empty() {
        let rows = insert_events(INSERT_EVENTS, tx, stream, &prepared, None).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if is_violation_of(&e, "stream_version") => {
                // Only reachable if a writer bypassed the advisory lock.
                return Ok(Err(Conflict { stream: stream.into(), expected, actual: actual + 1 }));
            }
            Err(e) => return Err(insert_error(e, stream)),
        };
        positions = positions_of(&rows).map_err(db(context()))?;
    }
    Ok(Ok((Appended { version: head.version, positions }, head)))
}

/// Appends at a remembered head without reading the stream: the advisory
/// lock (so locked appenders, which read the head, never race this one),
/// a check that the head event is stored with the remembered hash, and the
/// insert, in one statement. It is safe with a stale head: the head event
/// exists and is immutable, so if no later version exists either, it is the
/// stream's head and the chain is right; if a later version exists, the
/// unique (stream, version) index refuses the rows and nothing is written.
async fn append_fast(tx: &mut PgConnection, stream: &str, head: &Head, events: &[Envelope]) -> Result<Fast, StoreError> {
    let prepared = prepare(stream, head.version, &head.hash, events);
    let rows = insert_events(INSERT_EVENTS_AT_HEAD, tx, stream, &prepared, Some(head)).await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if is_violation_of(&e, "stream_version") => return Ok(Fast::Taken),
        Err(e) => return Err(insert_error(e, stream)),
    };
    if rows.is_empty() {
        return Ok(Fast::Missing);
    }
    let positions = positions_of(&rows).map_err(db(format!("appending to `{stream}`")))?;
    let version = head.version + events.len() as u64;
    let hash = prepared.last().map_or_else(|| head.hash.clone(), |p| p.hash.clone());
    Ok(Fast::Appended(Appended { version, positions }, Head { version, hash }))
}

const INSERT_EVENTS: &str = "INSERT INTO events (stream, version, id, type, correlation_id, body, prev_hash, hash)
     SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[])
     RETURNING tx::text AS tx, position";

/// `INSERT_EVENTS` under the stream's advisory lock (taken once, by the
/// materialised CTE), only if the head ($9, $10) is stored (or is the genesis).
const INSERT_EVENTS_AT_HEAD: &str = "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtextextended($1, 0)))
     INSERT INTO events (stream, version, id, type, correlation_id, body, prev_hash, hash)
     SELECT $1, u.* FROM locked,
         UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[]) AS u
     WHERE $9::bigint = 0 OR EXISTS (SELECT 1 FROM events WHERE stream = $1 AND version = $9::bigint AND hash = $10::text)
     RETURNING tx::text AS tx, position";

const INSERT_OUTBOX: &str = "INSERT INTO outbox (message_id, queue, body, traceparent)
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
     ON CONFLICT (message_id) DO NOTHING";

async fn insert_events(
    sql: &str,
    tx: &mut PgConnection,
    stream: &str,
    prepared: &[crate::event_store::PreparedEvent<'_>],
    head: Option<&Head>,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let mut query = events_query(sql, stream, prepared);
    if let Some(head) = head {
        query = query.bind(head.version as i64).bind(head.hash.as_str());
    }
    query.fetch_all(&mut *tx).await
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The events' columns as arrays: $1 the stream, $2..$8 the rows.
fn events_query<'q>(sql: &'q str, stream: &'q str, prepared: &'q [crate::event_store::PreparedEvent<'_>]) -> PgQuery<'q> {
    sqlx::query(sql)
        .bind(stream)
        .bind(prepared.iter().map(|p| p.version).collect::<Vec<_>>())
        .bind(prepared.iter().map(|p| p.envelope.id).collect::<Vec<_>>())
        .bind(prepared.iter().map(|p| p.envelope.message_type.as_str()).collect::<Vec<_>>())
        .bind(prepared.iter().map(|p| p.envelope.correlation_id).collect::<Vec<_>>())
        .bind(prepared.iter().map(|p| p.body.as_str()).collect::<Vec<_>>())
        .bind(prepared.iter().map(|p| p.prev_hash.as_str()).collect::<Vec<_>>())
        .bind(prepared.iter().map(|p| p.hash.as_str()).collect::<Vec<_>>())
}

/// The outbox rows' columns as the next four arrays.
fn bind_outbox<'q>(query: PgQuery<'q>, commands: &[Outgoing]) -> PgQuery<'q> {
    query
        .bind(commands.iter().map(|c| c.envelope.id).collect::<Vec<Uuid>>())
        .bind(commands.iter().map(|c| c.queue.clone()).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.envelope.to_json()).collect::<Vec<_>>())
        .bind(commands.iter().map(|c| c.envelope.trace.as_ref().map(|t| t.traceparent.clone())).collect::<Vec<_>>())
}

fn positions_of(rows: &[PgRow]) -> Result<Vec<Position>, sqlx::Error> {
    let mut positions = rows.iter().map(position_of).collect::<Result<Vec<_>, sqlx::Error>>()?;
    positions.sort();
    Ok(positions)
}

/// The global position of a row that returned `tx` (as text) and `position`.
fn position_of(row: &PgRow) -> Result<Position, sqlx::Error> {
    Ok(Position { tx: parse_tx(row.try_get("tx")?), seq: row.try_get("position")? })
}

/// A command sent again under its id (a re-dispatch) while the first
/// sending still waits in the outbox is that same sending: not inserted twice.
async fn insert_outbox(tx: &mut PgConnection, commands: &[Outgoing]) -> Result<(), StoreError> {
    if commands.is_empty() {
        return Ok(());
    }
    bind_outbox(sqlx::query(INSERT_OUTBOX), commands).execute(&mut *tx).await.map_err(|e| insert_error(e, "the outbox"))?;
    Ok(())
}

/// A row of `EVENT_COLUMNS`, read by index (the columns' order there).
fn raw_event(row: &PgRow) -> Result<RawEvent, sqlx::Error> {
    Ok(RawEvent {
        tx: parse_tx(row.try_get::<&str, _>(0)?),
        seq: row.try_get(1)?,
        stream: row.try_get(2)?,
        version: row.try_get(3)?,
        body: row.try_get(4)?,
        prev_hash: row.try_get(5)?,
        hash: row.try_get(6)?,
        recorded_at: row.try_get::<DateTime<Utc>, _>(7)?,
    })
}

/// Every reader of events selects these, in this order (see `raw_event`).
const EVENT_COLUMNS: &str = "tx::text AS tx, position, stream, version, body, prev_hash, hash, recorded_at";
// An ORDER BY names the table's columns (`events.tx`): a bare `tx` would be
// the output column `tx::text`, sorting xids as text — every remaining row
// sorted on each read, and 100000 before 99999, which with a LIMIT skips
// events when xids gain a digit.
const STREAM_ALL: &str = "SELECT tx::text AS tx, position, stream, version, body, prev_hash, hash, recorded_at FROM events
     WHERE (tx, position) > ($1::text::xid8, $2) AND tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY events.tx, events.position";

impl PgStore {
    /// `append_streams` without the wake-up hint: the fastest path that
    /// applies, falling back to the locked one.
    async fn write_streams(
        &self,
        appends: &[StreamAppend<'_>],
        commands: &[Outgoing],
    ) -> Result<Result<Vec<Appended>, Conflict>, StoreError> {
        if let ([one], []) = (appends, commands) {
            if let (ExpectedVersion::Any, [event]) = (one.expected, one.events) {
                validate_append(one.stream, one.events)?;
                if let Some(appended) = self.append_at_next(&[(one.stream, event)]).await? {
                    return Ok(Ok(appended));
                }
            }
        }
        if let Some(appended) = self.append_at_heads(appends, commands).await? {
            return Ok(Ok(appended));
        }
        if let Attempt::Done(result) = self.try_append_streams(appends, commands, true).await? {
            return Ok(result);
        }
        // Without remembered heads every stream takes the locked path, which
        // never asks for another attempt.
        match self.try_append_streams(appends, commands, false).await? {
            Attempt::Done(result) => Ok(result),
            Attempt::Retry => Err(StoreError::InvalidAppend {
                stream: appends.first().map_or_else(String::new, |a| a.stream.to_owned()),
                reason: "the append was retried without remembered heads and still asked for a retry".into(),
            }),
        }
    }
}

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The store's pools: a connection that sat idle past `PING_IDLE_AFTER`
/// (when a restarted server or a firewall may have dropped it) is checked
/// with a round trip before use; one in steady use is not. sqlx's default
/// pings on every acquire: a round trip more for every write and read,
/// about a tenth of a 100-event append's time.
fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(size).test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_IDLE_AFTER {
                conn.ping().await?;
            }
            Ok(true)
        })
    })
}

/// After a hint, the next waits this long, so a burst of appends sends
/// one hint per interval (the first at once): each `NOTIFY` is a
/// transaction on the server and a wake-up in every listening process,
/// which cost serial 100-event appends most of a tenth of their rate.
const HINT_SPACING: std::time::Duration = std::time::Duration::from_millis(5);

/// Sends the wake-up hint (`NOTIFY`) when asked, from a connection of its
/// own, after the appends that ask have committed: hints asked for while
/// one is on its way go as one. Sending it from inside the appends'
/// transactions (the triggers migration 0012 dropped) held the notification
/// queue's lock through each commit, so concurrent appends committed one
/// at a time. Hints asked for within `HINT_SPACING` of the last go as one,
/// at its end. A hint that cannot be sent is dropped: readers poll as well.
async fn send_hints(connect: PgConnectOptions, wanted: Arc<Notify>) {
    let mut conn: Option<sqlx::PgConnection> = None;
    loop {
        wanted.notified().await;
        if conn.is_none() {
            match connect.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "connecting to send wake-up hints failed; readers poll"),
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&mut *c).await {
            tracing::debug!(error = %e, "sending a wake-up hint failed; readers poll");
            conn = None;
        }
        // Asked meanwhile: `notified` returns at once after the wait.
        tokio::time::sleep(HINT_SPACING).await;
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn append_streams(
        &self,
        appends: &[StreamAppend<'_>],
        commands: &[Outgoing],
    ) -> Result<Result<Vec<Appended>, Conflict>, StoreError> {
        let result = self.write_streams(appends, commands).await;
        if let Ok(Ok(_)) = &result {
            self.wake_readers();
        }
        result
    }

    fn saw(&self, event: &RecordedEvent) {
        self.heads.put_newer(&event.stream, Head { version: event.version, hash: event.hash.clone() });
    }

    async fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND version >= $2 ORDER BY version"))
            .bind(stream)
            .bind(from_version as i64)
            .fetch_all(&self.tables.pool)
            .await
            .map_err(db(format!("reading `{stream}`")))?;
        rows.iter().map(|r| raw_event(r).map_err(db(format!("reading `{stream}`")))?.decode()).collect()
    }

    async fn stream_holds_each(&self, asks: &[(&str, Uuid)], types: &[&str]) -> Result<Vec<Holds>, StoreError> {
        let rows: Vec<(bool, bool)> = sqlx::query_as(
            // Lateral: each stream through its index, never a scan of all events.
            "SELECT coalesce(h.id, false), coalesce(h.any_of_types, false)
             FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS q(stream, id, n)
             LEFT JOIN LATERAL (
                 SELECT bool_or(e.id = q.id) AS id, bool_or(e.type = ANY($3)) AS any_of_types FROM events e WHERE e.stream = q.stream
             ) h ON true
             ORDER BY q.n",
        )
        .bind(asks.iter().map(|a| a.0).collect::<Vec<_>>())
        .bind(asks.iter().map(|a| a.1).collect::<Vec<_>>())
        .bind(types)
        .fetch_all(&self.writes)
        .await
        .map_err(db("looking into streams"))?;
        Ok(rows.into_iter().map(|(id, any_of_types)| Holds { id, any_of_types }).collect())
    }

    async fn append_each(&self, items: &[(&str, &Envelope)]) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        for (stream, event) in items {
            validate_append(stream, std::slice::from_ref(*event))?;
        }
        if let Some(appended) = self.append_at_next(items).await? {
            self.wake_readers();
            return Ok(appended.into_iter().map(Ok).collect());
        }
        Ok(crate::event_store::append_one_by_one(self, items).await)
    }

    async fn stream_holds(&self, stream: &str, id: Uuid, types: &[&str]) -> Result<Holds, StoreError> {
        let holds = self.stream_holds_each(&[(stream, id)], types).await?;
        holds.into_iter().next().ok_or_else(|| db(format!("looking into `{stream}`"))(sqlx::Error::RowNotFound))
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream = $1")
            .bind(stream)
            .fetch_one(&self.tables.pool)
            .await
            .map_err(db(format!("reading the version of `{stream}`")))?;
        Ok(v.unwrap_or(0) as u64)
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE (tx, position) > ($1::text::xid8, $2)
               AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY events.tx, events.position LIMIT $3"
        ))
        .bind(after.tx.to_string())
        .bind(after.seq)
        .bind(limit as i64)
        .fetch_all(&self.tables.pool)
        .await
        .map_err(db(format!("reading all events after {after}")))?;
        rows.iter().map(|r| raw_event(r).map_err(db("decoding an event row"))?.decode()).collect()
    }

    fn stream_all(&self, after: Position) -> BoxStream<'_, Result<RecordedEvent, StoreError>> {
        sqlx::query(STREAM_ALL)
            .bind(after.tx.to_string())
            .bind(after.seq)
            .fetch(&self.tables.pool)
            // Error contexts are built only on failure (not per row).
            .map(|row| {
                let row = row.map_err(|e| db("streaming events")(e))?;
                raw_event(&row).map_err(|e| db("decoding an event row")(e))?.decode()
            })
            .boxed()
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wake.clone()
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
