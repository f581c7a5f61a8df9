//! `slipway-bench-farm`: engine throughput and horizontal scaling. The real
//! engine, outbox relay, PostgreSQL store and RabbitMQ queues run in this
//! process; the steps run in 1, 2 and 4 `slipway worker` processes whose
//! executor is a stand-in that answers each step after a fixed time (0 ms,
//! 200 ms; a bench-only mode, the real executors are untouched). Every
//! deployment goes to its own project, so all of them may run at once.
//! With zero-time steps a worker runs 16 commands at once per step queue
//! (`--concurrency 16`: it mostly waits for the store); with timed steps
//! one, as a builder does, so that capacity is the number of processes.
//!
//! The deployments are requested one after another
//! (`requests::request_deployment`, as a script calling the CLI in a loop
//! would) while the earlier ones run, so the request path's own cost counts:
//! reading the project's stream once per request instead of three times
//! took 2,000 deployments with 1 worker from 148-156/s to 189-198/s.
//!
//! It prints, per configuration: deployments completed per second, events
//! appended per second, the engine's hand-off latency (an outcome recorded
//! -> the next step's command recorded) p50/p99, and the dispatch round
//! trip (a command recorded -> its outcome recorded: outbox, relay,
//! RabbitMQ, the worker and its append, plus the step's own time) p50/p99.
//!
//! With `--prefill N` each configuration's log first holds about N events
//! of canned history (whole projects with their deployments, as
//! `slipway-bench-reads` writes them), the read models and the engine
//! caught up with it (a warm-up deployment), so that what is timed is a
//! farm on a long-lived installation. Given several `--deployments`
//! counts, it compares the largest run's throughput with the smallest's,
//! configuration by configuration (goal: at least 0.9x, flat as the log
//! grows).
//!
//! Build both binaries, then run:
//! `cargo build --release -p slipway -p slipway-bench && ./target/release/slipway-bench-farm --deployments 200`
//! or, on a long log: `... --deployments 2000,20000 --prefill 1000000 --workers 2 --step-ms 0`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::TryStreamExt;
use slipway_engine::driver::DriverOptions;
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_node::Parts;
use slipway_proto::event::BuildMode;
use slipway_proto::{Event, Step, StreamId};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_store::{EventStore, PgStore};
use uuid::Uuid;

#[path = "../canned.rs"]
mod canned;

/// The goal for the largest `--deployments` run against the smallest.
const FLAT_GOAL: f64 = 0.9;

#[derive(Parser)]
#[command(about = "Deployments per second through the real engine, outbox, RabbitMQ and PostgreSQL, with 1, 2, 4 worker processes")]
struct Args {
    /// Deployments per configuration (each to its own project); several
    /// counts are compared with each other.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    deployments: Vec<usize>,
    /// Events of canned history in the log before each configuration.
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    /// Worker process counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Stand-in step times to try, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,200")]
    step_ms: Vec<u64>,
    /// The slipway binary (default: next to this one).
    #[arg(long)]
    slipway: Option<std::path::PathBuf>,
    #[arg(long, env = "SLIPWAY_PG_URL", default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
    /// The login the worker processes run as (writer grants only; the
    /// bench migrates with --pg-url, the owner's).
    #[arg(long, env = "SLIPWAY_PG_APP_URL", default_value = "postgres://slipway_app:slipway_app@127.0.0.1:5432/slipway")]
    pg_app_url: String,
    #[arg(long, env = "SLIPWAY_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
}

