//! `slipway-bench-notifications`: notification fan-out, 1,000 events to 10
//! subscribers, and what it adds to the deployment path, beside the same
//! run with no subscriber.
//!
//! A real notifier (`notifier::run`) over PostgreSQL in a fresh schema and
//! a loopback HTTP receiver answering 200. Each event is a deployment
//! request recorded as `slipway deploy` records it
//! (`requests::request_deployment`); its latency is the deployment path's.
//! Round one has no subscriber; round two has ten generic webhooks (signed,
//! every kind), so each request fans out to ten posts while the next
//! requests are recorded. Deliveries per second count from the first
//! request to the last post received; the receiver's count must reach
//! what the notifier recorded as delivered, or the run fails.
//! Goal: the deployment path's p99 with ten subscribers is under 5 ms
//! above its p99 with none.
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-notifications`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use slipway_engine::notifier::{self, NewSubscription, NotifierOptions};
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_proto::event::{BuildMode, NotificationTarget};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::{EventStore, PgStore};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

const ADDED_P99_GOAL_MS: f64 = 5.0;

#[derive(Parser)]
#[command(about = "notification fan-out: deliveries/s to N subscribers, and the deployment path's added p99 vs none")]
struct Args {
    /// Events (deployment requests) per round.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Subscribers in the second round.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", hide_env_values = true, default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = format!("slipway_bench_notifications_{}", Uuid::now_v7().simple());
    let result = tokio::select! {
        result = run(&args, &schema) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Ok(pool) = PgPool::connect(&args.pg_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
    println!();
    print!("{}", result?);
    Ok(())
}

/// Counts the posts it takes and when the last came.
#[derive(Clone, Default)]
struct Receiver {
    taken: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Instant>>>,
}

impl Receiver {
    async fn start(&self) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        this.taken.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut last) = this.last.lock() {
                            *last = Some(Instant::now());
                        }
                        async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new()))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(addr)
    }
}

async fn run(args: &Args, schema: &str) -> anyhow::Result<String> {
    let store = PgStore::connect(&args.pg_url, PgOptions { schema: Some(schema.into()), ..Default::default() })
        .await
        .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&args.pg_url)))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    for name in ["alone", "fanned"] {
        let new = NewProject {
            name: name.into(),
            repository: "file:///srv/app.git".into(),
            default_branch: "main".into(),
            environments: vec!["live".into()],
            mirror_of: None,
        };
        requests::create_project(&*store, "bench", new).await?.map_err(|r| anyhow::anyhow!("{}", r.message()))?;
    }
    let receiver = Receiver::default();
    let addr = receiver.start().await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let notifier = tokio::spawn(notifier::run(store.clone(), NotifierOptions::default(), async move {
        let _ = stopped.await;
    }));

    // Round one: no subscriber.
    let mut alone = requests_timed(&*store, "alone", args.events).await?;
    // Round two: ten webhooks for the second project.
    for i in 0..args.subscribers {
        let new = NewSubscription {
            project: Some("fanned".into()),
            kinds: vec![],
            target: NotificationTarget::Webhook,
            url: format!("http://{addr}/hook/{i}"),
        };
        notifier::subscribe(&*store, "bench", new).await?.map_err(|r| anyhow::anyhow!("{}", r.message()))?;
    }
    let started = Instant::now();
    let mut fanned = requests_timed(&*store, "fanned", args.events).await?;
    // Every notification the notifier has to send, then received.
    let expected = args.events * args.subscribers;
    let deadline = Instant::now() + Duration::from_secs(300);
    while receiver.taken.load(Ordering::SeqCst) < expected {
        ensure!(Instant::now() < deadline, "only {} of {expected} posts arrived in 5 minutes", receiver.taken.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything else the requests notify of (none expected) arrives too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts = receiver.taken.load(Ordering::SeqCst);
    let last = receiver.last.lock().map_err(|_| anyhow::anyhow!("receiver poisoned"))?.unwrap_or_else(Instant::now);
    let took = last.duration_since(started).as_secs_f64();
    // What the notifier recorded as delivered is what arrived.
    let delivered = loop {
        let attempts = notifier::deliveries(&*store, None).await?.map_err(|r| anyhow::anyhow!("{}", r.message()))?;
        let delivered = attempts.iter().filter(|a| a.attempt.outcome == slipway_proto::event::DeliveryOutcome::Delivered).count();
        if delivered >= posts || Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(delivered == posts, "the notifier recorded {delivered} deliveries; the receiver took {posts} posts");
    let _ = stop.send(());
    let _ = notifier.await;

    let (a50, a99) = (pct(&mut alone, 0.50), pct(&mut alone, 0.99));
    let (f50, f99) = (pct(&mut fanned, 0.50), pct(&mut fanned, 0.99));
    let added = f99 - a99;
    let mut out = String::new();
    out.push_str(&format!("store:    PostgreSQL {} (schema {schema}); receiver http://{addr}\n", redact_url(&args.pg_url)));
    out.push_str(&format!("events:   {} deployment requests per round; {} subscribers in round two\n\n", args.events, args.subscribers));
    out.push_str(&format!(
        "fan-out:                     {posts} deliveries in {took:.2} s = {:.0} deliveries/s (first request -> last post)\n",
        posts as f64 / took
    ));
    out.push_str(&format!("deployment path, none:       p50 {a50:.2} ms  p99 {a99:.2} ms\n"));
    out.push_str(&format!("deployment path, {:>2} subs:    p50 {f50:.2} ms  p99 {f99:.2} ms\n", args.subscribers));
    out.push_str(&format!(
        "added p99:                   {added:.2} ms (goal < {ADDED_P99_GOAL_MS} ms: {})\n",
        if added < ADDED_P99_GOAL_MS { "met" } else { "MISSED" }
    ));
    Ok(out)
}

/// Records `n` deployment requests for `project` one after another; each one's milliseconds.
async fn requests_timed(store: &dyn EventStore, project: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let request = DeployRequest {
            project: project.into(),
            environment: "live".into(),
            git_ref: None,
            mode: BuildMode::Cloud,
            no_cache: false,
            run_release: true,
            dry_run: false,
        };
        let started = Instant::now();
        requests::request_deployment(store, "bench", request).await?.map_err(|r| anyhow::anyhow!("{}", r.message()))?;
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(took)
}

fn pct(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}
