//! Operator views over recorded history, pure: a deployment's timeline (each
//! event with its step, actor, outcome and the step's duration), the
//! difference between two deployments, and which release served an
//! environment at a past moment. Times are the store's `recorded_at`, one
//! clock for every writer, so a duration never mixes an engine host's clock
//! with a worker's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_proto::envelope::Message;
use slipway_proto::event::PinningWarning;
use slipway_proto::{Event, Step};
use slipway_store::RecordedEvent;
use uuid::Uuid;

use crate::deployment::{self, Deployment};
use crate::environment::{self, Environment};
use crate::load::{decode_all, LoadError};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed { reason: String },
    Skipped { reason: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
            Outcome::Skipped { reason } => write!(f, "skipped: {reason}"),
        }
    }
}

/// One event of a deployment's stream, as the timeline shows it. In JSON
/// its event's payload goes with it (`payload`), so that a client renders
/// the same description (`slipway history --server`), and an auditor reads
/// an approval's or override's reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "EntryJson", try_from = "EntryJson")]
pub struct Entry {
    pub version: u64,
    pub at: DateTime<Utc>,
    /// The pipeline step the event belongs to (the cutover for the traffic switch).
    pub step: Option<Step>,
    pub event: String,
    pub actor: String,
    /// On a dispatch: which attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// On a step's outcome: time since the step was first dispatched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Dockerfile pinning findings (on `ImageBuilt`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<PinningWarning>,
    /// The decoded event, for a renderer's description.
    pub payload: Event,
}

/// `Entry` as JSON: the event's payload as recorded.
#[derive(Serialize, Deserialize)]
struct EntryJson {
    version: u64,
    at: DateTime<Utc>,
    step: Option<Step>,
    event: String,
    actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<PinningWarning>,
    payload: serde_json::Value,
}

impl From<Entry> for EntryJson {
    fn from(e: Entry) -> EntryJson {
        // An event's payload always serialises (it was decoded from JSON).
        let payload = e.payload.payload().unwrap_or(serde_json::Value::Null);
        EntryJson {
            version: e.version,
            at: e.at,
            step: e.step,
            event: e.event,
            actor: e.actor,
            attempt: e.attempt,
            duration_ms: e.duration_ms,
            outcome: e.outcome,
            warnings: e.warnings,
            payload,
        }
    }
}

impl TryFrom<EntryJson> for Entry {
    type Error = serde_json::Error;

    fn try_from(j: EntryJson) -> Result<Entry, serde_json::Error> {
        Ok(Entry {
            payload: Event::from_payload(&j.event, j.payload)?,
            version: j.version,
            at: j.at,
            step: j.step,
            event: j.event,
            actor: j.actor,
            attempt: j.attempt,
            duration_ms: j.duration_ms,
            outcome: j.outcome,
            warnings: j.warnings,
        })
    }
}

/// One step from its first dispatch to its (first) outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: Step,
    pub attempts: u32,
    pub dispatched_at: Option<DateTime<Utc>>,
    /// `None` while no outcome is recorded, or when the step had no dispatch
    /// (a rollback's skipped checkout).
    pub duration_ms: Option<i64>,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub deployment: Uuid,
    pub project: String,
    pub environment: String,
    /// `running`, `succeeded`, `failed at STEP: REASON` or `failed before
    /// it started: REASON` (`deployment::failure_text`).
    pub status: String,
    pub commit: Option<String>,
    pub image: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    /// When the verdict (`DeploymentSucceeded`/`DeploymentFailed`) was recorded.
    pub finished_at: Option<DateTime<Utc>>,
    pub total_ms: Option<i64>,
}

/// A timeline as its JSON carries it (`GET /api/deployments/{id}/history`):
/// all but the folded state, which a client has no need of.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TimelineJson {
    pub summary: Summary,
    pub steps: Vec<StepTiming>,
    pub entries: Vec<Entry>,
}

/// A deployment's history: its state, every event, and each step's timing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub summary: Summary,
    pub steps: Vec<StepTiming>,
    pub entries: Vec<Entry>,
    #[serde(skip)]
    pub deployment: Deployment,
}

