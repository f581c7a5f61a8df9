//! The server's poller: for projects with auto-deploy rules that poll
//! (`slipway project auto-deploy P set main test --poll 60s`), it lists the
//! repository's branches at the rule's interval, and records each matching
//! branch's new head as a push (provider `poll`, actor `webhook:poll:poll`
//! as every push's actor names its provider), through the same path as a
//! webhook: the rule's deployment, the skip phrase (the head commit is
//! fetched into this server's mirror to read its message), superseding.
//! What counts as new is decided in `slipway_engine::poll`, from the
//! project's recorded deliveries, so restarts and several servers polling
//! record each head once. A failed poll is logged (reason redacted) and
//! tried again at the next interval; it never stops the server.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_engine::auto_deploy;
use slipway_engine::project::Project;
use slipway_engine::{poll, requests, webhook};
use slipway_proto::event::WebhookProvider;
use slipway_proto::{Event, StreamId};
use slipway_store::{EventStore, Position, RecordedEvent};
use slipway_workers::steps::git;
use slipway_workers::steps::git_remote::{self, Access};

use crate::shutdown::Shutdown;

/// How often the poller reads new rules and looks for projects that are due.
const TICK: Duration = Duration::from_secs(1);
/// Events read at a time while catching up with the rules.
const PAGE: usize = 1_000;

