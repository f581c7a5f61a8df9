//! `slipway-bench-audit`: what the audit verbs cost next to the least work
//! their answer needs, measured in the same run on the same rows.
//!
//! It appends `--events` realistic events (one deployment's events, cycling)
//! to a fresh PostgreSQL schema, 100 per append on many streams with 4
//! writers, then times, best of `--rounds` alternating rounds:
//! - `audit verify` on the database, as the command does it
//!   (`export::verify_chains`: `chain::verify` over the rows of
//!   `chain_rows`, streamed one stream at a time), against a bare
//!   streaming read of the same query computing the same SHA-256 chain hashes;
//! - `audit verify --file` on an export of the same log (`export::verify`,
//!   as the command calls it), against a bare read of the file that parses
//!   each line and computes the same hashes, the chains' and the end line's
//!   seal, in one thread (ours hashes the seal on a second thread); a second
//!   row shows ours against a baseline that leaves the seal out;
//! - `audit checkpoint` (the Merkle root over the global order, signed),
//!   against a bare streaming read of the same rows (informational), and the
//!   export itself (informational).
//!
//! Goal: each verification at 0.80 or more of its bare baseline.
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-audit -- --events 1000000`

#[allow(dead_code)]
#[path = "../fixtures.rs"]
mod fixtures;
#[allow(dead_code)]
#[path = "../report.rs"]
mod report;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use slipway_store::chain::event_hash;
use slipway_store::checkpoint::{Builder, SecretKey};
use slipway_store::export::{self, ExportWriter, Header};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::{EventStore, ExpectedVersion, PgStore};
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use crate::fixtures::Factory;
use crate::report::{Figure, Goal, Row};

const GOAL: f64 = 0.80;
const PER_APPEND: usize = 100;
const WRITERS: usize = 4;
/// The query `chain_rows` and `export::postgres_chains` run, verbatim.
const CHAIN_ROWS: &str = "SELECT stream, version, body, prev_hash, hash FROM events ORDER BY stream, version";
/// The query `export::postgres_log` runs, verbatim.
const GLOBAL_ORDER: &str = "SELECT tx::text, position, stream, version, body, prev_hash, hash, recorded_at FROM events
         WHERE tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx, position";

#[derive(Parser)]
#[command(about = "audit verify (database, export) and checkpoint vs a bare read computing the same hashes")]
struct Args {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Rounds of each measurement, alternating ours and the baseline; the best counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", hide_env_values = true, default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = format!("slipway_bench_audit_{}", Uuid::now_v7().simple());
    let store = PgStore::connect(&args.pg_url, PgOptions { schema: Some(schema.clone()), ..Default::default() })
        .await
        .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&args.pg_url)))?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("export.jsonl");
    let result = tokio::select! {
        result = run(&args, &store, &file) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Ok(pool) = PgPool::connect(&args.pg_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
    let rows = result?;
    println!();
    print!("{}", report::render(&rows));
    Ok(())
}

async fn run(args: &Args, store: &PgStore, file: &Path) -> anyhow::Result<Vec<Row>> {
    let n = args.events as usize;
    let factory = Factory::new()?;
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(store.pool()).await?;
    println!("slipway-bench-audit: audit verify and checkpoint vs a bare read computing the same hashes, same run");
    println!("command:  {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!("machine:  {} cores; PostgreSQL {version}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!(
        "log:      {n} events in {} streams, about {} bytes per stored body; best of {} rounds",
        n.div_ceil(PER_APPEND),
        factory.mean_event_bytes(),
        args.rounds
    );

    let started = Instant::now();
    fill(store, &factory, n).await?;
    let fill_rate = rate(n, started.elapsed());
    eprintln!("audit bench: wrote {n} events at {fill_rate:.0} ev/s; vacuuming ...");
    sqlx::query("VACUUM (ANALYZE) events").execute(store.pool()).await?;

    let started = Instant::now();
    let exported = export_to(store, file).await?;
    ensure!(exported == n as u64, "the export holds {exported} events, expected {n}");
    let export_rate = rate(n, started.elapsed());
    let bytes = std::fs::metadata(file)?.len();
    eprintln!("audit bench: exported {n} events ({:.0} MB) at {export_rate:.0} ev/s", bytes as f64 / 1e6);

    let (mut db_ours, mut db_bare, mut cp_ours, mut cp_bare) = (0f64, 0f64, 0f64, 0f64);
    let (mut file_ours, mut file_bare, mut file_chains) = (0f64, 0f64, 0f64);
    for round in 1..=args.rounds {
        eprintln!("audit bench: round {round} of {}", args.rounds);
        db_bare = db_bare.max(rate(n, timed(bare_chain_read(store.pool(), n)).await?));
        db_ours = db_ours.max(rate(n, timed(verify_database(store, n)).await?));
        let path = file.to_path_buf();
        file_bare = file_bare.max(rate(n, timed(blocking(move || bare_file_read(&path, n, true))).await?));
        let path = file.to_path_buf();
        file_chains = file_chains.max(rate(n, timed(blocking(move || bare_file_read(&path, n, false))).await?));
        let path = file.to_path_buf();
        file_ours = file_ours.max(rate(n, timed(blocking(move || verify_file(&path, n))).await?));
        cp_bare = cp_bare.max(rate(n, timed(bare_global_read(store.pool(), n)).await?));
        cp_ours = cp_ours.max(rate(n, timed(checkpoint(store, n)).await?));
    }
    Ok(vec![
        Row::new("fill (4 writers, 100 per append)", Figure::Rate(fill_rate), None, Goal::None),
        Row::new(
            "audit verify (database chains)",
            Figure::Rate(db_ours),
            Some((Figure::Rate(db_bare), "bare ORDER BY stream, version + SHA-256")),
            Goal::RatioAtLeast(GOAL),
        ),
        Row::new(
            "audit verify --file (offline)",
            Figure::Rate(file_ours),
            Some((Figure::Rate(file_bare), "bare line read + JSON + the same SHA-256s: chains and seal")),
            Goal::RatioAtLeast(GOAL),
        ),
        Row::new(
            "  the same, baseline without the seal",
            Figure::Rate(file_ours),
            Some((Figure::Rate(file_chains), "bare line read + JSON + chain SHA-256s")),
            Goal::None,
        ),
        Row::new(
            "audit checkpoint (Merkle root, signed)",
            Figure::Rate(cp_ours),
            Some((Figure::Rate(cp_bare), "bare global-order read")),
            Goal::None,
        ),
        Row::new("export (to a file)", Figure::Rate(export_rate), None, Goal::None),
    ])
}

/// `n` events, `PER_APPEND` per append on streams of their own, `WRITERS` at once.
async fn fill(store: &PgStore, factory: &Factory, n: usize) -> anyhow::Result<()> {
    let streams = n.div_ceil(PER_APPEND);
    let writers = (0..WRITERS).map(|writer| async move {
        for s in (writer..streams).step_by(WRITERS) {
            let stream = format!("deployment-{s:07}");
            let events = factory.events(0, PER_APPEND.min(n - s * PER_APPEND), &stream);
            store.append(&stream, ExpectedVersion::NoStream, &events, &[]).await?.context("unexpected conflict")?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(writers).await?;
    Ok(())
}

async fn export_to(store: &PgStore, file: &Path) -> anyhow::Result<u64> {
    let header = Header {
        slipway_export: export::FORMAT.into(),
        exported_at: Utc::now().to_rfc3339(),
        backend: "postgres".into(),
        project: None,
        since: None,
    };
    let mut writer = ExportWriter::new(BufWriter::with_capacity(1 << 20, File::create(file)?), &header)?;
    let mut rows = export::postgres_log(store);
    while let Some(row) = rows.try_next().await? {
        writer.event(&row)?;
    }
    Ok(writer.finish()?.1)
}

/// Ours: what `slipway audit verify` does on a database.
async fn verify_database(store: &PgStore, n: usize) -> anyhow::Result<()> {
    let report = export::verify_chains(export::postgres_chains(store)).await?;
    ensure!(report.is_intact() && report.events == n as u64, "verification found {:?} in {} events", report.findings, report.events);
    Ok(())
}

/// The baseline: the same query streamed, strings borrowed, the same hash computed and compared.
async fn bare_chain_read(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut rows = sqlx::query(CHAIN_ROWS).fetch(pool);
    let mut count = 0;
    while let Some(row) = rows.try_next().await? {
        let stream: &str = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        let body: &str = row.try_get(2)?;
        let prev_hash: &str = row.try_get(3)?;
        let hash: &str = row.try_get(4)?;
        ensure!(event_hash(prev_hash, stream, version as u64, body) == hash, "{stream}@{version} does not match");
        count += 1;
    }
    ensure!(count == n, "bare read returned {count} rows, expected {n}");
    Ok(())
}

/// Ours: what `slipway audit verify --file` does.
fn verify_file(file: &Path, n: usize) -> anyhow::Result<()> {
    let report = export::verify(|| File::open(file).map(|f| BufReader::with_capacity(1 << 20, f)), None)?;
    ensure!(report.is_intact() && report.events == n as u64, "verification found {report:?}");
    Ok(())
}

/// The baseline: read the lines, parse the event lines (into the same
/// struct), compute and compare the same chain hashes and, with `seal`, the
/// SHA-256 of every line but the last, in one thread.
fn bare_file_read(file: &Path, n: usize, seal: bool) -> anyhow::Result<()> {
    let mut count = 0;
    let mut mismatched = 0;
    let mut digest = Sha256::new();
    export::each_line(BufReader::with_capacity(1 << 20, File::open(file)?), |raw| {
        if seal && !raw.starts_with(b"{\"slipway_export_end\"") {
            digest.update(raw);
        }
        if let Ok(line) = serde_json::from_slice::<export::Line>(raw) {
            if event_hash(&line.prev_hash, &line.stream, line.version, &line.body) != line.hash {
                mismatched += 1;
            }
            count += 1;
        }
    })?;
    ensure!(count == n && mismatched == 0, "bare file read: {count} events, {mismatched} mismatched, expected {n}");
    std::hint::black_box(digest.finalize());
    Ok(())
}

/// Ours: what `slipway audit checkpoint` does, without writing the file.
async fn checkpoint(store: &PgStore, n: usize) -> anyhow::Result<()> {
    let mut builder = Builder::new(None);
    let mut rows = export::postgres_log(store);
    while let Some(row) = rows.try_next().await? {
        builder.push(row.position, &row.stream, row.version, &row.hash);
    }
    let c = builder.finish(Utc::now().to_rfc3339(), &SecretKey::from_seed([7; 32]))?;
    ensure!(c.events == n as u64, "checkpoint over {} events, expected {n}", c.events);
    Ok(())
}

/// The baseline: the same query streamed, strings borrowed.
async fn bare_global_read(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let mut rows = sqlx::query(GLOBAL_ORDER).fetch(pool);
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
    ensure!(count == n && bytes > 0, "bare global read returned {count} rows, expected {n}");
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn timed<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    f.await?;
    Ok(started.elapsed())
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}
