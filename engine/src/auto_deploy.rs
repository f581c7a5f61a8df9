//! Deploy on push, recorded: a project's webhook secret (generated here,
//! its value in the value table, only its fingerprint in the log), its
//! auto-deploy rules, and a verified push turned into deployments. What a
//! push means is decided by `push` (pure); this module reads the state the
//! decision needs and records its outcome in one transaction: the push
//! (`PushReceived` or `PushSkipped`, keyed by the provider's delivery id),
//! the deployments it requests, and the cancellation of the older push
//! deployments it supersedes.
//!
//! Concurrency: the push lands on the project's stream at the version its
//! decision was made from, and each deployment on its environment's stream
//! likewise. Two deliveries at once (a redelivery racing the original, two
//! quick pushes) cannot both land on the same versions: the loser writes
//! nothing, reads again and decides again — and then sees the winner's
//! delivery id, or supersedes the winner's deployment. Within one process
//! the pushes of a project also take turns (`turn`), so a burst of them
//! does not spend its time losing races to each other; across processes
//! the expected versions alone keep them apart.

use std::sync::Arc;

use chrono::Utc;
use rand::RngCore;
use slipway_proto::event::{
    project_stream, AutoDeployRemoved, AutoDeploySet, PreviewTrigger, PushDeployment, PushReceived, PushSkipped, WebhookProvider,
    WebhookSecretRotated,
};
use slipway_proto::Event;
use slipway_store::settings::fingerprint;
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use uuid::Uuid;

use crate::lifecycle::{self, Writes};
use crate::load::LoadError;
use crate::preview;
use crate::project::Project;
use crate::push::{self, Plan, Push};
use crate::requests::{envelope, load_project, Outcome, Rejection};

/// What every webhook secret starts with (so a leaked one is easy to grep for).
pub const SECRET_PREFIX: &str = "slwh_";

/// How often a push is decided again after losing a race, before giving up.
const ATTEMPTS: usize = 50;

/// This process's turn for recording a push to `project`: one at a time
/// per project, others wait instead of racing and reading again.
pub(crate) async fn turn(project: &str) -> tokio::sync::OwnedMutexGuard<()> {
    static TURNS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    let lock = {
        let mut turns = TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Let go of projects nobody is waiting for, so the map stays small.
        turns.retain(|_, l| Arc::strong_count(l) > 1);
        turns.entry(project.to_owned()).or_default().clone()
    };
    lock.lock_owned().await
}

/// A new webhook secret: the prefix and 32 random bytes in hex.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// The value table's key for a project's webhook secret. `-webhook` is no
/// environment name (those never start with '-'), so it never meets a
/// setting's fingerprint.
fn secret_fingerprint(installation_key: &[u8], project: &str, value: &str) -> String {
    fingerprint(installation_key, project, "-webhook", "WEBHOOK_SECRET", value)
}

fn no_project(project: &str) -> Rejection {
    Rejection::not_found(format!("no project `{project}`; create it with `slipway project create`"))
}

/// Generates a new webhook secret for `project` and returns it, the one
/// time it is shown. The old secret stops verifying at once.
pub async fn rotate_webhook_secret(store: &dyn EventStore, actor: &str, project: &str) -> Outcome<String> {
    let key = store.operational().installation_key().await?;
    let secret = generate_secret();
    let fingerprint = secret_fingerprint(&key, project, &secret);
    loop {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        store.operational().put_value(&fingerprint, &secret).await?;
        let event = Event::WebhookSecretRotated(WebhookSecretRotated { fingerprint: fingerprint.clone() });
        if append_to_project(store, &p, actor, &event).await? {
            return Ok(Ok(secret));
        }
    }
}

/// The project's webhook secret, if it has one.
pub async fn webhook_secret(store: &dyn EventStore, project: &Project) -> Result<Option<String>, StoreError> {
    let Some(f) = &project.webhook_secret else { return Ok(None) };
    Ok(store.operational().values(std::slice::from_ref(f)).await?.remove(f))
}

/// The shortest poll interval: a poll costs the git host a request.
pub const MIN_POLL_SECONDS: u64 = 5;

