//! The decider: given a deployment's state, what happens next. Pure and
//! synchronous; ids and time are the driver's business. It decides from the
//! folded state rather than from the last event alone, so seeing the same
//! event twice, or several at once, leads to the same decisions.
//!
//! | state                                   | decision                                  |
//! |-----------------------------------------|-------------------------------------------|
//! | running, nothing dispatched, queued behind another deployment of the environment | nothing (wait your turn) |
//! | running, step S next, S not dispatched  | dispatch `RunStep(S)` (+ `StepDispatched`) |
//! | running, S dispatched, no outcome yet   | nothing (wait for the worker)             |
//! | running, every pipeline step completed  | `DeploymentSucceeded`                     |
//! |                                         | (and, on the environment, `DeploymentFinished`) |
//! |                                         | + `RetireRelease` of the previous release  |
//! | step S failed (`StepFailed`)            | `DeploymentFailed` (+ `RemoveContainers`) |
//! |                                         | (and, on the environment, `DeploymentFinished`) |
//! | succeeded or failed                     | nothing                                   |

use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use uuid::Uuid;
use slipway_proto::event::{DeploymentFailed, DeploymentFinished, DeploymentSucceeded};
use slipway_proto::{Command, Event, Step};

use crate::deployment::{Deployment, Status};

/// What the driver should record and send.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send a step's command (the driver records `StepDispatched` with it).
    Dispatch(Command),
    /// Record a fact on the deployment's stream.
    Record(Event),
    /// Record a fact on the deployment's environment stream (same transaction).
    RecordOnEnvironment(Event),
}

/// What the decider needs to know about the deployment's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentView {
    /// The deployment heads its environment's queue.
    pub may_start: bool,
    /// The serving release: its deployment and containers.
    pub active: Option<(Uuid, Vec<String>)>,
    /// How long retired containers keep draining before they are stopped.
    pub drain_seconds: u64,
}

pub fn decide(d: &Deployment, env: &EnvironmentView) -> Vec<Decision> {
    match &d.status {
        Status::Succeeded => vec![],
        Status::Failed { step, reason } => {
            // `StepFailed` is recorded by the worker; the verdict and the
            // cleanup follow once.
            if d.failure_recorded {
                return vec![];
            }
            let mut out = vec![
                Decision::Record(Event::DeploymentFailed(DeploymentFailed { step: *step, reason: reason.clone() })),
                finished(d, false),
            ];
            if !d.containers.is_empty() {
                out.push(Decision::Dispatch(Command::RemoveContainers(RemoveContainers {
                    deployment_id: d.id,
                    containers: d.containers.clone(),
                })));
            }
            out
        }
        Status::Running => match d.next_step() {
            None => vec![
                Decision::Record(Event::DeploymentSucceeded(DeploymentSucceeded {
                    image_id: d.context.image_id.clone().unwrap_or_default(),
                    commit: d.context.commit.clone().unwrap_or_default(),
                })),
                finished(d, true),
            ]
            .into_iter()
            .chain(retire_previous(d, env))
            .collect(),
            Some(step) if already_dispatched(d, step) => vec![],
            Some(_) if d.dispatched.is_none() && !env.may_start => vec![],
            Some(step) => vec![Decision::Dispatch(Command::RunStep(RunStep {
                step,
                attempt: 1,
                context: d.context.clone(),
            }))],
        },
    }
}

fn finished(d: &Deployment, succeeded: bool) -> Decision {
    let containers = if succeeded { d.containers.clone() } else { vec![] };
    Decision::RecordOnEnvironment(Event::DeploymentFinished(DeploymentFinished { deployment_id: d.id, succeeded, containers }))
}

/// The previous release's containers stop only once this one has succeeded.
fn retire_previous(d: &Deployment, env: &EnvironmentView) -> Option<Decision> {
    let (previous, containers) = env.active.as_ref()?;
    if *previous == d.id || containers.is_empty() {
        return None;
    }
    Some(Decision::Dispatch(Command::RetireRelease(RetireRelease {
        deployment_id: *previous,
        containers: containers.clone(),
        drain_seconds: env.drain_seconds,
    })))
}

fn already_dispatched(d: &Deployment, step: Step) -> bool {
    matches!(d.dispatched, Some((s, _, _)) if s == step)
}
