//! The decider: given a deployment's state, what happens next. Pure and
//! synchronous; ids and time are the driver's business. It decides from the
//! folded state rather than from the last event alone, so seeing the same
//! event twice, or several at once, leads to the same decisions.
//!
//! | state                                   | decision                                  |
//! |-----------------------------------------|-------------------------------------------|
//! | running, step S next, S not dispatched  | dispatch `RunStep(S)` (+ `StepDispatched`) |
//! | running, S dispatched, no outcome yet   | nothing (wait for the worker)             |
//! | running, every pipeline step completed  | `DeploymentSucceeded`                     |
//! | step S failed (`StepFailed`)            | `DeploymentFailed` (+ `RemoveContainers`) |
//! | succeeded or failed                     | nothing                                   |

use slipway_proto::command::{RemoveContainers, RunStep};
use slipway_proto::event::{DeploymentFailed, DeploymentSucceeded};
use slipway_proto::{Command, Event, Step};

use crate::deployment::{Deployment, Status};

/// What the driver should record and send.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send a step's command (the driver records `StepDispatched` with it).
    Dispatch(Command),
    /// Record a fact on the deployment's stream.
    Record(Event),
}

pub fn decide(d: &Deployment) -> Vec<Decision> {
    match &d.status {
        Status::Succeeded => vec![],
        Status::Failed { step, reason } => {
            // `StepFailed` is recorded by the worker; the verdict and the
            // cleanup follow once.
            if d.failure_recorded {
                return vec![];
            }
            let mut out = vec![Decision::Record(Event::DeploymentFailed(DeploymentFailed {
                step: *step,
                reason: reason.clone(),
            }))];
            if !d.containers.is_empty() {
                out.push(Decision::Dispatch(Command::RemoveContainers(RemoveContainers {
                    deployment_id: d.id,
                    containers: d.containers.clone(),
                })));
            }
            out
        }
        Status::Running => match d.next_step() {
            None => vec![Decision::Record(Event::DeploymentSucceeded(DeploymentSucceeded {
                image_id: d.context.image_id.clone().unwrap_or_default(),
                commit: d.context.commit.clone().unwrap_or_default(),
            }))],
            Some(step) if already_dispatched(d, step) => vec![],
            Some(step) => vec![Decision::Dispatch(Command::RunStep(RunStep {
                step,
                attempt: 1,
                context: d.context.clone(),
            }))],
        },
    }
}

fn already_dispatched(d: &Deployment, step: Step) -> bool {
    matches!(d.dispatched, Some((s, _, _)) if s == step)
}
