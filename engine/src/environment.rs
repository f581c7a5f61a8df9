//! The environment projection: which deployments wait in an environment's
//! queue (one runs at a time, in request order) and which was the last to
//! succeed, folded from its `environment-<project>-<env>` stream.

use slipway_proto::Event;
use uuid::Uuid;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// Deployments enqueued and not finished, oldest first. The first runs.
    pub queue: Vec<Uuid>,
    pub last_succeeded: Option<Uuid>,
    /// The containers of the release that serves now (the last success).
    pub active_containers: Vec<String>,
    pub version: u64,
}

impl Environment {
    /// May `deployment` start now? Only at the head of the queue.
    pub fn may_start(&self, deployment: Uuid) -> bool {
        self.queue.first() == Some(&deployment)
    }
}

pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Environment {
    let mut env = Environment::default();
    for event in events {
        match event {
            Event::DeploymentEnqueued(q) => env.queue.push(q.deployment_id),
            Event::DeploymentFinished(f) => {
                env.queue.retain(|d| *d != f.deployment_id);
                if f.succeeded {
                    env.last_succeeded = Some(f.deployment_id);
                    env.active_containers = f.containers.clone();
                }
            }
            _ => {}
        }
        env.version += 1;
    }
    env
}
