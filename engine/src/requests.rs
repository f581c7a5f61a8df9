//! What users ask of Slipway — create a project, change settings, request a
//! deployment — validated and recorded. A request that cannot be granted
//! (bad name, unknown project, name taken) is a `Rejection` of the kind that
//! fits (not found, conflict, invalid, ...) telling the user what to do; a
//! store failure, or a history that cannot be read, is a `StoreError`. The
//! two never mix.

use chrono::Utc;
use slipway_proto::config::{is_dns_label, is_env_name};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{
    deployment_stream, environment_stream, name_stream, project_stream, BuildMode, DeploymentEnqueued, DeploymentReplayed,
    DeploymentRequested, MirrorAdded, ProjectCreated, ReleaseSource, ReplaySource, SettingsChanged, SourceAccess, SourceAccessChanged,
    TokenIssued, TokenRevoked, TokenScope, TOKENS_STREAM,
};
use slipway_proto::{Envelope, Event, Step, TraceContext};
use slipway_store::event_store::StreamAppend;
use slipway_store::settings::fingerprint;

use crate::names;
use crate::source::{self, SourceChange};
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use uuid::Uuid;

use crate::load;
use crate::project::{self, Project};

pub use crate::rejection::Rejection;

pub type Outcome<T> = Result<Result<T, Rejection>, StoreError>;

fn not_found<T>(message: impl Into<String>) -> Outcome<T> {
    Ok(Err(Rejection::not_found(message)))
}

fn conflict<T>(message: impl Into<String>) -> Outcome<T> {
    Ok(Err(Rejection::conflict(message)))
}

fn invalid<T>(message: impl Into<String>) -> Outcome<T> {
    Ok(Err(Rejection::invalid(message)))
}

fn unavailable<T>(message: impl Into<String>) -> Outcome<T> {
    Ok(Err(Rejection::unavailable(message)))
}

/// A history that cannot be read or followed is an operational failure
/// (the log is damaged), not the caller's to fix.
pub(crate) fn unreadable(stream: String, e: load::LoadError) -> StoreError {
    match e {
        load::LoadError::Store(e) => e,
        load::LoadError::Undecodable { stream, version, reason } => StoreError::Corrupt { stream, version, reason },
        load::LoadError::Illegal(illegal) => StoreError::Corrupt { stream, version: 0, reason: illegal.to_string() },
    }
}

pub(crate) fn envelope(stream: &str, event: &Event, correlation_id: Uuid, actor: &str, trace: Option<TraceContext>) -> Envelope {
    let meta = Metadata { correlation_id, causation_id: None, actor: actor.into(), trace };
    // Encoding our own event types cannot fail.
    Envelope::new(Uuid::now_v7(), Utc::now(), stream, event, meta).unwrap_or_else(|e| panic!("encoding {stream}: {e}"))
}

/// Project `name`; `None` if it was never created or was removed.
pub async fn load_project(store: &dyn EventStore, name: &str) -> Result<Option<Project>, StoreError> {
    let (_, events) = project_events(store, name).await?;
    Ok(project::fold(events.iter()).filter(|p| !p.removed))
}

/// A project stream's events and the stream's version. An unreadable event
/// is an error (`Projection`'s one policy), never skipped: a project folded
/// around one would also count a version short, and every append decided
/// from it would conflict.
pub async fn project_events(store: &dyn EventStore, name: &str) -> Result<(u64, Vec<Event>), StoreError> {
    let stream = project_stream(name);
    let recorded = store.read_stream(&stream, 1).await?;
    let events = load::decode_all(&recorded).map_err(|e| unreadable(stream, e))?;
    Ok((recorded.last().map_or(0, |r| r.version), events))
}

/// Every project's name, from the read models (caught up with the log first).
pub async fn project_names(store: &dyn EventStore) -> Result<Vec<String>, StoreError> {
    crate::projector::project_names(store).await
}

#[derive(Debug, Clone)]
pub struct NewProject {
    pub name: String,
    /// Empty for a mirror: it builds from its original's repository.
    pub repository: String,
    pub default_branch: String,
    pub environments: Vec<String>,
    /// A mirror deploys its original's images for the same commit, with its
    /// own settings, environments and routes.
    pub mirror_of: Option<String>,
}

pub async fn create_project(store: &dyn EventStore, actor: &str, new: NewProject) -> Outcome<()> {
    create_project_with_source(store, actor, new, SourceChange::default()).await
}

