//! Follows one deployment as it happens, until it ends: reads its events as
//! they are recorded (from the store, or from the HTTP API with `--server`),
//! turns them into progress (`progress.rs`) for the reporter, and with
//! `--logs` streams the build log as it is written and each release
//! command's log once it ran.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use slipway_proto::envelope::Message;
use slipway_proto::event::deployment_stream;
use slipway_proto::{Event, Step};
use slipway_store::{EventStore, RecordedEvent};
use uuid::Uuid;

use crate::exit::{coded, Exit};
use crate::progress::{Ending, Tracker};
use crate::render;
use crate::report::Reporter;

/// One recorded event of the followed deployment, wherever it was read.
#[derive(Debug, Clone)]
pub struct Observed {
    pub version: u64,
    pub at: DateTime<Utc>,
    /// `None` when this build cannot decode it (a newer Slipway wrote it).
    pub event: Option<Event>,
    /// Its one-line rendering.
    pub line: String,
    /// Its JSON form (as `GET /api/deployments/{id}/events` gives it).
    pub json: Value,
}

impl Observed {
    pub fn local(r: &RecordedEvent) -> Observed {
        Observed {
            version: r.version,
            at: r.recorded_at,
            event: r.envelope.decode::<Event>().ok(),
            line: render::line(r),
            json: render::event_json(r),
        }
    }

    /// From one element of the API's event list; `None` if it lacks the
    /// version, type or time.
    pub fn remote(value: &Value) -> Option<Observed> {
        let version = value.get("version")?.as_u64()?;
        let kind = value.get("type")?.as_str()?;
        let at = value.get("recorded_at")?.as_str()?.parse::<DateTime<Utc>>().ok()?;
        let actor = value.get("actor").and_then(Value::as_str).unwrap_or_default();
        let event = Event::from_payload(kind, value.get("payload").cloned().unwrap_or(Value::Null)).ok();
        let text = event.as_ref().map(render::describe).unwrap_or_else(|| "(not understood by this build)".into());
        Some(Observed { version, at, event, line: render::line_of(version, at, kind, actor, &text), json: value.clone() })
    }
}

/// One thing a source saw, in the order it saw it.
#[derive(Debug, Clone)]
pub enum Seen {
    Event(Box<Observed>),
    /// A line of the build or release log (a source that carries them: the
    /// API's live stream), between the events it was written between.
    Log(String),
}

/// Where the events come from.
pub trait Source {
    /// Events from version `from` on, in order, and any log lines among them.
    fn read(&mut self, from: u64) -> impl std::future::Future<Output = anyhow::Result<Vec<Seen>>>;
    /// Returns when more may have been recorded.
    fn wait(&mut self) -> impl std::future::Future<Output = ()>;
    /// Whether no live worker serves `step` (a source that can tell: the
    /// store's worker table).
    fn unserved(&mut self, _step: Step) -> impl std::future::Future<Output = bool> {
        std::future::ready(false)
    }
}

/// A step dispatched this long ago with no outcome has the follower ask
/// whether any live worker serves it.
const UNSERVED_AFTER: Duration = Duration::from_secs(10);

/// The deployment's stream in the store, woken by its notifications.
pub struct StoreSource<'a> {
    store: &'a dyn EventStore,
    stream: String,
    wake: tokio::sync::watch::Receiver<u64>,
}

impl<'a> StoreSource<'a> {
    pub fn new(store: &'a dyn EventStore, id: Uuid) -> StoreSource<'a> {
        StoreSource { store, stream: deployment_stream(id), wake: store.wakeups() }
    }
}

impl Source for StoreSource<'_> {
    async fn read(&mut self, from: u64) -> anyhow::Result<Vec<Seen>> {
        Ok(self.store.read_stream(&self.stream, from).await?.iter().map(|r| Seen::Event(Box::new(Observed::local(r)))).collect())
    }

    async fn wait(&mut self) {
        slipway_store::subscription::wait_for_wakeup(&mut self.wake, Duration::from_millis(100)).await;
    }

    async fn unserved(&mut self, step: Step) -> bool {
        let Ok(workers) = self.store.operational().workers().await else { return false };
        let missing_after = chrono::Duration::from_std(slipway_workers::worker::HEARTBEAT * 3).unwrap_or_default();
        let now = Utc::now();
        !workers.iter().any(|w| w.state(now, missing_after) == "alive" && w.steps.iter().any(|s| *s == step.to_string()))
    }
}

/// The build and release logs under the data directory, when `--logs` asks.
pub struct Logs {
    data_dir: PathBuf,
    /// The build log being tailed, and how much of it was shown.
    build: Option<(PathBuf, u64)>,
}