/// Builds the timeline of one deployment's recorded stream; `None` for an
/// empty stream. An undecodable event or an illegal history is an error,
/// as when loading.
pub fn timeline(recorded: &[RecordedEvent]) -> Result<Option<Timeline>, LoadError> {
    let events = decode_all(recorded)?;
    let Some(deployment) = deployment::fold(events.iter())? else { return Ok(None) };
    let mut steps: Vec<StepTiming> = Vec::new();
    let mut entries = Vec::with_capacity(events.len());
    let mut finished_at = None;
    for (r, event) in recorded.iter().zip(events) {
        let mut entry = Entry {
            version: r.version,
            at: r.recorded_at,
            step: None,
            event: event.message_type().to_string(),
            actor: r.envelope.actor.clone(),
            attempt: None,
            duration_ms: None,
            outcome: None,
            warnings: Vec::new(),
            payload: event.clone(),
        };
        let dispatched = match &event {
            Event::StepDispatched(d) => Some((d.step, Some(d.attempt))),
            // The engine's own step: one switch, no attempts.
            Event::TrafficSwitchRequested(_) => Some((Step::Cutover, None)),
            _ => None,
        };
        let outcome = match &event {
            Event::StepFailed(f) => Some((f.step, Outcome::Failed { reason: f.reason.clone() })),
            Event::StepSkipped(s) => Some((s.step, Outcome::Skipped { reason: s.reason.clone() })),
            Event::TrafficSwitched(_) => Some((Step::Cutover, Outcome::Ok)),
            // The watch's outcome (its failure is a `StepFailed`): not in
            // `completes_step`, which the decider reads, since the watch
            // ends a deployment rather than leading to a next step.
            Event::ReleaseWatched(_) => Some((Step::Watch, Outcome::Ok)),
            other => other.completes_step().map(|s| (s, Outcome::Ok)),
        };
        if let Event::ImageBuilt(b) = &event {
            entry.warnings = b.warnings.clone();
        }
        if let Event::DeploymentSucceeded(_) | Event::DeploymentFailed(_) = &event {
            finished_at.get_or_insert(r.recorded_at);
        }
        if let Some((step, attempt)) = dispatched {
            entry.step = Some(step);
            entry.attempt = attempt;
            let attempt = attempt.unwrap_or(1);
            match steps.iter_mut().find(|t| t.step == step) {
                Some(t) => t.attempts = t.attempts.max(attempt),
                None => {
                    steps.push(StepTiming { step, attempts: attempt, dispatched_at: Some(r.recorded_at), duration_ms: None, outcome: None })
                }
            }
        }
        if let Some((step, outcome)) = outcome {
            entry.step = Some(step);
            let timing = match steps.iter().position(|t| t.step == step) {
                Some(i) => &mut steps[i],
                None => {
                    steps.push(StepTiming { step, attempts: 0, dispatched_at: None, duration_ms: None, outcome: None });
                    let last = steps.len() - 1;
                    &mut steps[last]
                }
            };
            entry.duration_ms = timing.dispatched_at.map(|at| (r.recorded_at - at).num_milliseconds());
            // A second outcome (a redelivered command) is shown, but the
            // step's timing is the first.
            if timing.outcome.is_none() {
                timing.duration_ms = entry.duration_ms;
                timing.outcome = Some(outcome.clone());
            }
            entry.outcome = Some(outcome);
        }
        entries.push(entry);
    }
    let started_at = recorded.first().map(|r| r.recorded_at);
    let summary = Summary {
        deployment: deployment.id,
        project: deployment.context.project.clone(),
        environment: deployment.context.environment.clone(),
        status: match deployment.failure_text() {
            Some(text) if deployment.failure_recorded => text,
            _ => deployment.status_word().into(),
        },
        commit: deployment.context.commit.clone(),
        image: deployment.context.image_id.clone(),
        started_at,
        finished_at,
        total_ms: started_at.zip(finished_at).map(|(s, f)| (f - s).num_milliseconds()),
    };
    Ok(Some(Timeline { summary, steps, entries, deployment }))
}

