//! The decider: given a deployment's state, what happens next. Pure and
//! synchronous: ids are the driver's business and the time is an input
//! (`EnvironmentView::now`). It decides from the folded state rather than
//! from the last event alone, so seeing the same event twice, or several at
//! once, leads to the same decisions.
//!
//! | state                                   | decision                                  |
//! |-----------------------------------------|-------------------------------------------|
//! | running, nothing dispatched, queued behind another deployment of the environment | nothing (wait your turn) |
//! | running, nothing dispatched, approvals missing (`ApprovalRequired`) | nothing (wait for `DeploymentApproved`; a rejection cancels) |
//! | running, step S next, S not dispatched  | dispatch `RunStep(S)` (+ `StepDispatched`) |
//! | rollback (promotion), next step checkout/build/release (not release) | record it skipped / `ImageReused` (the old release's inputs) |
//! | next step build, an image of the same commit known | dispatch the build with it as the re-use candidate |
//! | replay from after the release, next step release | record it skipped (the original ran the commands) |
//! | running, S dispatched, no outcome yet   | wake me at its deadline                   |
//! | build dispatched, a worker heartbeated it, then went silent past the heartbeat timeout | as past the deadline |
//! | … past the deadline (+ backoff), attempts left | dispatch the same command (same id) again, next attempt |
//! | … past the deadline, last attempt       | `StepFailed(S)` naming the queue          |
//! | every pipeline step passed, no switch   | `TrafficSwitchRequested` + `RouteChanged` on the routes stream |
//! | switch requested, every router acknowledged | `TrafficSwitched` |
//! | switched, `[web] watch` is 0 (or a dry run) | `DeploymentSucceeded`, `DeploymentFinished` (environment), `RetireRelease` of the previous release |
//! | switched, watch not started             | `ReleaseWatchStarted` (until now + window) + dispatch `RunStep(watch)` |
//! | watching, the routers' counts of the release's requests above `[web] watch_max_error_rate` (at least 5 errors) | `StepFailed(watch)` "router errors: …" (then as any failed watch) |
//! | watching, no outcome yet                | wake me at its deadline (then as any overdue step) |
//! | watched (`ReleaseWatched`)              | `RouteChanged` (settled: the standby let go), `DeploymentSucceeded`, `DeploymentFinished`, `RetireRelease` of the previous release |
//! | failed after the switch (watch failed, cancelled), not rolled back | `ReleaseRolledBack` + `RouteChanged` back to the previous release |
//! | rolled back, every router acknowledged (or past the deadline) | `DeploymentFailed`, `DeploymentFinished`, `RetireRelease` (drained) of the new containers |
//! | rolled back, a router has not acknowledged, before the deadline | wake me at the deadline |
//! | switch requested, a router has not acknowledged, before the deadline | wake me at the deadline |
//! | … after the deadline                    | `StepFailed(cutover)` naming the routers  |
//! | a step failed, traffic never moved      | `DeploymentFailed`, `DeploymentFinished`, `RemoveContainers` |
//! | a step failed after the route changed   | `DeploymentFailed`, `DeploymentFinished`, `RouteChanged` back to the old release, `RetireRelease` (drained) of the new containers |
//! | cancel requested while running          | as a failure of the current step (reason: who cancelled) |
//! | finished, a late step outcome started containers | `RemoveContainers` of those        |
//! | succeeded or failed and recorded        | nothing                                   |

use chrono::{DateTime, Utc};
use slipway_proto::command::{ImageSource, RemoveContainers, RetireRelease, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::event::{
    DeploymentFailed, DeploymentFinished, DeploymentSucceeded, ImageReused, ReleaseRolledBack, ReleaseWatchStarted, RouteChanged,
    RouteReason, StepFailed, StepSkipped, TrafficSwitchRequested, TrafficSwitched,
};
use slipway_proto::{Command, Event, Step};

use crate::deployment::{Deployment, Status, Switch};
use crate::environment::ActiveRelease;
use crate::router_errors;
use crate::routes::Traffic;

/// What the driver should record and send.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send a step's command (the driver records `StepDispatched` with it).
    Dispatch(Command),
    /// Send a step's command again under the id it was first sent with, so
    /// that the outcome of either delivery is recorded once.
    DispatchAgain { command_id: uuid::Uuid, command: Command },
    /// Record a fact on the deployment's stream.
    Record(Event),
    /// Record a fact on the deployment's environment stream (same transaction).
    RecordOnEnvironment(Event),
    /// Record a route change on the routes stream (same transaction).
    RecordOnRoutes(Event),
    /// Nothing to do until this time, unless something else happens first.
    WakeAt(DateTime<Utc>),
}