/// Creates a project together with how workers reach its repository
/// (credentials, trusted host keys), in one transaction.
pub async fn create_project_with_source(store: &dyn EventStore, actor: &str, new: NewProject, source: SourceChange) -> Outcome<()> {
    if !is_dns_label(&new.name) {
        return invalid(format!(
            "project name `{}` must be 1-63 lowercase letters, digits or '-' (it becomes container and host names)",
            new.name
        ));
    }
    if let Some(bad) = new.environments.iter().find(|e| !is_dns_label(e)) {
        return invalid(format!("environment name `{bad}` must be 1-63 lowercase letters, digits or '-'"));
    }
    if new.environments.is_empty() {
        return invalid("a project needs at least one environment");
    }
    if let Some(twice) = new.environments.iter().enumerate().find_map(|(i, e)| new.environments[..i].contains(e).then_some(e)) {
        return invalid(format!("environment `{twice}` is listed twice; name each environment once"));
    }
    if let Some(why) = new.environments.iter().find_map(|e| slipway_core::named_environments::host_label_problem(&new.name, e)) {
        return invalid(why);
    }
    let mirror_of = new.mirror_of.clone();
    let repository = match &new.mirror_of {
        Some(original) => match load_project(store, original).await? {
            None => return not_found(format!("no project `{original}` to mirror; create it first")),
            Some(o) if o.mirror_of.is_some() => return invalid(format!("`{original}` is itself a mirror; mirror its original instead")),
            Some(o) if !new.repository.trim().is_empty() && new.repository != o.repository => {
                return invalid(format!("a mirror builds from its original's repository ({}); leave --repo out", o.repository))
            }
            Some(o) => o.repository,
        },
        None => match source::check_repository(&new.repository) {
            Ok(()) => new.repository.clone(),
            Err(why) => return invalid(why),
        },
    };
    if let Err(why) = source::check_change(&source) {
        return invalid(why);
    }
    if mirror_of.is_some() && !source.is_empty() {
        return invalid("a mirror reaches its original's repository with the original's credentials; set them there");
    }
    if let Some(why) = slipway_core::remote::pin_problem(&repository, source.known_hosts.as_deref().unwrap_or_default()) {
        return invalid(why);
    }
    if let Err(why) = check_passphrase(&source).await {
        return invalid(why);
    }
    if let Some(why) = slipway_core::git_ref::problem(&new.default_branch) {
        return invalid(format!("default branch `{}` is not a branch name: {why}", new.default_branch));
    }
    for environment in &new.environments {
        if let Some(holder) = names::taken_by(store, &new.name, environment).await? {
            return conflict(names::collision(&new.name, environment, &holder));
        }
    }
    let stream = project_stream(&new.name);
    let event = Event::ProjectCreated(ProjectCreated {
        name: new.name.clone(),
        repository,
        mirror_of: mirror_of.clone(),
        environments: new.environments.clone(),
        default_branch: new.default_branch,
    });
    let mut e = vec![envelope(&stream, &event, Uuid::now_v7(), actor, None)];
    if !source.is_empty() {
        let changed = source_changed(store, &new.name, &source).await?;
        e.push(envelope(&stream, &Event::SourceAccessChanged(changed), Uuid::now_v7(), actor, None));
    }
    // A mirror is also recorded on its original, in the same transaction.
    let original = mirror_of.as_deref().map(project_stream);
    let added = mirror_of.as_ref().map(|_| {
        let added = Event::MirrorAdded(MirrorAdded { mirror: new.name.clone() });
        [envelope(original.as_deref().unwrap_or_default(), &added, Uuid::now_v7(), actor, None)]
    });
    let mut appends = vec![StreamAppend { stream: &stream, expected: ExpectedVersion::NoStream, events: &e }];
    if let (Some(original), Some(added)) = (&original, &added) {
        appends.push(StreamAppend { stream: original, expected: ExpectedVersion::Any, events: added });
    }
    // Each environment claims its combined name, only if nobody has.
    let claims: Vec<(String, [Envelope; 1])> = new
        .environments
        .iter()
        .map(|env| {
            let claim_stream = name_stream(&new.name, env);
            let claim = envelope(&claim_stream, &names::claim(&new.name, env), Uuid::now_v7(), actor, None);
            (claim_stream, [claim])
        })
        .collect();
    for (claim_stream, claim) in &claims {
        appends.push(StreamAppend { stream: claim_stream, expected: ExpectedVersion::NoStream, events: claim });
    }
    match store.append_streams(&appends, &[]).await? {
        Ok(_) => Ok(Ok(())),
        Err(_) => {
            // A concurrent creation took a name, or the project itself.
            for environment in &new.environments {
                if let Some(holder) = names::taken_by(store, &new.name, environment).await? {
                    return conflict(names::collision(&new.name, environment, &holder));
                }
            }
            let (_, events) = project_events(store, &new.name).await?;
            if project::fold(events.iter()).is_some_and(|p| p.removed) {
                return conflict(format!(
                    "project `{}` was removed, and a removed project's name is not used again (its history keeps it); pick another name",
                    new.name
                ));
            }
            conflict(format!("project `{}` already exists; pick another name", new.name))
        }
    }
}

/// Puts a source change's credential values in the value table and gives
/// the event that records their fingerprints.
async fn source_changed(store: &dyn EventStore, project: &str, change: &SourceChange) -> Result<SourceAccessChanged, StoreError> {
    let key = store.operational().installation_key().await?;
    let mut set = std::collections::BTreeMap::new();
    for (name, value) in &change.set {
        // No environment is named "": source credentials never share a
        // fingerprint with a setting of the same value.
        let f = fingerprint(&key, project, "", &format!("source:{name}"), value);
        store.operational().put_value(&f, value).await?;
        set.insert(name.clone(), f);
    }
    Ok(SourceAccessChanged {
        set,
        removed: change.removed.clone(),
        known_hosts: change.known_hosts.clone(),
        submodules: change.submodules,
        deploy_key: change.deploy_key.clone(),
    })
}

