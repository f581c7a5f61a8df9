//! Environments that come and go, recorded: adding a preview (on the
//! project's stream and the environment's own), deploying to it, removing
//! it (its queued and running deployments cancelled, its serving release
//! retired by a worker through the outbox, its route removed, its settings
//! overlay gone — one transaction), fork approvals, preview rules, and the
//! engine's periodic sweep that removes previews past their time to live.
//! What to do is decided by `preview` (pure); this module reads the state
//! those decisions need and lands them at the versions they were made from,
//! so a race (a deployment finishing, a webhook arriving) makes the loser
//! read and decide again rather than act on a stale picture.

use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{
    deployment_stream, environment_stream, project_stream, BuildMode, CancelRequested, DeploymentEnqueued, DeploymentRequested,
    EnvironmentAdded, EnvironmentRemoved, PreviewApproved, PreviewRuleRemoved, PreviewRuleSet, PreviewTrigger, ProjectRemoved,
    RouteRemoved, SourceAccess, ROUTES_STREAM,
};
use slipway_proto::{Command, Envelope, Event};
use slipway_store::event_store::{Outgoing, StreamAppend};
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use slipway_telemetry::trace::PlannedSpan;
use uuid::Uuid;

use crate::load::{self, LoadError};
use crate::preview::{self, NewPreview};
use crate::project::Project;
use crate::push;
use crate::requests::{envelope, load_project, Outcome, Rejection};
use slipway_core::named_environments;

/// The actor of what the engine records on its own (the TTL sweep).
pub const ENGINE: &str = "engine";

/// How often a write is decided again after losing a race, before giving up.
const ATTEMPTS: usize = 50;

/// Events for several streams and commands for the outbox, landed in one
/// transaction, each stream at the version its decision was made from.
#[derive(Default)]
pub(crate) struct Writes {
    streams: Vec<(String, ExpectedVersion, Vec<Envelope>)>,
    commands: Vec<Outgoing>,
    spans: Vec<PlannedSpan>,
}

impl Writes {
    /// Adds `event` to `stream` (after what is there already for it).
    pub(crate) fn add(&mut self, stream: &str, expected: ExpectedVersion, event: &Event, correlation: Uuid, actor: &str) {
        self.add_traced(stream, expected, event, correlation, actor, None);
    }

    fn add_traced(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        event: &Event,
        correlation: Uuid,
        actor: &str,
        trace: Option<slipway_proto::TraceContext>,
    ) {
        let e = envelope(stream, event, correlation, actor, trace);
        match self.streams.iter_mut().find(|(s, _, _)| s == stream) {
            Some((_, _, events)) => events.push(e),
            None => self.streams.push((stream.to_owned(), expected, vec![e])),
        }
    }