/// What the decider needs to know beyond the deployment's own stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentView {
    /// The deployment heads its environment's queue.
    pub may_start: bool,
    /// The serving release.
    pub active: Option<ActiveRelease>,
    /// How long retired containers keep draining before they are stopped.
    pub drain_seconds: u64,
    /// Routes and routers; loaded once the pipeline has passed.
    pub traffic: Option<Traffic>,
    /// How long a switch waits for every router to acknowledge.
    pub switch_timeout: chrono::Duration,
    pub now: DateTime<Utc>,
    /// An image built from the same commit by a successful deployment of
    /// the project (or its mirror original); loaded before the build.
    pub reusable_image: Option<ImageSource>,
    /// Attempts per step and the pause before the next one.
    pub retries: Retries,
    /// The last time a live worker reported the dispatched command in
    /// progress (loaded while a heartbeat-tracked step runs).
    pub heartbeat: Option<DateTime<Utc>>,
    /// How long a started build may go without a heartbeat before it is
    /// taken for lost (its worker hung or its host vanished).
    pub heartbeat_timeout: chrono::Duration,
}

/// Steps that run long enough to be watched by heartbeat, not only by
/// their start-to-close deadline.
pub fn heartbeat_tracked(step: Step) -> bool {
    step == Step::Build
}

/// How often a step whose outcome does not arrive by its deadline is
/// dispatched again, and how long to pause first (doubling each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    pub max_attempts: u32,
    pub backoff: chrono::Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { max_attempts: 3, backoff: chrono::Duration::seconds(5) }
    }
}

impl Default for EnvironmentView {
    fn default() -> Self {
        EnvironmentView {
            may_start: false,
            active: None,
            drain_seconds: 30,
            traffic: None,
            switch_timeout: chrono::Duration::seconds(15),
            now: DateTime::UNIX_EPOCH,
            reusable_image: None,
            retries: Retries::default(),
            heartbeat: None,
            heartbeat_timeout: chrono::Duration::seconds(60),
        }
    }
}

pub fn decide(d: &Deployment, env: &EnvironmentView) -> Vec<Decision> {
    if d.is_finished() {
        return remove_late_containers(d);
    }
    match &d.status {
        Status::Succeeded => vec![],
        Status::Failed { .. } if d.failure_recorded => vec![],
        Status::Failed { step, reason } => failed(d, *step, reason, env),
        Status::Running => match d.next_step() {
            None if d.context.dry_run => succeeded(d, env),
            None => cutover(d, env),
            Some(step) if already_dispatched(d, step) => overdue(d, step, env),
            Some(_) if d.dispatched.is_none() && !env.may_start => vec![],
            // A protected environment's deployment waits for its approvals.
            Some(_) if d.awaiting_approval() => vec![],
            Some(step) => match rollback_reuse(d, step) {
                Some(outcome) => vec![Decision::Record(outcome)],
                None => {
                    vec![Decision::Dispatch(Command::RunStep(RunStep { step, attempt: 1, context: step_context(d, step, env) }))]
                }
            },
        },
    }
}

/// `StepFailed` is recorded by a worker (or by the engine for the cutover);
/// the verdict and the cleanup follow once. The old release was never
/// stopped; if the route already moved, it moves back.
fn failed(d: &Deployment, step: Step, reason: &str, env: &EnvironmentView) -> Vec<Decision> {
    if d.switch.as_ref().is_some_and(|s| s.switched) {
        return roll_back(d, step, reason, env);
    }
    let mut out =
        vec![Decision::Record(Event::DeploymentFailed(DeploymentFailed { step, reason: reason.to_string() })), finished(d, false)];
    if d.switch.is_some() {
        out.push(Decision::RecordOnRoutes(revert_route(d, env, RouteReason::Revert)));
        // Routers that did switch may have sent requests: drain them.
        out.push(drain_own(d, env));
    } else if !d.containers.is_empty() {
        out.push(Decision::Dispatch(Command::RemoveContainers(RemoveContainers { deployment_id: d.id, containers: d.containers.clone() })));
    }
    out
}

