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
use slipway_store::EventStore;
use slipway_workers::steps::git;
use slipway_workers::steps::git_remote::{self, Access};

use crate::shutdown::Shutdown;

/// How often the poller looks for projects that are due.
const TICK: Duration = Duration::from_secs(1);
/// How often it reads again which projects poll.
const REFRESH: Duration = Duration::from_secs(30);

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
    let mut polling: Vec<String> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        if refreshed.is_none_or(|at| at.elapsed() >= REFRESH) {
            match projects_that_poll(&*store).await {
                Ok(names) => polling = names,
                Err(e) => tracing::warn!(error = %e, "poller: cannot list the projects"),
            }
            refreshed = Some(Instant::now());
        }
        for name in &polling {
            if let Err(e) = poll_if_due(&*store, &options, name, &mut last).await {
                tracing::warn!(project = %name, error = %e, "poller: the poll failed; trying again at the next interval");
            }
        }
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn projects_that_poll(store: &dyn EventStore) -> Result<Vec<String>, PollError> {
    let mut names = Vec::new();
    for name in requests::project_names(store).await? {
        if let Some(p) = requests::load_project(store, &name).await? {
            if poll::interval(&p).is_some() {
                names.push(name);
            }
        }
    }
    Ok(names)
}

async fn poll_if_due(
    store: &dyn EventStore,
    options: &PollerOptions,
    name: &str,
    last: &mut HashMap<String, Instant>,
) -> Result<(), PollError> {
    let Some(project) = requests::load_project(store, name).await? else { return Ok(()) };
    let Some(every) = poll::interval(&project) else { return Ok(()) };
    if last.get(name).is_some_and(|at| at.elapsed() < every) {
        return Ok(());
    }
    last.insert(name.to_string(), Instant::now());
    poll_once(store, &options.workspaces, project).await
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
        let outcome = auto_deploy::record_push(store, WebhookProvider::Poll, &delivery, &push, current).await?;
        tracing::info!(project = %project.name, %branch, commit = %commit, ?outcome, "poller: new head recorded");
    }
    Ok(())
}

/// The project's source access with its credentials resolved (a mirror
/// polls nothing of its own: its original's rules poll the repository).
async fn access(store: &dyn EventStore, project: &Project, workspaces: &std::path::Path) -> Result<Access, PollError> {
    let fingerprints: Vec<String> = project.source.credentials.values().cloned().collect();
    let values = store.values(&fingerprints).await?;
    let credentials: BTreeMap<String, String> = project
        .source
        .credentials
        .iter()
        .filter_map(|(name, f)| values.get(f).map(|v| (name.clone(), v.clone())))
        .collect();
    Ok(Access::for_source(&project.source, &credentials, workspaces))
}