    /// Lands everything; false if any stream moved on (nothing written).
    pub(crate) async fn commit(self, store: &dyn EventStore) -> Result<bool, StoreError> {
        let appends: Vec<StreamAppend<'_>> =
            self.streams.iter().map(|(stream, expected, events)| StreamAppend { stream, expected: *expected, events }).collect();
        match store.append_streams(&appends, &self.commands).await? {
            Ok(_) => {
                for span in self.spans {
                    span.record();
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }
}

/// A deployment of `commit` to `environment` requested by a webhook or an
/// approval, and the waiting push deployments it supersedes.
pub(crate) struct Requested {
    pub deployment: Uuid,
    pub superseded: Vec<Uuid>,
}

/// Writes a deployment request of `commit` to `environment` of `p` (whose
/// state must already hold the environment: a preview added in the same
/// writes is applied to it first), queued at the environment's version as
/// read, cancelling the waiting deployments of earlier pushes there. The
/// environment's protection applies as to a person's request: it waits for
/// the approvals the environment requires, and inside a freeze window it is
/// refused (a push, a poll or a pull request cannot override one).
pub(crate) async fn request_deployment(
    store: &dyn EventStore,
    w: &mut Writes,
    p: &Project,
    environment: &str,
    commit: &str,
    actor: &str,
    source: &SourceAccess,
) -> Result<Result<Requested, Rejection>, LoadError> {
    let gate = match crate::protection::gate(p, environment, Utc::now(), None) {
        Ok(events) => events,
        Err(refused) => return Ok(Err(refused)),
    };
    let env = load::environment(store, &p.name, environment).await?;
    let id = Uuid::now_v7();
    let requested = DeploymentRequested {
        deployment_id: id,
        project: p.name.clone(),
        environment: environment.into(),
        repository: p.repository.clone(),
        git_ref: commit.into(),
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        settings: p.fingerprints(environment),
        dry_run: false,
        rollback_of: None,
        promoted_from: None,
        replay_of: None,
        source: source.clone(),
    };
    // One trace per deployment, as for any request (`requests::enqueue`).
    let span = slipway_telemetry::trace::deployment_requested(id.as_u128());
    let trace = Some(span.trace_context());
    w.spans.push(span);
    let (dstream, estream) = (deployment_stream(id), environment_stream(&p.name, environment));
    w.add_traced(&dstream, ExpectedVersion::NoStream, &Event::DeploymentRequested(requested), id, actor, trace.clone());
    for event in &gate {
        w.add_traced(&dstream, ExpectedVersion::Any, event, id, actor, trace.clone());
    }
    // At the version the queue was read at: had the queue moved (the
    // running deployment finished, so an older one may have started), the
    // supersede choice would be stale.
    let enqueued = Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: id });
    w.add_traced(&estream, ExpectedVersion::Exactly(env.version), &enqueued, id, actor, trace);
    let superseded = push::superseded(&env.queue, &p.push_deployments);
    for old in &superseded {
        let reason = push::superseded_reason(id, commit);
        w.add(&deployment_stream(*old), ExpectedVersion::Any, &Event::CancelRequested(CancelRequested { reason }), *old, actor);
    }
    Ok(Ok(Requested { deployment: id, superseded }))
}

/// Writes the addition of `new` to `p` (project and environment streams)
/// and applies it to `p`, so what follows sees the preview and its settings.
pub(crate) async fn add_preview(
    store: &dyn EventStore,
    w: &mut Writes,
    p: &mut Project,
    new: &NewPreview,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let added = EnvironmentAdded {
        name: new.name.clone(),
        inherits: Some(new.inherits.clone()),
        preview: Some(new.origin.clone()),
        ttl_seconds: Some(new.ttl_seconds),
        at: now,
    };
    write_added(store, w, p, added, actor).await
}

/// Writes `added` on the project's and the environment's streams (where
/// it starts a new life of that name) and applies it to `p`. The pair
/// claims its combined name the first time it is added (one added again
/// holds it already); if another pair holds it, the claim conflicts and
/// nothing is written.
async fn write_added(
    store: &dyn EventStore,
    w: &mut Writes,
    p: &mut Project,
    added: EnvironmentAdded,
    actor: &str,
) -> Result<(), StoreError> {
    let name = added.name.clone();
    let added = Event::EnvironmentAdded(added);
    let estream = environment_stream(&p.name, &name);
    let version = store.stream_version(&estream).await?;
    w.add(&project_stream(&p.name), ExpectedVersion::Exactly(p.version), &added, Uuid::now_v7(), actor);
    w.add(&estream, ExpectedVersion::Exactly(version), &added, Uuid::now_v7(), actor);
    let claim_stream = slipway_proto::event::name_stream(&p.name, &name);
    if store.stream_version(&claim_stream).await? == 0 {
        w.add(&claim_stream, ExpectedVersion::NoStream, &crate::names::claim(&p.name, &name), Uuid::now_v7(), actor);
    } else if let Some(holder) = crate::names::taken_by(store, &p.name, &name).await? {
        return Err(StoreError::InvalidAppend { stream: claim_stream, reason: crate::names::collision(&p.name, &name, &holder) });
    }
    p.apply(&added);
    Ok(())
}

/// Adds environment `name` to `project` after its creation (`slipway env
/// add`): it starts empty (no settings, nothing deployed), like the
/// environments the project was created with.
pub async fn add_environment(store: &dyn EventStore, actor: &str, project: &str, name: &str) -> Result<Result<(), Rejection>, LoadError> {
    for _ in 0..ATTEMPTS {
        let Some(mut p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        if let Err(refused) = named_environments::may_add(&p, name) {
            return Ok(Err(refused));
        }
        if let Some(holder) = crate::names::taken_by(store, project, name).await? {
            return Ok(Err(Rejection::conflict(crate::names::collision(project, name, &holder))));
        }
        let mut w = Writes::default();
        let added = EnvironmentAdded { name: name.into(), inherits: None, preview: None, ttl_seconds: None, at: Utc::now() };
        write_added(store, &mut w, &mut p, added, actor).await?;
        if w.commit(store).await? {
            return Ok(Ok(()));
        }
    }
    Ok(Err(Rejection::unavailable(format!("project `{project}` kept changing while `{name}` was added; try again"))))
}

/// Writes the removal of environment `name` (a preview, or a named one
/// `named_environments::may_remove` allows) from `p`: `EnvironmentRemoved`
/// on the project's and the environment's streams, a cancellation for each
/// deployment queued or running there, the serving release's retirement
/// (a command to the workers), and `RouteRemoved` if it has a route in
/// `routes` (read once by the caller, however many environments go).
///
/// The caller reads `env` before `routes` (`read_for_removal`, or each
/// environment before the routes when several go): a domain added in between
/// writes the environment's stream too (`domains::add`), so this removal,
/// written at the version `env` was read at, does not land, and the
/// caller decides again with the domain in sight.
pub(crate) fn write_removal(
    w: &mut Writes,
    p: &Project,
    (name, env): (&str, &crate::environment::Environment),
    reason: &str,
    actor: &str,
    routes: &slipway_core::routes::Routes,
) -> EnvironmentRemoved {
    let routed = routes.by_environment.contains_key(&(p.name.clone(), name.to_owned()));
    let plan = preview::removal(env, routed, preview::REMOVAL_DRAIN_SECONDS);
    let why = preview::cancel_reason(name, reason);
    for d in &plan.cancel {
        let cancel = Event::CancelRequested(CancelRequested { reason: why.clone() });
        w.add(&deployment_stream(*d), ExpectedVersion::Any, &cancel, *d, actor);
    }
    if plan.route {
        let removed = Event::RouteRemoved(RouteRemoved { project: p.name.clone(), environment: name.into() });
        w.add(ROUTES_STREAM, ExpectedVersion::Any, &removed, Uuid::now_v7(), actor);
    }
    let retired = plan.retire.as_ref().map(|r| r.deployment_id);
    if let Some(retire) = plan.retire {
        let command = Command::RetireRelease(retire);
        let meta = Metadata { correlation_id: command.deployment_id(), causation_id: None, actor: actor.into(), trace: None };
        let stream = deployment_stream(command.deployment_id());
        if let Ok(e) = Envelope::new(Uuid::now_v7(), Utc::now(), &stream, &command, meta) {
            w.commands.push(Outgoing { queue: command.queue(), envelope: e });
        }
    }
    let removed =
        EnvironmentRemoved { name: name.into(), reason: reason.into(), cancelled: plan.cancel, retired, route_removed: plan.route };
    let event = Event::EnvironmentRemoved(removed.clone());
    w.add(&project_stream(&p.name), ExpectedVersion::Exactly(p.version), &event, Uuid::now_v7(), actor);
    w.add(&environment_stream(&p.name, name), ExpectedVersion::Exactly(env.version), &event, Uuid::now_v7(), actor);
    removed
}

/// What `write_removal` needs of environment `name` of `project`, read in
/// the order it requires: the environment, then the routes.
pub(crate) async fn read_for_removal(
    store: &dyn EventStore,
    project: &str,
    name: &str,
) -> Result<(crate::environment::Environment, slipway_core::routes::Routes), LoadError> {
    let env = load::environment(store, project, name).await?;
    let routes = load::routes(store).await?;
    Ok((env, routes))
}

fn no_project(project: &str) -> Rejection {
    Rejection::not_found(format!("no project `{project}`; create it with `slipway project create`"))
}

/// Which environments a removal may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removable {
    /// Previews only (`slipway preview remove`, deploy scope).
    Previews,
    /// Named environments too, when nothing counts on them any more
    /// (`slipway env remove`, admin scope).
    Any,
}

/// Removes environment `name` of `project`: a preview, or with
/// `Removable::Any` a named environment that `named_environments::may_remove`
/// allows (no rule, preview or domain counts on it).
pub async fn remove_environment(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    name: &str,
    reason: &str,
    removable: Removable,
) -> Result<Result<EnvironmentRemoved, Rejection>, LoadError> {
    for _ in 0..ATTEMPTS {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        let (env, routes) = read_for_removal(store, project, name).await?;
        let preview = p.previews.contains_key(name);
        match removable {
            Removable::Previews if !preview && p.environments.contains_key(name) => {
                return Ok(Err(Rejection::invalid(format!(
                    "environment `{name}` of `{project}` is a named environment, not a preview; \
                     an admin removes it with `slipway env remove {project} {name} --yes`"
                ))))
            }
            Removable::Previews if !preview => {
                return Ok(Err(Rejection::not_found(format!("environment `{name}` of `{project}` does not exist"))))
            }
            Removable::Previews => {}
            Removable::Any => {
                let domains: Vec<String> =
                    routes.domains.iter().filter(|(_, (p, e))| p == project && e == name).map(|(domain, _)| domain.clone()).collect();
                if let Err(refused) = named_environments::may_remove(&p, name, &domains) {
                    return Ok(Err(refused));
                }
            }
        }
        let mut w = Writes::default();
        let removed = write_removal(&mut w, &p, (name, &env), reason, actor, &routes);
        if w.commit(store).await? {
            return Ok(Ok(removed));
        }
    }
    Ok(Err(Rejection::unavailable(format!("project `{project}` kept changing while `{name}` was removed; try again"))))
}

/// What removing a project did: each environment's removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRemoval {
    pub environments: Vec<EnvironmentRemoved>,
}

