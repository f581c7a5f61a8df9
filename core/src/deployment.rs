//! The deployment projection: a deployment's state folded from its stream.
//! Pure and synchronous. `evolve` refuses events that cannot follow the
//! current state (an illegal transition is a distinct error, not an I/O
//! failure), so a corrupted or mis-ordered history is reported, not guessed at.

use chrono::{DateTime, Utc};
use slipway_proto::command::DeploymentContext;
use std::collections::BTreeMap;

use slipway_proto::event::{ReplaySource, RouterErrorsObserved};
use slipway_proto::{Event, Step};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Steps are running; `current` is the step dispatched last, if any.
    Running,
    Succeeded,
    Failed {
        step: Step,
        reason: String,
    },
}

/// What the engine knows about one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: Uuid,
    pub status: Status,
    pub context: DeploymentContext,
    /// Steps whose outcome is recorded as success (or skipped), in order.
    pub completed: Vec<Step>,
    /// The step dispatched last and its attempt, with the command id.
    pub dispatched: Option<(Step, u32, Uuid)>,
    /// Until when the engine waits for that attempt's outcome.
    pub dispatch_deadline: Option<DateTime<Utc>>,
    /// When that attempt was dispatched.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// Containers this deployment created (removed again on failure).
    pub containers: Vec<String>,
    /// The Docker host its web container runs on (`WebContainerStarted`).
    pub web_host: String,
    /// `DeploymentFailed` is recorded: the verdict after a `StepFailed`.
    pub failure_recorded: bool,
    /// The traffic switch, once the pipeline passed.
    pub switch: Option<Switch>,
    /// A rollback re-uses this earlier release (its image and inputs).
    pub rollback_of: Option<Uuid>,
    /// A promotion deploys this release's image (of another environment).
    pub promoted_from: Option<Uuid>,
    /// A replay of an earlier deployment, from a step.
    pub replay_of: Option<ReplaySource>,
    /// Replays of this deployment, oldest first.
    pub replayed_as: Vec<Uuid>,
    /// `CancelRequested`: the failure reason it set.
    pub cancelled: Option<String>,
    /// Containers a step reported after the verdict (a worker that was
    /// still running when the deployment failed or was cancelled); the
    /// engine removes them.
    pub late_containers: Vec<String>,
    /// The failed step's evidence (`StepFailed.details`).
    pub failure_details: Vec<String>,
    /// The watch after the switch passed (`ReleaseWatched`).
    pub watched: bool,
    /// A release that failed after its switch was routed back
    /// (`ReleaseRolledBack`): the route version every router must acknowledge.
    pub rollback: Option<Revert>,
    /// What each router counted of this release's requests since it took
    /// the cutover's route version (its latest `RouterErrorsObserved`),
    /// by router id; kept until the verdict.
    pub router_errors: BTreeMap<String, RouterErrorsObserved>,
    /// Approvals it waits for before its first step (`ApprovalRequired`).
    pub approvals_required: u32,
    /// Who approved it, in order.
    pub approvals: Vec<String>,
    /// Who rejected it, and why.
    pub rejected: Option<(String, String)>,
    /// The stream version this state was folded up to.
    pub version: u64,
}

/// The route back to the previous release after a failed watch, and the
/// routers that must acknowledge it by the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revert {
    pub route_version: u64,
    pub routers: Vec<String>,
    pub deadline: DateTime<Utc>,
}

/// A healthy deployment's traffic switch: the route version it wrote and the
/// routers that must acknowledge it by the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub route_version: u64,
    pub upstreams: Vec<String>,
    pub routers: Vec<String>,
    pub deadline: DateTime<Utc>,
    /// Every router acknowledged (`TrafficSwitched`).
    pub switched: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deployment {deployment}: event `{event}` cannot follow state {state}")]
pub struct IllegalTransition {
    pub deployment: String,
    pub event: String,
    pub state: String,
}

