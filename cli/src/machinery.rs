//! Runs Slipway's moving parts — the engine's driver, the outbox relay and
//! the step workers — in this process, in whichever combination a mode
//! needs, until a shutdown future resolves.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::{BoxFuture, FutureExt, Shared};
use slipway_engine::driver::{Driver, DriverOptions};
use slipway_store::queue::Queue;
use slipway_store::relay::{Relay, RelayOptions};
use slipway_store::EventStore;
use slipway_workers::steps::pipeline::Pipeline;
use slipway_workers::steps::{Executor, Runtime};
use slipway_workers::WorkerOptions;

pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Resolves on ctrl-c or SIGTERM.
pub fn on_signal() -> Shutdown {
    async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::mem::drop(ctrl_c.await),
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    .boxed()
    .shared()
}

/// A shutdown that resolves when the returned sender is used or dropped.
pub fn manual() -> (tokio::sync::oneshot::Sender<()>, Shutdown) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    (stop, async move {
        let _ = stopped.await;
    }
    .boxed()
    .shared())
}

/// Which parts run here.
#[derive(Debug, Clone)]
pub struct Parts {
    pub engine: bool,
    pub workers: Option<WorkerOptions>,
    pub drain_seconds: u64,
}

/// The executor the workers use, with checkouts and logs under `data_dir`.
pub fn pipeline(data_dir: &Path) -> Arc<dyn Executor> {
    Arc::new(Pipeline::new(Runtime { workspaces: data_dir.join("workspaces"), logs: data_dir.join("logs") }))
}

pub async fn serve(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    executor: Arc<dyn Executor>,
    parts: Parts,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    if parts.engine {
        let relay = Relay::new(store.clone(), queue.clone(), RelayOptions::default());
        tasks.spawn(relay.run(shutdown.clone()).map(Ok));
        let (store, shutdown) = (store.clone(), shutdown.clone());
        let options = DriverOptions { drain_seconds: parts.drain_seconds, ..Default::default() };
        tasks.spawn(async move {
            // The driver stops on a store outage; restart it after a pause.
            loop {
                match Driver::new(store.clone(), options.clone()).run(shutdown.clone()).await {
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
    if let Some(options) = parts.workers {
        let (store, queue, shutdown) = (store.clone(), queue.clone(), shutdown.clone());
        tasks.spawn(async move {
            slipway_workers::run(queue, store, executor, options, shutdown).await.context("running the step workers")
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a task panicked")??;
    }
    Ok(())
}

/// `serve`, plus the HTTP API on `listen` until the same shutdown. Binding
/// comes first, so a taken port fails the command before anything runs.
pub async fn serve_with_api(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    executor: Arc<dyn Executor>,
    parts: Parts,
    listen: SocketAddr,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the HTTP API to {listen}; choose another address with --listen or SLIPWAY_LISTEN"))?;
    eprintln!("slipway: HTTP API on http://{}/api", listener.local_addr().unwrap_or(listen));
    let api = slipway_engine::api::serve(listener, slipway_engine::api::app(store.clone()), shutdown.clone());
    let api = async { api.await.context("serving the HTTP API") };
    tokio::try_join!(serve(store, queue, executor, parts, shutdown), api)?;
    Ok(())
}
