//! What a followed deployment's events mean for its progress display, pure:
//! each recorded event becomes zero or more [`Update`]s (a step started, a
//! step ended with its duration, the deployment ended), with durations
//! measured on the store's `recorded_at` clock so a worker's clock never
//! mixes in. The reporter (`report.rs`) decides how they look; the event
//! source (the store here, or the HTTP API) does not matter.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use slipway_proto::{Event, Step};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEnd {
    Ok,
    /// Succeeded, with a word on how (a build that re-used an image).
    Noted(String),
    Failed(String),
    Skipped(String),
}

/// A change the progress display shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A step was dispatched (again, when `attempt` > 1).
    Started { step: Step, attempt: u32 },
    /// A step's outcome; `duration_ms` from its first dispatch (none for a
    /// step skipped without being dispatched).
    Finished { step: Step, end: StepEnd, duration_ms: Option<i64> },
    /// The deployment's verdict.
    Ended(Ending),
}

/// How a followed deployment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub succeeded: bool,
    pub failed_step: Option<Step>,
    pub reason: String,
    /// The web container's port on 127.0.0.1, once one started.
    pub web_port: Option<u16>,
}

/// Folds a deployment's events into progress updates.
#[derive(Debug, Default)]
pub struct Tracker {
    dispatched: BTreeMap<Step, DateTime<Utc>>,
    finished: Vec<Step>,
    web_port: Option<u16>,
    ending: Option<Ending>,
}

impl Tracker {
    /// The updates `event`, recorded at `at`, brings.
    pub fn observe(&mut self, at: DateTime<Utc>, event: &Event) -> Vec<Update> {
        let mut updates = Vec::new();
        let started = match event {
            Event::StepDispatched(d) => Some((d.step, d.attempt)),
            Event::TrafficSwitchRequested(_) => Some((Step::Cutover, 1)),
            _ => None,
        };
        if let Some((step, attempt)) = started {
            self.dispatched.entry(step).or_insert(at);
            updates.push(Update::Started { step, attempt });
        }
        let end = match event {
            Event::StepFailed(f) => Some((f.step, StepEnd::Failed(f.reason.clone()))),
            Event::StepSkipped(s) => Some((s.step, StepEnd::Skipped(s.reason.clone()))),
            Event::TrafficSwitched(_) => Some((Step::Cutover, StepEnd::Ok)),
            Event::ReleaseWatched(_) => Some((Step::Watch, StepEnd::Ok)),
            Event::ImageReused(r) => Some((Step::Build, StepEnd::Noted(format!("image re-used from deployment {}", r.source_deployment)))),
            Event::WebContainerStarted(w) if !w.warnings.is_empty() => {
                Some((Step::Deploy, StepEnd::Noted(format!("warning: {}", w.warnings.join("; ")))))
            }
            // Local mode without `--migrate`: the step ran, its commands did not.
            Event::ReleaseCommandsRan(r) if r.skipped => {
                Some((Step::Release, StepEnd::Skipped("release commands not run (local mode runs them with --migrate)".into())))
            }
            other => other.completes_step().map(|s| (s, StepEnd::Ok)),
        };
        if let Some((step, end)) = end {
            // A late duplicate outcome (a re-dispatched step answered twice) shows once.
            if !self.finished.contains(&step) {
                self.finished.push(step);
                let duration_ms = self.dispatched.get(&step).map(|t| (at - *t).num_milliseconds().max(0));
                updates.push(Update::Finished { step, end, duration_ms });
            }
        }
        match event {
            // Replicas on other nodes (swarm) answer there, not on loopback.
            Event::WebContainerStarted(w) => self.web_port = (!crate::verbs::on_other_hosts(&w.upstreams)).then_some(w.host_port),
            Event::DeploymentSucceeded(_) => {
                let ending = Ending { succeeded: true, failed_step: None, reason: String::new(), web_port: self.web_port };
                self.ending = Some(ending.clone());
                updates.push(Update::Ended(ending));
            }
            Event::DeploymentFailed(f) => {
                // A step the verdict names that never reported (a deadline, a cancel).
                if !self.finished.contains(&f.step) && self.dispatched.contains_key(&f.step) {
                    self.finished.push(f.step);
                    let duration_ms = self.dispatched.get(&f.step).map(|t| (at - *t).num_milliseconds().max(0));
                    updates.push(Update::Finished { step: f.step, end: StepEnd::Failed(f.reason.clone()), duration_ms });
                }
                // None for one that ended before its first step (rejected, cancelled while it waited).
                let started = !self.dispatched.is_empty() || !self.finished.is_empty();
                let failed_step = started.then_some(f.step);
                let ending = Ending { succeeded: false, failed_step, reason: f.reason.clone(), web_port: self.web_port };
                self.ending = Some(ending.clone());
                updates.push(Update::Ended(ending));
            }
            _ => {}
        }
        updates
    }