/// `source::check_passphrase` for a key and passphrase set together, on a
/// blocking thread (the key derivation is slow on purpose).
async fn check_passphrase(change: &SourceChange) -> Result<(), String> {
    let (Some(key), Some(passphrase)) = (change.set.get("ssh_key"), change.set.get("ssh_key_passphrase")) else { return Ok(()) };
    let (key, passphrase) = (key.clone(), passphrase.clone());
    tokio::task::spawn_blocking(move || source::check_passphrase(&key, &passphrase))
        .await
        .unwrap_or_else(|e| Err(format!("checking the SSH key's passphrase failed: {e}")))
}

/// Changes how workers reach a project's repository: credentials (kept in
/// the value table, recorded by fingerprint), trusted host keys, submodules.
pub async fn change_source(store: &dyn EventStore, actor: &str, project: &str, change: SourceChange) -> Outcome<()> {
    if let Err(why) = source::check_change(&change) {
        return invalid(why);
    }
    if change.is_empty() {
        return invalid("nothing to change: give a credential, --known-host, --forget or --submodules");
    }
    // A project's repository, and whether it is a mirror, never change:
    // both are checked once, before any credential is kept.
    let Some(p) = load_project(store, project).await? else {
        return not_found(format!("no project `{project}`; create it with `slipway project create`"));
    };
    if let Some(original) = &p.mirror_of {
        return invalid(format!("`{project}` is a mirror: it reaches {original}'s repository with {original}'s credentials; change those"));
    }
    if let Some(why) = slipway_core::remote::pin_problem(&p.repository, change.known_hosts.as_deref().unwrap_or_default()) {
        return invalid(why);
    }
    if let Err(why) = check_passphrase(&change).await {
        return invalid(why);
    }
    let changed = source_changed(store, project, &change).await?;
    let stream = project_stream(project);
    loop {
        let Some(p) = load_project(store, project).await? else {
            return not_found(format!("no project `{project}`; create it with `slipway project create`"));
        };
        let e = envelope(&stream, &Event::SourceAccessChanged(changed.clone()), Uuid::now_v7(), actor, None);
        if store.append(&stream, ExpectedVersion::Exactly(p.version), &[e], &[]).await?.is_ok() {
            return Ok(Ok(()));
        }
    }
}

/// A setting to set: key, value, and whether the value is secret.
#[derive(Debug, Clone)]
pub struct SettingValue {
    pub key: String,
    pub value: String,
    pub secret: bool,
}