/// Why one poll failed (logged; the next interval tries again).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Store(#[from] slipway_store::StoreError),
    #[error(transparent)]
    Source(#[from] git::SourceError),
    #[error(transparent)]
    Push(#[from] auto_deploy::PushError),
    #[error("the poll stopped unexpectedly: {0}")]
    Stopped(#[from] tokio::task::JoinError),
    #[error("the branch's head is not a push Slipway can record: {0}")]
    Head(String),
}

/// Where the poller keeps its mirrors (`<workspaces>/.mirrors`).
#[derive(Debug, Clone)]
pub struct PollerOptions {
    pub workspaces: PathBuf,
}

pub async fn run(store: Arc<dyn EventStore>, options: PollerOptions, shutdown: Shutdown) {
    let mut rules = PollRules::default();
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        if let Err(e) = rules.catch_up(&*store).await {
            tracing::warn!(error = %e, "poller: cannot read the auto-deploy rules");
        }
        for (name, every) in rules.due(&last) {
            last.insert(name.clone(), Instant::now());
            let polled = match requests::load_project(&*store, &name).await {
                Ok(Some(project)) => poll_once(&*store, &options.workspaces, project).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = polled {
                tracing::warn!(project = %name, error = %e, every = ?every, "poller: the poll failed; trying again at the next interval");
            }
        }
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Which projects poll and how often, folded from the rules recorded on
/// their streams as the log grows: after the first read, each tick reads
/// only the events appended since, and a project is read only when its
/// poll is due (not every project, every tick).
#[derive(Debug, Default)]
struct PollRules {
    after: Position,
    /// Project -> glob -> poll interval in seconds.
    rules: BTreeMap<String, BTreeMap<String, u64>>,
}

impl PollRules {
    async fn catch_up(&mut self, store: &dyn EventStore) -> Result<(), slipway_store::StoreError> {
        loop {
            let page = store.read_all(self.after, PAGE).await?;
            let Some(last) = page.last() else { return Ok(()) };
            self.after = last.position;
            for r in &page {
                self.apply(r);
            }
        }
    }

    fn apply(&mut self, r: &RecordedEvent) {
        let id = StreamId::parse(&r.stream);
        let Some(project) = id.project_name() else { return };
        // A removed project polls no more.
        if r.envelope.message_type == "ProjectRemoved" && matches!(id, StreamId::Project(_)) {
            self.rules.remove(project);
            return;
        }
        if !matches!(r.envelope.message_type.as_str(), "AutoDeploySet" | "AutoDeployRemoved") {
            return;
        }
        let rules = self.rules.entry(project.to_string()).or_default();
        match r.envelope.decode::<Event>() {
            Ok(Event::AutoDeploySet(set)) => match set.poll_seconds {
                Some(every) => rules.insert(set.branch, every),
                None => rules.remove(&set.branch),
            },
            Ok(Event::AutoDeployRemoved(removed)) => rules.remove(&removed.branch),
            _ => None,
        };
        if rules.is_empty() {
            self.rules.remove(project);
        }
    }

    /// The projects whose interval has passed since they were last polled.
    fn due(&self, last: &HashMap<String, Instant>) -> Vec<(String, Duration)> {
        self.rules
            .iter()
            .filter_map(|(name, globs)| Some((name, Duration::from_secs(*globs.values().min()?))))
            .filter(|(name, every)| last.get(*name).is_none_or(|at| at.elapsed() >= *every))
            .map(|(name, every)| (name.clone(), every))
            .collect()
    }
}

/// Polls `project` once: lists its branches and records each new head.
pub async fn poll_once(store: &dyn EventStore, workspaces: &std::path::Path, project: Project) -> Result<(), PollError> {
    let access = access(store, &project, workspaces).await?;
    let repository = project.repository.clone();
    let shown = git::shown_repository(&repository);
    let listed = {
        let (repository, shown, access) = (repository.clone(), shown.clone(), access.clone());
        tokio::task::spawn_blocking(move || git_remote::list_branches(&repository, &shown, &access)).await?
    };
    let branches = listed?;
    for (branch, commit) in poll::new_heads(&project, &branches) {
        let message = {
            let (repository, shown, access, commit) = (repository.clone(), shown.clone(), access.clone(), commit.clone());
            let branch = branch.clone();
            tokio::task::spawn_blocking(move || {
                git_remote::fetch(&repository, &shown, &branch, &access).map(|f| git_remote::commit_message(&f, &commit))
            })
            .await??
        };
        let push = webhook::polled_push(&branch, &commit, message).map_err(PollError::Head)?;
        // The project as it is now: an earlier head of this poll may have moved it.
        let Some(current) = requests::load_project(store, &project.name).await? else { return Ok(()) };
        let delivery = poll::delivery(&branch, &commit);
        let outcome = auto_deploy::record_push(store, WebhookProvider::Poll, &delivery, None, &push, current).await?;
        tracing::info!(project = %project.name, %branch, commit = %commit, ?outcome, "poller: new head recorded");
    }
    Ok(())
}

/// The project's source access with its credentials resolved (a mirror
/// polls nothing of its own: its original's rules poll the repository).
async fn access(store: &dyn EventStore, project: &Project, workspaces: &std::path::Path) -> Result<Access, PollError> {
    let fingerprints: Vec<String> = project.source.credentials.values().cloned().collect();
    let values = store.operational().values(&fingerprints).await?;
    let credentials: BTreeMap<String, String> =
        project.source.credentials.iter().filter_map(|(name, f)| values.get(f).map(|v| (name.clone(), v.clone()))).collect();
    Ok(Access::for_source(&project.source, &credentials, workspaces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::envelope::Metadata;
    use slipway_proto::event::{AutoDeployRemoved, AutoDeploySet};
    use slipway_proto::Envelope;

    fn recorded(n: i64, stream: &str, event: Event) -> RecordedEvent {
        let meta = Metadata { correlation_id: uuid::Uuid::nil(), causation_id: None, actor: "test".into(), trace: None };
        let at = chrono::DateTime::UNIX_EPOCH;
        RecordedEvent {
            position: Position { tx: 1, seq: n },
            stream: stream.into(),
            version: n as u64,
            envelope: Envelope::new(uuid::Uuid::now_v7(), at, stream, &event, meta).expect("an envelope"),
            hash: String::new(),
            prev_hash: String::new(),
            recorded_at: at,
        }
    }

    fn set(branch: &str, poll_seconds: Option<u64>) -> Event {
        Event::AutoDeploySet(AutoDeploySet { branch: branch.into(), environment: "test".into(), poll_seconds })
    }

    #[test]
    fn rules_fold_to_the_projects_that_poll_and_their_shortest_interval() {
        let mut rules = PollRules::default();
        let events = [
            recorded(1, "project-a", set("main", Some(60))),
            recorded(2, "project-a", set("release/*", Some(30))),
            recorded(3, "project-b", set("main", None)),
            recorded(4, "environment-a-test", set("main", Some(5))),
            recorded(5, "project-c", set("main", Some(10))),
            recorded(6, "project-c", Event::AutoDeployRemoved(AutoDeployRemoved { branch: "main".into() })),
        ];
        for r in &events {
            rules.apply(r);
        }
        assert_eq!(rules.due(&HashMap::new()), [("a".to_string(), Duration::from_secs(30))]);
        let just_polled = HashMap::from([("a".to_string(), Instant::now())]);
        assert!(rules.due(&just_polled).is_empty(), "not again before its interval");
        rules.apply(&recorded(7, "project-a", set("release/*", None)));
        rules.apply(&recorded(8, "project-a", set("main", None)));
        assert!(rules.due(&HashMap::new()).is_empty(), "a rule set again without --poll stops the polling");
        rules.apply(&recorded(9, "project-d", set("main", Some(60))));
        let removed = slipway_proto::event::ProjectRemoved { name: "d".into(), reason: "removed by cli:ann".into() };
        rules.apply(&recorded(10, "project-d", Event::ProjectRemoved(removed)));
        assert!(rules.due(&HashMap::new()).is_empty(), "a removed project polls no more");
    }
}