    /// The steps dispatched and not finished, with when each was first
    /// dispatched.
    pub fn running_since(&self) -> Vec<(Step, DateTime<Utc>)> {
        self.dispatched.iter().filter(|(s, _)| !self.finished.contains(s)).map(|(s, t)| (*s, *t)).collect()
    }

    /// Steps dispatched without an outcome yet, oldest first.
    pub fn running(&self) -> Vec<Step> {
        let mut running = self.running_since();
        running.sort_by_key(|&(step, at)| (at, step));
        running.into_iter().map(|(s, _)| s).collect()
    }

    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }
}

/// `1234 ms` reads worse than `1.2 s`; minutes past a minute.
pub fn duration(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The line a finished step gets: mark, name, duration, and why when it
/// did not simply succeed.
pub fn finished_line(step: Step, end: &StepEnd, duration_ms: Option<i64>) -> String {
    let took = duration_ms.map(duration).unwrap_or_default();
    match end {
        StepEnd::Ok => format!("✓ {:<14} {took}", step.to_string()).trim_end().to_string(),
        StepEnd::Noted(note) => format!("✓ {:<14} {took}  {note}", step.to_string()),
        StepEnd::Failed(reason) => format!("✗ {:<14} {took}  {reason}", step.to_string()),
        StepEnd::Skipped(reason) => format!("- {:<14} skipped: {reason}", step.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::*;
    use uuid::Uuid;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap_or_default()
    }

    fn dispatched(step: Step, attempt: u32) -> Event {
        Event::StepDispatched(StepDispatched { step, command_id: Uuid::nil(), attempt, deadline: None, dispatched_at: None })
    }

    fn failed(step: Step, reason: &str) -> Event {
        Event::StepFailed(StepFailed { step, reason: reason.into(), attempt: 1, details: vec![], evidence: None })
    }

    #[test]
    fn a_step_runs_from_its_first_dispatch_to_its_outcome() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(at(0), &dispatched(Step::Deploy, 1)), vec![Update::Started { step: Step::Deploy, attempt: 1 }]);
        assert_eq!(t.running(), vec![Step::Deploy]);
        // A re-dispatch keeps the first dispatch's time.
        assert_eq!(t.observe(at(500), &dispatched(Step::Deploy, 2)), vec![Update::Started { step: Step::Deploy, attempt: 2 }]);
        let started = Event::WebContainerStarted(WebContainerStarted {
            container: "c".into(),
            host_port: 4100,
            host: String::new(),
            upstreams: vec![],
            warnings: vec![],
        });
        assert_eq!(t.observe(at(1250), &started), vec![Update::Finished { step: Step::Deploy, end: StepEnd::Ok, duration_ms: Some(1250) }]);
        assert!(t.running().is_empty());
        assert!(t.observe(at(1300), &started).is_empty(), "a duplicate outcome shows once");
        // What the runtime did not do as asked shows with the step.
        let mut t = Tracker::default();
        t.observe(at(0), &dispatched(Step::Deploy, 1));
        let warned = Event::WebContainerStarted(WebContainerStarted {
            container: "c".into(),
            host_port: 4100,
            host: String::new(),
            upstreams: vec![],
            warnings: vec!["runs one web container".into()],
        });
        let end = StepEnd::Noted("warning: runs one web container".into());
        assert_eq!(t.observe(at(40), &warned), vec![Update::Finished { step: Step::Deploy, end, duration_ms: Some(40) }]);
    }

    #[test]
    fn a_failed_step_ends_the_deployment_with_its_reason_and_the_web_port() {
        let mut t = Tracker::default();
        t.observe(at(0), &dispatched(Step::Deploy, 1));
        t.observe(
            at(10),
            &Event::WebContainerStarted(WebContainerStarted {
                container: "c".into(),
                host_port: 4100,
                host: String::new(),
                upstreams: vec![],
                warnings: vec![],
            }),
        );
        t.observe(at(20), &dispatched(Step::HealthCheck, 1));
        let updates = t.observe(at(520), &failed(Step::HealthCheck, "GET / -> 500"));
        assert_eq!(
            updates,
            vec![Update::Finished { step: Step::HealthCheck, end: StepEnd::Failed("GET / -> 500".into()), duration_ms: Some(500) }]
        );
        let verdict = Event::DeploymentFailed(DeploymentFailed { step: Step::HealthCheck, reason: "GET / -> 500".into() });
        let ending = Ending { succeeded: false, failed_step: Some(Step::HealthCheck), reason: "GET / -> 500".into(), web_port: Some(4100) };
        assert_eq!(t.observe(at(530), &verdict), vec![Update::Ended(ending.clone())]);
        assert_eq!(t.ending(), Some(&ending));
        // Replicas on swarm nodes answer there: no loopback port to show.
        let mut t = Tracker::default();
        let on_nodes = Event::WebContainerStarted(WebContainerStarted {
            container: "s".into(),
            host_port: 32768,
            host: "swarm".into(),
            upstreams: vec!["10.0.0.2:32768".into()],
            warnings: vec![],
        });
        t.observe(at(0), &on_nodes);
        let Some(Update::Ended(ended)) = t.observe(at(10), &verdict).pop() else { panic!("no ending") };
        assert_eq!(ended.web_port, None);
    }

    #[test]
    fn a_deployment_rejected_before_its_first_step_failed_at_none() {
        let mut t = Tracker::default();
        let verdict = Event::DeploymentFailed(DeploymentFailed { step: Step::CheckServices, reason: "rejected by token:bob".into() });
        let ending = Ending { succeeded: false, failed_step: None, reason: "rejected by token:bob".into(), web_port: None };
        assert_eq!(t.observe(at(0), &verdict), vec![Update::Ended(ending)]);
    }

    #[test]
    fn a_verdict_without_the_steps_outcome_closes_the_running_step() {
        let mut t = Tracker::default();
        t.observe(at(0), &dispatched(Step::Build, 3));
        let verdict = Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "no outcome after 3 attempts".into() });
        let updates = t.observe(at(90_000), &verdict);
        assert_eq!(updates.len(), 2, "{updates:?}");
        assert!(matches!(&updates[0], Update::Finished { step: Step::Build, duration_ms: Some(90_000), .. }));
    }

    #[test]
    fn the_cutover_is_a_step_from_the_switch_request_to_the_switch() {
        let mut t = Tracker::default();
        let request = Event::TrafficSwitchRequested(TrafficSwitchRequested {
            route_version: 2,
            upstreams: vec![],
            routers: vec![],
            deadline: at(15_000),
        });
        assert_eq!(t.observe(at(0), &request), vec![Update::Started { step: Step::Cutover, attempt: 1 }]);
        let switched = Event::TrafficSwitched(TrafficSwitched { route_version: 2, routers: vec![] });
        assert_eq!(t.observe(at(40), &switched), vec![Update::Finished { step: Step::Cutover, end: StepEnd::Ok, duration_ms: Some(40) }]);
    }

    #[test]
    fn the_watch_is_a_step_from_its_dispatch_to_its_outcome() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(at(0), &dispatched(Step::Watch, 1)), vec![Update::Started { step: Step::Watch, attempt: 1 }]);
        assert_eq!(t.running(), vec![Step::Watch]);
        let watched = Event::ReleaseWatched(slipway_proto::event::ReleaseWatched {
            watched_ms: 10_000,
            probes: 10,
            failed_probes: 0,
            containers: vec![],
        });
        assert_eq!(
            t.observe(at(10_000), &watched),
            vec![Update::Finished { step: Step::Watch, end: StepEnd::Ok, duration_ms: Some(10_000) }]
        );
    }

    #[test]
    fn finished_lines_mark_the_outcome_and_give_the_duration() {
        assert_eq!(finished_line(Step::Build, &StepEnd::Ok, Some(1234)), "✓ build          1.2 s");
        assert_eq!(
            finished_line(Step::HealthCheck, &StepEnd::Failed("GET / -> 500".into()), Some(80)),
            "✗ health_check   80 ms  GET / -> 500"
        );
        assert_eq!(finished_line(Step::Release, &StepEnd::Skipped("local mode".into()), None), "- release        skipped: local mode");
        // Release commands not run are shown as skipped, not as done.
        let mut p = Tracker::default();
        let not_run = Event::ReleaseCommandsRan(slipway_proto::event::ReleaseCommandsRan { results: vec![], skipped: true });
        let ends: Vec<Update> = p.observe(Utc::now(), &not_run);
        assert!(matches!(ends.as_slice(), [Update::Finished { step: Step::Release, end: StepEnd::Skipped(_), .. }]), "{ends:?}");
        assert_eq!(duration(125_000), "2m05s");
        let from = uuid::Uuid::nil();
        let reused = Event::ImageReused(slipway_proto::event::ImageReused { image_id: "sha256:1".into(), source_deployment: from });
        let updates = Tracker::default().observe(Utc::now(), &reused);
        let Some(Update::Finished { end, .. }) = updates.first() else { panic!("{updates:?}") };
        assert_eq!(finished_line(Step::Build, end, Some(3)), format!("✓ build          3 ms  image re-used from deployment {from}"));
    }
}
