//! Runs the parts of a node until a shutdown future resolves: the engine
//! (the driver, restarted after a store outage, the outbox relay, the
//! read models' subscriber, the sweep of expired previews and the notifier), the step workers (with the host agent where
//! they serve the deploy step), and a router (its table follows the store; the proxy
//! serves from it). The binary's modes, the end-to-end tests and the
//! benchmarks all start Slipway through this one function. Where the
//! engine or workers run, the queue and lag gauges are sampled too.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use slipway_engine::driver::{Driver, DriverOptions};
use slipway_engine::projector::Projector;
use slipway_proto::Step;
use slipway_router::{Edge, ServeOptions};
use slipway_store::queue::Queue;
use slipway_store::relay::{Relay, RelayOptions};
use slipway_store::EventStore;
use slipway_workers::steps::Executor;
use slipway_workers::WorkerOptions;
use tokio::net::TcpListener;

use crate::certs::CertFollower;
use crate::gauges::{self, Sampled};
use crate::routing::{Follower, RouterOptions};
use crate::shutdown::Shutdown;

/// Threads a router serves on.
pub const ROUTER_THREADS: usize = 2;

/// Which parts run here.
#[derive(Default)]
pub struct Parts {
    pub engine: Option<DriverOptions>,
    pub relay: RelayOptions,
    pub workers: Option<(WorkerOptions, Arc<dyn Executor>)>,
    pub router: Option<RouterPart>,
    /// Poll repositories for auto-deploy rules with `--poll` (where the engine runs).
    pub poller: Option<crate::poll::PollerOptions>,
    /// Obtain and renew certificates over ACME (where the engine runs).
    pub acme: Option<slipway_engine::acme::AcmeOptions>,
    /// Send notifications to their subscribers (where the engine runs).
    pub notifier: Option<slipway_engine::notifier::NotifierOptions>,
}

/// A router: a bound listener (bind first, so a taken port fails before
/// anything runs) and its identity.
pub struct RouterPart {
    pub listener: TcpListener,
    /// The HTTPS listener, if any: TLS with the certificates of the
    /// certificates stream (`certs.rs`).
    pub https: Option<TcpListener>,
    pub options: RouterOptions,
    pub proxy: ServeOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the step workers stopped: {0}")]
    Workers(String),
    #[error("the router could not load its routes: {0}")]
    Routes(String),
    #[error("the router stopped serving: {0}")]
    Proxy(std::io::Error),
    #[error("a task panicked: {0}")]
    Panicked(String),
}

pub async fn serve(store: Arc<dyn EventStore>, queue: Arc<dyn Queue>, parts: Parts, shutdown: Shutdown) -> Result<(), NodeError> {
    let mut tasks = tokio::task::JoinSet::new();
    let sampled = Sampled {
        lags: parts.engine.is_some(),
        queues: match (&parts.engine, &parts.workers) {
            (Some(_), _) => Step::ALL.to_vec(),
            (None, Some((options, _))) => options.steps.clone(),
            (None, None) => Vec::new(),
        },
    };
    if sampled.lags || !sampled.queues.is_empty() {
        tasks.spawn(gauges::run(store.clone(), queue.clone(), sampled, shutdown.clone()).map(Ok));
    }
    if let Some(mut options) = parts.engine {
        options.messaging_system = queue.system();
        let relay = Relay::new(store.clone(), queue.clone(), parts.relay.clone());
        tasks.spawn(relay.run(shutdown.clone()).map(Ok));
        // Previews past their time to live, removed beside the driver.
        tasks.spawn(slipway_engine::lifecycle::run_sweep(store.clone(), options.preview_sweep, shutdown.clone()).map(Ok));
        tasks.spawn(drive(store.clone(), options, shutdown.clone()));
        // Certificates over ACME, beside the driver too.
        if let Some(acme) = parts.acme {
            tasks.spawn(slipway_engine::acme::run(store.clone(), acme, shutdown.clone()).map(Ok));
        }
        // Notifications: a reader of the log of its own, so no delivery
        // waits on the driver nor the driver on a delivery.
        if let Some(notifier) = parts.notifier {
            tasks.spawn(slipway_engine::notifier::run(store.clone(), notifier, shutdown.clone()).map(Ok));
        }
        // The read models' subscriber (reads catch up themselves too).
        tasks.spawn(Projector::default().run(store.clone(), shutdown.clone()).map(Ok));
    }
    if let Some(poller) = parts.poller {
        tasks.spawn(crate::poll::run(store.clone(), poller, shutdown.clone()).map(Ok));
    }
    if let Some((options, executor)) = parts.workers {
        // The host agent runs where containers are started: beside the deploy step.
        if let (true, Some(agent)) = (options.steps.contains(&Step::Deploy), options.agent.clone()) {
            tasks.spawn(crate::agent::run(store.clone(), options.host.clone(), agent, shutdown.clone()).map(Ok));
        }
        // Its counterpart on the swarm runtime, where Swarm runs the replicas.
        if options.steps.contains(&Step::Deploy) && options.swarm_watch {
            tasks.spawn(crate::swarm_watch::run(store.clone(), options.host.clone(), shutdown.clone()).map(Ok));
        }
        let (store, queue, shutdown) = (store.clone(), queue.clone(), shutdown.clone());
        tasks.spawn(async move {
            slipway_workers::run(queue, store, executor, options, shutdown).await.map_err(|e| NodeError::Workers(e.to_string()))
        });
    }
    if let Some(router) = parts.router {
        // Certificates before registering: a router serves HTTPS (and
        // ACME answers) from its first connection.
        let certs = CertFollower::start(store.clone()).await.map_err(|e| NodeError::Routes(e.to_string()))?;
        let mut proxy = router.proxy;
        let mut edge = proxy.edge.take().unwrap_or_else(|| Edge::new(certs.handle()));
        edge.certificates = certs.handle();
        edge.https_port = router.https.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
        proxy.edge = Some(edge);
        tasks.spawn(certs.follow(shutdown.clone()).map(Ok));
        let follower = Follower::start(store.clone(), router.options).await.map_err(|e| NodeError::Routes(e.to_string()))?;
        let handle = follower.handle();
        tasks.spawn(follower.follow(shutdown.clone()).map(Ok));
        if let Some(https) = router.https {
            let tls = ServeOptions { terminate_tls: true, ..proxy.clone() };
            let proxy = slipway_router::serve_threads(https, handle.clone(), tls, ROUTER_THREADS, shutdown.clone());
            tasks.spawn(proxy.map(|r| r.map_err(NodeError::Proxy)));
        }
        // Its own threads, one single-threaded runtime each (measured: about
        // 1.5x the throughput of sharing the node's runtime).
        let proxy = slipway_router::serve_threads(router.listener, handle, proxy, ROUTER_THREADS, shutdown.clone());
        tasks.spawn(proxy.map(|r| r.map_err(NodeError::Proxy)));
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| NodeError::Panicked(e.to_string()))??;
    }
    Ok(())
}

/// The driver stops on a store outage; restart it after a pause.
async fn drive(store: Arc<dyn EventStore>, options: DriverOptions, shutdown: Shutdown) -> Result<(), NodeError> {
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
}
