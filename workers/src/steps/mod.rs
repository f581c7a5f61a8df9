//! The step executors. Each pipeline step has the same small API: given the
//! command (with the deployment's recorded context), do the work and report
//! the outcome as an event — a step's own success event, `StepSkipped`, or
//! `StepFailed` with the reason. Executors never touch the store or the
//! queue; the worker loop does.

pub mod dry_run;

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::Event;

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs one pipeline step. Must be idempotent: a redelivered command
    /// finds what the first attempt created and reports it.
    async fn run_step(&self, command: &RunStep) -> Event;
    /// Removes a failed deployment's containers.
    async fn remove_containers(&self, command: &RemoveContainers) -> Event;
    /// Drains and stops a retired release's containers.
    async fn retire(&self, command: &RetireRelease) -> Event;
}
