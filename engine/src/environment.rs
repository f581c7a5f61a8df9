//! The environment projection: which deployments wait in an environment's
//! queue (one runs at a time, in request order) and which release serves,
//! folded from its `environment-<project>-<env>` stream. What the host
//! agent observed of the serving release (new upstreams after a Docker
//! restart) moves the active release too, so a later revert goes where the
//! release really answers.

use std::collections::BTreeSet;

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
    pub version: u64,
}

/// The release serving an environment: its containers (retired when the
/// next one takes over) and where it answers (what a failed switch reverts to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRelease {
    pub deployment: Uuid,
    pub containers: Vec<String>,
    pub upstreams: Vec<String>,
}

impl Environment {
    /// May `deployment` start now? Only at the head of the queue.
    pub fn may_start(&self, deployment: Uuid) -> bool {
        self.queue.first() == Some(&deployment)
    }

    pub fn last_succeeded(&self) -> Option<Uuid> {
        self.active.as_ref().map(|a| a.deployment)
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
            Event::ReleaseUpstreamsObserved(o) => {
                if let Some(active) = self.active.as_mut().filter(|a| a.deployment == o.deployment_id) {
                    active.upstreams = o.upstreams.clone();
                }
            }
            Event::DeploymentFinished(f) => {
                self.queue.retain(|d| *d != f.deployment_id);
                if f.succeeded && !f.dry_run {
                    self.releases.push(f.deployment_id);
                    self.active = Some(ActiveRelease {
                        deployment: f.deployment_id,
                        containers: f.containers.clone(),
                        upstreams: f.upstreams.clone(),
                    });
                }
            }
            _ => {}
        }
        self.version += 1;
    }
}

pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Environment {
    let mut env = Environment::default();
    for event in events {
        env.apply(event);
    }
    env
}
