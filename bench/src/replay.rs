//! Replay throughput: how fast a projection can be rebuilt from the whole
//! log through `EventStore::stream_all(Position::START)`, each payload
//! decoded into the typed `Event` and folded into a small projection.
//! Two baselines bound it: the I/O limit (a bare streaming SELECT of the same
//! rows, same query, strings borrowed and not decoded) and the CPU limit
//! (decoding the same bodies from memory). A profile splits ours into its
//! stages so a miss can be pinned on one of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use slipway_proto::{Envelope, Event, Message};
use slipway_store::{EventStore, ExpectedVersion, PgStore, Position};
use sqlx::{PgPool, Row as _};

use crate::fixtures::Factory;
use crate::report::{Figure, Goal, Row};

/// The goal: ours at this share of the bare read.
const READ_GOAL: f64 = 0.80;
/// Events per append while filling the log, and concurrent writers.
const FILL_BATCH: usize = 250;
const FILL_WRITERS: usize = 4;

/// The store's `stream_all` query, verbatim, so the bare read fetches
/// exactly the same rows and columns in the same order.
const STREAM_ALL: &str = "SELECT tx::text AS tx, position, stream, version, body, prev_hash, hash, recorded_at FROM events
     WHERE (tx, position) > ($1::text::xid8, $2) AND tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY tx, position";

/// A small projection: events per stream and per type.
#[derive(Debug, Default)]
pub struct Projection {
    pub events: u64,
    pub per_stream: HashMap<String, u64>,
    pub per_type: HashMap<&'static str, u64>,
}

impl Projection {
    pub fn apply(&mut self, stream: String, event: &Event) {
        self.events += 1;
        *self.per_type.entry(event.message_type()).or_default() += 1;
        match self.per_stream.get_mut(&stream) {
            Some(count) => *count += 1,
            None => {
                self.per_stream.insert(stream, 1);
            }
        }
    }
}

/// Writes `n` events, then measures ours, both baselines and the profile.
/// Each read runs `rounds` times, the three kinds alternating, and the best
/// round of each counts (a burst of unrelated load should not decide it).
pub async fn measure(store: &PgStore, factory: &Factory, n: usize, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let written = fill(store, factory, n).await?;
    eprintln!("replay: wrote {n} events at {written:.0} ev/s; vacuuming, warming up, loading bodies ...");
    // What autovacuum would do to a freshly written log, done now rather
    // than in the middle of a timed read.
    sqlx::query("VACUUM (ANALYZE) events").execute(store.pool()).await?;
    let bodies = load_bodies(store.pool()).await?;
    ensure!(bodies.len() == n, "the log holds {} events, expected {n}", bodies.len());

    eprintln!("replay: decoding from memory ...");
    let (cpu, profile) = tokio::task::block_in_place(|| {
        let mut cpu = 0f64;
        for _ in 0..rounds {
            cpu = cpu.max(rate(n, timed(|| decode_all(&bodies))?));
        }
        anyhow::Ok((cpu, crate::decode_profile::measure(&bodies)?))
    })?;
    drop(bodies);

    let (mut bare, mut owned, mut ours) = (0f64, 0f64, 0f64);
    for round in 1..=rounds {
        eprintln!("replay: round {round} of {rounds}: bare SELECT, owned rows, stream_all + decode + projection ...");
        bare = bare.max(rate(n, timed_async(bare_read(store.pool(), n)).await?));
        owned = owned.max(rate(n, timed_async(owned_read(store.pool(), n)).await?));
        ours = ours.max(rate(n, timed_async(store_read(store, n)).await?));
    }

    let mut rows = vec![
        Row::new(
            format!("replay {} events", crate::report::thousands(n as f64)),
            Figure::Rate(ours),
            Some((Figure::Rate(bare), "bare SELECT")),
            Goal::RatioAtLeast(READ_GOAL),
        ),
        Row::new("replay vs CPU limit", Figure::Rate(ours), Some((Figure::Rate(cpu), "decode from memory")), Goal::None),
        Row::new("  rows into owned RawEvent", Figure::Rate(owned), Some((Figure::Rate(bare), "bare SELECT")), Goal::None),
    ];
    rows.extend(profile);
    Ok(rows)
}