/// Sets and removes settings of one environment. Values go to the value
/// table; the event records keys and fingerprints only.
pub async fn change_settings(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    environment: &str,
    set: Vec<SettingValue>,
    removed: Vec<String>,
) -> Outcome<()> {
    if let Some(bad) = set.iter().map(|s| &s.key).chain(&removed).find(|k| !is_env_name(k)) {
        return invalid(format!("setting name `{bad}` must be letters, digits and '_', not starting with a digit"));
    }
    // No process environment can carry a NUL byte: Docker would refuse the
    // value at deploy time, quoting it (escaped) in an error that is
    // recorded. Refused here, with the key only.
    if let Some(bad) = set.iter().find(|s| s.value.contains('\0')) {
        return invalid(format!("the value of `{}` contains a NUL byte, which no environment variable can hold", bad.key));
    }
    let key = store.operational().installation_key().await?;
    loop {
        let Some(p) = load_project(store, project).await? else {
            return not_found(format!("no project `{project}`; create it with `slipway project create`"));
        };
        if !p.environments.contains_key(environment) {
            let known: Vec<_> = p.environments.keys().cloned().collect();
            return not_found(format!("project `{project}` has no environment `{environment}` (it has: {})", known.join(", ")));
        }
        let mut fingerprints = std::collections::BTreeMap::new();
        for s in &set {
            let f = fingerprint(&key, project, environment, &s.key, &s.value);
            store.operational().put_value(&f, &s.value).await?;
            fingerprints.insert(s.key.clone(), f);
        }
        let event = Event::SettingsChanged(SettingsChanged {
            environment: environment.into(),
            set: fingerprints,
            removed: removed.clone(),
            secrets: set.iter().filter(|s| s.secret).map(|s| s.key.clone()).collect(),
        });
        let stream = project_stream(project);
        let e = envelope(&stream, &event, Uuid::now_v7(), actor, None);
        if store.append(&stream, ExpectedVersion::Exactly(p.version), &[e], &[]).await?.is_ok() {
            return Ok(Ok(()));
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub project: String,
    pub environment: String,
    /// `None` deploys the project's default branch.
    pub git_ref: Option<String>,
    pub mode: BuildMode,
    pub no_cache: bool,
    pub run_release: bool,
    pub dry_run: bool,
}

/// Records a deployment request and queues it on its environment; the
/// engine starts it when it reaches the head of that queue.
pub async fn request_deployment(store: &dyn EventStore, actor: &str, req: DeployRequest) -> Outcome<Uuid> {
    request_deployment_overriding(store, actor, req, None).await
}

/// `request_deployment`, inside a freeze window too when `override_freeze`
/// gives a reason (the caller checked that `actor` is an admin); the
/// override is recorded with the request.
pub async fn request_deployment_overriding(
    store: &dyn EventStore,
    actor: &str,
    req: DeployRequest,
    override_freeze: Option<&str>,
) -> Outcome<Uuid> {
    let p = match project_environment(store, &req.project, &req.environment).await? {
        Ok(p) => p,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let git_ref = req.git_ref.unwrap_or_else(|| p.default_branch.clone());
    if let Some(why) = slipway_core::git_ref::problem(&git_ref) {
        return invalid(format!("ref `{git_ref}` cannot name a branch, tag or commit: {why}"));
    }
    let id = Uuid::now_v7();
    enqueue(
        store,
        actor,
        &p,
        DeploymentRequested {
            deployment_id: id,
            project: p.name.clone(),
            environment: req.environment.clone(),
            repository: p.repository.clone(),
            git_ref,
            mode: req.mode,
            no_cache: req.no_cache,
            run_release: req.run_release,
            settings: p.fingerprints(&req.environment),
            dry_run: req.dry_run,
            rollback_of: None,
            promoted_from: None,
            replay_of: None,
            source: Default::default(),
        },
        Freeze::Applies(override_freeze),
    )
    .await
}

/// A rollback the engine accepted: the new deployment, the release it
/// re-activates, and what the operator should know first.
#[derive(Debug, Clone)]
pub struct RollbackRequested {
    pub deployment_id: Uuid,
    pub target: Uuid,
    pub warnings: Vec<String>,
}

/// The release a rollback without `--to` goes back to: the newest earlier
/// one whose image is not the serving release's (going back to the same
/// image would change nothing).
async fn earlier_release(
    store: &dyn EventStore,
    (project, environment): (&str, &str),
    releases: &[Uuid],
    serving: Option<Uuid>,
) -> Outcome<(Uuid, crate::Deployment)> {
    let serving_image = match serving {
        Some(id) => match deployment_state(store, id).await? {
            Ok(d) => d.context.image_id,
            Err(rejection) => return Ok(Err(rejection)),
        },
        None => None,
    };
    let mut same = 0;
    for r in releases.iter().rev().filter(|r| Some(**r) != serving) {
        let d = match deployment_state(store, *r).await? {
            Ok(d) => d,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if serving_image.is_none() || d.context.image_id != serving_image {
            return Ok(Ok((*r, d)));
        }
        same += 1;
    }
    match same {
        0 => conflict(format!("{project} {environment} has no earlier release to roll back to")),
        n => conflict(format!(
            "{project} {environment} has no earlier release with another image than the one serving \
             ({n} earlier release(s) run that same image); name one with --to to redeploy it anyway"
        )),
    }
}

/// Re-activates an earlier release of an environment — by default the
/// newest earlier one whose image is not the serving release's
/// (`earlier_release`) — as a new deployment with that release's image,
/// commit, `slipway.toml` and settings snapshot. It passes the same service
/// check, containers, health check and cutover; release commands do not run
/// again, so a warning names every release that ran some since.
pub async fn request_rollback(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    environment: &str,
    to: Option<Uuid>,
) -> Outcome<RollbackRequested> {
    let p = match project_environment(store, project, environment).await? {
        Ok(p) => p,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let env = match environment_state(store, project, environment).await? {
        Ok(env) => env,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let serving = env.last_succeeded();
    // The release to serve again, loaded once (`earlier_release` loads the
    // ones it looks at).
    let (target, old) = match to {
        Some(t) if !env.releases.contains(&t) => {
            return not_found(format!("deployment {t} never served {project} {environment}; its releases: slipway deployments {project}"))
        }
        Some(t) if Some(t) == serving => return conflict(format!("deployment {t} already serves {project} {environment}")),
        Some(t) => match deployment_state(store, t).await? {
            Ok(d) => (t, d),
            Err(rejection) => return Ok(Err(rejection)),
        },
        None => match earlier_release(store, (project, environment), &env.releases, serving).await? {
            Ok(found) => found,
            Err(rejection) => return Ok(Err(rejection)),
        },
    };
    let (Some(image_id), Some(commit)) = (old.context.image_id.clone(), old.context.commit.clone()) else {
        return conflict(format!("deployment {target} recorded no image to roll back to"));
    };
    let since = env.releases.iter().skip_while(|r| **r != target).skip(1);
    let warnings = release_commands_since(store, since).await?;
    let requested = release_again(&p, environment, &old, commit, image_id);
    Ok(enqueue(store, actor, &p, requested, Freeze::Exempt).await?.map(|deployment_id| RollbackRequested {
        deployment_id,
        target,
        warnings,
    }))
}

/// A deployment of exactly `old`'s release (its image, commit,
/// `slipway.toml` and settings) to `environment`, without release commands.
fn release_again(p: &Project, environment: &str, old: &crate::Deployment, commit: String, image_id: String) -> DeploymentRequested {
    DeploymentRequested {
        deployment_id: Uuid::now_v7(),
        project: p.name.clone(),
        environment: environment.into(),
        repository: p.repository.clone(),
        git_ref: commit.clone(),
        mode: old.context.mode,
        no_cache: false,
        run_release: false,
        settings: old.context.settings.clone(),
        dry_run: false,
        rollback_of: Some(ReleaseSource { deployment_id: old.id, commit, image_id, config: old.context.config.clone() }),
        promoted_from: None,
        replay_of: None,
        source: Default::default(),
    }
}

/// Starts the release that serves an environment again, as a new
/// deployment of it (the host agent's answer to its containers being gone):
/// the pipeline starts fresh containers, checks their health and switches
/// the route with every router's acknowledgement, and the containers that
/// are left of the old copy are retired as usual. Recorded only if the
/// environment is still at `version` (what the decision was made on), so
/// two agents that decide it together request it once; a later version,
/// or another release serving, is refused.
pub async fn request_restore(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    environment: &str,
    serving: Uuid,
    version: u64,
) -> Outcome<Uuid> {
    let p = match project_environment(store, project, environment).await? {
        Ok(p) => p,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let old = match deployment_state(store, serving).await? {
        Ok(d) => d,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let (Some(image_id), Some(commit)) = (old.context.image_id.clone(), old.context.commit.clone()) else {
        return conflict(format!("deployment {serving} recorded no image to start again"));
    };
    let requested = release_again(&p, environment, &old, commit, image_id);
    enqueue_at(store, actor, requested, ExpectedVersion::Exactly(version)).await
}

/// Deploys to `to` exactly the image `from` serves now (its commit and
/// `slipway.toml` too), with `to`'s settings; release commands run as for
/// any deployment of that mode.
pub async fn request_promotion(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    from: &str,
    to: &str,
    mode: BuildMode,
    run_release: bool,
) -> Outcome<(Uuid, Uuid)> {
    if let Err(rejection) = project_environment(store, project, from).await? {
        return Ok(Err(rejection));
    }
    let p = match project_environment(store, project, to).await? {
        Ok(p) => p,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if from == to {
        return invalid(format!("promote from one environment to another, not `{from}` to itself"));
    }
    let serving = match environment_state(store, project, from).await? {
        Ok(env) => env.last_succeeded(),
        Err(rejection) => return Ok(Err(rejection)),
    };
    let Some(source) = serving else { return conflict(format!("{project} {from} serves no release to promote")) };
    let release = match deployment_state(store, source).await? {
        Ok(d) => d,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let (Some(image_id), Some(commit)) = (release.context.image_id.clone(), release.context.commit.clone()) else {
        return conflict(format!("deployment {source} recorded no image to promote"));
    };
    let requested = DeploymentRequested {
        deployment_id: Uuid::now_v7(),
        project: p.name.clone(),
        environment: to.into(),
        repository: p.repository.clone(),
        git_ref: commit.clone(),
        mode,
        no_cache: false,
        run_release,
        settings: p.fingerprints(to),
        dry_run: false,
        rollback_of: None,
        promoted_from: Some(ReleaseSource { deployment_id: source, commit, image_id, config: release.context.config.clone() }),
        replay_of: None,
        source: Default::default(),
    };
    Ok(enqueue(store, actor, &p, requested, Freeze::Applies(None)).await?.map(|id| (id, source)))
}

/// A replay the engine accepted.
#[derive(Debug, Clone)]
pub struct ReplayRequested {
    pub deployment_id: Uuid,
    pub from_step: Step,
}

/// Re-runs a finished deployment with exactly its recorded inputs — the
/// commit it checked out (so the same `slipway.toml`), its settings
/// snapshot, its mode — as a new deployment of the same environment,
/// linked both ways (`replay_of` on the new one, `DeploymentReplayed` on
/// the original). It resumes at `from_step` (default: the step that failed;
/// a succeeded deployment runs again from the start): the build re-uses the
/// original's image if Docker still has it, release commands before
/// `from_step` are not run again, and containers are always started anew.
pub async fn request_replay(store: &dyn EventStore, actor: &str, original: Uuid, from_step: Option<Step>) -> Outcome<ReplayRequested> {
    replay(store, actor, original, from_step, false).await
}

/// Runs the release commands against the release serving `environment`
/// now (seed: `docker-compose run --rm web start migrate`): a replay of it
/// from the release step with release commands on, so the migrated release
/// is health-checked and cut over like any other, with no downtime.
pub async fn request_migrate(store: &dyn EventStore, actor: &str, project: &str, environment: &str) -> Outcome<ReplayRequested> {
    if let Err(rejection) = project_environment(store, project, environment).await? {
        return Ok(Err(rejection));
    }
    let serving = match environment_state(store, project, environment).await? {
        Ok(env) => env.last_succeeded(),
        Err(rejection) => return Ok(Err(rejection)),
    };
    let Some(release) = serving else { return conflict(format!("{project} {environment} serves no release to migrate")) };
    replay(store, actor, release, Some(Step::Release), true).await
}

async fn replay(
    store: &dyn EventStore,
    actor: &str,
    original: Uuid,
    from_step: Option<Step>,
    force_release: bool,
) -> Outcome<ReplayRequested> {
    let old = match deployment_state(store, original).await? {
        Ok(d) => d,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if !old.is_finished() {
        return conflict(format!("deployment {original} is still running; replay it once it has finished"));
    }
    let failed_at = match &old.status {
        crate::deployment::Status::Failed { step, .. } => Some(*step),
        _ => None,
    };
    let from_step = match (from_step, failed_at) {
        (Some(s), _) if !Step::PIPELINE.contains(&s) => {
            let steps: Vec<&str> = Step::PIPELINE.iter().map(|s| s.as_str()).collect();
            return invalid(format!("--from-step `{s}` is not a pipeline step; one of: {}", steps.join(", ")));
        }
        (Some(s), _) => s,
        // The switch itself failed: run the health check and switch again.
        (None, Some(Step::Cutover)) => Step::HealthCheck,
        (None, Some(s)) if Step::PIPELINE.contains(&s) => s,
        _ => Step::CheckServices,
    };
    let p = match project_environment(store, &old.context.project, &old.context.environment).await? {
        Ok(p) => p,
        Err(rejection) => return Ok(Err(rejection)),
    };
    // Without a recorded commit (the checkout failed), the recorded ref.
    let (git_ref, from_step) = match &old.context.commit {
        Some(commit) => (commit.clone(), from_step),
        None => (old.context.git_ref.clone(), Step::CheckServices),
    };
    let id = Uuid::now_v7();
    let requested = DeploymentRequested {
        deployment_id: id,
        project: p.name.clone(),
        environment: old.context.environment.clone(),
        repository: old.context.repository.clone(),
        git_ref,
        mode: old.context.mode,
        no_cache: false,
        run_release: old.context.run_release || force_release,
        settings: old.context.settings.clone(),
        dry_run: old.context.dry_run,
        rollback_of: None,
        promoted_from: None,
        replay_of: Some(ReplaySource { deployment_id: original, from_step, image_id: old.context.image_id.clone() }),
        source: Default::default(),
    };
    let more = match crate::protection::gate(&p, &requested.environment, Utc::now(), None) {
        Ok(events) => events,
        Err(refused) => return Ok(Err(refused)),
    };
    let span = slipway_telemetry::trace::deployment_requested(id.as_u128());
    let trace = Some(span.trace_context());
    let (dstream, estream, ostream) =
        (deployment_stream(id), environment_stream(&requested.project, &requested.environment), deployment_stream(original));
    let replayed = Event::DeploymentReplayed(DeploymentReplayed { replay: id, from_step });
    let mut d = vec![envelope(&dstream, &Event::DeploymentRequested(requested), id, actor, trace.clone())];
    d.extend(more.iter().map(|e| envelope(&dstream, e, id, actor, trace.clone())));
    let q = [envelope(&estream, &Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: id }), id, actor, trace.clone())];
    let o = [envelope(&ostream, &replayed, id, actor, trace)];
    let appends = [
        StreamAppend { stream: &dstream, expected: ExpectedVersion::NoStream, events: &d },
        StreamAppend { stream: &estream, expected: ExpectedVersion::Any, events: &q },
        StreamAppend { stream: &ostream, expected: ExpectedVersion::Any, events: &o },
    ];
    match store.append_streams(&appends, &[]).await? {
        Ok(_) => {
            span.record();
            Ok(Ok(ReplayRequested { deployment_id: id, from_step }))
        }
        Err(c) => conflict(format!("could not record the replay: {c}")),
    }
}

/// One warning per release (of those given) that ran release commands.
async fn release_commands_since<'a>(store: &dyn EventStore, releases: impl Iterator<Item = &'a Uuid>) -> Result<Vec<String>, StoreError> {
    let mut warnings = Vec::new();
    for release in releases {
        let events = store.read_stream(&deployment_stream(*release), 1).await?;
        for recorded in events {
            if let Ok(Event::ReleaseCommandsRan(ran)) = recorded.envelope.decode::<Event>() {
                if !ran.skipped && !ran.results.is_empty() {
                    let commands: Vec<String> = ran.results.iter().map(|r| format!("`{}`", r.command)).collect();
                    warnings.push(format!(
                        "release {release} ran release commands since ({}): the schema may have moved on, and they are not undone",
                        commands.join(", ")
                    ));
                }
            }
        }
    }
    Ok(warnings)
}

/// A deployment's state, refused when there is none such; a history that
/// cannot be read or followed is a `StoreError`.
async fn deployment_state(store: &dyn EventStore, id: Uuid) -> Outcome<crate::Deployment> {
    match load::deployment(store, id).await {
        Ok(Some(d)) => Ok(Ok(d)),
        Ok(None) => not_found(format!("no deployment {id}")),
        Err(e) => Err(unreadable(deployment_stream(id), e)),
    }
}

/// Asks the engine to stop a deployment that has not finished: it fails at
/// the step it is at, its containers are removed and the serving release
/// keeps serving. Refused once the deployment has finished. Recorded only
/// on the version it was checked against, so it never lands after the
/// verdict.
pub async fn request_cancel(store: &dyn EventStore, actor: &str, deployment: Uuid, why: &str) -> Outcome<()> {
    loop {
        let d = match deployment_state(store, deployment).await? {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        if d.is_finished() {
            let verdict = if d.status == crate::deployment::Status::Succeeded { "succeeded" } else { "failed" };
            return conflict(format!(
                "deployment {deployment} already {verdict}; to undo a release that serves, roll back with \
                 `slipway rollback {} {}`",
                d.context.project, d.context.environment
            ));
        }
        let why = why.trim();
        let reason = if why.is_empty() { format!("cancelled by {actor}") } else { format!("cancelled by {actor}: {why}") };
        let stream = deployment_stream(deployment);
        let event = Event::CancelRequested(slipway_proto::event::CancelRequested { reason });
        let e = [envelope(&stream, &event, deployment, actor, None)];
        let append = [StreamAppend { stream: &stream, expected: ExpectedVersion::Exactly(d.version), events: &e }];
        match store.append_streams(&append, &[]).await? {
            Ok(_) => return Ok(Ok(())),
            // The deployment moved on while we looked: look again.
            Err(_) => continue,
        }
    }
}

/// An environment's state; a history that cannot be read is a `StoreError`.
async fn environment_state(store: &dyn EventStore, project: &str, environment: &str) -> Outcome<crate::environment::Environment> {
    match load::environment(store, project, environment).await {
        Ok(env) => Ok(Ok(env)),
        Err(e) => Err(unreadable(environment_stream(project, environment), e)),
    }
}

/// Whether a read scoped to `project` (and `environment`, if given) names
/// what exists: the project, and the environment in it.
pub async fn scope_exists(store: &dyn EventStore, project: &str, environment: Option<&str>) -> Outcome<()> {
    match environment {
        Some(environment) => Ok(project_environment(store, project, environment).await?.map(drop)),
        None if load_project(store, project).await?.is_none() => {
            not_found(format!("no project `{project}`; create it with `slipway project create`"))
        }
        None => Ok(Ok(())),
    }
}

/// The project, if it exists and has the environment; otherwise a rejection
/// that says what does exist.
pub async fn project_environment(store: &dyn EventStore, project: &str, environment: &str) -> Outcome<Project> {
    let Some(p) = load_project(store, project).await? else {
        return not_found(format!("no project `{project}`; create it with `slipway project create`"));
    };
    if !p.environments.contains_key(environment) {
        let known: Vec<_> = p.environments.keys().cloned().collect();
        return not_found(format!("project `{project}` has no environment `{environment}` (it has: {})", known.join(", ")));
    }
    Ok(Ok(p))
}

/// How workers reach a project's repository: the project's own source
/// access, or its original's for a mirror (it builds from that repository).
pub(crate) async fn source_access(store: &dyn EventStore, project: &str) -> Result<SourceAccess, StoreError> {
    match load_project(store, project).await? {
        Some(p) => source_of(store, &p).await,
        None => Ok(SourceAccess::default()),
    }
}

/// [`source_access`] of a project already loaded: no read unless it is a mirror.
pub(crate) async fn source_of(store: &dyn EventStore, p: &Project) -> Result<SourceAccess, StoreError> {
    match &p.mirror_of {
        Some(original) => Ok(load_project(store, original).await?.map(|o| o.source).unwrap_or_default()),
        None => Ok(p.source.clone()),
    }
}

/// Records the request and queues it on its environment, in one
/// transaction, with the project's current source access: credentials are
/// access, not inputs, so a replay or rollback uses today's, not the
/// original's (which may have been revoked).
/// How a request meets its environment's freeze windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freeze<'a> {
    /// Refused inside a window, unless overridden with this reason.
    Applies(Option<&'a str>),
    /// Not refused: a rollback restores what served before.
    Exempt,
}

/// Queues a user's deployment request for project `p` (as the request
/// just loaded it: not read again), with what its environment's protection
/// asks (`protection::gate`): the approvals it waits for, a freeze it
/// overrides; refused inside a freeze window otherwise.
async fn enqueue(store: &dyn EventStore, actor: &str, p: &Project, requested: DeploymentRequested, freeze: Freeze<'_>) -> Outcome<Uuid> {
    let source = source_of(store, p).await?;
    // A copy without freezes only for an exempt request.
    let exempt;
    let p = match freeze {
        Freeze::Applies(_) => p,
        Freeze::Exempt => {
            exempt = Project { freezes: Default::default(), ..p.clone() };
            &exempt
        }
    };
    let override_freeze = match freeze {
        Freeze::Applies(Some(reason)) => Some((actor, reason)),
        _ => None,
    };
    let gate = match crate::protection::gate(p, &requested.environment, Utc::now(), override_freeze) {
        Ok(events) => events,
        Err(refused) => return Ok(Err(refused)),
    };
    enqueue_with(store, actor, requested, source, ExpectedVersion::Any, gate).await
}

/// `enqueue`, with the environment's stream expected at `expected`.
async fn enqueue_at(store: &dyn EventStore, actor: &str, requested: DeploymentRequested, expected: ExpectedVersion) -> Outcome<Uuid> {
    let source = source_access(store, &requested.project).await?;
    enqueue_with(store, actor, requested, source, expected, Vec::new()).await
}

/// `enqueue_at`, with the project's `source` access and `more` recorded on
/// the deployment's stream after its request.
async fn enqueue_with(
    store: &dyn EventStore,
    actor: &str,
    mut requested: DeploymentRequested,
    source: SourceAccess,
    expected: ExpectedVersion,
    more: Vec<Event>,
) -> Outcome<Uuid> {
    requested.source = source;
    let id = requested.deployment_id;
    let (dstream, estream) = (deployment_stream(id), environment_stream(&requested.project, &requested.environment));
    // One trace per deployment: its id is the deployment id (unless the
    // request continues its caller's trace).
    let span = slipway_telemetry::trace::deployment_requested(id.as_u128());
    let trace = Some(span.trace_context());
    let mut d = vec![envelope(&dstream, &Event::DeploymentRequested(requested), id, actor, trace.clone())];
    d.extend(more.iter().map(|e| envelope(&dstream, e, id, actor, trace.clone())));
    let q = [envelope(&estream, &Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: id }), id, actor, trace)];
    let appends = [
        StreamAppend { stream: &dstream, expected: ExpectedVersion::NoStream, events: &d },
        StreamAppend { stream: &estream, expected, events: &q },
    ];
    match store.append_streams(&appends, &[]).await? {
        Ok(_) => {
            span.record();
            Ok(Ok(id))
        }
        Err(c) => conflict(format!("could not record the request: {c}")),
    }
}

/// Every token ever issued, from the tokens stream.
pub async fn load_tokens(store: &dyn EventStore) -> Result<crate::tokens::Tokens, StoreError> {
    let recorded = store.read_stream(TOKENS_STREAM, 1).await?;
    let mut events = Vec::with_capacity(recorded.len());
    for r in &recorded {
        // Every event of this stream must be readable: skipping a revocation
        // would let a revoked token back in.
        let event = r.envelope.decode::<Event>().map_err(|e| StoreError::Corrupt {
            stream: r.stream.clone(),
            version: r.version,
            reason: e.to_string(),
        })?;
        events.push((event, r.recorded_at));
    }
    Ok(crate::tokens::Tokens::fold(events.iter().map(|(e, at)| (e, *at))))
}

/// Issues a token that never expires (`issue_expiring_token`).
pub async fn issue_token(store: &dyn EventStore, actor: &str, name: &str, scope: TokenScope) -> Outcome<String> {
    issue_expiring_token(store, actor, name, scope, None).await
}

/// Issues a token: records its name, scope, SHA-256 (never the value) and
/// when it expires, if it does, and returns the value, which is shown this
/// once. A name is never issued twice, revoked or not, so `token:<name>`
/// in the log names one token.
pub async fn issue_expiring_token(
    store: &dyn EventStore,
    actor: &str,
    name: &str,
    scope: TokenScope,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> Outcome<String> {
    if !crate::tokens::is_valid_name(name) {
        return invalid(format!(
            "token name `{name}` must be 1-64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    if let Some(at) = expires_at.filter(|at| *at <= Utc::now()) {
        return invalid(format!("expires_at: {} is already past; expected a time to come", at.to_rfc3339()));
    }
    let tokens = load_tokens(store).await?;
    if let Some(t) = tokens.by_name.get(name) {
        let state = if t.revoked { "was revoked (names are not reused)" } else { "exists" };
        return conflict(format!("token `{name}` {state}; pick another name"));
    }
    let value = crate::tokens::generate();
    let event = Event::TokenIssued(TokenIssued {
        name: name.into(),
        scope,
        sha256: crate::tokens::hash(&value),
        issued_by: actor.into(),
        expires_at,
    });
    let e = envelope(TOKENS_STREAM, &event, Uuid::now_v7(), actor, None);
    match store.append(TOKENS_STREAM, ExpectedVersion::Exactly(tokens.version), &[e], &[]).await? {
        Ok(_) => Ok(Ok(value)),
        Err(_) => unavailable(format!("the tokens changed while `{name}` was being issued; try again")),
    }
}

/// Revokes a token: requests with it are refused from the next one on.
pub async fn revoke_token(store: &dyn EventStore, actor: &str, name: &str) -> Outcome<()> {
    let tokens = load_tokens(store).await?;
    match tokens.by_name.get(name) {
        None => return not_found(format!("no token `{name}`; `slipway token list` shows them")),
        Some(t) if t.revoked => return conflict(format!("token `{name}` is already revoked")),
        Some(_) => {}
    }
    let event = Event::TokenRevoked(TokenRevoked { name: name.into() });
    let e = envelope(TOKENS_STREAM, &event, Uuid::now_v7(), actor, None);
    match store.append(TOKENS_STREAM, ExpectedVersion::Exactly(tokens.version), &[e], &[]).await? {
        Ok(_) => Ok(Ok(())),
        Err(_) => unavailable(format!("the tokens changed while `{name}` was being revoked; try again")),
    }
}