impl Logs {
    pub fn new(data_dir: &Path) -> Logs {
        Logs { data_dir: data_dir.to_path_buf(), build: None }
    }

    fn observe(&mut self, id: Uuid, event: &Event, reporter: &Reporter) {
        match event {
            Event::StepDispatched(d) if d.step == Step::Build && self.build.is_none() => {
                self.build = Some((self.data_dir.join("logs").join(id.to_string()).join("build.log"), 0));
            }
            Event::ImageBuilt(_) | Event::ImageReused(_) | Event::DeploymentFailed(_) => {
                self.tail(reporter);
                self.build = None;
            }
            Event::ReleaseCommandsRan(r) => {
                // Written when each command ended: shown whole.
                for result in &r.results {
                    let Some(log) = &result.log_ref else { continue };
                    let path = log_file(&self.data_dir, log);
                    let source = format!("release: {}", result.command);
                    match std::fs::read_to_string(&path) {
                        Ok(text) => text.lines().for_each(|l| reporter.log(&source, l)),
                        Err(e) => reporter.note(&format!("     (release log {} unavailable: {e})", path.display())),
                    }
                }
            }
            // A failure's output (every release command's, a container's
            // last lines) is its evidence; a build's is the log tailed above.
            Event::StepFailed(f) if f.step != Step::Build => {
                let Some(evidence) = &f.evidence else { return };
                let path = log_file(&self.data_dir, &evidence.path);
                match std::fs::read_to_string(&path) {
                    Ok(text) => text.lines().for_each(|l| reporter.log(f.step.as_str(), l)),
                    Err(e) => reporter.note(&format!("     ({} output {} unavailable: {e})", f.step, path.display())),
                }
            }
            _ => {}
        }
    }

    /// Shows what was added to the build log since the last look.
    fn tail(&mut self, reporter: &Reporter) {
        let Some((path, offset)) = self.build.as_mut() else { return };
        let Ok(mut file) = std::fs::File::open(&*path) else { return };
        if file.seek(SeekFrom::Start(*offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return;
        }
        // Only whole lines: the rest is shown once its newline is written.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else { return };
        *offset += end as u64 + 1;
        for line in String::from_utf8_lossy(&bytes[..end]).lines().filter(|l| !l.trim().is_empty()) {
            reporter.log("build", line);
        }
    }
}

/// Follows deployment `id` from `source` until its verdict; gives up (exit
/// status 6, the deployment goes on) after `timeout`.
pub async fn follow(
    source: &mut impl Source,
    reporter: &mut Reporter,
    id: Uuid,
    mut logs: Option<Logs>,
    timeout: Duration,
) -> anyhow::Result<Ending> {
    let mut tracker = Tracker::default();
    let mut asked: Vec<Step> = Vec::new();
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for seen in source.read(next).await? {
            let observed = match seen {
                Seen::Event(observed) if observed.version >= next => *observed,
                Seen::Event(_) => continue,
                Seen::Log(line) => {
                    reporter.log("log", &line);
                    continue;
                }
            };
            next = observed.version + 1;
            let updates = match &observed.event {
                Some(event) => {
                    if let Some(logs) = logs.as_mut() {
                        logs.observe(id, event, reporter);
                    }
                    tracker.observe(observed.at, event)
                }
                None => vec![],
            };
            reporter.event(&observed.line, observed.json, &updates);
            if let Some(text) = observed.event.as_ref().and_then(|e| waiting_note(id, e)) {
                reporter.note(&text);
            }
        }
        if let Some(logs) = logs.as_mut() {
            logs.tail(reporter);
        }
        if let Some(ending) = tracker.ending() {
            return Ok(ending.clone());
        }
        let waited = chrono::Duration::from_std(UNSERVED_AFTER).unwrap_or_default();
        for (step, since) in tracker.running_since() {
            // The engine does the cutover itself.
            if step == Step::Cutover || asked.contains(&step) || Utc::now() - since < waited {
                continue;
            }
            asked.push(step);
            if source.unserved(step).await {
                reporter.note(&format!(
                    "no live worker serves `{step}`, so this deployment waits: start one (`slipway worker`, which serves every \
                     step, or `slipway worker --steps {step},...`); `slipway workers` lists those that reported"
                ));
            }
        }
        if tokio::time::Instant::now() > deadline {
            reporter.stop();
            let running = tracker.running().iter().map(Step::to_string).collect::<Vec<_>>().join(", ");
            let running = if running.is_empty() { String::new() } else { format!(" (running: {running})") };
            return Err(coded(
                Exit::TimedOut,
                format!("deployment {id} did not finish within {timeout:?}{running}; it goes on: see `slipway history {id}`"),
            ));
        }
        source.wait().await;
    }
}

