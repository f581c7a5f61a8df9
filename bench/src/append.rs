//! Append throughput on PostgreSQL through `EventStore::append`, 1-event and
//! 100-event appends with 1 and 4 concurrent writers (each on its own
//! stream), against a bare sqlx insert of the same rows into a plain table:
//! no advisory lock, no version check, no hash chain, no extra indexes, no
//! outbox. Both sides get the same envelopes and serialise them; one INSERT
//! per transaction for single events, one `INSERT ... SELECT * FROM UNNEST`
//! per transaction for batches. The ratio is what the store's guarantees cost.
//!
//! For batches, a second baseline splits that cost in two: the same bare
//! UNNEST into a copy of the `events` table (same columns, defaults,
//! constraints and indexes; placeholder hashes; no lock, no version read, no
//! chain computation, no NOTIFY trigger). Ours against it is what the store's
//! code path costs; it against the plain table is what the schema costs.
//!
//! Sides alternate in short rounds and the best round of each counts, so a
//! burst of unrelated load on a shared machine does not decide a ratio.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::try_join_all;
use slipway_proto::Envelope;
use slipway_store::chain::GENESIS;
use slipway_store::{EventStore, ExpectedVersion, PgStore};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::fixtures::Factory;
use crate::report::{Figure, Goal, Row};

/// The goal for batched appends: this share of the bare batched insert.
const BATCH_GOAL: f64 = 0.70;

const PLAIN_TABLE: &str = "CREATE TABLE bare_events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream         text NOT NULL,
    version        bigint NOT NULL,
    id             uuid NOT NULL,
    type           text NOT NULL,
    correlation_id uuid NOT NULL,
    body           text NOT NULL
)";
const SHAPED_TABLE: &str = "CREATE TABLE bare_events_shaped (LIKE events INCLUDING ALL)";

/// One configuration: events per append and concurrent writers.
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    writers: usize,
}

const CASES: [Case; 4] =
    [Case { batch: 1, writers: 1 }, Case { batch: 1, writers: 4 }, Case { batch: 100, writers: 1 }, Case { batch: 100, writers: 4 }];

/// Where a bare writer inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bare {
    /// `bare_events`: the plain table.
    Plain,
    /// `bare_events_shaped`: a copy of `events`, with placeholder hashes.
    Shaped,
}

/// How long each side runs: `rounds` alternating rounds of `round` each.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub round: Duration,
    pub rounds: usize,
}

/// Best events/s of each side of one case.
#[derive(Debug, Default)]
struct Best {
    ours: f64,
    plain: f64,
    shaped: f64,
}

/// Measures every case, the sides alternating round by round.
pub async fn measure(store: &PgStore, factory: &Factory, timing: Timing) -> anyhow::Result<Vec<Row>> {
    for ddl in [PLAIN_TABLE, SHAPED_TABLE] {
        sqlx::query(ddl).execute(store.pool()).await.context("creating a baseline table")?;
    }
    // The baselines write through a pool of their own with sqlx's default
    // options, to the same schema: how the store sets up its pools is
    // part of what is measured, not of the baseline.
    let bare =
        PgPoolOptions::new().connect_with((*store.pool().connect_options()).clone()).await.context("connecting the baseline's pool")?;
    let (mut rows, mut split) = (Vec::new(), Vec::new());
    for case in CASES {
        eprintln!("append: {}-event appends x{} ...", case.batch, case.writers);
        let best = measure_case(store, &bare, factory, case, timing).await?;
        let what = format!("append {}-event x{}", case.batch, case.writers);
        if case.batch == 1 {
            rows.push(Row::new(what, Figure::Rate(best.ours), Some((Figure::Rate(best.plain), "bare INSERT")), Goal::None));
            continue;
        }
        let goal = Goal::RatioAtLeast(BATCH_GOAL);
        rows.push(Row::new(&what, Figure::Rate(best.ours), Some((Figure::Rate(best.plain), "bare UNNEST")), goal));
        let shaped = Some((Figure::Rate(best.shaped), "UNNEST, events' schema"));
        split.push(Row::new(format!("  {what} vs schema"), Figure::Rate(best.ours), shaped, Goal::None));
    }
    rows.extend(split);
    Ok(rows)
}

