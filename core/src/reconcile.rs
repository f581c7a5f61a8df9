//! The reconciler: what the engine recorded should run, against what a
//! Docker host runs. Pure — the host agent (`slipway_node::agent`) observes
//! the containers, calls `reconcile`, carries out the corrections and
//! records each one with its reason; `route_correction` is the engine's
//! side, moving a route to where the serving release answers now.
//!
//! The rules, per slipway-labelled container:
//!
//! | the container belongs to                       | correction                                   |
//! |------------------------------------------------|----------------------------------------------|
//! | an environment or deployment this store does not know | none (another installation's)         |
//! | a deployment still in its environment's queue  | none (the deployment owns its containers)    |
//! | the serving release, running                   | none; a web container on another port than recorded: `Reroute` |
//! | the serving release, restarting                | none (Docker is restarting it)               |
//! | the serving release, exited or created         | `Start` (web and process containers only)    |
//! | any other deployment, the environment settled for `grace` | `Remove`                          |
//! | any other deployment, settled less than `grace` ago | none yet (its retirement may be draining) |
//!
//! And per environment: when a container of the serving release is on
//! no host at all any more (removed by hand, a Docker host that lost its
//! data) and the release runs on this host, with no deployment in the
//! environment's queue: `Restore` — the host agent requests a deployment
//! of the same release, which starts fresh containers through the
//! pipeline (health check, acknowledged switch, watch). Its containers
//! cannot simply be created again here: what they need (settings,
//! secrets, the release's configuration) is the pipeline's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use slipway_proto::event::{RerouteSettled, RouteChanged, RouteReason};
pub use slipway_proto::host::{ContainerState, HostContainer as Observed};
use uuid::Uuid;

use crate::environment::Environment;
use crate::routes::Route;

/// One environment as recorded: its projection, and when a deployment
/// last finished there (a replaced release's retirement drains from then on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub project: String,
    pub environment: String,
    pub state: Environment,
    pub settled_at: Option<DateTime<Utc>>,
}

/// What the host agent does, and the reason it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correction {
    /// `id` is Docker's id of the container instance.
    Remove {
        project: String,
        environment: String,
        deployment: Uuid,
        container: String,
        id: String,
        reason: String,
    },
    Start {
        project: String,
        environment: String,
        deployment: Uuid,
        container: String,
        reason: String,
    },
    /// The serving release answers at `upstreams`, not at what is recorded.
    Reroute {
        project: String,
        environment: String,
        deployment: Uuid,
        upstreams: Vec<String>,
        previous: Vec<String>,
    },
    /// The serving release's `missing` containers are gone: start the
    /// release again as a new deployment, recorded only if the environment
    /// is still at `version`.
    Restore {
        project: String,
        environment: String,
        deployment: Uuid,
        missing: Vec<String>,
        version: u64,
        reason: String,
    },
}

/// The corrections that make `host` (a Docker host's name) run what is
/// recorded, at `now`. Containers of a release that should not run are
/// removed only once the environment has been settled (no deployment
/// finished) for `grace`: a release just replaced is still draining under
/// its own retirement.
pub fn reconcile(desired: &[Desired], observed: &[Observed], now: DateTime<Utc>, grace: chrono::Duration, host: &str) -> Vec<Correction> {
    let by_env: BTreeMap<(&str, &str), &Desired> = desired.iter().map(|d| ((d.project.as_str(), d.environment.as_str()), d)).collect();
    let mut out = Vec::new();
    let mut answering: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for c in observed {
        let Some(d) = by_env.get(&(c.project.as_str(), c.environment.as_str())) else { continue };
        let env = &d.state;
        if !env.known.contains(&c.deployment) || env.queue.contains(&c.deployment) {
            continue;
        }
        let (project, environment, deployment, container) = (c.project.clone(), c.environment.clone(), c.deployment, c.name.clone());
        let serving = env.active.as_ref().filter(|a| a.deployment == c.deployment);
        match (serving, &c.state) {
            (Some(_), ContainerState::Running) => {
                if let (true, Some(port)) = (c.role == "web", c.host_port) {
                    answering.entry((&d.project, &d.environment)).or_default().push(format!("127.0.0.1:{port}"));
                }
            }
            (Some(_), ContainerState::Exited(_) | ContainerState::Created) if !c.role.starts_with("release-") => {
                let was = match &c.state {
                    ContainerState::Exited(code) => format!("exited with code {code}"),
                    _ => "created but not started".to_string(),
                };
                let reason = format!("it belongs to the release serving {} {} and was {was}", c.project, c.environment);
                out.push(Correction::Start { project, environment, deployment, container, reason });
            }
            (Some(_), _) => {}
            // Being removed already (by another agent, a retirement).
            (None, ContainerState::Other(state)) if state == "removing" => {}
            (None, _) => {
                let settled = d.settled_at.is_none_or(|at| now - at >= grace);
                if settled {
                    let reason = match &env.active {
                        Some(a) => format!(
                            "deployment {} does not serve {} {} (deployment {} does)",
                            c.deployment, c.project, c.environment, a.deployment
                        ),
                        None => format!("no release serves {} {}", c.project, c.environment),
                    };
                    out.push(Correction::Remove { project, environment, deployment, container, id: c.id.clone(), reason });
                }
            }
        }
    }
    out.extend(desired.iter().filter_map(|d| restore(d, observed, host)));
    for ((project, environment), mut upstreams) in answering {
        let Some(active) = by_env.get(&(project, environment)).and_then(|d| d.state.active.as_ref()) else { continue };
        upstreams.sort();
        let mut recorded = active.upstreams.clone();
        recorded.sort();
        if upstreams != recorded {
            out.push(Correction::Reroute {
                project: project.to_string(),
                environment: environment.to_string(),
                deployment: active.deployment,
                upstreams,
                previous: active.upstreams.clone(),
            });
        }
    }
    out
}

