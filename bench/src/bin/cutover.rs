//! `slipway-bench-cutover`: how long a traffic switch takes, from the
//! health check passing to every router serving the new release. It runs
//! the real engine, outbox relay, RabbitMQ queues, PostgreSQL store and one
//! router in this process, with step workers whose executor answers every
//! step at once (no Docker: the switch is what is measured), and deploys
//! `--rounds` times with the router registered and, as the baseline, as
//! many times with no router (the engine's own hand-off, nothing to wait for).
//!
//! Per deployment it reads the recorded times: `HealthCheckPassed` →
//! the router's `RouteAcknowledged` of the new route version (the router
//! serves it) → `TrafficSwitched` (the engine knows). Goal: p99 of health
//! check → switched under 100 ms with one router.
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-cutover -- --rounds 200`

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Parser;
use slipway_engine::driver::DriverOptions;
use slipway_engine::lease::DEFAULT_LEASE;
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_node::{Parts, RouterOptions, RouterPart};
use slipway_proto::event::*;
use slipway_proto::{Event, Step};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_store::{EventStore, PgStore};
use slipway_workers::steps::stand_in::StandIn;
use slipway_workers::WorkerOptions;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Health check passed -> every router switched, with one router vs none, side by side")]
struct Args {
    /// Deployments with the router registered (and as many without).
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
    #[arg(long, env = "SLIPWAY_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
}

/// One deployment's switch, in milliseconds after its health check passed.
struct Switch {
    applied: Option<f64>,
    switched: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = format!("slipway_bench_cutover_{}", Uuid::now_v7().simple());
    let store = PgStore::connect(&args.pg_url, PgOptions { schema: Some(schema.clone()), ..Default::default() })
        .await
        .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&args.pg_url)))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let rabbit = RabbitQueue::connect(&args.amqp_url, RabbitOptions::default())
        .await
        .with_context(|| format!("RabbitMQ at {} (run scripts/services)", redact_url(&args.amqp_url)))?;
    let queue: Arc<dyn Queue> = Arc::new(Namespaced::new(Arc::new(rabbit), format!("benchcut{}", Uuid::now_v7().simple())));
    let result = run(&args, store.clone(), queue.clone()).await;
    for step in Step::ALL {
        let _ = queue.delete(&step.queue()).await;
    }
    if let Ok(pool) = sqlx::PgPool::connect(&args.pg_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
    result
}

async fn run(args: &Args, store: Arc<dyn EventStore>, queue: Arc<dyn Queue>) -> anyhow::Result<()> {
    let (stop, shutdown) = slipway_node::manual();
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: 0, switch_timeout: Duration::from_secs(10), ..Default::default() }),
        workers: Some((
            WorkerOptions { actor: "worker:bench".into(), ..Default::default() },
            Arc::new(StandIn { step_time: Duration::ZERO }),
        )),
        ..Default::default()
    };
    let node = tokio::spawn(slipway_node::serve(store.clone(), queue, parts, shutdown));
    let project = NewProject {
        name: "bench".into(),
        repository: "/nonexistent".into(),
        default_branch: "main".into(),
        environments: vec!["live".into()],
        mirror_of: None,
    };
    if let Err(r) = requests::create_project(&*store, "bench", project).await? {
        bail!("{r}");
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let listen = listener.local_addr()?;
    let options = RouterOptions { router_id: "bench-router".into(), domain: "localhost".into(), listen, lease: DEFAULT_LEASE };
    let (stop_router, router_shutdown) = slipway_node::manual();
    let router_parts =
        Parts { router: Some(RouterPart { listener, https: None, options, proxy: Default::default() }), ..Default::default() };
    let router = tokio::spawn(slipway_node::serve(
        store.clone(),
        Arc::new(slipway_store::queue::memory::MemoryQueue::default()),
        router_parts,
        router_shutdown,
    ));

    let with_router = deployments(&*store, args.rounds).await?;
    let _ = stop_router.send(());
    router.await?.context("router")?;
    let without = deployments(&*store, args.rounds).await?;
    let _ = stop.send(());
    node.await?.context("engine")?;

    let applied: Vec<f64> = with_router.iter().filter_map(|s| s.applied).collect();
    if applied.len() != with_router.len() {
        bail!("{} of {} switches have no acknowledgement from the router", with_router.len() - applied.len(), with_router.len());
    }
    let switched: Vec<f64> = with_router.iter().map(|s| s.switched).collect();
    let baseline: Vec<f64> = without.iter().map(|s| s.switched).collect();
    println!(
        "slipway-bench-cutover: {} deployments with one router, {} without (PostgreSQL + RabbitMQ, instant steps)",
        switched.len(),
        baseline.len()
    );
    println!("{:<44} {:>8} {:>8} {:>8}", "health check passed ->", "p50", "p99", "max");
    row("router applied the new route", &applied);
    row("switch complete (1 router)", &switched);
    row("switch complete (no router: baseline)", &baseline);
    let p99 = percentile(&switched, 0.99);
    println!("goal: p99 health check -> switched with one router < 100 ms: {p99:.1} ms -> {}", if p99 < 100.0 { "met" } else { "MISSED" });
    Ok(())
}

fn row(what: &str, ms: &[f64]) {
    println!("{what:<44} {:>6.1}ms {:>6.1}ms {:>6.1}ms", percentile(ms, 0.5), percentile(ms, 0.99), percentile(ms, 1.0));
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Deploys `rounds` times, one after another, and measures each switch.
async fn deployments(store: &dyn EventStore, rounds: usize) -> anyhow::Result<Vec<Switch>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let req = DeployRequest {
            project: "bench".into(),
            environment: "live".into(),
            git_ref: None,
            mode: BuildMode::Cloud,
            no_cache: true,
            run_release: false,
            dry_run: false,
        };
        let id = match requests::request_deployment(store, "bench", req).await? {
            Ok(id) => id,
            Err(r) => bail!("{r}"),
        };
        out.push(measure(store, id).await?);
    }
    Ok(out)
}

async fn measure(store: &dyn EventStore, id: Uuid) -> anyhow::Result<Switch> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = store.read_stream(&deployment_stream(id), 1).await?;
        let mut health = None;
        let mut switch: Option<(u64, DateTime<Utc>)> = None;
        let mut requested = None;
        for r in &recorded {
            match r.envelope.decode::<Event>()? {
                Event::HealthCheckPassed(_) => health = Some(r.recorded_at),
                Event::TrafficSwitchRequested(t) => requested = Some(t.route_version),
                Event::TrafficSwitched(t) => switch = Some((t.route_version, r.recorded_at)),
                Event::DeploymentFailed(f) => bail!("deployment {id} failed at {}: {}", f.step, f.reason),
                _ => {}
            }
        }
        if let (Some(health), Some((version, switched))) = (health, switch) {
            let applied = acknowledged(store, version.max(requested.unwrap_or(0))).await?;
            let ms = |t: DateTime<Utc>| (t - health).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            return Ok(Switch { applied: applied.map(ms), switched: ms(switched) });
        }
        if tokio::time::Instant::now() > deadline {
            bail!("deployment {id} did not switch within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// When the router recorded its first acknowledgement of `version` or later.
async fn acknowledged(store: &dyn EventStore, version: u64) -> anyhow::Result<Option<DateTime<Utc>>> {
    for r in store.read_stream(&router_stream("bench-router"), 1).await? {
        if let Event::RouteAcknowledged(a) = r.envelope.decode::<Event>()? {
            if a.route_version >= version {
                return Ok(Some(r.recorded_at));
            }
        }
    }
    Ok(None)
}
