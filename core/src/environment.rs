//! The environment projection: which deployments wait in an environment's
//! queue (one runs at a time, in request order) and which release serves,
//! folded from its `environment-<project>-<env>` stream. What the host
//! agent observed of the serving release (new upstreams after a Docker
//! restart) moves the active release too, so a later revert goes where the
//! release really answers. On the swarm runtime, the swarm watcher's last
//! record of each of the serving release's services says how many of its
//! replicas run and how many no node can take, so status does not show a
//! stranded release as running.

use std::collections::{BTreeMap, BTreeSet};

use slipway_proto::event::LiveState;
use slipway_proto::Event;
use uuid::Uuid;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// Deployments enqueued and not finished, oldest first. The first runs.
    pub queue: Vec<Uuid>,
    /// The release that serves now (the last real deployment to succeed).
    pub active: Option<ActiveRelease>,
    /// Every deployment that succeeded here (dry runs aside), oldest first:
    /// what a rollback chooses from.
    pub releases: Vec<Uuid>,
    /// Every deployment ever enqueued here: the host agent touches only
    /// containers of these (a Docker host may run other installations' too).
    pub known: BTreeSet<Uuid>,
    /// What the serving release's containers do, by container, as the host
    /// agent last recorded it (empty until it records anything).
    pub live: BTreeMap<String, ContainerLive>,
    /// The serving release's Swarm services, by name, as the swarm watcher
    /// last recorded them (empty until it records anything).
    pub replicas: BTreeMap<String, ServiceReplicas>,
    /// A reroute of the serving release waiting for the routers'
    /// acknowledgements (`ReleaseRerouted` until `RerouteSettled`).
    pub rerouting: Option<slipway_proto::event::ReleaseRerouted>,
    pub version: u64,
}

/// One serving container's live state, folded from `ContainerSupervised`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLive {
    pub state: LiveState,
    pub restarts: u32,
    pub last_exit: Option<i64>,
    /// Exits recorded since it began serving.
    pub exits: u32,
    pub oom_kills: u32,
}

/// One Swarm service of the serving release, from its last `ReplicasObserved`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReplicas {
    /// `web` or the process type (empty in records from before roles).
    pub role: String,
    pub running: u32,
    pub wanted: u32,
    /// Replicas no node can take, and Swarm's reason.
    pub unplaced: u32,
    pub reason: String,
    /// Replica failures within a minute while they crash-loop (the last
    /// record's count); 0 when there is no loop.
    pub crash_loop: u32,
}

/// The serving release's live state: its worst container's, with the
/// restarts of all and the last exit seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseLive {
    pub state: LiveState,
    pub restarts: u32,
    pub last_exit: Option<i64>,
    pub oom_kills: u32,
}

/// The release serving an environment: its containers (retired when the
/// next one takes over) and where it answers (what a failed switch reverts to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRelease {
    pub deployment: Uuid,
    pub containers: Vec<String>,
    pub upstreams: Vec<String>,
    /// The Docker host its web container runs on (empty: recorded before
    /// hosts were, the one host there was).
    pub host: String,
}

impl ActiveRelease {
    /// The host port its web container answers on now (the first
    /// upstream's), which the host agent moves when Docker gave it another.
    pub fn web_port(&self) -> Option<u16> {
        self.upstreams.first()?.rsplit(':').next()?.parse().ok()
    }
}

impl ReleaseLive {
    /// One line: `crash-looping, 12 restarts, last exit 3, 1 OOM kill`.
    pub fn describe(&self) -> String {
        let mut text = format!("{}, {} restart{}", self.state.as_str(), self.restarts, if self.restarts == 1 { "" } else { "s" });
        if let Some(code) = self.last_exit {
            text.push_str(&format!(", last exit {code}"));
        }
        if self.oom_kills > 0 {
            text.push_str(&format!(", {} OOM kill{}", self.oom_kills, if self.oom_kills == 1 { "" } else { "s" }));
        }
        text
    }
}

impl Environment {
    /// May `deployment` start now? Only at the head of the queue.
    pub fn may_start(&self, deployment: Uuid) -> bool {
        self.queue.first() == Some(&deployment)
    }

    pub fn last_succeeded(&self) -> Option<Uuid> {
        self.active.as_ref().map(|a| a.deployment)
    }

    /// The serving release's live state as shown: what the host agent
    /// recorded, or running as started when it recorded nothing; `None`
    /// when nothing serves.
    pub fn shown_live(&self) -> Option<ReleaseLive> {
        self.active.as_ref()?;
        Some(self.release_live().unwrap_or(ReleaseLive { state: LiveState::Running, restarts: 0, last_exit: None, oom_kills: 0 }))
    }

