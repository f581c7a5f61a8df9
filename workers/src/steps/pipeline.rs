//! The real executor: dispatches each command to its step's file. A dry
//! run short-circuits to `DryRun` so the same queues and workers can walk
//! the pipeline without side effects.

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::{Event, Step};

use super::dry_run::DryRun;
use super::{build, check_services, checkout, cleanup, deploy, health_check, processes, release, watch, Executor, Runtime, Settings};

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub runtime: Runtime,
}

impl Pipeline {
    pub fn new(runtime: Runtime) -> Self {
        Pipeline { runtime }
    }
}

#[async_trait]
impl Executor for Pipeline {
    async fn run_step(&self, command: &RunStep, env: &Settings) -> Event {
        if command.context.dry_run {
            return DryRun.run_step(command, env).await;
        }
        let rt = &self.runtime;
        match command.step {
            Step::CheckServices => check_services::run(command, env, rt).await,
            Step::Checkout => checkout::run(command, env, rt).await,
            Step::Build => build::run(command, env, rt).await,
            Step::Deploy => deploy::run(command, env, rt).await,
            Step::Release => release::run(command, env, rt).await,
            Step::Processes => processes::run(command, env, rt).await,
            Step::HealthCheck => health_check::run(command, env, rt).await,
            Step::Watch => watch::run(command, env, rt).await,
            other => Event::StepFailed(slipway_proto::event::StepFailed {
                step: other,
                reason: format!("`{other}` is not a pipeline step a RunStep command can carry"),
                attempt: command.attempt,
                details: vec![],
            }),
        }
    }

    async fn remove_containers(&self, command: &RemoveContainers) -> Event {
        cleanup::remove_containers(command).await
    }

    async fn retire(&self, command: &RetireRelease) -> Event {
        cleanup::retire(command).await
    }
}