/// Removes `project` for good: every environment as `env remove` would
/// (deployments cancelled, containers retired, routes removed), then
/// `ProjectRemoved`, in one transaction. Refused while a mirror builds
/// from it or a domain routes to one of its environments
/// (`named_environments::may_remove_project`).
pub async fn remove_project(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    reason: &str,
) -> Result<Result<ProjectRemoval, Rejection>, LoadError> {
    for _ in 0..ATTEMPTS {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        // The environments before the routes (see `write_removal`).
        let mut envs = Vec::new();
        for name in p.environments.keys() {
            envs.push((name, load::environment(store, project, name).await?));
        }
        let routes = load::routes(store).await?;
        let domains: Vec<(String, String)> =
            routes.domains.iter().filter(|(_, (holder, _))| holder == project).map(|(d, (_, e))| (d.clone(), e.clone())).collect();
        let mirrors: Vec<String> = stored_mirrors(store, &p).await?;
        if let Err(refused) = named_environments::may_remove_project(&p, &mirrors, &domains) {
            return Ok(Err(refused));
        }
        let mut w = Writes::default();
        let mut environments = Vec::new();
        for (name, env) in &envs {
            environments.push(write_removal(&mut w, &p, (name, env), reason, actor, &routes));
        }
        let removed = Event::ProjectRemoved(ProjectRemoved { name: project.into(), reason: reason.into() });
        w.add(&project_stream(project), ExpectedVersion::Exactly(p.version), &removed, Uuid::now_v7(), actor);
        if w.commit(store).await? {
            return Ok(Ok(ProjectRemoval { environments }));
        }
    }
    Ok(Err(Rejection::unavailable(format!("project `{project}` kept changing while it was removed; try again"))))
}