/// A release that failed after every router took it (its watch saw a
/// crash, or it was cancelled while watched): the route goes back to the
/// previous release, which never stopped, and the verdict waits until
/// every router has acknowledged that (or the switch deadline passed), so
/// "failed" means "the old release serves again".
fn roll_back(d: &Deployment, step: Step, reason: &str, env: &EnvironmentView) -> Vec<Decision> {
    let Some(traffic) = &env.traffic else { return vec![] };
    let back_to = || match &env.active {
        Some(a) => format!("routed back to {}", a.deployment),
        None => "no earlier release to route back to".to_string(),
    };
    let Some(revert) = &d.rollback else {
        let route_version = traffic.routes_version + 1;
        let routers: Vec<String> = traffic.routers.iter().cloned().collect();
        let mut out = vec![
            Decision::Record(Event::ReleaseRolledBack(ReleaseRolledBack {
                to: env.active.as_ref().map(|a| a.deployment),
                reason: reason.to_string(),
                details: d.failure_details.clone(),
                route_version,
                routers: routers.clone(),
                deadline: env.now + env.switch_timeout,
                router_errors: d.router_errors.values().cloned().collect(),
            })),
            Decision::RecordOnRoutes(revert_route(d, env, RouteReason::Rollback)),
        ];
        if routers.is_empty() {
            out.extend(rolled_back(d, step, &format!("{reason}; {}", back_to()), env));
        }
        return out;
    };
    let waiting = traffic.waiting_for(&revert.routers, revert.route_version);
    if waiting.is_empty() {
        rolled_back(d, step, &format!("{reason}; {}", back_to()), env)
    } else if env.now >= revert.deadline {
        let why = format!(
            "{reason}; {}, but router{} {} did not acknowledge route version {} by {}",
            back_to(),
            if waiting.len() == 1 { "" } else { "s" },
            waiting.join(", "),
            revert.route_version,
            revert.deadline.format("%H:%M:%S%.3f UTC"),
        );
        rolled_back(d, step, &why, env)
    } else {
        vec![Decision::WakeAt(revert.deadline)]
    }
}

/// The verdict after a rollback, and the failed release's containers
/// drained (routers that had switched may still be sending to them).
fn rolled_back(d: &Deployment, step: Step, reason: &str, env: &EnvironmentView) -> Vec<Decision> {
    vec![
        Decision::Record(Event::DeploymentFailed(DeploymentFailed { step, reason: reason.to_string() })),
        finished(d, false),
        drain_own(d, env),
    ]
}

/// Drain and remove this deployment's own containers: routers that took
/// the route to them may still be sending requests.
fn drain_own(d: &Deployment, env: &EnvironmentView) -> Decision {
    Decision::Dispatch(Command::RetireRelease(RetireRelease {
        deployment_id: d.id,
        containers: d.containers.clone(),
        drain_seconds: env.drain_seconds,
    }))
}

/// The route back to the release that served before this deployment.
fn revert_route(d: &Deployment, env: &EnvironmentView, reason: RouteReason) -> Event {
    Event::RouteChanged(RouteChanged {
        project: d.context.project.clone(),
        environment: d.context.environment.clone(),
        deployment_id: env.active.as_ref().map(|a| a.deployment),
        upstreams: env.active.as_ref().map(|a| a.upstreams.clone()).unwrap_or_default(),
        reason,
        standby: vec![],
    })
}

/// The deployment's `[web] watch` window (none when unreadable: the
/// checkout already refused a bad `slipway.toml`).
fn watch_window(d: &Deployment) -> std::time::Duration {
    AppConfig::from_value(&d.context.config).map(|c| c.web.watch.0).unwrap_or_default()
}