/// The release commands of the `slipway.toml` a deployment recorded.
pub fn release_commands(config: &serde_json::Value) -> Vec<String> {
    config
        .pointer("/release/commands")
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Two values side by side (A, then B).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pair<T> {
    pub a: T,
    pub b: T,
}

impl<T: PartialEq> Pair<T> {
    pub fn changed(&self) -> bool {
        self.a != self.b
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepDurations {
    pub step: Step,
    pub a_ms: Option<i64>,
    pub b_ms: Option<i64>,
}

/// What changed from deployment A to deployment B. Settings compare by
/// fingerprint only: a changed key is a changed fingerprint, no value is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub deployments: Pair<Uuid>,
    pub repository: Pair<String>,
    pub commit: Pair<Option<String>>,
    pub image: Pair<Option<String>>,
    pub settings_added: Vec<String>,
    pub settings_removed: Vec<String>,
    pub settings_changed: Vec<String>,
    pub release_commands: Pair<Vec<String>>,
    /// Every step either ran, in pipeline order.
    pub steps: Vec<StepDurations>,
}

pub fn diff(a: &Timeline, b: &Timeline) -> Diff {
    let (ca, cb) = (&a.deployment.context, &b.deployment.context);
    let (sa, sb): (&BTreeMap<String, String>, &BTreeMap<String, String>) = (&ca.settings, &cb.settings);
    let keys =
        |f: &dyn Fn(&String) -> bool, from: &BTreeMap<String, String>| -> Vec<String> { from.keys().filter(|k| f(k)).cloned().collect() };
    let duration = |t: &Timeline, step: Step| t.steps.iter().find(|s| s.step == step).and_then(|s| s.duration_ms);
    let mut steps: Vec<Step> = a.steps.iter().chain(&b.steps).map(|s| s.step).collect();
    steps.sort();
    steps.dedup();
    Diff {
        deployments: Pair { a: a.deployment.id, b: b.deployment.id },
        repository: Pair { a: ca.repository.clone(), b: cb.repository.clone() },
        commit: Pair { a: ca.commit.clone(), b: cb.commit.clone() },
        image: Pair { a: ca.image_id.clone(), b: cb.image_id.clone() },
        settings_added: keys(&|k| !sa.contains_key(k), sb),
        settings_removed: keys(&|k| !sb.contains_key(k), sa),
        settings_changed: keys(&|k| sa.get(k).is_some_and(|fa| fa != &sb[k]), sb),
        release_commands: Pair { a: release_commands(&ca.config), b: release_commands(&cb.config) },
        steps: steps.into_iter().map(|step| StepDurations { step, a_ms: duration(a, step), b_ms: duration(b, step) }).collect(),
    }
}

/// One release of an environment (a deployment that served it), as
/// `slipway releases` and the API list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Release {
    pub deployment: Uuid,
    /// It serves now.
    pub serving: bool,
    /// When it was requested.
    pub requested_at: Option<DateTime<Utc>>,
    pub commit: Option<String>,
    pub image: Option<String>,
    /// `built`, or `re-used` (an image an earlier release built from the same commit).
    pub origin: String,
    /// How many settings it ran with (keys and fingerprints are in its events).
    pub settings: usize,
    /// Release commands it ran, in order.
    pub release_commands: Vec<String>,
    pub rollback_of: Option<Uuid>,
    pub promoted_from: Option<Uuid>,
}

/// The release view of a deployment and its recorded events.
pub fn release(d: &Deployment, recorded: &[RecordedEvent], serving: bool) -> Release {
    let mut release_commands = Vec::new();
    let mut origin = "built";
    for r in recorded {
        match r.envelope.decode::<Event>() {
            Ok(Event::ReleaseCommandsRan(ran)) if !ran.skipped => release_commands.extend(ran.results.iter().map(|c| c.command.clone())),
            Ok(Event::ImageReused(_)) => origin = "re-used",
            _ => {}
        }
    }
    Release {
        deployment: d.id,
        serving,
        requested_at: recorded.first().map(|r| r.recorded_at),
        commit: d.context.commit.clone(),
        image: d.context.image_id.clone(),
        origin: origin.into(),
        settings: d.context.settings.len(),
        release_commands,
        rollback_of: d.rollback_of,
        promoted_from: d.promoted_from,
    }
}

/// An environment as it stood at `at`: its stream folded over the events
/// recorded at or before then.
pub fn environment_at(recorded: &[RecordedEvent], at: DateTime<Utc>) -> Result<Environment, LoadError> {
    let upto = recorded.iter().take_while(|r| r.recorded_at <= at).count();
    Ok(environment::fold(decode_all(&recorded[..upto])?.iter()))
}

/// Which deployment the routers served `project` `env` from at `at`: the
/// last `RouteChanged` for it on the routes stream at or before then
/// (`Some(None)`: its route had been removed), or `None` when no route was
/// recorded for it by then. A release being watched after its cutover
/// serves though it has not succeeded yet, and a rolled-back one no longer
/// does, so this, not the environment's last success, is what served.
pub fn routed_at(routes: &[RecordedEvent], project: &str, env: &str, at: DateTime<Utc>) -> Option<Option<Uuid>> {
    routes.iter().take_while(|r| r.recorded_at <= at).fold(None, |served, r| match r.envelope.decode::<Event>() {
        Ok(Event::RouteChanged(c)) if c.project == project && c.environment == env => Some(c.deployment_id),
        _ => served,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::Duration;
    use slipway_proto::envelope::Metadata;
    use slipway_proto::event::{
        BuildMode, CheckedOut, DeploymentEnqueued, DeploymentFailed, DeploymentFinished, DeploymentSucceeded, HealthCheckPassed,
        ImageBuilt, ImageReused, ReleaseCommandResult, ReleaseCommandsRan, ReleaseWatchStarted, ReleaseWatched, ServicesChecked,
        StepDispatched, StepFailed, StepSkipped, TrafficSwitchRequested, TrafficSwitched, WebContainerStarted,
    };
    use slipway_proto::Envelope;
    use slipway_store::Position;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    /// Canned events at given offsets (ms after `t0`), as the store records them.
    fn recorded(stream: &str, events: Vec<(i64, &str, Event)>) -> Vec<RecordedEvent> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, (ms, actor, event))| {
                let at = t0() + Duration::milliseconds(ms);
                let meta = Metadata { correlation_id: Uuid::nil(), causation_id: None, actor: actor.into(), trace: None };
                RecordedEvent {
                    position: Position { tx: 0, seq: i as i64 + 1 },
                    stream: stream.into(),
                    version: i as u64 + 1,
                    envelope: Envelope::new(Uuid::now_v7(), at, stream, &event, meta).unwrap(),
                    hash: String::new(),
                    prev_hash: String::new(),
                    recorded_at: at,
                }
            })
            .collect()
    }

    /// Through JSON, so fields added later with a default need no change here.
    fn requested(id: Uuid, settings: &[(&str, &str)]) -> Event {
        let settings: BTreeMap<&str, &str> = settings.iter().copied().collect();
        Event::DeploymentRequested(
            serde_json::from_value(serde_json::json!({
                "deployment_id": id,
                "project": "shop",
                "environment": "live",
                "repository": "/srv/git/shop",
                "git_ref": "main",
                "mode": "cloud",
                "settings": settings,
            }))
            .unwrap(),
        )
    }

    fn dispatch(step: Step, attempt: u32) -> Event {
        Event::StepDispatched(StepDispatched { step, command_id: Uuid::now_v7(), attempt, deadline: None, dispatched_at: None })
    }

    /// A deployment that ran every step (the build twice: the first attempt
    /// was lost) and switched traffic. Steps take 100 ms each, the build 2 s
    /// from its first dispatch.
    fn happy_path(id: Uuid, commit: &str, image: &str, settings: &[(&str, &str)], commands: &[&str]) -> Vec<(i64, &'static str, Event)> {
        let config = serde_json::json!({ "release": { "commands": commands } });
        let w = "worker:a";
        vec![
            (0, "cli:op", requested(id, settings)),
            (10, "engine", dispatch(Step::CheckServices, 1)),
            (110, w, Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None })),
            (120, "engine", dispatch(Step::Checkout, 1)),
            (220, w, Event::CheckedOut(CheckedOut { commit: commit.into(), workspace: "/w".into(), config, source_host_key: None })),
            (230, "engine", dispatch(Step::Build, 1)),
            (1230, "engine", dispatch(Step::Build, 2)),
            (
                2230,
                w,
                Event::ImageBuilt(ImageBuilt {
                    image_id: image.into(),
                    tag: "shop:1".into(),
                    cache_used: false,
                    duration_ms: 900,
                    log_ref: None,
                    log_digest: None,
                    mode: BuildMode::Cloud,
                    warnings: vec![PinningWarning {
                        file: "Dockerfile".into(),
                        line: 1,
                        rule: "unpinned-base".into(),
                        message: "FROM python:3 has no digest".into(),
                    }],
                    pushed: None,
                    base_images: vec![],
                }),
            ),
            (2240, "engine", dispatch(Step::Deploy, 1)),
            (
                2340,
                w,
                Event::WebContainerStarted(WebContainerStarted {
                    container: "shop-web".into(),
                    host_port: 4000,
                    host: String::new(),
                    upstreams: vec![],
                    warnings: vec![],
                }),
            ),
            (2350, "engine", dispatch(Step::Release, 1)),
            (
                2450,
                w,
                Event::ReleaseCommandsRan(ReleaseCommandsRan {
                    results: commands
                        .iter()
                        .map(|c| ReleaseCommandResult { command: c.to_string(), exit_code: 0, duration_ms: 50, log_ref: None })
                        .collect(),
                    skipped: false,
                }),
            ),
            (2460, "engine", dispatch(Step::Processes, 1)),
            (2560, w, Event::StepSkipped(StepSkipped { step: Step::Processes, reason: "no process types".into() })),
            (2570, "engine", dispatch(Step::HealthCheck, 1)),
            (2670, w, Event::HealthCheckPassed(HealthCheckPassed { path: "/".into(), status: 200, attempts: 1, elapsed_ms: 5 })),
            (
                2680,
                "engine",
                Event::TrafficSwitchRequested(TrafficSwitchRequested {
                    route_version: 3,
                    upstreams: vec!["127.0.0.1:4000".into()],
                    routers: vec![],
                    deadline: t0() + Duration::seconds(60),
                }),
            ),
            (2780, "engine", Event::TrafficSwitched(TrafficSwitched { route_version: 3, routers: vec![] })),
            (2790, "engine", Event::DeploymentSucceeded(DeploymentSucceeded { image_id: image.into(), commit: commit.into() })),
        ]
    }

    fn build_fails(id: Uuid) -> Vec<(i64, &'static str, Event)> {
        let mut events = happy_path(id, "abc", "sha256:1", &[], &[]);
        events.truncate(7);
        events.push((
            1500,
            "worker:a",
            Event::StepFailed(StepFailed {
                step: Step::Build,
                reason: "no Dockerfile".into(),
                attempt: 2,
                details: vec![],
                evidence: None,
            }),
        ));
        events.push((1510, "engine", Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "no Dockerfile".into() })));
        events
    }

    fn timeline_of(id: Uuid, events: Vec<(i64, &'static str, Event)>) -> Timeline {
        timeline(&recorded(&slipway_proto::event::deployment_stream(id), events)).unwrap().unwrap()
    }

    #[test]
    fn a_timeline_names_each_events_step_actor_outcome_and_duration() {
        let id = Uuid::now_v7();
        let t = timeline_of(id, happy_path(id, "c0ffee", "sha256:aaa", &[("A", "fp1")], &["migrate"]));
        assert_eq!(t.entries.len(), 19);
        let built = t.entries.iter().find(|e| e.event == "ImageBuilt").unwrap();
        assert_eq!(built.step, Some(Step::Build));
        assert_eq!(built.actor, "worker:a");
        assert_eq!(built.outcome, Some(Outcome::Ok));
        // From the first dispatch, across the lost attempt.
        assert_eq!(built.duration_ms, Some(2000));
        assert_eq!(built.warnings.len(), 1);
        assert_eq!(built.warnings[0].line, 1);
        let second = t.entries.iter().filter(|e| e.event == "StepDispatched" && e.step == Some(Step::Build)).nth(1).unwrap();
        assert_eq!(second.attempt, Some(2));
        let processes = t.steps.iter().find(|s| s.step == Step::Processes).unwrap();
        assert_eq!(processes.outcome, Some(Outcome::Skipped { reason: "no process types".into() }));
        assert_eq!(processes.outcome.as_ref().unwrap().to_string(), "skipped: no process types");
        let order: Vec<Step> = t.steps.iter().map(|s| s.step).collect();
        let mut expected = Step::PIPELINE.to_vec();
        expected.push(Step::Cutover);
        assert_eq!(order, expected);
        assert_eq!(t.steps.iter().find(|s| s.step == Step::Build).unwrap().attempts, 2);
        assert_eq!(t.steps.iter().find(|s| s.step == Step::Cutover).unwrap().duration_ms, Some(100));
        assert_eq!(t.summary.status, "succeeded");
        assert_eq!(t.summary.commit.as_deref(), Some("c0ffee"));
        assert_eq!(t.summary.image.as_deref(), Some("sha256:aaa"));
        assert_eq!(t.summary.total_ms, Some(2790));
        assert_eq!(t.entries[0].step, None);
        assert_eq!(t.entries[0].actor, "cli:op");
    }

    #[test]
    fn what_was_routed_at_a_time_is_the_last_route_change_of_that_environment_before_it() {
        let (a, b, x) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let route = |project: &str, deployment: Option<Uuid>| {
            Event::RouteChanged(slipway_proto::event::RouteChanged {
                project: project.into(),
                environment: "live".into(),
                deployment_id: deployment,
                upstreams: vec![],
                reason: slipway_proto::event::RouteReason::Cutover,
                standby: vec![],
            })
        };
        let routes = recorded(
            slipway_proto::event::ROUTES_STREAM,
            vec![
                (100, "engine", route("p", Some(a))),
                (200, "engine", route("p-other", Some(x))),
                (300, "engine", route("p", Some(b))),
                (400, "engine", route("p", None)),
            ],
        );
        let at = |ms| routed_at(&routes, "p", "live", t0() + Duration::milliseconds(ms));
        assert_eq!(at(50), None, "no route yet");
        assert_eq!(at(250), Some(Some(a)), "another environment's change is not this one's");
        assert_eq!(at(300), Some(Some(b)));
        assert_eq!(at(450), Some(None), "the route removed");
    }

    #[test]
    fn a_watched_release_shows_the_watch_as_a_step_with_its_outcome() {
        let id = Uuid::now_v7();
        let mut events = happy_path(id, "c", "i", &[], &[]);
        let succeeded = events.pop().unwrap();
        let until = t0() + Duration::seconds(10);
        events.push((2781, "engine", Event::ReleaseWatchStarted(ReleaseWatchStarted { until, window_ms: 10_000 })));
        events.push((2782, "engine", dispatch(Step::Watch, 1)));
        let watched = ReleaseWatched { watched_ms: 10_000, probes: 10, failed_probes: 0, containers: vec!["web".into()] };
        events.push((12_782, "worker:a", Event::ReleaseWatched(watched)));
        events.push((12_790, succeeded.1, succeeded.2));
        let t = timeline_of(id, events);
        let watch = t.steps.iter().find(|s| s.step == Step::Watch).unwrap();
        assert_eq!((watch.outcome.clone(), watch.duration_ms), (Some(Outcome::Ok), Some(10_000)));
        let entry = t.entries.iter().find(|e| e.event == "ReleaseWatched").unwrap();
        assert_eq!((entry.step, entry.outcome.clone()), (Some(Step::Watch), Some(Outcome::Ok)));
    }

    #[test]
    fn a_failed_step_carries_its_reason_and_the_summary_the_verdict() {
        let id = Uuid::now_v7();
        let t = timeline_of(id, build_fails(id));
        let failed = t.entries.iter().find(|e| e.event == "StepFailed").unwrap();
        assert_eq!(failed.outcome.as_ref().unwrap().to_string(), "failed: no Dockerfile");
        assert_eq!(failed.duration_ms, Some(1270));
        assert_eq!(t.summary.status, "failed at build: no Dockerfile");
        assert_eq!(t.summary.image, None);
        assert_eq!(t.summary.total_ms, Some(1510));
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["entries"][7]["outcome"], serde_json::json!({"result": "failed", "reason": "no Dockerfile"}));
        assert_eq!(json["summary"]["status"], "failed at build: no Dockerfile");
        // Each entry carries its event's payload, so scripts read reasons.
        assert_eq!(json["entries"][7]["payload"]["reason"], "no Dockerfile", "{}", json["entries"][7]);
    }

    #[test]
    fn a_duplicate_outcome_is_shown_but_keeps_the_first_timing() {
        let id = Uuid::now_v7();
        let mut events = happy_path(id, "c", "i", &[], &[]);
        events.insert(3, (500, "worker:b", Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None })));
        let t = timeline_of(id, events);
        assert_eq!(t.entries.iter().filter(|e| e.event == "ServicesChecked").count(), 2);
        assert_eq!(t.steps[0].duration_ms, Some(100));
    }

    #[test]
    fn a_rollback_skips_checkout_without_a_dispatch() {
        let id = Uuid::now_v7();
        let events = vec![
            (0, "cli:op", requested(id, &[])),
            (5, "engine", Event::StepSkipped(StepSkipped { step: Step::Checkout, reason: "rollback".into() })),
        ];
        // Not a legal order for the projection (check_services comes first),
        // so this is refused, as loading would.
        assert!(timeline(&recorded("deployment-x", events)).is_err());
        let events = vec![
            (0, "cli:op", requested(id, &[])),
            (10, "engine", dispatch(Step::CheckServices, 1)),
            (20, "w", Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None })),
            (25, "engine", Event::StepSkipped(StepSkipped { step: Step::Checkout, reason: "rollback".into() })),
            (30, "engine", Event::ImageReused(ImageReused { image_id: "i".into(), source_deployment: Uuid::nil() })),
        ];
        let t = timeline_of(id, events);
        let checkout = t.steps.iter().find(|s| s.step == Step::Checkout).unwrap();
        assert_eq!((checkout.attempts, checkout.duration_ms), (0, None));
        assert_eq!(t.summary.status, "running");
        assert_eq!(t.summary.finished_at, None);
    }

    #[test]
    fn a_diff_names_commits_images_settings_keys_commands_and_durations() {
        let (ia, ib) = (Uuid::now_v7(), Uuid::now_v7());
        let a = timeline_of(ia, happy_path(ia, "aaa", "sha256:a", &[("KEEP", "f1"), ("GONE", "f2"), ("EDIT", "f3")], &["migrate"]));
        let mut b_events = happy_path(ib, "bbb", "sha256:b", &[("KEEP", "f1"), ("EDIT", "f9"), ("NEW", "f4")], &["migrate", "seed"]);
        // B's health check took 400 ms instead of 100.
        let passed = b_events.iter().position(|e| matches!(e.2, Event::HealthCheckPassed(_))).unwrap();
        for e in &mut b_events[passed..] {
            e.0 += 300;
        }
        let b = timeline_of(ib, b_events);
        let d = diff(&a, &b);
        assert_eq!(d.deployments, Pair { a: ia, b: ib });
        assert_eq!(d.commit, Pair { a: Some("aaa".into()), b: Some("bbb".into()) });
        assert!(d.image.changed());
        assert!(!d.repository.changed());
        assert_eq!(d.settings_added, vec!["NEW"]);
        assert_eq!(d.settings_removed, vec!["GONE"]);
        assert_eq!(d.settings_changed, vec!["EDIT"]);
        assert_eq!(d.release_commands.a, vec!["migrate"]);
        assert_eq!(d.release_commands.b, vec!["migrate", "seed"]);
        let health = d.steps.iter().find(|s| s.step == Step::HealthCheck).unwrap();
        assert_eq!((health.a_ms, health.b_ms), (Some(100), Some(400)));
        assert_eq!(d.steps.len(), 8);
        let same = diff(&a, &a);
        assert!(same.settings_added.is_empty() && same.settings_removed.is_empty() && same.settings_changed.is_empty());
    }

    #[test]
    fn the_environment_at_a_moment_ignores_later_events() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let finished = |id, succeeded| {
            Event::DeploymentFinished(DeploymentFinished {
                deployment_id: id,
                succeeded,
                containers: vec![],
                upstreams: vec![],
                dry_run: false,
                host: String::new(),
            })
        };
        let stream = recorded(
            "environment-shop-live",
            vec![
                (0, "cli", Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: a })),
                (1000, "engine", finished(a, true)),
                (2000, "cli", Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: b })),
                (3000, "engine", finished(b, true)),
            ],
        );
        let at = |ms| environment_at(&stream, t0() + Duration::milliseconds(ms)).unwrap();
        assert_eq!(at(-1).last_succeeded(), None);
        assert_eq!(at(999).last_succeeded(), None);
        assert_eq!(at(1000).last_succeeded(), Some(a));
        assert_eq!(at(2500).last_succeeded(), Some(a));
        assert_eq!(at(2500).queue, vec![b]);
        assert_eq!(at(3000).last_succeeded(), Some(b));
        assert_eq!(at(3000).releases, vec![a, b]);
    }
}
