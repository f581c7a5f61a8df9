//! The dry-run executor: walks every step without side effects, recording
//! `StepSkipped`. It exercises the whole machinery (store, outbox, relay,
//! queues, decider) with nothing to build or run, which is what
//! `slipway demo` shows and what tests of the machinery use.

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::event::{ContainersRemoved, StepSkipped};
use slipway_proto::Event;

use super::Executor;

#[derive(Debug, Default, Clone)]
pub struct DryRun;

#[async_trait]
impl Executor for DryRun {
    async fn run_step(&self, command: &RunStep, _env: &super::Settings) -> Event {
        Event::StepSkipped(StepSkipped { step: command.step, reason: "dry run: no side effects".into() })
    }

    async fn remove_containers(&self, _command: &RemoveContainers) -> Event {
        Event::ContainersRemoved(ContainersRemoved { containers: vec![] })
    }

    async fn retire(&self, _command: &RetireRelease) -> Event {
        Event::ContainersRemoved(ContainersRemoved { containers: vec![] })
    }
}