/// The routers' signal: once the watch has started, counts of the new
/// release's requests above `[web] watch_max_error_rate` fail the watch
/// (the worker watching Docker and the health path may still be at it; its
/// late outcome changes nothing). The failure then rolls back as any.
fn router_errors_failure(d: &Deployment) -> Option<Event> {
    let until = d.context.watch_until?;
    let limit = AppConfig::from_value(&d.context.config).map(|c| c.web.watch_max_error_rate).unwrap_or_default();
    let exceeded = router_errors::assess(&d.router_errors, limit)?;
    let window = chrono::Duration::from_std(watch_window(d)).ok();
    let switched_at = window.and_then(|w| until.checked_sub_signed(w));
    Some(Event::StepFailed(StepFailed {
        step: Step::Watch,
        reason: exceeded.reason(switched_at),
        attempt: d.dispatched.filter(|(s, _, _)| *s == Step::Watch).map_or(1, |(_, attempt, _)| attempt),
        details: router_errors::details(&d.router_errors),
        evidence: None,
    }))
}

/// After every router took the new release: watch it for `[web] watch`
/// (the old release stays up meanwhile), then succeed. A watch that fails
/// is a `StepFailed(watch)`, which `failed` turns into a rollback.
fn watch(d: &Deployment, env: &EnvironmentView) -> Vec<Decision> {
    let window = watch_window(d);
    if d.watched {
        // The standby (the previous release, which served all along) is let
        // go before it is retired; a first release had none.
        let mut out = vec![];
        let had_standby = env.active.as_ref().is_some_and(|a| !a.upstreams.is_empty());
        if let (Some(switch), true) = (&d.switch, had_standby) {
            out.push(Decision::RecordOnRoutes(Event::RouteChanged(RouteChanged {
                project: d.context.project.clone(),
                environment: d.context.environment.clone(),
                deployment_id: Some(d.id),
                upstreams: switch.upstreams.clone(),
                reason: RouteReason::Settled,
                standby: vec![],
            })));
        }
        out.extend(succeeded(d, env));
        return out;
    }
    if window.is_zero() {
        return succeeded(d, env);
    }
    if let Some(failure) = router_errors_failure(d) {
        return vec![Decision::Record(failure)];
    }
    if d.context.watch_until.is_none() {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        let until = env.now + window;
        let mut context = d.context.clone();
        context.watch_until = Some(until);
        return vec![
            Decision::Record(Event::ReleaseWatchStarted(ReleaseWatchStarted { until, window_ms: window.num_milliseconds().max(0) as u64 })),
            Decision::Dispatch(Command::RunStep(RunStep { step: Step::Watch, attempt: 1, context })),
        ];
    }
    if already_dispatched(d, Step::Watch) {
        return overdue(d, Step::Watch, env);
    }
    vec![Decision::Dispatch(Command::RunStep(RunStep { step: Step::Watch, attempt: 1, context: d.context.clone() }))]
}

/// A worker still running when the verdict came started containers that
/// belong to no release: remove them (idempotent if decided twice).
fn remove_late_containers(d: &Deployment) -> Vec<Decision> {
    if d.late_containers.is_empty() {
        return vec![];
    }
    vec![Decision::Dispatch(Command::RemoveContainers(RemoveContainers { deployment_id: d.id, containers: d.late_containers.clone() }))]
}

