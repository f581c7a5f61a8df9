//! What the driver has seen. Deciding needs a deployment's state, its
//! environment's state and, at the cutover, the traffic view. Reading and
//! folding those streams again for every event was most of the engine's
//! work (36 stream reads per deployment in the farm bench). The driver
//! keeps them here instead, moved forward by the events its subscription
//! delivers and by its own appends. It reads a stream only when it has not
//! seen it from its start, or when an append found it stale (a conflict).
//!
//! Pure bookkeeping, no I/O. An entry takes only the next version of its
//! stream: an event further on means one was missed, so the entry is
//! dropped and read again when needed; an event already applied (the
//! driver's own, delivered later) is skipped. Deciding from a stale entry
//! is safe: every decision is appended at the version it was decided on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use slipway_proto::event::{ROUTERS_STREAM, ROUTES_STREAM};
use slipway_proto::{Envelope, Event};

use crate::deployment::{evolve, Deployment};
use crate::environment::Environment;
use crate::routes::Traffic;

/// Deployments kept before finished ones are let go (they are read again
/// if anything still happens to them).
const DEPLOYMENTS_KEPT: usize = 4096;

/// A deployment as last seen, with the event that was last: the cause of
/// whatever is decided next.
#[derive(Debug, Clone)]
pub struct SeenDeployment {
    pub state: Deployment,
    pub last: Envelope,
}

/// The traffic view and the stream versions it was folded up to.
#[derive(Debug, Clone, Default)]
pub struct SeenTraffic {
    pub traffic: Traffic,
    /// The `routers` stream's version.
    pub registry: u64,
    /// Each router's own stream's version (absent: 0).
    pub acknowledgements: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct Seen {
    deployments: HashMap<String, SeenDeployment>,
    environments: HashMap<String, Environment>,
    traffic: Option<SeenTraffic>,
}

impl Seen {
    pub fn deployment(&self, stream: &str) -> Option<SeenDeployment> {
        self.deployments.get(stream).cloned()
    }

    pub fn environment(&self, stream: &str) -> Option<Environment> {
        self.environments.get(stream).cloned()
    }

    pub fn traffic(&self) -> Option<Traffic> {
        self.traffic.as_ref().map(|t| t.traffic.clone())
    }

    /// A deployment read from the store, unless a newer state is kept.
    pub fn put_deployment(&mut self, stream: &str, seen: SeenDeployment) {
        match self.deployments.get(stream) {
            Some(kept) if kept.state.version >= seen.state.version => {}
            _ => {
                self.deployments.insert(stream.to_owned(), seen);
            }
        }
    }

    /// An environment read from the store, unless a newer state is kept.
    pub fn put_environment(&mut self, stream: &str, env: Environment) {
        match self.environments.get(stream) {
            Some(kept) if kept.version >= env.version => {}
            _ => {
                self.environments.insert(stream.to_owned(), env);
            }
        }
    }

    pub fn put_traffic(&mut self, traffic: SeenTraffic) {
        self.traffic = Some(traffic);
    }

    /// Drops what is kept of `stream` (an append found it stale).
    pub fn forget(&mut self, stream: &str) {
        self.deployments.remove(stream);
        self.environments.remove(stream);
        if stream == ROUTES_STREAM || stream == ROUTERS_STREAM || stream.starts_with("router-") {
            self.traffic = None;
        }
    }

    /// One event at `version` of `stream`, delivered or appended by the
    /// driver itself. `event` is `None` if it could not be decoded: the
    /// stream is dropped, and reading it again reports why.
    pub fn observe(&mut self, stream: &str, version: u64, envelope: &Envelope, event: Option<&Event>) {
        if stream.starts_with("deployment-") {
            self.observe_deployment(stream, version, envelope, event);
        } else if stream.starts_with("environment-") {
            match (self.environments.get_mut(stream), event) {
                (Some(env), _) if version <= env.version => {}
                (Some(env), Some(event)) if version == env.version + 1 => env.apply(event),
                (None, Some(event)) if version == 1 => {
                    let mut env = Environment::default();
                    env.apply(event);
                    self.environments.insert(stream.to_owned(), env);
                }
                (Some(_), _) => {
                    self.environments.remove(stream);
                }
                (None, _) => {}
            }
        } else if let Some(t) = self.traffic.as_mut() {
            if !observe_traffic(t, stream, version, event) {
                self.traffic = None;
            }
        }
    }

    fn observe_deployment(&mut self, stream: &str, version: u64, envelope: &Envelope, event: Option<&Event>) {
        let kept = self.deployments.remove(stream);
        let state = match (kept, event) {
            (Some(kept), _) if version <= kept.state.version => Some(kept),
            (Some(kept), Some(event)) if version == kept.state.version + 1 => evolve(Some(kept.state), event)
                .ok()
                .map(|state| SeenDeployment { state, last: envelope.clone() }),
            (None, Some(event)) if version == 1 => {
                evolve(None, event).ok().map(|state| SeenDeployment { state, last: envelope.clone() })
            }
            _ => None,
        };
        if let Some(state) = state {
            self.deployments.insert(stream.to_owned(), state);
        }
    }

    /// Lets finished deployments go once many are kept.
    pub fn trim(&mut self) {
        if self.deployments.len() > DEPLOYMENTS_KEPT {
            self.deployments.retain(|_, d| !(d.state.is_finished() && d.state.late_containers.is_empty()));
        }
    }
}

/// Moves the traffic view by one event of the routes, routers or a
/// router's stream; false if a gap means it must be read again.
fn observe_traffic(t: &mut SeenTraffic, stream: &str, version: u64, event: Option<&Event>) -> bool {
    if stream == ROUTES_STREAM {
        // Only the version counts here; a higher one is simply newer.
        t.traffic.routes_version = t.traffic.routes_version.max(version);
        return true;
    }
    let (known, router) = if stream == ROUTERS_STREAM {
        (t.registry, None)
    } else if let Some(router) = stream.strip_prefix("router-") {
        (t.acknowledgements.get(router).copied().unwrap_or(0), Some(router))
    } else {
        return true;
    };
    if version <= known {
        return true;
    }
    let Some(event) = event.filter(|_| version == known + 1) else { return false };
    match router {
        None => {
            t.registry = version;
            apply_registry(&mut t.traffic.routers, event);
        }
        Some(router) => {
            t.acknowledgements.insert(router.to_owned(), version);
            if let Event::RouteAcknowledged(a) = event {
                t.traffic.acknowledged.insert(router.to_owned(), a.route_version);
            }
        }
    }
    true
}

/// The registered routers after one event of the `routers` stream (as
/// `routes::fold_routers` folds it).
fn apply_registry(routers: &mut BTreeSet<String>, event: &Event) {
    match event {
        Event::RouterStarted(r) => {
            routers.insert(r.router_id.clone());
        }
        Event::RouterStopped(r) => {
            routers.remove(&r.router_id);
        }
        _ => {}
    }
}