/// Writes `n` events in `FILL_BATCH`-event appends, one stream per append,
/// `FILL_WRITERS` at a time; returns events per second.
async fn fill(store: &PgStore, factory: &Factory, n: usize) -> anyhow::Result<f64> {
    let streams = n.div_ceil(FILL_BATCH);
    let started = Instant::now();
    let writers = (0..FILL_WRITERS).map(|writer| async move {
        for s in (writer..streams).step_by(FILL_WRITERS) {
            let stream = format!("deployment-{s:06}");
            let count = FILL_BATCH.min(n - s * FILL_BATCH);
            let events = factory.events(0, count, &stream);
            store.append(&stream, ExpectedVersion::NoStream, &events, &[]).await?.context("unexpected conflict")?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(writers).await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Every stored body in global order (untimed: it also warms the caches).
async fn load_bodies(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let bodies = sqlx::query_scalar("SELECT body FROM events ORDER BY tx, position").fetch_all(pool).await?;
    Ok(bodies)
}

/// Ours: the store's replay path plus the typed decode and the fold.
async fn store_read(store: &PgStore, expected: usize) -> anyhow::Result<()> {
    let mut events = store.stream_all(Position::START);
    let mut projection = Projection::default();
    while let Some(recorded) = events.next().await {
        let recorded = recorded?;
        let event = recorded.envelope.decode::<Event>()?;
        projection.apply(recorded.stream, &event);
    }
    ensure!(projection.events as usize == expected, "stream_all returned {} events, expected {expected}", projection.events);
    Ok(())
}

/// The I/O limit: the same query, every column fetched, strings borrowed.
async fn bare_read(pool: &PgPool, expected: usize) -> anyhow::Result<()> {
    let mut rows = sqlx::query(STREAM_ALL).bind("0").bind(0i64).fetch(pool);
    let (mut count, mut bytes) = (0usize, 0usize);
    while let Some(row) = rows.try_next().await? {
        let tx: &str = row.try_get(0)?;
        let _position: i64 = row.try_get(1)?;
        let stream: &str = row.try_get(2)?;
        let _version: i64 = row.try_get(3)?;
        let body: &str = row.try_get(4)?;
        let prev_hash: &str = row.try_get(5)?;
        let hash: &str = row.try_get(6)?;
        let _recorded_at: DateTime<Utc> = row.try_get(7)?;
        bytes += tx.len() + stream.len() + body.len() + prev_hash.len() + hash.len();
        count += 1;
    }
    ensure!(count == expected && bytes > 0, "bare read returned {count} rows, expected {expected}");
    Ok(())
}

/// The bare read plus what the store does before JSON decoding: owned
/// strings for every text column and the `tx` parsed to a number.
async fn owned_read(pool: &PgPool, expected: usize) -> anyhow::Result<()> {
    let mut rows = sqlx::query(STREAM_ALL).bind("0").bind(0i64).fetch(pool);
    let mut count = 0usize;
    while let Some(row) = rows.try_next().await? {
        let tx: u64 = row.try_get::<&str, _>("tx")?.parse().unwrap_or(0);
        let owned: (u64, i64, String, i64, String, String, String, DateTime<Utc>) = (
            tx,
            row.try_get("position")?,
            row.try_get("stream")?,
            row.try_get("version")?,
            row.try_get("body")?,
            row.try_get("prev_hash")?,
            row.try_get("hash")?,
            row.try_get("recorded_at")?,
        );
        std::hint::black_box(owned);
        count += 1;
    }
    ensure!(count == expected, "owned read returned {count} rows, expected {expected}");
    Ok(())
}

/// The CPU limit: the same decode and fold, from memory.
pub fn decode_all(bodies: &[String]) -> anyhow::Result<()> {
    let mut projection = Projection::default();
    for body in bodies {
        let envelope = Envelope::from_json(body.as_bytes())?;
        let event = envelope.decode::<Event>()?;
        projection.apply(envelope.stream, &event);
    }
    ensure!(projection.events as usize == bodies.len());
    Ok(())
}

pub fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

pub fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

async fn timed_async(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    f.await?;
    Ok(started.elapsed())
}