/// The pipeline passed: move the route, then wait for every router.
fn cutover(d: &Deployment, env: &EnvironmentView) -> Vec<Decision> {
    let Some(traffic) = &env.traffic else { return vec![] };
    let Some(switch) = &d.switch else {
        let upstreams = d.context.upstreams();
        if upstreams.is_empty() {
            return vec![Decision::Record(fail(Step::Cutover, "no web container port was recorded".into()))];
        }
        let route_version = traffic.routes_version + 1;
        let routers: Vec<String> = traffic.routers.iter().cloned().collect();
        let mut out = vec![
            Decision::Record(Event::TrafficSwitchRequested(TrafficSwitchRequested {
                route_version,
                upstreams: upstreams.clone(),
                routers: routers.clone(),
                deadline: env.now + env.switch_timeout,
            })),
            Decision::RecordOnRoutes(Event::RouteChanged(RouteChanged {
                project: d.context.project.clone(),
                environment: d.context.environment.clone(),
                deployment_id: Some(d.id),
                upstreams: upstreams.clone(),
                reason: RouteReason::Cutover,
                // While watched, the previous release stands by for
                // connections the new one refuses.
                standby: match watch_window(d).is_zero() {
                    true => vec![],
                    false => env.active.as_ref().map(|a| a.upstreams.clone()).unwrap_or_default(),
                },
            })),
        ];
        if routers.is_empty() {
            // No router to wait for: switched at once. What follows is
            // decided from the switched state, so the release recorded as
            // serving names its containers and upstreams (the next
            // deployment retires them, a failed one reverts to them).
            let switched = Deployment {
                switch: Some(Switch { route_version, upstreams, routers: vec![], deadline: env.now, switched: true }),
                ..d.clone()
            };
            out.push(Decision::Record(Event::TrafficSwitched(TrafficSwitched { route_version, routers })));
            out.extend(watch(&switched, env));
        }
        return out;
    };
    if switch.switched {
        return watch(d, env);
    }
    let waiting = traffic.waiting_for(&switch.routers, switch.route_version);
    if waiting.is_empty() {
        let routers = switch.routers.iter().filter(|r| traffic.routers.contains(*r)).cloned().collect();
        let mut out = vec![Decision::Record(Event::TrafficSwitched(TrafficSwitched { route_version: switch.route_version, routers }))];
        out.extend(watch(d, env));
        out
    } else if env.now >= switch.deadline {
        let reason = format!(
            "router{} {} did not acknowledge route version {} by {}; the previous release keeps serving",
            if waiting.len() == 1 { "" } else { "s" },
            waiting.join(", "),
            switch.route_version,
            switch.deadline.format("%H:%M:%S%.3f UTC"),
        );
        vec![Decision::Record(fail(Step::Cutover, reason))]
    } else {
        vec![Decision::WakeAt(switch.deadline)]
    }
}

/// A dispatched step without an outcome: wait for its deadline; past it,
/// after a pause that doubles per attempt, dispatch the same command again;
/// after the last attempt, fail it. A build whose worker heartbeated and
/// then went silent for the heartbeat timeout is past its deadline early.
/// A late outcome of an earlier attempt still counts (the worker records
/// one outcome per command id).
fn overdue(d: &Deployment, step: Step, env: &EnvironmentView) -> Vec<Decision> {
    let (Some(deadline), Some((_, attempt, command_id))) = (d.dispatch_deadline, d.dispatched) else { return vec![] };
    // Beats from before this attempt (a hung worker's last one) don't count.
    let beat = env.heartbeat.filter(|b| d.dispatched_at.is_none_or(|at| *b >= at));
    let silent_since = beat.filter(|_| heartbeat_tracked(step)).map(|b| b + env.heartbeat_timeout);
    let clock = |at: DateTime<Utc>| at.format("%H:%M:%S UTC").to_string();
    let expired = match silent_since {
        Some(at) if at < deadline && env.now >= at => Some((
            at,
            format!(
                "the worker running {step} stopped heartbeating ({}s without a beat by {})",
                env.heartbeat_timeout.num_seconds(),
                clock(at)
            ),
        )),
        _ if env.now >= deadline => Some((deadline, format!("no worker reported an outcome of {step} by {}", clock(deadline)))),
        _ => None,
    };
    let Some((expired_at, why)) = expired else {
        // A build not started yet is looked at again a heartbeat timeout
        // from now, to notice its first heartbeat.
        let look_again = match (heartbeat_tracked(step), silent_since) {
            (true, Some(at)) => at,
            (true, None) => env.now + env.heartbeat_timeout,
            (false, _) => deadline,
        };
        return vec![Decision::WakeAt(look_again.min(deadline))];
    };
    if attempt >= env.retries.max_attempts {
        let reason = format!("{why} (attempt {attempt} of {}); is a worker serving {}?", env.retries.max_attempts, step.queue());
        return vec![Decision::Record(fail(step, reason))];
    }
    let pause = env.retries.backoff * 2i32.saturating_pow(attempt.saturating_sub(1));
    if env.now < expired_at + pause {
        return vec![Decision::WakeAt(expired_at + pause)];
    }
    let command = Command::RunStep(RunStep { step, attempt: attempt + 1, context: step_context(d, step, env) });
    vec![Decision::DispatchAgain { command_id, command }]
}

