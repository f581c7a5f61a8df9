//! The real executor: dispatches each command to its step's file. A dry
//! run short-circuits to `DryRun` so the same queues and workers can walk
//! the pipeline without side effects.

use std::sync::Arc;

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::{Event, Step};

use super::dry_run::DryRun;
use super::runtime::{Containers, RuntimeKind, SingleEngine};
use super::{build, check_services, checkout, release, Executor, Runtime, Settings};

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub runtime: Runtime,
    /// Where the app's containers run (`runtime.rs`): this engine unless
    /// chosen otherwise.
    pub containers: Arc<dyn Containers>,
}

impl Pipeline {
    /// The pipeline on the single-engine runtime.
    pub fn new(runtime: Runtime) -> Self {
        Pipeline { runtime, containers: Arc::new(SingleEngine) }
    }

    /// The pipeline with its containers on `kind`.
    pub fn on(runtime: Runtime, kind: RuntimeKind) -> Self {
        Pipeline { runtime, containers: kind.containers() }
    }
}

#[async_trait]
impl Executor for Pipeline {
    async fn run_step(&self, command: &RunStep, env: &Settings) -> Event {
        if command.context.dry_run {
            return DryRun.run_step(command, env).await;
        }
        let rt = &self.runtime;
        let outcome = match command.step {
            Step::CheckServices => check_services::run(command, env, rt).await,
            Step::Checkout => checkout::run(command, env, rt).await,
            Step::Build => build::run(command, env, rt).await,
            // The container operations go through the runtime boundary.
            Step::Deploy => self.containers.deploy(command, env, rt).await,
            Step::Release => release::run(command, env, rt).await,
            Step::Processes => self.containers.processes(command, env, rt).await,
            Step::HealthCheck => self.containers.health_check(command, env, rt).await,
            Step::Watch => self.containers.watch(command, env, rt).await,
            other => Event::StepFailed(slipway_proto::event::StepFailed {
                step: other,
                reason: format!("`{other}` is not a pipeline step a RunStep command can carry"),
                attempt: command.attempt,
                details: vec![],
                evidence: None,
            }),
        };
        super::evidence::keep(outcome, command, env, rt).await
    }

    async fn remove_containers(&self, command: &RemoveContainers) -> Event {
        self.containers.remove_containers(command).await
    }

    async fn retire(&self, command: &RetireRelease) -> Event {
        self.containers.retire(command).await
    }
}
