//! The swarm watcher: the host agent's part on the swarm runtime. Swarm
//! restarts and places the replicas itself, so nothing is corrected here;
//! what the engine must still learn is what happened and where the
//! serving release answers now. Twice a second it looks at the serving
//! releases' Swarm services, their tasks and the nodes (through the
//! worker's engine, a Swarm manager), and
//!
//! - records what changed — a replica started, failed, rescheduled to
//!   another node, its node down, pending with no node able to take it
//!   (past a short grace; Swarm's reason said) and placed again — as
//!   `ReplicasObserved` on the environment's stream, rate-limited
//!   (`slipway_engine::replicas::Watch`);
//! - when the web replicas answer elsewhere than recorded (a node lost, a
//!   replica placed again on a new port), records `ReleaseUpstreamsObserved`
//!   once the new ones accept a connection; the engine then moves the route
//!   through its acknowledged reroute, as for a single-engine host agent's.
//!
//! Several watchers (one per worker serving the deploy step) may run: a
//! route observation's id derives from the environment's version and the
//! upstreams, so they record it once; replica records may be written by
//! each (a known limit, as for two host agents on one host), but a crash
//! loop two of them tell of is notified once (`notify::told_recently`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_engine::desired::DesiredView;
use slipway_engine::reconcile::Desired;
use slipway_engine::replicas::{self, Limits, Watch};
use slipway_proto::event::environment_stream;
use slipway_proto::Event;
use slipway_store::EventStore;
use slipway_workers::steps::{docker, swarm};
use uuid::Uuid;

use crate::shutdown::Shutdown;

/// How often the tasks are looked at.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How long a new replica may take to accept a connection before it is left out for now.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Event ids of route observations: UUID v5 in this namespace.
const OBSERVATIONS: Uuid = Uuid::from_u128(0x5119_a7a6_e47c_4e0b_9f6e_7377_6172_6d77);

/// Watches until `shutdown`, naming `host` (the worker's host) as its actor.
pub async fn run(store: Arc<dyn EventStore>, host: String, shutdown: Shutdown) {
    let mut watcher =
        Watcher { store, actor: format!("swarm-watch:{host}"), watch: Watch::new(Limits::default()), desired: DesiredView::new() };
    let mut every = tokio::time::interval(LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = every.tick() => {}
        }
        match watcher.pass().await {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %e, "swarm watcher: could not look at the swarm; trying again");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

struct Watcher {
    store: Arc<dyn EventStore>,
    actor: String,
    watch: Watch,
    /// What the environments want, read again only where it changed.
    desired: DesiredView,
}

impl Watcher {
    async fn pass(&mut self) -> Result<(), String> {
        self.desired.refresh(&*self.store).await.map_err(|e| e.to_string())?;
        let serving: BTreeMap<Uuid, &Desired> =
            self.desired.environments().iter().filter_map(|d| Some((d.state.active.as_ref()?.deployment, d))).collect();
        self.watch.retain(|_, deployment| serving.contains_key(&deployment));
        let docker = docker::connect().await.map_err(|e| e.to_string())?;
        let ids: BTreeSet<Uuid> = serving.keys().copied().collect();
        let looks = swarm::look(&docker, &ids).await.map_err(|f| f.reason)?;
        let now = Utc::now();
        for look in &looks {
            let Some(d) = serving.get(&look.deployment) else { continue };
            let stream = environment_stream(&d.project, &d.environment);
            let recorded_unplaced = d.state.replicas.get(&look.name).map_or(0, |r| r.unplaced);
            let record = self.watch.observe(&look.name, &look.role, look.deployment, &look.replicas, look.wanted, now);
            let record = record.or_else(|| self.watch.correct(&look.name, recorded_unplaced, &look.replicas, look.wanted, now));
            if let Some(record) = record {
                tracing::info!(service = %look.name, changes = record.changes.len(), "swarm watcher: replicas changed");
                self.append(&stream, Uuid::now_v7(), &Event::ReplicasObserved(record)).await;
            }
            let Some(active) = d.state.active.as_ref().filter(|_| look.role == "web") else { continue };
            let candidates = replicas::unrecorded(active, &look.replicas);
            let answering: BTreeSet<String> =
                futures::future::join_all(candidates.into_iter().map(accepts)).await.into_iter().flatten().collect();
            if let Some(observed) = replicas::reroute(active, &look.replicas, &answering) {
                tracing::info!(service = %look.name, upstreams = ?observed.upstreams, "swarm watcher: the release answers elsewhere");
                let id = Uuid::new_v5(&OBSERVATIONS, format!("{stream}@{}/{}", d.state.version, observed.upstreams.join(",")).as_bytes());
                self.append(&stream, id, &Event::ReleaseUpstreamsObserved(observed)).await;
            }
        }
        for record in self.watch.flush(now) {
            let Some(d) = serving.get(&record.deployment_id) else { continue };
            let stream = environment_stream(&d.project, &d.environment);
            self.append(&stream, Uuid::now_v7(), &Event::ReplicasObserved(record)).await;
        }
        Ok(())
    }

    async fn append(&self, stream: &str, id: Uuid, event: &Event) {
        crate::agent::append(&*self.store, &self.actor, stream, id, event).await;
    }
}

/// `upstream` if it accepts a TCP connection within `CONNECT_TIMEOUT`.
async fn accepts(upstream: String) -> Option<String> {
    let connect = tokio::net::TcpStream::connect(upstream.as_str());
    matches!(tokio::time::timeout(CONNECT_TIMEOUT, connect).await, Ok(Ok(_))).then_some(upstream)
}