struct Outcome {
    per_second: f64,
    events_per_second: f64,
    handoff_p50: f64,
    handoff_p99: f64,
    round_trip_p50: f64,
    round_trip_p99: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let slipway = match &args.slipway {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("slipway"),
    };
    if !slipway.exists() {
        bail!("{} not found: cargo build --release -p slipway first (or pass --slipway)", slipway.display());
    }
    let counts: Vec<String> = args.deployments.iter().map(|n| n.to_string()).collect();
    println!(
        "slipway-bench-farm: {} deployments per configuration, each to its own project; log prefilled with {} events",
        counts.join(" and "),
        args.prefill
    );
    println!(
        "machine: {} cores; engine + relay in this process, workers as processes\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:>12} {:>8} {:>8} {:>12} {:>10} {:>13} {:>13} {:>16} {:>16}",
        "deployments", "step", "workers", "deploys/s", "events/s", "hand-off p50", "hand-off p99", "dispatch->out p50", "dispatch->out p99"
    );
    let mut zero_step_best = 0.0f64;
    let mut scaling: Vec<(usize, f64)> = Vec::new();
    // (step, workers) -> deployments/s per count, in the order run.
    let mut by_config: std::collections::BTreeMap<(u64, usize), Vec<(usize, f64)>> = Default::default();
    for &n in &args.deployments {
        for &ms in &args.step_ms {
            for &workers in &args.workers {
                let o = run(&args, &slipway, n, workers, ms).await?;
                println!(
                    "{:>12} {:>6}ms {:>8} {:>12.1} {:>10.0} {:>11.1}ms {:>11.1}ms {:>15.1}ms {:>15.1}ms",
                    n, ms, workers, o.per_second, o.events_per_second, o.handoff_p50, o.handoff_p99, o.round_trip_p50, o.round_trip_p99
                );
                by_config.entry((ms, workers)).or_default().push((n, o.per_second));
                if ms == 0 {
                    zero_step_best = zero_step_best.max(o.per_second);
                }
                if ms == *args.step_ms.iter().max().unwrap_or(&0) && ms > 0 && n == args.deployments[0] {
                    scaling.push((workers, o.per_second));
                }
            }
        }
    }
    println!();
    for ((ms, workers), runs) in &by_config {
        let (Some(small), Some(large)) = (runs.iter().min_by_key(|r| r.0), runs.iter().max_by_key(|r| r.0)) else { continue };
        if small.0 == large.0 {
            continue;
        }
        let ratio = large.1 / small.1;
        println!(
            "flat as the log grows ({ms} ms steps, {workers} workers): {} deployments {:.1}/s vs {} deployments {:.1}/s = {ratio:.2}x (goal >= {FLAT_GOAL}) -> {}",
            large.0,
            large.1,
            small.0,
            small.1,
            if ratio >= FLAT_GOAL { "met" } else { "MISSED" }
        );
    }
    if args.step_ms.contains(&0) {
        println!(
            "goal: >= 200 deployments/s with zero-time steps: best {zero_step_best:.1}/s -> {}",
            if zero_step_best >= 200.0 { "met" } else { "MISSED" }
        );
    }
    if let Some((w0, r0)) = scaling.first().copied() {
        for (w, r) in &scaling[1..] {
            let ideal = *w as f64 / w0 as f64;
            println!("scaling with slow steps: {w} workers {:.2}x of {w0} (linear: {ideal:.1}x)", r / r0);
        }
    }
    Ok(())
}

