//! The long-running modes — all-in-one, server, router, worker — and the
//! demo: each opens its queue, picks the parts of the machinery it runs
//! (`machinery.rs`, `slipway_node::Parts`) and serves until ctrl-c or
//! SIGTERM. Also `projections rebuild`, the one maintenance verb that
//! restarts what the engine reads from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use slipway_engine::driver::DriverOptions;
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_node::Parts;
use slipway_proto::event::BuildMode;
use slipway_proto::Step;
use slipway_store::chain;
use slipway_store::EventStore;
use slipway_workers::WorkerOptions;

use crate::args::{AgentArgs, RouterArgs, ServeArgs};
use crate::{actor, connect, exit, follow, machinery, report};

/// What the modes take from the global options.
pub struct Options {
    pub queue: String,
    pub queue_namespace: Option<String>,
    pub data_dir: PathBuf,
    pub registry: Option<String>,
    pub pull_base_images: bool,
}

impl Options {
    async fn queue(&self) -> anyhow::Result<Arc<dyn slipway_store::queue::Queue>> {
        connect::queue(&self.queue, self.queue_namespace.as_deref()).await
    }

    fn pipeline(&self) -> Arc<dyn slipway_workers::Executor> {
        machinery::pipeline(&self.data_dir, self.registry.clone(), self.pull_base_images)
    }
}

