//! `slipway hosts drain NAME` and `slipway hosts activate NAME`: an
//! operator takes a swarm node out of service (Swarm's `drain`
//! availability: it places the node's replicas on the others) and waits
//! until that is done as far as traffic goes — nothing of Slipway's is
//! meant to run there any more, every serving release runs its replicas
//! elsewhere, and every route was moved off the node and acknowledged by
//! the routers (the swarm watcher records where the replicas answer; the
//! engine reroutes). The routers retry a request refused by a replica that
//! is stopping on another one, so a drain fails no idempotent request.
//! Both are recorded as `HostAvailabilityChanged` on the installation
//! stream, naming who asked, as soon as Swarm was told (a drain whose wait
//! then times out is recorded too). A drain that would leave a release's
//! replicas with no node satisfying its placement is refused before
//! anything changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_engine::load;
use slipway_engine::rejection::Rejection;
use slipway_proto::event::{HostAvailabilityChanged, INSTALLATION_STREAM};
use slipway_proto::Event;
use slipway_store::EventStore;
use slipway_workers::steps::docker;
use slipway_workers::steps::swarm::{self, Availability, AvailabilityChange, NodeError};
use uuid::Uuid;

/// How often the drain looks whether it is done.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Why a drain or an activation did not end well.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Refused before anything changed: the name picks no node or several
    /// (not found: exit 3; invalid: exit 2), a release would be left with
    /// no node to run on (a conflict: exit 4), or Docker could not be
    /// reached (unavailable: exit 5).
    #[error(transparent)]
    Refused(#[from] Rejection),
    /// Swarm or the store failed, or the wait ran out.
    #[error("{0}")]
    Failed(String),
}

/// Drains node `name` and waits up to `timeout` until its replicas run
/// elsewhere and the routes followed; records the drain as `actor`.
pub async fn drain(store: &Arc<dyn EventStore>, name: &str, actor: &str, timeout: Duration) -> Result<HostAvailabilityChanged, DrainError> {
    // Refused before anything moves when a release would be left with no
    // node to run on: Swarm would stop its replicas there and place them
    // nowhere.
    let stranded = swarm::stranded_by_drain(name).await.map_err(refused)?;
    if !stranded.is_empty() {
        return Err(Rejection::Conflict(format!(
            "draining {name} would leave {} with nowhere to run: no other ready, active node satisfies the placement; \
             add or label a node that does (or change [web] hosts and deploy) first",
            stranded.join(", ")
        ))
        .into());
    }
    let change = swarm::set_availability(name, Availability::DRAIN).await.map_err(refused)?;
    // Recorded once Swarm was told, whether or not the wait below ends well.
    let recorded = record(store, &change, "drain", change.tasks.clone(), actor).await.map_err(DrainError::Failed)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = match moved_off(store, &change).await {
            Ok(None) => break,
            Ok(Some(why)) => why,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(DrainError::Failed(format!(
                "node {} is draining, but after {}s {left}; `slipway hosts` shows where its replicas are",
                change.hostname,
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
    Ok(recorded)
}

/// Lets Swarm place replicas on node `name` again (nothing moves back by
/// itself: new tasks go there); records it as `actor`.
pub async fn activate(store: &Arc<dyn EventStore>, name: &str, actor: &str) -> Result<HostAvailabilityChanged, DrainError> {
    let change = swarm::set_availability(name, Availability::ACTIVE).await.map_err(refused)?;
    record(store, &change, "active", Vec::new(), actor).await.map_err(DrainError::Failed)
}

/// A node the operator named that is not one (or is several) is refused
/// as such; Docker's failures stay failures.
fn refused(e: NodeError) -> DrainError {
    match e {
        NodeError::NotFound(why) => Rejection::NotFound(why).into(),
        NodeError::Ambiguous(why) => Rejection::Invalid(why).into(),
        NodeError::Unavailable(why) => Rejection::Unavailable(why).into(),
        NodeError::Failed(failure) => DrainError::Failed(failure.reason),
    }
}

async fn record(
    store: &Arc<dyn EventStore>,
    change: &AvailabilityChange,
    availability: &str,
    moved: Vec<String>,
    actor: &str,
) -> Result<HostAvailabilityChanged, String> {
    let event = HostAvailabilityChanged {
        node: change.hostname.clone(),
        node_id: change.id.clone(),
        availability: availability.into(),
        previous: change.previous.clone(),
        moved,
    };
    crate::agent::append(&**store, actor, INSTALLATION_STREAM, Uuid::now_v7(), &Event::HostAvailabilityChanged(event.clone())).await;
    Ok(event)
}

/// `None` once the drain is done for traffic; else what is left, in words.
async fn moved_off(store: &Arc<dyn EventStore>, change: &AvailabilityChange) -> Result<Option<String>, String> {
    let there = swarm::tasks_on(&change.id).await.map_err(|f| f.reason)?;
    if !there.is_empty() {
        return Ok(Some(format!("Swarm still runs {} there", there.join(", "))));
    }
    let desired = load::desired(&**store).await.map_err(|e| e.to_string())?;
    let serving: BTreeSet<Uuid> = desired.iter().filter_map(|d| Some(d.state.active.as_ref()?.deployment)).collect();
    let docker = docker::connect().await.map_err(|e| e.to_string())?;
    for look in swarm::look(&docker, &serving).await.map_err(|f| f.reason)? {
        let running = look.replicas.iter().filter(|r| r.serving()).count();
        if running < look.wanted as usize {
            return Ok(Some(format!("{} runs {running} of its {} replicas", look.name, look.wanted)));
        }
    }
    if let Some(d) = desired.iter().find(|d| d.state.rerouting.is_some()) {
        return Ok(Some(format!("the routers have not all acknowledged {} {}'s new route", d.project, d.environment)));
    }
    let on_node = format!("{}:", change.address);
    let routes = load::routes(&**store).await.map_err(|e| e.to_string())?;
    if let Some(((project, environment), _)) =
        routes.by_environment.iter().find(|(_, r)| r.upstreams.iter().any(|u| u.starts_with(&on_node)))
    {
        return Ok(Some(format!("the route of {project} {environment} still goes to {}", change.address)));
    }
    Ok(None)
}