/// The context a step's command carries: a build also gets an image it may
/// re-use (a replay's original image first, else one of the same commit).
fn step_context(d: &Deployment, step: Step, env: &EnvironmentView) -> slipway_proto::command::DeploymentContext {
    let mut context = d.context.clone();
    if step == Step::Build {
        let replayed =
            d.replay_of.as_ref().and_then(|r| Some(ImageSource { deployment_id: r.deployment_id, image_id: r.image_id.clone()? }));
        context.reuse = replayed.or_else(|| env.reusable_image.clone());
    }
    context
}

fn fail(step: Step, reason: String) -> Event {
    Event::StepFailed(StepFailed { step, reason, attempt: 1, details: vec![], evidence: None })
}

/// Success: the verdict, the environment's new release, and the previous
/// release's retirement (only now, with traffic moved).
fn succeeded(d: &Deployment, env: &EnvironmentView) -> Vec<Decision> {
    let mut out = vec![
        Decision::Record(Event::DeploymentSucceeded(DeploymentSucceeded {
            image_id: d.context.image_id.clone().unwrap_or_default(),
            commit: d.context.commit.clone().unwrap_or_default(),
        })),
        finished(d, true),
    ];
    if !d.context.dry_run {
        out.extend(retire_previous(d, env));
    }
    out
}

fn finished(d: &Deployment, succeeded: bool) -> Decision {
    // Without routers the switch and the verdict are decided together:
    // `cutover` hands over the switched state, so the switch is there.
    let (containers, upstreams) = match (&d.switch, succeeded) {
        (Some(s), true) => (d.containers.clone(), s.upstreams.clone()),
        _ => (vec![], vec![]),
    };
    Decision::RecordOnEnvironment(Event::DeploymentFinished(DeploymentFinished {
        deployment_id: d.id,
        succeeded,
        containers,
        upstreams,
        dry_run: d.context.dry_run,
        host: if succeeded { d.web_host.clone() } else { String::new() },
    }))
}

/// The previous release's containers stop only once this one serves.
fn retire_previous(d: &Deployment, env: &EnvironmentView) -> Option<Decision> {
    let previous = env.active.as_ref()?;
    if previous.deployment == d.id || previous.containers.is_empty() {
        return None;
    }
    Some(Decision::Dispatch(Command::RetireRelease(RetireRelease {
        deployment_id: previous.deployment,
        containers: previous.containers.clone(),
        drain_seconds: env.drain_seconds,
    })))
}

/// A rollback re-uses an old release's checkout, image and schema; a
/// promotion its checkout and image (release commands run: the target
/// environment's schema has not seen them). Those steps are recorded by the
/// engine instead of dispatched.
fn rollback_reuse(d: &Deployment, step: Step) -> Option<Event> {
    if let Some(replay) = &d.replay_of {
        // A replay from after the release: the original ran its commands.
        let ran_before =
            Step::PIPELINE.iter().position(|s| *s == Step::Release) < Step::PIPELINE.iter().position(|s| *s == replay.from_step);
        return (step == Step::Release && ran_before).then(|| {
            Event::StepSkipped(StepSkipped {
                step,
                reason: format!("replay of {} from {}: its release commands ran there", replay.deployment_id, replay.from_step),
            })
        });
    }
    let (source, what) = match (d.rollback_of, d.promoted_from) {
        (Some(source), _) => (source, "rollback"),
        (None, Some(source)) => (source, "promotion"),
        (None, None) => return None,
    };
    let skipped = |reason: String| Some(Event::StepSkipped(StepSkipped { step, reason }));
    match step {
        Step::Checkout => {
            skipped(format!("{what} of {source}: its commit {} and slipway.toml are re-used", d.context.commit.as_deref().unwrap_or("?")))
        }
        Step::Build => {
            Some(Event::ImageReused(ImageReused { image_id: d.context.image_id.clone().unwrap_or_default(), source_deployment: source }))
        }
        Step::Release if d.rollback_of.is_some() => skipped(format!("rollback to {source}: release commands are not run again")),
        _ => None,
    }
}

fn already_dispatched(d: &Deployment, step: Step) -> bool {
    matches!(d.dispatched, Some((s, _, _)) if s == step)
}
