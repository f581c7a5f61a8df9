//! The `slipway` command: wires the store, the queue, the engine and the
//! workers together for each way of running Slipway, and the client verbs.

mod connect;
mod render;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::{Parser, Subcommand};
use futures::future::{BoxFuture, FutureExt, Shared};
use slipway_engine::driver::Driver;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, BuildMode, DeploymentRequested};
use slipway_proto::{Envelope, Event, Step, TraceContext};
use slipway_store::chain;
use slipway_store::queue::Queue;
use slipway_store::relay::{Relay, RelayOptions};
use slipway_store::{EventStore, ExpectedVersion};
use slipway_workers::steps::dry_run::DryRun;
use slipway_workers::WorkerOptions;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "slipway", version, about = "Slipway: a self-hosted deployment control panel built on an event log")]
struct Cli {
    /// The event store: sqlite://PATH (embedded default) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, global = true, env = "SLIPWAY_DATABASE", default_value = "sqlite://.slipway/slipway.db")]
    database: String,
    /// The command queue: `memory` (in-process, embedded default) or amqp://USER:PASSWORD@HOST:PORT/VHOST.
    #[arg(long, global = true, env = "SLIPWAY_QUEUE", default_value = "memory")]
    queue: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a dry-run deployment through the whole machinery (store, outbox,
    /// relay, queue, decider, workers) in one process and show every event.
    Demo {
        /// The project name to record.
        #[arg(long, default_value = "demo")]
        project: String,
        /// Give up waiting for the deployment after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Run the engine, the outbox relay and the step workers in one process.
    AllInOne,
    /// Run the engine and the outbox relay (no step workers).
    Server,
    /// Run step workers that compete for the step queues.
    Worker {
        /// Steps to serve, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        steps: Vec<Step>,
        /// Unacknowledged commands per step queue.
        #[arg(long, default_value_t = 4)]
        prefetch: u16,
    },
    /// Print a stream's events (a deployment's is `deployment-<ID>`).
    Events { stream: String },
    /// Audit the event log.
    #[command(subcommand)]
    Audit(Audit),
}

#[derive(Subcommand)]
enum Audit {
    /// Check every stream's hash chain and report each changed, removed or reordered event.
    Verify,
}

type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Resolves on ctrl-c or SIGTERM.
fn shutdown_signal() -> Shutdown {
    async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::mem::drop(ctrl_c.await),
            };
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
    .boxed()
    .shared()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slipway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let store = connect::store(&cli.database).await?;
    match cli.command {
        Command::Demo { project, timeout } => {
            let queue = connect::queue(&cli.queue).await?;
            demo(store, queue, &project, Duration::from_secs(timeout)).await
        }
        Command::AllInOne => {
            let queue = connect::queue(&cli.queue).await?;
            let shutdown = shutdown_signal();
            serve(store, queue, true, true, WorkerOptions::default(), shutdown).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Server => {
            let queue = connect::queue(&cli.queue).await?;
            serve(store, queue, true, false, WorkerOptions::default(), shutdown_signal()).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Worker { steps, prefetch } => {
            let queue = connect::queue(&cli.queue).await?;
            let options = WorkerOptions {
                steps: if steps.is_empty() { Step::ALL.to_vec() } else { steps },
                prefetch,
                actor: format!("worker:{}", hostname()),
            };
            serve(store, queue, false, true, options, shutdown_signal()).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Events { stream } => {
            let events = store.read_stream(&stream, 1).await?;
            if events.is_empty() {
                bail!("stream `{stream}` has no events");
            }
            for e in &events {
                println!("{}", render::line(e));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Audit(Audit::Verify) => audit_verify(&*store).await,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "local".into())
}

/// Runs the engine side (driver + relay) and/or the worker side until shutdown.
async fn serve(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    engine: bool,
    workers: bool,
    options: WorkerOptions,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    if engine {
        let relay = Relay::new(store.clone(), queue.clone(), RelayOptions::default());
        tasks.spawn(relay.run(shutdown.clone()).map(Ok));
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            // The driver stops on a store outage; restart it after a pause.
            loop {
                match Driver::new(store.clone()).run(shutdown.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::error!(error = %e, "engine stopped; restarting in 1 s"),
                }
                tokio::select! {
                    _ = shutdown.clone() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    if workers {
        let (store, queue, shutdown) = (store.clone(), queue.clone(), shutdown.clone());
        tasks.spawn(async move {
            slipway_workers::run(queue, store, Arc::new(DryRun), options, shutdown)
                .await
                .context("running the step workers")
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a task panicked")??;
    }
    Ok(())
}

async fn demo(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    project: &str,
    timeout: Duration,
) -> anyhow::Result<std::process::ExitCode> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown: Shutdown = async move {
        let _ = stopped.await;
    }
    .boxed()
    .shared();
    let machinery = tokio::spawn(serve(store.clone(), queue, true, true, WorkerOptions::default(), shutdown));

    let id = Uuid::now_v7();
    let stream = deployment_stream(id);
    let request = Event::DeploymentRequested(DeploymentRequested {
        deployment_id: id,
        project: project.into(),
        environment: "test".into(),
        repository: std::env::current_dir()?.display().to_string(),
        git_ref: "HEAD".into(),
        mode: BuildMode::Local,
        no_cache: false,
        run_release: true,
        settings: Default::default(),
        dry_run: true,
    });
    let meta = Metadata {
        correlation_id: id,
        causation_id: None,
        actor: format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
        // One trace per deployment: the trace id is the deployment id.
        trace: Some(TraceContext::root(id.as_u128(), Uuid::now_v7().as_u128() as u64)),
    };
    let envelope = Envelope::new(Uuid::now_v7(), Utc::now(), &stream, &request, meta)?;
    store.append(&stream, ExpectedVersion::NoStream, &[envelope], &[]).await??;
    println!("deployment {id} (dry run) on the {} store\n", store.backend());

    let mut wake = store.wakeups();
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + timeout;
    let verdict = loop {
        let mut verdict = None;
        for recorded in store.read_stream(&stream, next).await? {
            next = recorded.version + 1;
            println!("{}", render::line(&recorded));
            match recorded.envelope.decode::<Event>() {
                Ok(Event::DeploymentSucceeded(_)) => verdict = Some(true),
                Ok(Event::DeploymentFailed(_)) => verdict = Some(false),
                _ => {}
            }
        }
        if let Some(v) = verdict {
            break v;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("deployment {id} did not finish within {timeout:?}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), wake.changed()).await;
    };
    let _ = stop.send(());
    machinery.await.context("the engine panicked")??;
    let report = chain::verify(&store.chain_rows().await?);
    println!(
        "\n{}; audit: {} events in {} streams, hash chains {}",
        if verdict { "deployment succeeded" } else { "deployment failed" },
        report.events,
        report.streams,
        if report.is_intact() { "intact" } else { "BROKEN" }
    );
    Ok(if verdict && report.is_intact() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

async fn audit_verify(store: &dyn EventStore) -> anyhow::Result<std::process::ExitCode> {
    let report = chain::verify(&store.chain_rows().await?);
    for finding in &report.findings {
        println!("TAMPERED {finding}");
    }
    println!(
        "{} events in {} streams checked; {}",
        report.events,
        report.streams,
        if report.is_intact() { "every hash chain is intact".to_string() } else { format!("{} stream(s) tampered with", report.findings.len()) }
    );
    Ok(if report.is_intact() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