async fn run(args: &Args, slipway: &std::path::Path, n: usize, workers: usize, step_ms: u64) -> anyhow::Result<Outcome> {
    let tag = Uuid::now_v7().simple().to_string();
    let schema = format!("slipway_bench_farm_{tag}");
    let namespace = format!("farm{}", &tag[20..]);
    let store: Arc<dyn EventStore> = Arc::new(
        PgStore::connect(&args.pg_url, PgOptions { schema: Some(schema.clone()), max_connections: 16, ..Default::default() })
            .await
            .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&args.pg_url)))?,
    );
    let rabbit = RabbitQueue::connect(&args.amqp_url, RabbitOptions::default())
        .await
        .with_context(|| format!("RabbitMQ at {} (run scripts/services)", redact_url(&args.amqp_url)))?;
    let queue: Arc<dyn Queue> = Arc::new(Namespaced::new(Arc::new(rabbit), namespace.clone()));
    for step in Step::ALL {
        queue.declare(&step.queue()).await?;
    }
    let mut children: Vec<Child> = (0..workers)
        .map(|_| {
            Command::new(slipway)
                .args(["worker", "--stand-in-ms", &step_ms.to_string(), "--prefetch", "32"])
                .args(["--concurrency", &concurrency(step_ms).to_string()])
                .env("SLIPWAY_DATABASE", &args.pg_app_url)
                .env("SLIPWAY_PG_SCHEMA", &schema)
                .env("SLIPWAY_QUEUE", &args.amqp_url)
                .env("SLIPWAY_QUEUE_NAMESPACE", &namespace)
                .env("SLIPWAY_LOG", "error")
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let result = measure(args, n, store.clone(), queue.clone()).await;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for step in Step::ALL {
        let _ = queue.delete(&step.queue()).await;
    }
    if let Ok(pool) = sqlx::PgPool::connect(&args.pg_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
    result
}

/// Commands a worker runs at once per step queue. With zero-time steps a
/// worker mostly waits for the store, so it takes many; with timed steps
/// one, as a real builder does, so that capacity is worker processes.
fn concurrency(step_ms: u64) -> usize {
    if step_ms == 0 {
        16
    } else {
        1
    }
}

async fn measure(args: &Args, n: usize, store: Arc<dyn EventStore>, queue: Arc<dyn Queue>) -> anyhow::Result<Outcome> {
    if args.prefill > 0 {
        canned::fill(&*store, args.prefill).await?;
        let started = Instant::now();
        slipway_engine::projector::catch_up(&*store).await?;
        eprintln!("farm: read models caught up with the prefilled log in {:.1} s", started.elapsed().as_secs_f64());
    }
    // The warm-up deployment (`farm-warmup`) also brings the engine past
    // the prefilled log before anything is timed.
    for p in (0..n).map(|p| format!("farm-{p}")).chain(["farm-warmup".to_string()]) {
        let new = NewProject {
            name: p,
            repository: "/nonexistent".into(),
            default_branch: "main".into(),
            environments: vec!["live".into()],
            mirror_of: None,
        };
        if let Err(r) = requests::create_project(&*store, "bench", new).await? {
            bail!("{r}");
        }
    }
    let (stop, shutdown) = slipway_node::manual();
    let parts = Parts { engine: Some(DriverOptions { drain_seconds: 0, ..Default::default() }), ..Default::default() };
    let node = tokio::spawn(slipway_node::serve(store.clone(), queue, parts, shutdown));
    let mut wake = store.wakeups();
    let warmup = Instant::now();
    // Only what follows the log's end now counts (the canned history has
    // its own verdicts).
    let mut cursor = slipway_engine::projector::catch_up(&*store).await?;
    deploy(&*store, "farm-warmup").await?;
    let mut done = 0;
    while done == 0 {
        for r in store.read_all(cursor, 10_000).await? {
            cursor = r.position;
            done += usize::from(r.envelope.message_type == "DeploymentSucceeded");
        }
        if warmup.elapsed() > Duration::from_secs(600) {
            bail!("the warm-up deployment did not finish in 600 s");
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(20)).await;
    }
    let before = cursor;
    let started = Instant::now();
    for p in 0..n {
        deploy(&*store, &format!("farm-{p}")).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut done = 0;
    while done < n {
        for r in store.read_all(cursor, 10_000).await? {
            cursor = r.position;
            if r.envelope.message_type == "DeploymentSucceeded" {
                done += 1;
            } else if r.envelope.message_type == "DeploymentFailed" {
                bail!("a deployment failed: {}", r.envelope.to_json());
            }
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} deployments finished in 600 s");
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), node).await;

    let all: Vec<_> = store.stream_all(before).try_collect().await?;
    let events = all.len();
    // Hand-off: an outcome recorded -> the next StepDispatched of its stream.
    let mut last_outcome: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> = Default::default();
    // Round trip: a StepDispatched -> the outcome of its stream.
    let mut last_dispatch: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> = Default::default();
    let (mut handoffs, mut round_trips) = (Vec::new(), Vec::new());
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    for r in &all {
        if !matches!(StreamId::parse(&r.stream), StreamId::Deployment(_)) {
            continue;
        }
        match r.envelope.decode::<Event>() {
            Ok(Event::StepDispatched(_)) => {
                if let Some(t) = last_outcome.remove(r.stream.as_str()) {
                    handoffs.push(ms(r.recorded_at - t));
                }
                last_dispatch.insert(r.stream.as_str(), r.recorded_at);
            }
            Ok(e) if e.completes_step().is_some() => {
                last_outcome.insert(r.stream.as_str(), r.recorded_at);
                if let Some(t) = last_dispatch.remove(r.stream.as_str()) {
                    round_trips.push(ms(r.recorded_at - t));
                }
            }
            _ => {}
        }
    }
    let pct = |values: &mut Vec<f64>, p: f64| {
        values.sort_by(f64::total_cmp);
        values.get(((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    Ok(Outcome {
        per_second: n as f64 / elapsed,
        events_per_second: events as f64 / elapsed,
        handoff_p50: pct(&mut handoffs, 0.5),
        handoff_p99: pct(&mut handoffs, 0.99),
        round_trip_p50: pct(&mut round_trips, 0.5),
        round_trip_p99: pct(&mut round_trips, 0.99),
    })
}

/// Requests a deployment of `project`'s `live` environment.
async fn deploy(store: &dyn EventStore, project: &str) -> anyhow::Result<()> {
    let req = DeployRequest {
        project: project.into(),
        environment: "live".into(),
        git_ref: None,
        mode: BuildMode::Local,
        no_cache: false,
        run_release: true,
        dry_run: false,
    };
    if let Err(r) = requests::request_deployment(store, "bench", req).await? {
        bail!("{r}");
    }
    Ok(())
}
