//! How the binary's modes start Slipway's parts: `slipway_node::serve` (the
//! engine, workers and router, shared with the tests and benchmarks), plus
//! the HTTP API and the dashboard for the server modes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use slipway_engine::api::ApiConfig;
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
    Arc::new(Pipeline::new(runtime(data_dir, registry, pull_base_images)))
}

/// The steps' runtime under `data_dir`, made absolute: the log paths the
/// steps record are then found whatever directory a reader runs in. (A
/// relative data directory gave relative paths, `.slipway/logs/...`,
/// which a CLI reading them under its data directory looked for in
/// `.slipway/.slipway/logs/...`.)
fn runtime(data_dir: &Path, registry: Option<String>, pull_base_images: bool) -> Runtime {
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    Runtime { workspaces: data_dir.join("workspaces"), logs: data_dir.join("logs"), registry, pull_base_images }
}

/// `pipeline`, its containers on `runtime` (`slipway worker --runtime`).
pub fn pipeline_on(
    data_dir: &Path,
    registry: Option<String>,
    pull_base_images: bool,
    runtime: slipway_workers::steps::runtime::RuntimeKind,
) -> Arc<dyn Executor> {
    Arc::new(Pipeline::on(self::runtime(data_dir, registry, pull_base_images), runtime))
}

/// A router part bound to `listen`, with the caps and timeouts of the
/// configuration file `config` (defaults without one). Reading the file and
/// binding come first, so a bad file or a taken port fails the command
/// before anything runs.
pub async fn router(
    listen: SocketAddr,
    https: Option<SocketAddr>,
    id: Option<String>,
    domain: String,
    config: Option<&Path>,
    lease: std::time::Duration,
) -> anyhow::Result<RouterPart> {
    let file = match config {
        Some(path) => slipway_node::router_config::load_file(path).map_err(|e| crate::exit::usage(e.to_string()))?,
        None => slipway_node::router_config::RouterFile { proxy: ServeOptions::default(), https_listen: None },
    };
    let proxy = file.proxy;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the router to {listen}; choose another address with --router"))?;
    let https = match https.or(file.https_listen) {
        Some(addr) => {
            let bound = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the router's HTTPS listener to {addr}; choose another address with --https-listen"))?;
            eprintln!("slipway: router HTTPS on {}", bound.local_addr().unwrap_or(addr));
            Some(bound)
        }
        None => None,
    };
    let listen = listener.local_addr().unwrap_or(listen);
    let router_id = id.unwrap_or_else(|| format!("{}-{}", crate::processes::hostname(), listen.port()));
    eprintln!("slipway: router {router_id} on http://{listen}/ serving http://<project>-<env>.{domain}:{}/", listen.port());
    Ok(RouterPart { listener, https, options: RouterOptions { router_id, domain, listen, lease }, proxy })
}

/// Where the HTTP API listens, the workers' data directory it reads logs
/// from, and the store it reads and appends through: on PostgreSQL a pool
/// of its own with a statement timeout (`connect::api_store`), so requests
/// never wait on, nor take, the engine's connections.
pub struct Api {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: Arc<dyn EventStore>,
}

/// Runs `parts`, and the HTTP API with the dashboard on `api` when given,
/// until `shutdown`.
pub async fn serve(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    parts: Parts,
    api: Option<Api>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let api = match api {
        Some(Api { listen, data_dir, store: api_store }) => {
            check_tokens(&*api_store, listen).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the HTTP API to {listen}; choose another address with --listen or SLIPWAY_LISTEN"))?;
            let local = listener.local_addr().unwrap_or(listen);
            eprintln!("slipway: HTTP API on http://{local}/api, dashboard on http://{local}/");
            let config = ApiConfig { data_dir, worker_missing_after: slipway_workers::worker::HEARTBEAT * 3 };
            let app = slipway_engine::api::app_with(api_store, config).merge(slipway_engine::web::routes());
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

/// With no token issued every request is refused: on loopback that is only
/// a warning (make one next), anywhere else the API does not start, so a
/// panel is never reachable from the network before anyone can use it.
async fn check_tokens(store: &dyn EventStore, listen: SocketAddr) -> anyhow::Result<()> {
    let active = slipway_engine::requests::load_tokens(store).await.context("reading the API tokens")?.active(chrono::Utc::now());
    if active > 0 {
        return Ok(());
    }
    let create = "create one with `slipway token create NAME --scope admin` (same --database)";
    if !listen.ip().is_loopback() {
        anyhow::bail!("refusing to serve the HTTP API on {listen} with no token issued; {create}, or listen on 127.0.0.1");
    }
    eprintln!("slipway: warning: no API token is issued, so every API request gets 401; {create}");
    Ok(())
}