/// `api_store` is the HTTP API's (`connect::api_store`); the rest use `store`.
pub async fn all_in_one(
    store: Arc<dyn EventStore>,
    api_store: Arc<dyn EventStore>,
    options: &Options,
    serve: ServeArgs,
    router: RouterArgs,
    no_router: bool,
    agent: AgentArgs,
) -> anyhow::Result<ExitCode> {
    let queue = options.queue().await?;
    let router = match no_router {
        true => None,
        false => Some(
            machinery::router(
                router.router_listen,
                router.https_listen,
                router.router_id,
                router.domain,
                router.router_config.as_deref(),
                Duration::from_secs(router.lease),
            )
            .await?,
        ),
    };
    let workers = WorkerOptions { agent: agent.options(), ..all_workers(format!("worker:{}", hostname())) };
    let data_dir = options.data_dir.clone();
    let parts = Parts {
        engine: Some(serve.driver()),
        acme: serve.acme(),
        workers: Some((workers, options.pipeline())),
        router,
        poller: Some(slipway_node::poll::PollerOptions { workspaces: data_dir.join("workspaces") }),
        notifier: Some(Default::default()),
        ..Default::default()
    };
    let api = machinery::Api { listen: serve.listen, data_dir, store: api_store };
    machinery::serve(store, queue, parts, Some(api), machinery::on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `api_store` is the HTTP API's (`connect::api_store`); the engine uses `store`.
pub async fn server(
    store: Arc<dyn EventStore>,
    api_store: Arc<dyn EventStore>,
    options: &Options,
    args: ServeArgs,
) -> anyhow::Result<ExitCode> {
    if options.queue == MEMORY {
        eprintln!(
            "slipway: warning: with --queue memory the server's commands stay in this process, and no worker in another \
             process receives them: deployments wait. Give the server and every worker the same --queue amqp://... \
             (SLIPWAY_QUEUE), or run everything in one process with `slipway all-in-one`"
        );
    }
    let queue = options.queue().await?;
    let data_dir = options.data_dir.clone();
    let poller = Some(slipway_node::poll::PollerOptions { workspaces: data_dir.join("workspaces") });
    let parts = Parts { engine: Some(args.driver()), poller, acme: args.acme(), notifier: Some(Default::default()), ..Default::default() };
    let api = machinery::Api { listen: args.listen, data_dir, store: api_store };
    machinery::serve(store, queue, parts, Some(api), machinery::on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn router(store: Arc<dyn EventStore>, args: RouterArgs) -> anyhow::Result<ExitCode> {
    let lease = Duration::from_secs(args.lease);
    let router =
        machinery::router(args.router_listen, args.https_listen, args.router_id, args.domain, args.router_config.as_deref(), lease).await?;
    let parts = Parts { router: Some(router), ..Default::default() };
    let queue: Arc<dyn slipway_store::queue::Queue> = Arc::new(slipway_store::queue::memory::MemoryQueue::default());
    machinery::serve(store, queue, parts, None, machinery::on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The `worker` mode's own options.
pub struct WorkerArgs {
    pub steps: Vec<Step>,
    pub prefetch: u16,
    pub concurrency: u16,
    pub stand_in_ms: Option<u64>,
    pub agent: AgentArgs,
    pub runtime: slipway_workers::steps::runtime::RuntimeKind,
}

pub async fn worker(store: Arc<dyn EventStore>, options: &Options, args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let WorkerArgs { steps, prefetch, concurrency, stand_in_ms, agent, runtime } = args;
    if options.queue == MEMORY {
        return Err(exit::usage(
            "a worker on the in-process queue (--queue memory, the default) receives nothing from a server in another \
             process: give the server and every worker the same --queue amqp://... (SLIPWAY_QUEUE), or run everything \
             in one process with `slipway all-in-one`",
        ));
    }
    let swarm = runtime == slipway_workers::steps::runtime::RuntimeKind::Swarm;
    let queue = options.queue().await?;
    let worker_options = WorkerOptions {
        steps: if steps.is_empty() { Step::ALL.to_vec() } else { steps },
        prefetch,
        concurrency: usize::from(concurrency),
        actor: format!("worker:{}", hostname()),
        // Stand-in workers start no containers: nothing to look after.
        // Nor do swarm workers: Swarm restarts and reschedules its services.
        agent: agent.options().filter(|_| stand_in_ms.is_none() && !swarm),
        // What a swarm worker looks after instead: what Swarm did, where the replicas answer.
        swarm_watch: stand_in_ms.is_none() && swarm,
        ..Default::default()
    };
    let executor: Arc<dyn slipway_workers::Executor> = match stand_in_ms {
        Some(ms) => Arc::new(slipway_workers::steps::stand_in::StandIn { step_time: Duration::from_millis(ms) }),
        None => machinery::pipeline_on(&options.data_dir, options.registry.clone(), options.pull_base_images, runtime),
    };
    let parts = Parts { workers: Some((worker_options, executor)), ..Default::default() };
    machinery::serve(store, queue, parts, None, machinery::on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `projections rebuild`.
pub async fn rebuild(store: &dyn EventStore) -> anyhow::Result<ExitCode> {
    let state = slipway_engine::rebuild::rebuild(store).await?;
    println!("{} stream(s) folded; state digest {}", state.streams.len(), state.digest());
    for (stream, why) in &state.broken {
        println!("BROKEN {stream}: {why}");
    }
    println!("the engine's checkpoint is back at the first event: restart running engines to re-read the log");
    println!("read models refilled from the log up to position {}", store.read_models().position().await?);
    Ok(if state.broken.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The in-process queue's `--queue` value.
const MEMORY: &str = "memory";

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "local".into())
}

pub(crate) fn all_workers(actor: String) -> WorkerOptions {
    WorkerOptions { steps: Step::ALL.to_vec(), prefetch: 4, actor, ..Default::default() }
}

/// The workers a CLI command runs in-process for its own deployment: gone
/// from `slipway workers` once the command ends cleanly.
pub(crate) fn embedded_workers(actor: String) -> WorkerOptions {
    WorkerOptions { forget_when_stopped: true, ..all_workers(actor) }
}

pub async fn demo(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn slipway_store::queue::Queue>,
    data_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if requests::load_project(&*store, "demo").await?.is_none() {
        let repo = std::env::current_dir()?.display().to_string();
        let new = NewProject {
            name: "demo".into(),
            repository: repo,
            default_branch: "HEAD".into(),
            environments: vec!["test".into()],
            mirror_of: None,
        };
        if let Err(rejection) = requests::create_project(&*store, &actor::actor(), new).await? {
            bail!("{rejection}");
        }
    }
    let (stop, shutdown) = machinery::manual();
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: 0, ..Default::default() }),
        workers: Some((embedded_workers("worker".into()), machinery::pipeline(data_dir, None, false))),
        ..Default::default()
    };
    let machinery = tokio::spawn(machinery::serve(store.clone(), queue, parts, None, shutdown));
    let request = DeployRequest {
        project: "demo".into(),
        environment: "test".into(),
        git_ref: None,
        mode: BuildMode::Local,
        no_cache: false,
        run_release: true,
        dry_run: true,
    };
    let id = match requests::request_deployment(&*store, &actor::actor(), request).await? {
        Ok(id) => id,
        Err(rejection) => return Err(exit::rejected(rejection)),
    };
    println!("deployment {id} (dry run) on the {} store\n", store.backend());
    let mut reporter = report::Reporter::new(report::Style::Events);
    let ending = follow::follow(&mut follow::StoreSource::new(&*store, id), &mut reporter, id, None, timeout).await?;
    let _ = stop.send(());
    machinery.await.context("the engine panicked")??;
    let report = chain::verify(&store.chain_rows().await?);
    println!(
        "\n{}; audit: {} events in {} streams, hash chains {}",
        if ending.succeeded { "deployment succeeded" } else { "deployment failed" },
        report.events,
        report.streams,
        if report.is_intact() { "intact" } else { "BROKEN" }
    );
    Ok(if ending.succeeded && report.is_intact() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