    /// The serving release's live state; `None` until the host agent
    /// recorded anything about it (it runs as it was started).
    pub fn release_live(&self) -> Option<ReleaseLive> {
        let worst = self.live.values().map(|c| c.state).max()?;
        Some(ReleaseLive {
            state: worst,
            restarts: self.live.values().map(|c| c.restarts).sum(),
            last_exit: self
                .live
                .values()
                .filter(|c| c.state == worst)
                .find_map(|c| c.last_exit)
                .or_else(|| self.live.values().find_map(|c| c.last_exit)),
            oom_kills: self.live.values().map(|c| c.oom_kills).sum(),
        })
    }
}

impl Environment {
    /// Applies the stream's next event (version `self.version + 1`).
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::DeploymentEnqueued(q) => {
                self.queue.push(q.deployment_id);
                self.known.insert(q.deployment_id);
            }
            Event::ContainerSupervised(c) if self.last_succeeded() == Some(c.deployment_id) => {
                let live = self.live.entry(c.container.clone()).or_insert(ContainerLive {
                    state: c.state,
                    restarts: 0,
                    last_exit: None,
                    exits: 0,
                    oom_kills: 0,
                });
                live.state = c.state;
                live.restarts = live.restarts.max(c.restarts);
                live.last_exit = c.last_exit.or(live.last_exit);
                live.exits += c.exits;
                live.oom_kills += u32::from(c.oom);
            }
            Event::ReplicasObserved(r) if self.last_succeeded() == Some(r.deployment_id) => {
                let replicas = ServiceReplicas {
                    role: r.role.clone(),
                    running: r.running,
                    wanted: r.wanted,
                    unplaced: r.unplaced,
                    reason: r.reason.clone(),
                    crash_loop: r.crash_loop,
                };
                self.replicas.insert(r.service.clone(), replicas);
            }
            Event::ReleaseRerouted(r) => self.rerouting = Some(r.clone()),
            Event::RerouteSettled(r) if self.rerouting.as_ref().is_some_and(|p| p.route_version <= r.route_version) => {
                self.rerouting = None;
            }
            Event::ReleaseUpstreamsObserved(o) => {
                if let Some(active) = self.active.as_mut().filter(|a| a.deployment == o.deployment_id) {
                    active.upstreams = o.upstreams.clone();
                }
            }
            // The environment was removed: nothing of it serves any more
            // (a preview added again under the name starts with no release).
            Event::EnvironmentRemoved(_) => {
                self.active = None;
                self.live.clear();
                self.replicas.clear();
            }
            Event::DeploymentFinished(f) => {
                self.queue.retain(|d| *d != f.deployment_id);
                if f.succeeded && !f.dry_run {
                    self.live.clear();
                    self.replicas.clear();
                    self.releases.push(f.deployment_id);
                    self.active = Some(ActiveRelease {
                        deployment: f.deployment_id,
                        containers: f.containers.clone(),
                        upstreams: f.upstreams.clone(),
                        host: f.host.clone(),
                    });
                }
            }
            _ => {}
        }
        self.version += 1;
    }
}

pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Environment {
    let Ok(env) = crate::projection::fold(events);
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::ReplicasObserved;

    fn observed(deployment: Uuid, running: u32, crash_loop: u32) -> Event {
        Event::ReplicasObserved(ReplicasObserved {
            deployment_id: deployment,
            service: "web-svc".into(),
            running,
            wanted: 3,
            role: "web".into(),
            crash_loop,
            ..Default::default()
        })
    }

    #[test]
    fn the_serving_release_s_replicas_are_its_services_last_records() {
        let d = Uuid::from_u128(7);
        let mut env = Environment {
            active: Some(ActiveRelease { deployment: d, containers: vec![], upstreams: vec![], host: "swarm".into() }),
            ..Default::default()
        };
        let shown = |env: &Environment| (env.replicas["web-svc"].running, env.replicas["web-svc"].crash_loop);
        env.apply(&observed(d, 2, 3));
        assert_eq!(shown(&env), (2, 3), "crash-looping");
        env.apply(&observed(d, 3, 0));
        assert_eq!(shown(&env), (3, 0), "the loop's end");
        // Another deployment's records change nothing.
        env.apply(&observed(Uuid::from_u128(8), 0, 9));
        assert_eq!(shown(&env), (3, 0));
    }
}