/// Sets the rule `branch` (a glob) → `environment`, replacing the glob's
/// environment (and poll interval) if it had a rule. With `poll_seconds`,
/// the server also polls the repository's matching branches that often.
pub async fn set_rule(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    branch: &str,
    environment: &str,
    poll_seconds: Option<u64>,
) -> Outcome<()> {
    if let Err(e) = push::check_glob(branch) {
        return Ok(Err(Rejection::invalid(e)));
    }
    if poll_seconds.is_some_and(|s| s < MIN_POLL_SECONDS) {
        return Ok(Err(Rejection::invalid(format!("--poll must be at least {MIN_POLL_SECONDS}s: each poll is a request to the git host"))));
    }
    loop {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        if !p.environments.contains_key(environment) {
            let known: Vec<_> = p.environments.keys().cloned().collect();
            return Ok(Err(Rejection::not_found(format!(
                "project `{project}` has no environment `{environment}` (it has: {})",
                known.join(", ")
            ))));
        }
        let event = Event::AutoDeploySet(AutoDeploySet { branch: branch.into(), environment: environment.into(), poll_seconds });
        if append_to_project(store, &p, actor, &event).await? {
            return Ok(Ok(()));
        }
    }
}

/// Removes the rule whose glob is `branch` (exactly as it was set).
pub async fn remove_rule(store: &dyn EventStore, actor: &str, project: &str, branch: &str) -> Outcome<()> {
    loop {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        if !p.auto_deploy.iter().any(|r| r.branch == branch) {
            let known: Vec<_> = p.auto_deploy.iter().map(|r| r.branch.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Ok(Err(Rejection::not_found(format!(
                "project `{project}` has no auto-deploy rule for `{branch}` (its rules: {known})"
            ))));
        }
        let event = Event::AutoDeployRemoved(AutoDeployRemoved { branch: branch.into() });
        if append_to_project(store, &p, actor, &event).await? {
            return Ok(Ok(()));
        }
    }
}

/// Appends one event at the version `p` was folded at; false if the
/// project moved on meanwhile (load it again and retry).
async fn append_to_project(store: &dyn EventStore, p: &Project, actor: &str, event: &Event) -> Result<bool, StoreError> {
    let stream = project_stream(&p.name);
    let e = envelope(&stream, event, Uuid::now_v7(), actor, None);
    Ok(store.append(&stream, ExpectedVersion::Exactly(p.version), &[e], &[]).await?.is_ok())
}

/// What a verified push came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Its delivery id was accepted before: nothing recorded now.
    Duplicate,
    /// Recorded as skipped, for this reason.
    Skipped(String),
    /// Recorded with its deployments (none: no rule matched), the waiting
    /// push deployments they superseded, and why a matching environment
    /// refused one (a freeze window).
    Deployed { deployments: Vec<PushDeployment>, superseded: Vec<Uuid>, refused: Vec<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("project `{0}` kept changing while the push was recorded ({ATTEMPTS} attempts); deliver it again")]
    Contended(String),
}

impl From<StoreError> for PushError {
    fn from(e: StoreError) -> Self {
        PushError::Load(LoadError::Store(e))
    }
}

/// Records a push whose signature `project`'s secret verified. `project`
/// is the state it was verified against; after a lost race it is read again.
pub async fn record_push(
    store: &dyn EventStore,
    provider: WebhookProvider,
    delivery: &str,
    body_sha256: Option<&str>,
    push: &Push,
    project: Project,
) -> Result<PushOutcome, PushError> {
    let name = project.name.clone();
    let _turn = turn(&name).await;
    // Another push may have landed while this one waited its turn: then
    // read the project again (cheaper than an append that would conflict).
    let fresh = store.stream_version(&project_stream(&name)).await? == project.version;
    let inbound = Inbound { provider, delivery, body_sha256, push, actor: push::actor(provider, &push.pusher) };
    let mut current = fresh.then_some(project);
    for _ in 0..ATTEMPTS {
        let p = match current.take() {
            Some(p) => p,
            None => match load_project(store, &name).await? {
                Some(p) => p,
                // A project is never removed; only a broken store gets here.
                None => return Err(PushError::Contended(name)),
            },
        };
        if p.delivered(provider, delivery, body_sha256) {
            return Ok(PushOutcome::Duplicate);
        }
        let attempt = match (push::plan(&p.auto_deploy, push), preview::plan_branch_push(&p, push)) {
            // A deleted branch takes its preview with it.
            (Plan::Skip(reason), Some(preview::Plan::Remove { environment, reason: why })) => {
                record_skip(store, &p, &inbound, reason, Some((environment, why))).await?
            }
            (Plan::Skip(reason), _) => record_skip(store, &p, &inbound, reason, None).await?,
            (Plan::Deploy(targets), branch_preview) => record_deployments(store, p, &inbound, targets, branch_preview).await?,
        };
        if let Some(outcome) = attempt {
            return Ok(outcome);
        }
    }
    Err(PushError::Contended(name))
}

