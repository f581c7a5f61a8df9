//! How the binary's modes start Slipway's parts: `slipway_node::serve` (the
//! engine, workers and router, shared with the tests and benchmarks), plus
//! the HTTP API and the dashboard for the server modes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// Where the HTTP API and the dashboard listen, and the workers' log
/// directory whose files the live stream sends (`<data dir>/logs`: only
/// workers sharing this host and data directory write there).
#[derive(Debug, Clone)]
pub struct Http {
    pub listen: SocketAddr,
    pub logs: PathBuf,
}

impl Http {
    pub fn new(listen: SocketAddr, data_dir: &Path) -> Http {
        Http { listen, logs: data_dir.join("logs") }
    }
}

/// Runs `parts`, and the HTTP API with the dashboard on `http` when given,
/// until `shutdown`.
pub async fn serve(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    parts: Parts,
    http: Option<Http>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let api = match http {
        Some(Http { listen, logs }) => {
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
                format!("binding the HTTP API to {listen}; choose another address with --listen or SLIPWAY_LISTEN")
            })?;
            let local = listener.local_addr().unwrap_or(listen);
            eprintln!("slipway: HTTP API on http://{local}/api, dashboard on http://{local}/");
            let app = slipway_engine::api::app(store.clone()).merge(slipway_engine::web::routes());
            let app = slipway_engine::api::with_logs(app, logs);
            Some(slipway_engine::api::serve(listener, app, shutdown.clone()))
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