/// What a person following a deployment that waits for approval needs to
/// know: nothing else would show until someone acts.
fn waiting_note(id: Uuid, event: &Event) -> Option<String> {
    match event {
        Event::ApprovalRequired(a) => Some(format!(
            "awaiting approval: {} needed from someone with deploy scope other than the requester \
             (`slipway approve {id}`, or `slipway reject {id}`)",
            a.approvals
        )),
        Event::DeploymentApproved(a) => Some(format!("approved by {}", a.by)),
        _ => None,
    }
}

/// Where the log a step recorded as `log_ref` is: an absolute path as it
/// is; a relative one under the data directory, or, when it is not there
/// but is where the reader runs, there (logs recorded before steps wrote
/// absolute paths name the data directory they were written under:
/// `.slipway/logs/...`).
pub fn log_file(data_dir: &Path, log_ref: &str) -> PathBuf {
    let path = Path::new(log_ref);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let under = data_dir.join(path);
    if !under.exists() && path.exists() {
        return path.to_path_buf();
    }
    under
}

/// The JSON `result` of a followed deployment.
pub fn result_json(id: Uuid, ending: &Ending, urls: &[String]) -> Value {
    json!({
        "deployment": id,
        "status": if ending.succeeded { "succeeded" } else { "failed" },
        "failed_step": ending.failed_step,
        "reason": if ending.succeeded { None } else { Some(&ending.reason) },
        "web": ending.web_port.map(|p| format!("http://127.0.0.1:{p}/")),
        "urls": urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Style;

    #[test]
    fn an_api_event_becomes_an_observed_event() {
        let value = json!({
            "version": 3, "id": Uuid::nil(), "type": "StepSkipped", "schema_version": 1, "actor": "worker:a",
            "recorded_at": "2026-01-02T03:04:05.678Z", "hash": "ab",
            "payload": { "step": "release", "reason": "local mode" },
        });
        let o = Observed::remote(&value).expect("a complete event");
        assert_eq!(o.version, 3);
        assert!(matches!(&o.event, Some(Event::StepSkipped(s)) if s.step == Step::Release));
        assert!(o.line.contains("StepSkipped") && o.line.contains("release: local mode"), "{}", o.line);
        // A type this build does not know is shown, not fatal; a line without a version is skipped.
        let unknown = json!({ "version": 4, "type": "FromTheFuture", "recorded_at": "2026-01-02T03:04:05Z", "payload": {} });
        assert!(Observed::remote(&unknown).is_some_and(|o| o.event.is_none()));
        assert!(Observed::remote(&json!({ "type": "StepSkipped" })).is_none());
    }

    #[test]
    fn a_recorded_log_is_found_under_the_data_directory_or_where_it_was_written() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("logs/x/build.log");
        std::fs::create_dir_all(log.parent().expect("a parent")).expect("the log directory");
        std::fs::write(&log, "built\n").expect("the log");
        assert_eq!(log_file(dir.path(), log.to_str().expect("utf-8")), log, "absolute, as recorded");
        assert_eq!(log_file(dir.path(), "logs/x/build.log"), log, "under the data directory");
        // A ref recorded relative to where an embedded CLI ran (this
        // package's directory, for the test), not under the data directory.
        assert_eq!(log_file(dir.path(), "Cargo.toml"), PathBuf::from("Cargo.toml"));
        assert_eq!(log_file(dir.path(), "logs/y/gone.log"), dir.path().join("logs/y/gone.log"), "missing: named under the data directory");
    }

    #[test]
    fn the_build_log_is_shown_in_whole_lines_as_it_grows() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let id = Uuid::nil();
        let log_dir = dir.path().join("logs").join(id.to_string());
        std::fs::create_dir_all(&log_dir).expect("the log directory");
        let mut logs = Logs::new(dir.path());
        let reporter = Reporter::new(Style::Quiet);
        let dispatch = Event::StepDispatched(slipway_proto::event::StepDispatched {
            step: Step::Build,
            command_id: id,
            attempt: 1,
            deadline: None,
            dispatched_at: None,
        });
        logs.observe(id, &dispatch, &reporter);
        std::fs::write(log_dir.join("build.log"), "Step 1/2 : FROM scratch\nStep 2/2 : CO").expect("the log");
        logs.tail(&reporter);
        assert_eq!(logs.build.as_ref().map(|(_, offset)| *offset), Some(24), "only the whole first line is consumed");
        std::fs::write(log_dir.join("build.log"), "Step 1/2 : FROM scratch\nStep 2/2 : COPY . /\n").expect("the log");
        logs.tail(&reporter);
        assert_eq!(logs.build.as_ref().map(|(_, offset)| *offset), Some(44));
    }
}