/// `Restore` when containers of the release serving `d` that runs on
/// `host` (or on the one host there was, when none was recorded) are
/// nowhere among `observed`, and no deployment is under way there.
fn restore(d: &Desired, observed: &[Observed], host: &str) -> Option<Correction> {
    let active = d.state.active.as_ref()?;
    if !d.state.queue.is_empty() || !(active.host.is_empty() || active.host == host) {
        return None;
    }
    let missing: Vec<String> = active.containers.iter().filter(|name| !observed.iter().any(|c| &c.name == *name)).cloned().collect();
    if missing.is_empty() {
        return None;
    }
    let reason = format!(
        "the release serving {} {} (deployment {}) is missing {} on {host}: {}",
        d.project,
        d.environment,
        active.deployment,
        if missing.len() == 1 { "a container" } else { "containers" },
        missing.join(", ")
    );
    Some(Correction::Restore {
        project: d.project.clone(),
        environment: d.environment.clone(),
        deployment: active.deployment,
        missing,
        version: d.state.version,
        reason,
    })
}

/// The engine's side of a reroute: when the route still points at the
/// serving release, but not where it answers now, the route moves there.
/// A route that points elsewhere (a deployment's cutover in progress, a
/// revert) is the deployment's business, never overridden here.
pub fn route_correction(project: &str, environment: &str, env: &Environment, route: Option<&Route>) -> Option<RouteChanged> {
    let active = env.active.as_ref()?;
    let route = route?;
    if route.deployment != Some(active.deployment) || active.upstreams.is_empty() || route.upstreams == active.upstreams {
        return None;
    }
    Some(RouteChanged {
        project: project.to_string(),
        environment: environment.to_string(),
        deployment_id: Some(active.deployment),
        upstreams: active.upstreams.clone(),
        reason: RouteReason::Reconcile,
        standby: vec![],
    })
}

/// A pending reroute's end, at `now`: every router it waits for that is
/// still registered acknowledged its route version, or its deadline passed
/// (naming who did not). `None` while it still waits, or when none is pending.
pub fn reroute_settled(env: &Environment, traffic: &crate::routes::Traffic, now: DateTime<Utc>) -> Option<RerouteSettled> {
    let pending = env.rerouting.as_ref()?;
    let missing = traffic.waiting_for(&pending.routers, pending.route_version);
    if !missing.is_empty() && now < pending.deadline {
        return None;
    }
    let acknowledged = pending.routers.iter().filter(|r| !missing.contains(r)).cloned().collect();
    Some(RerouteSettled { route_version: pending.route_version, acknowledged, missing })
}

/// How often a host agent starts the same container again. A serving
/// container that exits at once each time (no restart policy) is started
/// after a pause that doubles from `every` up to `cap`, not at every pass;
/// one the agent has left alone for `cap` starts afresh. A Docker daemon
/// that came back clears it all (every container stopped with it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartBackoff {
    started: BTreeMap<String, (DateTime<Utc>, u32)>,
}

impl StartBackoff {
    pub fn may_start(&self, container: &str, now: DateTime<Utc>, every: chrono::Duration, cap: chrono::Duration) -> bool {
        let Some((at, times)) = self.started.get(container) else { return true };
        let pause = (1..*times).fold(every, |p, _| (p * 2).min(cap)).min(cap);
        now - *at >= pause
    }

    pub fn started(&mut self, container: &str, now: DateTime<Utc>, cap: chrono::Duration) {
        self.started.retain(|_, (at, _)| now - *at < cap);
        let times = self.started.get(container).map_or(0, |(_, n)| *n);
        self.started.insert(container.to_string(), (now, times + 1));
    }

    pub fn clear(&mut self) {
        self.started.clear();
    }
}