impl Deployment {
    /// The first pipeline step not yet completed.
    pub fn next_step(&self) -> Option<Step> {
        Step::PIPELINE.into_iter().find(|s| !self.completed.contains(s))
    }

    /// Succeeded, or failed with the verdict recorded: nothing more happens.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, Status::Succeeded) || self.failure_recorded
    }

    /// Traffic moved to this release and it is being watched: not a
    /// success until the window passes.
    pub fn is_watching(&self) -> bool {
        self.status == Status::Running && self.context.watch_until.is_some() && !self.watched
    }

    /// A step was dispatched or done: it did not end (rejected, cancelled
    /// while queued or awaiting approval) before its first step.
    pub fn started(&self) -> bool {
        self.dispatched.is_some() || !self.completed.is_empty()
    }

    /// Its verdict as `failure_text` words it, if it failed.
    pub fn failure_text(&self) -> Option<String> {
        match &self.status {
            Status::Failed { step, reason } => Some(failure_text(self.started().then_some(step), reason)),
            _ => None,
        }
    }

    /// Approvals are still missing, and nothing was dispatched yet.
    pub fn awaiting_approval(&self) -> bool {
        self.status == Status::Running && self.dispatched.is_none() && (self.approvals.len() as u64) < u64::from(self.approvals_required)
    }

    /// One word for where it stands: `awaiting approval`, `queued` (waiting
    /// for the deployments ahead of it in its environment: no step
    /// dispatched yet), `running`, `watching` (traffic moved, the watch
    /// window not yet passed), `rolling back` (the route is going back to
    /// the previous release), `succeeded` or `failed`.
    pub fn status_word(&self) -> &'static str {
        match &self.status {
            Status::Running if self.is_watching() => "watching",
            Status::Running if self.awaiting_approval() => "awaiting approval",
            Status::Running if !self.started() => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed { .. } if self.rollback.is_some() && !self.failure_recorded => "rolling back",
            Status::Failed { .. } => "failed",
        }
    }

    /// The step a cancellation fails: the one dispatched and still running,
    /// else the next one, else the cutover.
    pub fn current_step(&self) -> Step {
        match self.dispatched {
            Some((step, _, _)) if !self.completed.contains(&step) => step,
            _ => self.next_step().unwrap_or(Step::Cutover),
        }
    }
}

/// How a failed deployment's verdict reads: `failed at STEP: REASON`, or,
/// for one that ended before its first step (rejected, cancelled while it
/// waited), `failed before it started: REASON`: naming the first step
/// would say it ran.
pub fn failure_text(step: Option<impl std::fmt::Display>, reason: &str) -> String {
    match step {
        Some(step) => format!("failed at {step}: {reason}"),
        None => format!("failed before it started: {reason}"),
    }
}

fn illegal(state: &Option<Deployment>, event: &Event) -> IllegalTransition {
    IllegalTransition {
        deployment: state.as_ref().map_or("(none)".into(), |d| d.id.to_string()),
        event: slipway_proto::envelope::Message::message_type(event).into(),
        state: match state {
            None => "not started".into(),
            Some(d) => format!("{:?} after {:?}", d.status, d.completed),
        },
    }
}