/// The mirrors of `p` that still exist (a removed mirror stays on its
/// original's list).
async fn stored_mirrors(store: &dyn EventStore, p: &Project) -> Result<Vec<String>, StoreError> {
    let mut mirrors = Vec::new();
    for mirror in &p.mirrors {
        if load_project(store, mirror).await?.is_some() {
            mirrors.push(mirror.clone());
        }
    }
    Ok(mirrors)
}

/// Approves the head commit of a fork's pull request preview and requests
/// its deployment, recorded with who approved it. Each new head commit
/// needs its own approval.
pub async fn approve(store: &dyn EventStore, actor: &str, project: &str, environment: &str) -> Result<Result<Uuid, Rejection>, LoadError> {
    let source = crate::requests::source_access(store, project).await?;
    for _ in 0..ATTEMPTS {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        let commit = match preview::approvable(&p, environment) {
            Ok(c) => c,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let mut w = Writes::default();
        let requested = match request_deployment(store, &mut w, &p, environment, &commit, actor, &source).await? {
            Ok(requested) => requested,
            Err(refused) => return Ok(Err(refused)),
        };
        let approved = Event::PreviewApproved(PreviewApproved {
            environment: environment.into(),
            commit,
            approved_by: actor.into(),
            deployment: requested.deployment,
            at: Utc::now(),
        });
        w.add(&project_stream(project), ExpectedVersion::Exactly(p.version), &approved, requested.deployment, actor);
        if w.commit(store).await? {
            return Ok(Ok(requested.deployment));
        }
    }
    Ok(Err(Rejection::unavailable(format!("project `{project}` kept changing while the approval was recorded; try again"))))
}

/// Sets the preview rule for `trigger` (replacing its rule if it had one).
pub async fn set_rule(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    trigger: PreviewTrigger,
    inherit: &str,
    ttl_seconds: Option<u64>,
) -> Outcome<()> {
    let ttl_seconds = ttl_seconds.unwrap_or(preview::DEFAULT_TTL_SECONDS);
    loop {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        if let Err(why) = preview::check_rule(&p, &trigger, inherit, ttl_seconds) {
            return Ok(Err(Rejection::invalid(why)));
        }
        let event = Event::PreviewRuleSet(PreviewRuleSet { trigger: trigger.clone(), inherit: inherit.into(), ttl_seconds });
        let mut w = Writes::default();
        w.add(&project_stream(project), ExpectedVersion::Exactly(p.version), &event, Uuid::now_v7(), actor);
        if w.commit(store).await? {
            return Ok(Ok(()));
        }
    }
}

/// Removes the preview rule for `trigger`; its previews stay until closed,
/// deleted or expired.
pub async fn remove_rule(store: &dyn EventStore, actor: &str, project: &str, trigger: PreviewTrigger) -> Outcome<()> {
    loop {
        let Some(p) = load_project(store, project).await? else { return Ok(Err(no_project(project))) };
        if !p.preview_rules.iter().any(|r| r.trigger == trigger) {
            return Ok(Err(Rejection::not_found(format!("project `{project}` has no preview rule for {trigger}"))));
        }
        let event = Event::PreviewRuleRemoved(PreviewRuleRemoved { trigger: trigger.clone() });
        let mut w = Writes::default();
        w.add(&project_stream(project), ExpectedVersion::Exactly(p.version), &event, Uuid::now_v7(), actor);
        if w.commit(store).await? {
            return Ok(Ok(()));
        }
    }
}

/// Removes every preview whose time to live ran out at `now`; returns
/// (project, environment) of each removed.
pub async fn sweep(store: &dyn EventStore, now: DateTime<Utc>) -> Result<Vec<(String, String)>, LoadError> {
    let mut removed = Vec::new();
    for project in crate::requests::project_names(store).await? {
        let Some(p) = load_project(store, &project).await? else { continue };
        for (name, reason) in preview::expired(&p, now) {
            // Read again inside: a push may have landed since (then it is not expired).
            if let Ok(r) = remove_if_expired(store, &project, &name, &reason, now).await? {
                removed.extend(r.map(|_| (project.clone(), name)));
            }
        }
    }
    Ok(removed)
}

async fn remove_if_expired(
    store: &dyn EventStore,
    project: &str,
    name: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Result<Option<EnvironmentRemoved>, Rejection>, LoadError> {
    for _ in 0..ATTEMPTS {
        let Some(p) = load_project(store, project).await? else { return Ok(Ok(None)) };
        if !preview::expired(&p, now).iter().any(|(n, _)| n == name) {
            return Ok(Ok(None));
        }
        let (env, routes) = read_for_removal(store, project, name).await?;
        let mut w = Writes::default();
        let removed = write_removal(&mut w, &p, (name, &env), reason, ENGINE, &routes);
        if w.commit(store).await? {
            return Ok(Ok(Some(removed)));
        }
    }
    Ok(Err(Rejection::unavailable(format!("project `{project}` kept changing while `{name}` expired"))))
}

/// The engine's sweep: every `every`, remove the previews past their time
/// to live, until `shutdown`. A failed sweep is logged and tried again.
pub async fn run_sweep(store: std::sync::Arc<dyn EventStore>, every: Duration, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
        match sweep(&*store, Utc::now()).await {
            Ok(removed) => {
                for (project, environment) in removed {
                    tracing::info!(%project, %environment, "preview expired and was removed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the preview sweep failed; trying again later"),
        }
    }
}
