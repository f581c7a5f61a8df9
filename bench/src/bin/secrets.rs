//! `slipway-bench-secrets`: what keeping secrets secret costs, each beside
//! its baseline in the same run.
//!
//! - **Scrubbing a log.** A release log of `--megabytes` MB (100 by default)
//!   with `--values` setting values (50) occurring in it, written to disk
//!   scrubbed (`steps::scrub::Scrubber::scrub_into`: every value raw,
//!   URL-encoded and base64, in pieces into the file) beside written as it is. Goal: the scrubbed write at
//!   least 0.8x the plain one's throughput.
//! - **Reading sealed values.** `--settings` values (10,000) stored sealed
//!   (`sealing`, AES-256-GCM) and the same number stored in clear,
//!   in two PostgreSQL schemas, read back by fingerprint as a worker does
//!   (`EventStore::values`). Goal: the sealed read at least 0.8x the plain one's.
//!
//! Each is timed `--rounds` times, alternating which goes first; the ratio
//! is of the medians.
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-secrets`

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::sealing::{Keyring, Sealing, SealingKey};
use slipway_store::{EventStore, PgStore};
use slipway_workers::steps::scrub::Scrubber;
use slipway_workers::steps::Settings;

const GOAL: f64 = 0.8;

#[derive(Parser)]
#[command(about = "Scrubbing a log and reading sealed values, each beside its plain baseline")]
struct Args {
    #[arg(long, default_value_t = 100)]
    megabytes: usize,
    #[arg(long, default_value_t = 50)]
    values: usize,
    #[arg(long, default_value_t = 10_000)]
    settings: usize,
    /// Timings of each; a read takes a few ms, so it needs many for a
    /// median that holds still from run to run.
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", hide_env_values = true, default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= GOAL {
        "goal met"
    } else {
        "GOAL MISSED"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    scrubbing(&args)?;
    reading(&args).await?;
    Ok(())
}

/// A deterministic pseudo-random value of `len` printable characters.
fn value(seed: usize, len: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/+=:@";
    let mut x = seed as u64 * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            alphabet[(x >> 33) as usize % alphabet.len()] as char
        })
        .collect()
}

fn scrubbing(args: &Args) -> anyhow::Result<()> {
    let settings: Settings = (0..args.values).map(|i| (format!("KEY_{i}"), value(i, 12 + i % 40))).collect();
    let values: Vec<&String> = settings.values().collect();
    // Log lines as a migration prints them; every 50th line names a value.
    let mut log = String::with_capacity(args.megabytes << 20);
    let mut n = 0;
    while log.len() < args.megabytes << 20 {
        if n % 50 == 0 {
            log.push_str(&format!("{n:>9} connecting with {} to the database\n", values[n / 50 % values.len()]));
        } else {
            log.push_str(&format!("{n:>9} INFO migrating table_{} rows {}..{} ok\n", n % 977, n * 31, n * 31 + 30));
        }
        n += 1;
    }
    let scrubber = Scrubber::new(&settings);
    let dir = tempfile::tempdir()?;
    let (plain_path, scrubbed_path) = (dir.path().join("plain.log"), dir.path().join("scrubbed.log"));
    let (mut plain, mut scrubbed) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let plain_run = || -> anyhow::Result<Duration> {
            let started = Instant::now();
            std::fs::write(&plain_path, log.as_bytes())?;
            Ok(started.elapsed())
        };
        // Scrubbed in pieces straight into the file (`scrub_into`, as a
        // worker stores a log), through a 1 MiB buffer.
        let scrubbed_run = || -> anyhow::Result<Duration> {
            let started = Instant::now();
            let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&scrubbed_path)?);
            let mut written = Ok(());
            scrubber.scrub_into(&log, |piece| {
                if written.is_ok() {
                    written = file.write_all(piece.as_bytes());
                }
            });
            written?;
            file.into_inner().map_err(|e| e.into_error())?;
            Ok(started.elapsed())
        };
        if round % 2 == 0 {
            plain.push(plain_run()?);
            scrubbed.push(scrubbed_run()?);
        } else {
            scrubbed.push(scrubbed_run()?);
            plain.push(plain_run()?);
        }
    }
    let written = std::fs::read_to_string(&scrubbed_path)?;
    anyhow::ensure!(values.iter().all(|v| !written.contains(v.as_str())), "a value survived scrubbing");
    let (p, s) = (median(plain), median(scrubbed));
    let ratio = p.as_secs_f64() / s.as_secs_f64();
    let mb = log.len() as f64 / (1 << 20) as f64;
    println!("scrubbing a {mb:.0} MB log with {} values (raw, URL-encoded, base64), written to disk:", args.values);
    println!("  plain write    {:>8.1} ms  ({:.0} MB/s)", p.as_secs_f64() * 1e3, mb / p.as_secs_f64());
    println!("  scrubbed write {:>8.1} ms  ({:.0} MB/s)", s.as_secs_f64() * 1e3, mb / s.as_secs_f64());
    println!("  ratio {ratio:.2}x of the plain write (goal >= {GOAL}x): {}", verdict(ratio));
    Ok(())
}

async fn reading(args: &Args) -> anyhow::Result<()> {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let connect = |schema: String, sealing: Sealing| {
        let url = args.pg_url.clone();
        async move {
            // The owner's login (no SET ROLE): the bench drops its schemas after.
            let options = PgOptions { schema: Some(schema), role: None, ..Default::default() };
            let store = PgStore::connect(&url, options)
                .await
                .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&url)))?;
            anyhow::Ok(Arc::new(store.sealed(sealing)))
        }
    };
    let key = SealingKey::from_hex(&SealingKey::generate_hex()).map_err(anyhow::Error::msg)?;
    let sealed_schema = format!("bench_sealed_{suffix}");
    let plain_schema = format!("bench_plain_{suffix}");
    let sealed = connect(sealed_schema.clone(), Sealing { keyring: Some(Arc::new(Keyring::new(key, vec![]))), required: true }).await?;
    let plain = connect(plain_schema.clone(), Sealing::default()).await?;
    let fingerprints: Vec<String> = (0..args.settings).map(|i| format!("hmac-sha256:{i:032x}")).collect();
    for (i, f) in fingerprints.iter().enumerate() {
        let v = value(i, 32);
        sealed.operational().put_value(f, &v).await?;
        plain.operational().put_value(f, &v).await?;
    }
    let (mut p, mut s) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let order: [&Arc<PgStore>; 2] = if round % 2 == 0 { [&plain, &sealed] } else { [&sealed, &plain] };
        for store in order {
            let started = Instant::now();
            let read = store.operational().values(&fingerprints).await?;
            let took = started.elapsed();
            anyhow::ensure!(read.len() == fingerprints.len(), "read {} of {} values", read.len(), fingerprints.len());
            if Arc::ptr_eq(store, &plain) {
                p.push(took)
            } else {
                s.push(took)
            }
        }
    }
    let raw: String =
        sqlx::query_scalar(&format!("SELECT value FROM \"{sealed_schema}\".setting_values LIMIT 1")).fetch_one(sealed.pool()).await?;
    anyhow::ensure!(raw.starts_with("sealed:v1:"), "values are not sealed at rest");
    // Where the difference goes: opening the values alone, in memory.
    let keyring = Keyring::new(SealingKey::from_hex(&SealingKey::generate_hex()).map_err(anyhow::Error::msg)?, vec![]);
    let stored: Vec<(String, String)> = fingerprints.iter().enumerate().map(|(i, f)| (f.clone(), keyring.seal(f, &value(i, 32)))).collect();
    let started = Instant::now();
    for (f, v) in &stored {
        slipway_store::sealing::open(Some(&keyring), f, v).map_err(anyhow::Error::msg)?;
    }
    let opening = started.elapsed();
    let (p, s) = (median(p), median(s));
    let ratio = p.as_secs_f64() / s.as_secs_f64();
    println!("reading {} setting values by fingerprint from PostgreSQL:", args.settings);
    println!("  (opening them alone, in memory: {:.1} ms)", opening.as_secs_f64() * 1e3);
    println!("  in clear {:>8.1} ms", p.as_secs_f64() * 1e3);
    println!("  sealed   {:>8.1} ms", s.as_secs_f64() * 1e3);
    println!("  ratio {ratio:.2}x of the plain read (goal >= {GOAL}x): {}", verdict(ratio));
    for schema in [sealed_schema, plain_schema] {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(plain.pool()).await?;
    }
    Ok(())
}
