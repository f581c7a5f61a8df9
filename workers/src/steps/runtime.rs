//! The runtime boundary: every container operation the pipeline's steps
//! make on the app's behalf — start a release's web and process containers,
//! find and look at them during the health check and the watch, remove a
//! failed deployment's and retire a replaced release's — goes through one
//! trait, `Containers`, chosen once per installation (`slipway worker
//! --runtime`, `SLIPWAY_RUNTIME`).
//!
//! - `SingleEngine` (the default) is what Slipway always did: containers on
//!   the worker's own Docker engine, published on 127.0.0.1. It delegates
//!   to the step files unchanged.
//! - `Swarm` (`swarm.rs`) makes each release's web (and each process type)
//!   a Docker Swarm service, with replicas, limits, restart policy and
//!   placement constraints from `slipway.toml`; Swarm places, restarts and
//!   reschedules them.
//!
//! Both report the same outcome events, so the pipeline, the decider and
//! the history are the same whichever runs the containers. The release
//! step's one-off commands stay on the worker's engine in both: they run to
//! an exit code once, which is no service's business.

use std::fmt::Debug;

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::Event;

use super::{cleanup, deploy, health_check, processes, watch, Runtime, Settings};

/// The container operations of the pipeline, behind one interface.
#[async_trait]
pub trait Containers: Debug + Send + Sync + 'static {
    /// `Step::Deploy`: start the release's web replicas; `WebContainerStarted`.
    async fn deploy(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event;
    /// `Step::Processes`: start the release's process types; `ProcessesStarted`.
    async fn processes(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event;
    /// `Step::HealthCheck`: the replicas settle healthy, and none crashed.
    async fn health_check(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event;
    /// `Step::Watch`: the release after the switch, until the watch ends.
    async fn watch(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event;
    /// A failed deployment's containers, at once.
    async fn remove_containers(&self, command: &RemoveContainers) -> Event;
    /// A replaced release, after its drain.
    async fn retire(&self, command: &RetireRelease) -> Event;
}

/// Containers on the worker's own Docker engine (today's behaviour).
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleEngine;

#[async_trait]
impl Containers for SingleEngine {
    async fn deploy(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
        deploy::run(command, env, rt).await
    }

    async fn processes(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
        processes::run(command, env, rt).await
    }

    async fn health_check(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
        health_check::run(command, env, rt).await
    }

    async fn watch(&self, command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
        watch::run(command, env, rt).await
    }

    async fn remove_containers(&self, command: &RemoveContainers) -> Event {
        cleanup::remove_containers(command).await
    }

    async fn retire(&self, command: &RetireRelease) -> Event {
        cleanup::retire(command).await
    }
}

/// Which runtime an installation runs its apps on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    #[default]
    SingleEngine,
    Swarm,
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single" | "single-engine" | "docker" => Ok(RuntimeKind::SingleEngine),
            "swarm" => Ok(RuntimeKind::Swarm),
            other => Err(format!("unknown runtime `{other}`: choose `single-engine` (the default) or `swarm`")),
        }
    }
}

impl RuntimeKind {
    /// The implementation.
    pub fn containers(self) -> std::sync::Arc<dyn Containers> {
        match self {
            RuntimeKind::SingleEngine => std::sync::Arc::new(SingleEngine),
            RuntimeKind::Swarm => std::sync::Arc::new(super::swarm::Swarm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_are_named_as_on_the_command_line() {
        assert_eq!("swarm".parse(), Ok(RuntimeKind::Swarm));
        assert_eq!("single-engine".parse(), Ok(RuntimeKind::SingleEngine));
        assert!("k8s".parse::<RuntimeKind>().expect_err("unknown").contains("single-engine"));
    }
}