/// Applies one event of a deployment's stream to its state.
pub fn evolve(state: Option<Deployment>, event: &Event) -> Result<Deployment, IllegalTransition> {
    let Some(mut d) = state else {
        return match event {
            Event::DeploymentRequested(r) => {
                let source = r.rollback_of.as_ref().or(r.promoted_from.as_ref());
                Ok(Deployment {
                    id: r.deployment_id,
                    status: Status::Running,
                    context: DeploymentContext {
                        deployment_id: r.deployment_id,
                        project: r.project.clone(),
                        environment: r.environment.clone(),
                        repository: r.repository.clone(),
                        git_ref: r.git_ref.clone(),
                        mode: r.mode,
                        no_cache: r.no_cache,
                        run_release: r.run_release,
                        dry_run: r.dry_run,
                        settings: r.settings.clone(),
                        source: r.source.clone(),
                        commit: source.map(|s| s.commit.clone()),
                        config: source.map_or(serde_json::Value::Null, |s| s.config.clone()),
                        image_id: source.map(|s| s.image_id.clone()),
                        image_ref: None,
                        web_container: None,
                        web_port: None,
                        web_upstreams: Vec::new(),
                        reuse: None,
                        watch_until: None,
                    },
                    completed: Vec::new(),
                    dispatched: None,
                    dispatch_deadline: None,
                    dispatched_at: None,
                    containers: Vec::new(),
                    web_host: String::new(),
                    failure_recorded: false,
                    switch: None,
                    rollback_of: r.rollback_of.as_ref().map(|s| s.deployment_id),
                    promoted_from: r.promoted_from.as_ref().map(|s| s.deployment_id),
                    replay_of: r.replay_of.clone(),
                    replayed_as: Vec::new(),
                    cancelled: None,
                    late_containers: Vec::new(),
                    failure_details: Vec::new(),
                    watched: false,
                    rollback: None,
                    router_errors: BTreeMap::new(),
                    approvals_required: 0,
                    approvals: Vec::new(),
                    rejected: None,
                    version: 1,
                })
            }
            other => Err(illegal(&None, other)),
        };
    };
    let finished = d.is_finished();
    match event {
        Event::DeploymentRequested(_) => return Err(illegal(&Some(d), event)),
        // Cleanup facts and replays may arrive after the end; nothing else may.
        Event::ContainersRemoved(r) => {
            d.containers.retain(|c| !r.containers.contains(c));
            d.late_containers.retain(|c| !r.containers.contains(c));
        }
        Event::DeploymentReplayed(r) => d.replayed_as.push(r.replay),
        // Routers report on their own schedule: counts of this release's
        // cutover while it still runs are kept (the newest per router);
        // anything else (late, another route version) is history only.
        Event::RouterErrorsObserved(o) => {
            let current = d.switch.as_ref().is_some_and(|s| s.route_version == o.route_version);
            let newer = d.router_errors.get(&o.router_id).is_none_or(|seen| seen.at <= o.at);
            if !finished && d.status == Status::Running && current && newer {
                d.router_errors.insert(o.router_id.clone(), o.clone());
            }
        }
        // A worker that was mid-step when the verdict came reports late: the
        // fact is kept, the state only learns which containers to remove.
        e if finished && (e.completes_step().is_some() || matches!(e, Event::StepFailed(_) | Event::ReleaseWatched(_))) => {
            let started: Vec<String> = match e {
                Event::WebContainerStarted(w) => vec![w.container.clone()],
                Event::ProcessesStarted(p) => p.containers.iter().map(|c| c.container.clone()).collect(),
                _ => vec![],
            };
            for c in started {
                if !d.containers.contains(&c) && !d.late_containers.contains(&c) {
                    d.late_containers.push(c);
                }
            }
        }
        _ if finished => return Err(illegal(&Some(d), event)),
        Event::CancelRequested(c) => {
            if d.cancelled.is_none() {
                d.cancelled = Some(c.reason.clone());
            }
            // A step that already failed keeps its own reason.
            if d.status == Status::Running {
                d.status = Status::Failed { step: d.current_step(), reason: c.reason.clone() };
            }
        }
        // Facts of the request (approvals, an overridden freeze), recorded
        // before the first step; a rejection comes with its cancel.
        Event::ApprovalRequired(a) if d.dispatched.is_none() => d.approvals_required = a.approvals,
        Event::DeploymentApproved(a) if d.awaiting_approval() => d.approvals.push(a.by.clone()),
        Event::DeploymentRejected(r) if d.awaiting_approval() => d.rejected = Some((r.by.clone(), r.reason.clone())),
        Event::FreezeOverridden(_) if d.dispatched.is_none() => {}
        Event::StepDispatched(s) => {
            d.dispatched = Some((s.step, s.attempt, s.command_id));
            d.dispatch_deadline = s.deadline;
            d.dispatched_at = s.dispatched_at;
        }
        // A second outcome for a step already done (a redelivered command
        // that ran twice, a late failure of an earlier attempt) changes nothing.
        Event::StepFailed(f) if d.completed.contains(&f.step) => {}
        e if e.completes_step().is_some_and(|s| d.completed.contains(&s)) => {}
        // A watch that ended after the release was cancelled or rolled back
        // (its worker was still watching) changes nothing.
        Event::ReleaseWatched(_) | Event::StepFailed(_) if d.rollback.is_some() => {}
        Event::ReleaseWatched(_) if matches!(d.status, Status::Failed { .. }) => {}
        Event::StepFailed(f) => {
            d.status = Status::Failed { step: f.step, reason: f.reason.clone() };
            d.failure_details = f.details.clone();
        }
        Event::ReleaseRolledBack(r) if d.switch.as_ref().is_some_and(|s| s.switched) && d.rollback.is_none() => {
            if !matches!(d.status, Status::Failed { .. }) {
                return Err(illegal(&Some(d), event));
            }
            d.rollback = Some(Revert { route_version: r.route_version, routers: r.routers.clone(), deadline: r.deadline });
        }
        Event::DeploymentFailed(f) => {
            d.status = Status::Failed { step: f.step, reason: f.reason.clone() };
            d.failure_recorded = true;
        }
        // After a step failed only the verdict may follow.
        _ if matches!(d.status, Status::Failed { .. }) => return Err(illegal(&Some(d), event)),
        Event::TrafficSwitchRequested(t) if d.next_step().is_none() && d.switch.is_none() => {
            d.switch = Some(Switch {
                route_version: t.route_version,
                upstreams: t.upstreams.clone(),
                routers: t.routers.clone(),
                deadline: t.deadline,
                switched: false,
            })
        }
        Event::TrafficSwitched(t) => match &mut d.switch {
            Some(s) if s.route_version == t.route_version => s.switched = true,
            _ => return Err(illegal(&Some(d), event)),
        },
        Event::ReleaseWatchStarted(w) if d.switch.as_ref().is_some_and(|s| s.switched) && d.context.watch_until.is_none() => {
            d.context.watch_until = Some(w.until);
        }
        Event::ReleaseWatched(_) if d.context.watch_until.is_some() => d.watched = true,
        Event::DeploymentSucceeded(_) => {
            // A real deployment succeeds once traffic moved; a dry run has
            // no traffic to move.
            let switched = d.switch.as_ref().is_some_and(|s| s.switched);
            if d.next_step().is_some() || !(switched || d.context.dry_run) {
                return Err(illegal(&Some(d), event));
            }
            d.status = Status::Succeeded;
        }
        outcome => {
            let Some(step) = outcome.completes_step() else {
                return Err(illegal(&Some(d), event));
            };
            if d.next_step() != Some(step) {
                return Err(illegal(&Some(d), event));
            }
            match outcome {
                Event::CheckedOut(c) => {
                    d.context.commit = Some(c.commit.clone());
                    d.context.config = c.config.clone();
                }
                Event::ImageBuilt(b) => {
                    d.context.image_id = Some(b.image_id.clone());
                    d.context.image_ref = b.pushed.clone();
                }
                Event::ImageReused(r) => d.context.image_id = Some(r.image_id.clone()),
                Event::WebContainerStarted(w) => {
                    d.context.web_container = Some(w.container.clone());
                    d.context.web_port = Some(w.host_port);
                    d.context.web_upstreams = w.upstreams.clone();
                    d.web_host = w.host.clone();
                    d.containers.push(w.container.clone());
                }
                Event::ProcessesStarted(p) => d.containers.extend(p.containers.iter().map(|c| c.container.clone())),
                _ => {}
            }
            d.completed.push(step);
        }
    }
    d.version += 1;
    Ok(d)
}

/// Folds a whole stream.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<Option<Deployment>, IllegalTransition> {
    crate::projection::fold(events)
}