async fn measure_case(store: &PgStore, bare: &PgPool, factory: &Factory, case: Case, timing: Timing) -> anyhow::Result<Best> {
    let mut best = Best::default();
    let phase = timing.round;
    for round in 0..timing.rounds {
        let streams = Streams { case, round };
        let plain = run(case, |w| bare_writer(bare, Bare::Plain, factory, streams, w, phase)).await?;
        best.plain = best.plain.max(plain);
        if case.batch > 1 {
            let shaped = run(case, |w| bare_writer(bare, Bare::Shaped, factory, streams, w, phase)).await?;
            best.shaped = best.shaped.max(shaped);
        }
        best.ours = best.ours.max(run(case, |w| store_writer(store, factory, streams, w, phase)).await?);
    }
    Ok(best)
}

/// Names a writer's stream: its own per case, round and writer.
#[derive(Debug, Clone, Copy)]
struct Streams {
    case: Case,
    round: usize,
}

impl Streams {
    fn name(self, side: &str, writer: usize) -> String {
        format!("{side}-{}x{}-r{}-w{writer}", self.case.batch, self.case.writers, self.round)
    }
}

/// Runs `case.writers` writers concurrently; returns events per second.
async fn run<F, Fut>(case: Case, writer: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let started = Instant::now();
    let events: u64 = try_join_all((0..case.writers).map(writer)).await?.into_iter().sum();
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Appends `batch` events at a time to its own stream until `phase` is over.
async fn store_writer(store: &PgStore, factory: &Factory, streams: Streams, writer: usize, phase: Duration) -> anyhow::Result<u64> {
    let (stream, batch) = (streams.name("store", writer), streams.case.batch);
    let deadline = Instant::now() + phase;
    let mut version = 0u64;
    while Instant::now() < deadline {
        let events = factory.events(version as usize, batch, &stream);
        let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(version) };
        let appended = store.append(&stream, expected, &events, &[]).await?.context("unexpected version conflict")?;
        version = appended.version;
    }
    Ok(version)
}

/// The same rows as `store_writer`, inserted bare, one transaction per batch.
async fn bare_writer(
    pool: &PgPool,
    table: Bare,
    factory: &Factory,
    streams: Streams,
    writer: usize,
    phase: Duration,
) -> anyhow::Result<u64> {
    let side = if table == Bare::Plain { "plain" } else { "shaped" };
    let (stream, batch) = (streams.name(side, writer), streams.case.batch);
    let deadline = Instant::now() + phase;
    let mut written = 0u64;
    while Instant::now() < deadline {
        let events = factory.events(written as usize, batch, &stream);
        let mut tx = pool.begin().await?;
        match (table, batch) {
            (Bare::Plain, 1) => insert_one(&mut tx, &events[0], written + 1).await?,
            (Bare::Plain, _) => insert_many(&mut tx, &stream, &events, written + 1).await?,
            (Bare::Shaped, _) => insert_shaped(&mut tx, &stream, &events, written + 1).await?,
        }
        tx.commit().await?;
        written += events.len() as u64;
    }
    Ok(written)
}

async fn insert_one(tx: &mut sqlx::PgConnection, event: &Envelope, version: u64) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO bare_events (stream, version, id, type, correlation_id, body) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&event.stream)
        .bind(version as i64)
        .bind(event.id)
        .bind(&event.message_type)
        .bind(event.correlation_id)
        .bind(event.to_json())
        .execute(tx)
        .await?;
    Ok(())
}

async fn insert_many(tx: &mut sqlx::PgConnection, stream: &str, events: &[Envelope], first: u64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO bare_events (stream, version, id, type, correlation_id, body)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::uuid[], $6::text[])",
    )
    .bind(stream)
    .bind(versions(first, events.len()))
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.message_type.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.correlation_id).collect::<Vec<_>>())
    .bind(events.iter().map(Envelope::to_json).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// Like `insert_many`, into the copy of `events`, with placeholder hashes
/// of the real length.
async fn insert_shaped(tx: &mut sqlx::PgConnection, stream: &str, events: &[Envelope], first: u64) -> anyhow::Result<()> {
    let hashes = vec![GENESIS; events.len()];
    sqlx::query(
        "INSERT INTO bare_events_shaped (stream, version, id, type, correlation_id, body, prev_hash, hash)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[])",
    )
    .bind(stream)
    .bind(versions(first, events.len()))
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.message_type.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.correlation_id).collect::<Vec<_>>())
    .bind(events.iter().map(Envelope::to_json).collect::<Vec<_>>())
    .bind(&hashes)
    .bind(&hashes)
    .execute(tx)
    .await?;
    Ok(())
}

fn versions(first: u64, count: usize) -> Vec<i64> {
    (0..count as i64).map(|i| first as i64 + i).collect()
}
