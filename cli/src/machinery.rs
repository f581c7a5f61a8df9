//! How the binary's modes start Slipway's parts: `slipway_node::serve` (the
//! engine, workers and router, shared with the tests and benchmarks), plus
//! the HTTP API for the server modes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use slipway_node::{Parts, RouterOptions, RouterPart, Shutdown};
use slipway_router::ServeOptions;
use slipway_store::queue::Queue;
use slipway_store::EventStore;
use slipway_workers::steps::pipeline::Pipeline;
use slipway_workers::steps::{Executor, Runtime};

pub use slipway_node::{manual, on_signal};

/// The executor the workers use, with checkouts and logs under `data_dir`,
/// pushing builds to (and pulling missing images from) `registry`, pulling
/// base images before each build when asked.
pub fn pipeline(data_dir: &Path, registry: Option<String>, pull_base_images: bool) -> Arc<dyn Executor> {
    Arc::new(Pipeline::new(Runtime { workspaces: data_dir.join("workspaces"), logs: data_dir.join("logs"), registry, pull_base_images }))
}

/// A router part bound to `listen`. Binding comes first, so a taken port
/// fails the command before anything runs.
pub async fn router(listen: SocketAddr, id: Option<String>, domain: String) -> anyhow::Result<RouterPart> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the router to {listen}; choose another address with --router"))?;
    let listen = listener.local_addr().unwrap_or(listen);
    let router_id = id.unwrap_or_else(|| format!("{}-{}", crate::hostname(), listen.port()));
    eprintln!("slipway: router {router_id} on http://{listen}/ serving http://<project>-<env>.{domain}:{}/", listen.port());
    Ok(RouterPart { listener, options: RouterOptions { router_id, domain, listen }, proxy: ServeOptions::default() })
}

/// Runs `parts`, and the HTTP API on `api` when given, until `shutdown`.
pub async fn serve(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    parts: Parts,
    api: Option<SocketAddr>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let api = match api {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
                format!("binding the HTTP API to {listen}; choose another address with --listen or SLIPWAY_LISTEN")
            })?;
            eprintln!("slipway: HTTP API on http://{}/api", listener.local_addr().unwrap_or(listen));
            Some(slipway_engine::api::serve(listener, slipway_engine::api::app(store.clone()), shutdown.clone()))
        }
        None => None,
    };
    let node = async { slipway_node::serve(store, queue, parts, shutdown.clone()).await.context("running Slipway") };
    let api = async {
        match api {
            Some(api) => api.await.context("serving the HTTP API"),
            None => Ok(()),
        }
    };
    tokio::try_join!(node, api)?;
    Ok(())
}