/// A verified push being recorded, and the actor it is recorded under.
struct Inbound<'a> {
    provider: WebhookProvider,
    delivery: &'a str,
    body_sha256: Option<&'a str>,
    push: &'a Push,
    actor: String,
}

/// `None`: the project moved on meanwhile. `remove`: the preview the
/// deleted branch had, removed in the same transaction.
async fn record_skip(
    store: &dyn EventStore,
    p: &Project,
    inbound: &Inbound<'_>,
    reason: String,
    remove: Option<(String, String)>,
) -> Result<Option<PushOutcome>, PushError> {
    let Inbound { provider, delivery, body_sha256, push, ref actor } = *inbound;
    let mut w = Writes::default();
    let mut reason = reason;
    if let Some((environment, why)) = remove {
        let (env, routes) = lifecycle::read_for_removal(store, &p.name, &environment).await?;
        lifecycle::write_removal(&mut w, p, (&environment, &env), &why, actor, &routes);
        reason = format!("{reason}; preview {environment} removed");
    }
    let event = Event::PushSkipped(PushSkipped {
        provider,
        delivery: delivery.into(),
        body_sha256: body_sha256.map(Into::into),
        git_ref: push.git_ref.clone(),
        commit: push.commit.clone(),
        pusher: push.pusher.clone(),
        reason: reason.clone(),
    });
    w.add(&project_stream(&p.name), ExpectedVersion::Exactly(p.version), &event, Uuid::now_v7(), actor);
    Ok(w.commit(store).await?.then_some(PushOutcome::Skipped(reason)))
}

/// The push, its deployments (to the environments of its rules, and to
/// its branch's preview, added if new) and the cancellations of what they
/// supersede, in one transaction; `None` if any stream moved on meanwhile.
async fn record_deployments(
    store: &dyn EventStore,
    mut p: Project,
    inbound: &Inbound<'_>,
    targets: Vec<push::Target>,
    branch_preview: Option<preview::Plan>,
) -> Result<Option<PushOutcome>, PushError> {
    let Inbound { provider, delivery, body_sha256, push, ref actor } = *inbound;
    let mut deployments = Vec::new();
    let mut superseded = Vec::new();
    let mut w = Writes::default();
    let now = Utc::now();
    // How workers reach the repository, as for any request.
    let source = crate::requests::source_of(store, &p).await?;
    let mut targets = targets;
    if let Some(preview::Plan::Deploy { environment, add, rule: PreviewTrigger::Branches(glob), .. }) = branch_preview {
        if let Some(new) = &add {
            lifecycle::add_preview(store, &mut w, &mut p, new, actor, now).await?;
        }
        targets.push(push::Target { environment, rule: glob });
    }
    let mut refused = Vec::new();
    for target in targets {
        match lifecycle::request_deployment(store, &mut w, &p, &target.environment, &push.commit, actor, &source).await? {
            Ok(r) => {
                superseded.extend(r.superseded);
                deployments.push(PushDeployment { environment: target.environment, deployment_id: r.deployment, rule: target.rule });
            }
            Err(rejection) => refused.push(rejection.to_string()),
        }
    }
    let received = Event::PushReceived(PushReceived {
        provider,
        delivery: delivery.into(),
        body_sha256: body_sha256.map(Into::into),
        git_ref: push.git_ref.clone(),
        commit: push.commit.clone(),
        pusher: push.pusher.clone(),
        deployments: deployments.clone(),
        superseded: superseded.clone(),
        at: Some(now),
        refused: refused.clone(),
    });
    w.add(&project_stream(&p.name), ExpectedVersion::Exactly(p.version), &received, Uuid::now_v7(), actor);
    Ok(w.commit(store).await?.then_some(PushOutcome::Deployed { deployments, superseded, refused }))
}
