//! The read views that the HTTP API and the CLI both show — an
//! environment's status, the project list, deployment lists, an
//! environment's releases — each as one query function and one response
//! type. The API serializes the type, the local CLI prints it (text, or the
//! same JSON with `--json`), and the `--server` CLI deserializes it from the
//! API: one place per view, so the three cannot drift apart (they did:
//! `active.web` against `active.web_port`).
//!
//! Queries refuse an unknown project or environment (`Rejection::NotFound`);
//! a store or history failure is the caller's `LoadError` / `StoreError`.
//! Fields added later are `#[serde(default)]`, so a client reads an older
//! server's answer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_store::read_model::{DeploymentQuery, DeploymentRow, ProjectRow};
use slipway_store::{EventStore, Position, StoreError};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::certificates::{Certificates, DomainCertificate};
use crate::deployment::failure_text;
use crate::history::Release;
use crate::limits::{release_limits, ReleaseLimits};
use crate::load::{self, LoadError};
use crate::project::Project;
use crate::rejection::Rejection;
use crate::{projector, requests};

/// What an environment serves and queues (`slipway status`,
/// `GET /api/projects/{name}/environments/{env}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentStatus {
    pub project: String,
    pub environment: String,
    /// Where the serving release answers: through a registered router
    /// (`http://<project>-<env>.<domain>:PORT/`), else its loopback port.
    pub url: Option<String>,
    /// The release serving now: the last deployment that succeeded.
    /// (`last_succeeded` is the name servers before the contract used.)
    #[serde(alias = "last_succeeded")]
    pub active: Option<ActiveRelease>,
    /// The environment's address at each registered router.
    #[serde(default)]
    pub routes: Vec<RouterUrl>,
    /// Deployments not finished, oldest first; the first one runs.
    #[serde(default)]
    pub queue: Vec<Uuid>,
    /// Where the first of the queue stands: `awaiting approval`, `queued`
    /// (its first step not dispatched yet), `running`, `watching` (traffic
    /// moved, the watch window not yet passed) or `rolling back`.
    #[serde(default)]
    pub running_status: Option<String>,
    /// The environment's custom domains, each with its certificate (never a key).
    #[serde(default)]
    pub domains: Vec<CertificateView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActiveRelease {
    pub deployment: Uuid,
    pub commit: Option<String>,
    pub image: Option<String>,
    /// The loopback port of its web container on its Docker host (where
    /// the host agent moved it, if it did).
    pub web_port: Option<u16>,
    /// The resource limits it runs under, from its recorded `slipway.toml`:
    /// `{"web": {"memory": "256m", "cpus": "0.5", "pids": 100}, "processes":
    /// {"worker": {}}}` (an empty object: no limit). Absent from servers
    /// that predate limits.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub limits: Option<ReleaseLimits>,
    /// What its containers do now, as the host agent saw it.
    #[serde(default)]
    pub live: Option<LiveStatus>,
    /// Where each of its web replicas answers, as the routers route to it:
    /// one `address:port` per replica (on the swarm runtime, the node each
    /// runs on). Empty from servers that predate it.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// On the swarm runtime, each of its services as the swarm watcher last
    /// recorded it: replicas running, asked for, and those no node can take
    /// with Swarm's reason. Empty on one engine, until the watcher records
    /// anything, and from servers that predate it.
    #[serde(default)]
    pub replicas: Vec<ServiceReplicas>,
}

/// One Swarm service of the serving release (`ReplicasObserved`, last recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceReplicas {
    pub service: String,
    /// `web` or the process type (empty when recorded before roles were).
    #[serde(default)]
    pub role: String,
    pub running: u32,
    pub wanted: u32,
    /// Replicas Swarm wants but no node can take (pending), and its reason.
    #[serde(default)]
    pub unplaced: u32,
    #[serde(default)]
    pub reason: String,
    /// Replica failures within a minute while they crash-loop; 0 otherwise.
    #[serde(default)]
    pub crash_loop: u32,
}

impl ServiceReplicas {
    /// Its role, or the service's name when recorded before roles were.
    fn label(&self) -> &str {
        if self.role.is_empty() {
            &self.service
        } else {
            &self.role
        }
    }

    /// `2 of 3 web replicas cannot be placed: <Swarm's reason>`, when any cannot.
    pub fn unplaced_text(&self) -> Option<String> {
        let role = self.label();
        (self.unplaced > 0).then(|| format!("{} of {} {role} replicas cannot be placed: {}", self.unplaced, self.wanted, self.reason))
    }

    /// `web replicas crash-looping: 4 failures within a minute, 2 of 3 running`, while they do.
    pub fn crash_loop_text(&self) -> Option<String> {
        let role = self.label();
        (self.crash_loop > 0).then(|| {
            format!(
                "{role} replicas crash-looping: {} failures within a minute, {} of {} running",
                self.crash_loop, self.running, self.wanted
            )
        })
    }
}

/// The live state the swarm's replicas give the release, when they give
/// one: `down` when Swarm can place none of a service's replicas,
/// `crash_looping` while a service's replicas crash-loop, `pending` when
/// it cannot place some; `None` otherwise (the host agent's state stands).
pub fn replicas_state(replicas: &[ServiceReplicas]) -> Option<&'static str> {
    let stranded = replicas.iter().filter(|r| r.unplaced > 0);
    let unplaced = stranded.map(|r| if r.running == 0 { "down" } else { "pending" }).min_by_key(|s| *s != "down");
    match unplaced {
        Some("down") => Some("down"),
        _ if replicas.iter().any(|r| r.crash_loop > 0) => Some("crash_looping"),
        other => other,
    }
}

/// The serving release's live state (folded from `ContainerSupervised`):
/// its worst container's state, the restarts and the last exit code seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveStatus {
    /// `running`, `unhealthy`, `restarting`, `crash_looping` or `down`; on
    /// the swarm runtime also `pending` (some replicas no node can take;
    /// `down` when a service has none running: `active.replicas` says why).
    pub state: String,
    pub restarts: u32,
    pub last_exit: Option<i64>,
    #[serde(default)]
    pub oom_kills: u32,
}

impl LiveStatus {
    /// One line: `crash-looping, 12 restarts, last exit 3, 1 OOM kill`.
    pub fn describe(&self) -> String {
        let plural = |n: u32| if n == 1 { "" } else { "s" };
        let mut text = format!("{}, {} restart{}", self.state.replace('_', "-"), self.restarts, plural(self.restarts));
        if let Some(code) = self.last_exit {
            text.push_str(&format!(", last exit {code}"));
        }
        if self.oom_kills > 0 {
            text.push_str(&format!(", {} OOM kill{}", self.oom_kills, plural(self.oom_kills)));
        }
        text
    }
}

/// An environment's address at one router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouterUrl {
    /// `http://<project>-<env>.<domain>:<port>/`
    pub url: String,
    /// The router's id.
    pub router: String,
}

/// A custom domain and its certificate, as `status` and `cert list` show
/// it: dates, source, fingerprint and renewal, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateView {
    pub domain: String,
    /// RFC 3339; none without a certificate.
    pub not_after: Option<String>,
    /// `acme` or `uploaded`.
    pub source: Option<String>,
    pub fingerprint: Option<String>,
    /// When it renews, or why renewing fails.
    pub renewal: String,
    pub failing: bool,
    /// Plain HTTP for the domain is redirected to HTTPS (once it has a
    /// certificate); `slipway domain redirect` turns it off.
    #[serde(default = "redirected")]
    pub redirect: bool,
}

fn redirected() -> bool {
    true
}

impl CertificateView {
    /// `routed`: an environment has the domain; `now` tells an expired
    /// certificate.
    pub fn of(domain: &str, state: &DomainCertificate, certificates: &Certificates, routed: bool) -> CertificateView {
        CertificateView {
            domain: domain.to_string(),
            not_after: state.current.as_ref().map(|c| crate::certificates::seconds(c.not_after)),
            source: state.source().map(str::to_string),
            fingerprint: state.current.as_ref().map(|c| c.fingerprint.clone()),
            renewal: state.renewal(domain, chrono::Utc::now(), routed),
            failing: state.failure.is_some(),
            redirect: certificates.redirects.get(domain).copied().unwrap_or(true),
        }
    }
}

/// The project, if it has the environment; else what does exist.
async fn environment_of(store: &dyn EventStore, project: &str, env: &str) -> Result<Result<Project, Rejection>, StoreError> {
    requests::project_environment(store, project, env).await
}

/// Where each registered router serves an environment.
pub async fn router_urls(store: &dyn EventStore, project: &str, env: &str) -> Result<Vec<RouterUrl>, LoadError> {
    Ok(urls_at(&load::routers(store).await?, project, env))
}

fn urls_at(routers: &std::collections::BTreeMap<String, slipway_proto::event::RouterStarted>, project: &str, env: &str) -> Vec<RouterUrl> {
    routers
        .values()
        .map(|r| {
            let port = r.listen.rsplit(':').next().unwrap_or("80");
            RouterUrl { url: format!("http://{project}-{env}.{}:{port}/", r.domain), router: r.router_id.clone() }
        })
        .collect()
}

/// What every environment's status reads alike (the routes, the
/// certificates, the routers): read once for a page of environments.
pub struct Surroundings {
    routes: crate::routes::Routes,
    certs: crate::certificates::Certificates,
    routers: std::collections::BTreeMap<String, slipway_proto::event::RouterStarted>,
}

impl Surroundings {
    pub async fn load(store: &dyn EventStore) -> Result<Surroundings, LoadError> {
        Ok(Surroundings {
            routes: load::routes(store).await?,
            certs: crate::certificates::load(store).await?,
            routers: load::routers(store).await?,
        })
    }
}

/// What `project`'s `env` serves and queues now.
pub async fn status(store: &dyn EventStore, project: &str, env: &str) -> Result<Result<EnvironmentStatus, Rejection>, LoadError> {
    if let Err(rejection) = environment_of(store, project, env).await? {
        return Ok(Err(rejection));
    }
    let around = Surroundings::load(store).await?;
    Ok(Ok(status_in(store, project, env, &around).await?))
}

/// `status` of an environment known to exist, with the surroundings read.
pub async fn status_in(store: &dyn EventStore, project: &str, env: &str, around: &Surroundings) -> Result<EnvironmentStatus, LoadError> {
    let state = load::environment(store, project, env).await?;
    let recorded = &around.routes;
    let active = match state.last_succeeded() {
        Some(id) => {
            let d = load::deployment(store, id).await?.ok_or_else(|| missing(id))?;
            let replicas: Vec<ServiceReplicas> = state
                .replicas
                .iter()
                .map(|(service, r)| ServiceReplicas {
                    service: service.clone(),
                    role: r.role.clone(),
                    running: r.running,
                    wanted: r.wanted,
                    unplaced: r.unplaced,
                    reason: r.reason.clone(),
                    crash_loop: r.crash_loop,
                })
                .collect();
            let live = state.shown_live().map(|l| LiveStatus {
                state: replicas_state(&replicas)
                    .map(str::to_string)
                    .unwrap_or_else(|| serde_json::to_value(l.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
                restarts: l.restarts,
                last_exit: l.last_exit,
                oom_kills: l.oom_kills,
            });
            // Where it answers now (the host agent follows a new port).
            let web_port = state.active.as_ref().and_then(|a| a.web_port()).or(d.context.web_port);
            let limits = Some(release_limits(&d.context.config));
            let upstreams = recorded
                .by_environment
                .get(&(project.to_string(), env.to_string()))
                .filter(|route| route.deployment == Some(id))
                .map(|route| route.upstreams.clone())
                .unwrap_or_default();
            Some(ActiveRelease {
                deployment: id,
                commit: d.context.commit,
                image: d.context.image_id,
                web_port,
                limits,
                live,
                upstreams,
                replicas,
            })
        }
        None => None,
    };
    let routes = urls_at(&around.routers, project, env);
    let url = match &active {
        None => None,
        Some(a) => routes.first().map(|r| r.url.clone()).or_else(|| a.web_port.map(|p| format!("http://127.0.0.1:{p}/"))),
    };
    let running_status = match state.queue.first() {
        Some(id) => Some(load::deployment(store, *id).await?.ok_or_else(|| missing(*id))?.status_word().to_string()),
        None => None,
    };
    let certs = &around.certs;
    let domains = crate::domains::of_environment(&recorded.domains, project, env)
        .into_iter()
        .map(|d| CertificateView::of(&d, &certs.by_domain.get(&d).cloned().unwrap_or_default(), certs, true))
        .collect();
    Ok(EnvironmentStatus {
        project: project.into(),
        environment: env.into(),
        url,
        active,
        routes,
        queue: state.queue,
        running_status,
        domains,
    })
}

/// A deployment the environment names but whose stream is empty: the log
/// is damaged (streams are never removed).
fn missing(id: Uuid) -> LoadError {
    LoadError::Store(StoreError::Corrupt {
        stream: slipway_proto::event::deployment_stream(id),
        version: 0,
        reason: "an environment names this deployment, but its stream is empty".into(),
    })
}

/// One project in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectSummary {
    pub name: String,
    /// The Git repository (a mirror's is its original's).
    pub repo: String,
    /// The project this one mirrors, if any.
    pub mirror_of: Option<String>,
    pub default_branch: String,
    pub environments: Vec<String>,
}

impl From<&Project> for ProjectSummary {
    fn from(p: &Project) -> Self {
        ProjectSummary {
            name: p.name.clone(),
            repo: p.repository.clone(),
            mirror_of: p.mirror_of.clone(),
            default_branch: p.default_branch.clone(),
            environments: p.environments.keys().cloned().collect(),
        }
    }
}

impl From<ProjectRow> for ProjectSummary {
    fn from(p: ProjectRow) -> Self {
        ProjectSummary {
            name: p.name,
            repo: p.repository,
            mirror_of: p.mirror_of,
            default_branch: p.default_branch,
            environments: p.environments,
        }
    }
}

/// Projects by name after `after`, at most `limit`, from the read model
/// (caught up first), and how far into the log it answered from.
pub async fn projects(store: &dyn EventStore, after: Option<&str>, limit: usize) -> Result<(Vec<ProjectSummary>, Position), StoreError> {
    let (rows, at) = projector::projects(store, after, limit).await?;
    Ok((rows.into_iter().map(ProjectSummary::from).collect(), at))
}

/// One deployment in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentSummary {
    pub deployment: Uuid,
    pub project: String,
    pub environment: String,
    /// The ref it was asked to deploy.
    #[serde(rename = "ref", default)]
    pub git_ref: String,
    /// `awaiting approval`, `queued`, `running`, `watching`, `rolling
    /// back`, `succeeded`, `failed at STEP: REASON` or `failed before it
    /// started: REASON`.
    pub status: String,
    /// Where and why it failed (also while rolling back).
    #[serde(default)]
    pub failure: Option<Failure>,
    pub commit: Option<String>,
    pub image: Option<String>,
    pub requested_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub total_ms: Option<i64>,
    #[serde(default)]
    pub rollback_of: Option<Uuid>,
    #[serde(default)]
    pub promoted_from: Option<Uuid>,
    /// The deployment it replays (`slipway replay`).
    #[serde(default)]
    pub replay_of: Option<Uuid>,
    /// A dry run: nothing was started or routed.
    #[serde(default)]
    pub dry_run: bool,
}

/// Where and why a deployment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    /// Absent for one that failed before its first step (rejected,
    /// cancelled while it waited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub reason: String,
}

impl From<DeploymentRow> for DeploymentSummary {
    fn from(d: DeploymentRow) -> Self {
        let status = match (&d.failed_reason, d.finished_at) {
            (Some(reason), Some(_)) if d.status == "failed" => failure_text(d.failed_step.as_deref(), reason),
            _ => d.status,
        };
        let failure = d.failed_reason.map(|reason| Failure { step: d.failed_step, reason });
        DeploymentSummary {
            deployment: d.id,
            project: d.project,
            environment: d.environment,
            git_ref: d.git_ref,
            status,
            failure,
            commit: d.commit,
            image: d.image,
            requested_at: Some(d.requested_at),
            finished_at: d.finished_at,
            total_ms: d.finished_at.map(|f| (f - d.requested_at).num_milliseconds()),
            rollback_of: d.rollback_of,
            promoted_from: d.promoted_from,
            replay_of: d.replay_of,
            dry_run: d.dry_run,
        }
    }
}

/// A page of deployments, newest first, from the read model (caught up
/// first), and how far into the log it answered from. A query naming a
/// project (and environment) that does not exist is refused.
pub async fn deployments(
    store: &dyn EventStore,
    query: &DeploymentQuery,
) -> Result<Result<(Vec<DeploymentSummary>, Position), Rejection>, StoreError> {
    match (&query.project, &query.environment) {
        (Some(p), e) => {
            if let Err(rejection) = requests::scope_exists(store, p, e.as_deref()).await? {
                return Ok(Err(rejection));
            }
        }
        (None, Some(_)) => return Ok(Err(Rejection::invalid("`environment` needs `project` too"))),
        (None, None) => {}
    }
    // A page before a deployment that does not exist would read as the end
    // of the list.
    if let Some(slipway_store::read_model::Before::Deployment(id)) = query.before {
        if store.stream_version(&slipway_proto::event::deployment_stream(id)).await? == 0 {
            return Ok(Err(Rejection::not_found(format!("no deployment {id} to page before"))));
        }
    }
    let (rows, at) = projector::deployments(store, query).await?;
    Ok(Ok((rows.into_iter().map(DeploymentSummary::from).collect(), at)))
}

/// An environment's releases, newest first: what rollback can go back to.
pub async fn releases(store: &dyn EventStore, project: &str, env: &str) -> Result<Result<Vec<Release>, Rejection>, LoadError> {
    if let Err(rejection) = environment_of(store, project, env).await? {
        return Ok(Err(rejection));
    }
    Ok(Ok(load::releases(store, project, env).await?))
}

/// Every domain with a certificate or added to an environment, with its
/// certificate (never a key), as `cert list` and `GET /api/certificates`
/// show them; sorted by domain. A domain with neither (its certificate
/// removed, no environment has it) is not listed.
pub async fn certificates(store: &dyn EventStore) -> Result<Vec<CertificateView>, LoadError> {
    let certs = crate::certificates::load(store).await?;
    let routes = load::routes(store).await?;
    let with_certificate = certs.by_domain.iter().filter(|(_, c)| c.current.is_some() || c.failure.is_some()).map(|(d, _)| d);
    let domains: std::collections::BTreeSet<&String> = with_certificate.chain(routes.domains.keys()).collect();
    Ok(domains
        .into_iter()
        .map(|d| {
            let routed = routes.domains.contains_key(d);
            CertificateView::of(d, &certs.by_domain.get(d).cloned().unwrap_or_default(), &certs, routed)
        })
        .collect())
}

/// How workers reach a project's repository, as `project show` and
/// `GET /api/projects/{name}` show it: credential names (never values),
/// trusted SSH host keys, submodules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SourceView {
    pub credentials: Vec<String>,
    pub known_hosts: Vec<String>,
    pub submodules: bool,
    /// The public half of a deploy key Slipway made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_key: Option<String>,
}

/// A preview environment there is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreviewView {
    pub name: String,
    /// The head commit last pushed.
    pub head: Option<String>,
    /// That head is a fork's, not approved yet: not what the preview serves.
    #[serde(default)]
    pub awaiting_approval: bool,
}

/// A project's source access, shown (pure).
pub fn source_view(p: &Project) -> SourceView {
    SourceView {
        credentials: p.source.credentials.keys().cloned().collect(),
        known_hosts: p.source.known_hosts.clone(),
        submodules: p.source.submodules,
        deploy_key: p.source.deploy_key.clone(),
    }
}

/// A project's previews, shown (pure).
pub fn previews(p: &Project) -> Vec<PreviewView> {
    p.previews
        .iter()
        .map(|(name, preview)| PreviewView {
            name: name.clone(),
            head: preview.head.clone(),
            awaiting_approval: crate::preview::approvable(p, name).is_ok(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_status_reads_like_the_host_agent_s_line() {
        let live = LiveStatus { state: "crash_looping".into(), restarts: 12, last_exit: Some(3), oom_kills: 1 };
        assert_eq!(live.describe(), "crash-looping, 12 restarts, last exit 3, 1 OOM kill");
        let calm = LiveStatus { state: "running".into(), restarts: 1, last_exit: None, oom_kills: 0 };
        assert_eq!(calm.describe(), "running, 1 restart");
    }

    #[test]
    fn replicas_no_node_can_take_show_as_pending_or_down_with_swarm_s_reason() {
        let web = ServiceReplicas {
            service: "slipway-shop-live-0123-web".into(),
            role: "web".into(),
            running: 1,
            wanted: 3,
            unplaced: 2,
            reason: "no suitable node (scheduling constraints not satisfied on 3 nodes)".into(),
            crash_loop: 0,
        };
        assert_eq!(
            web.unplaced_text().as_deref(),
            Some("2 of 3 web replicas cannot be placed: no suitable node (scheduling constraints not satisfied on 3 nodes)")
        );
        let placed = ServiceReplicas { running: 3, unplaced: 0, reason: String::new(), ..web.clone() };
        assert_eq!(placed.unplaced_text(), None);
        assert_eq!(replicas_state(std::slice::from_ref(&placed)), None, "every replica placed: the host agent's state stands");
        assert_eq!(replicas_state(&[placed.clone(), web.clone()]), Some("pending"));
        let worker = ServiceReplicas { service: "w".into(), role: String::new(), running: 0, wanted: 1, unplaced: 1, ..web.clone() };
        assert_eq!(replicas_state(&[web, worker.clone(), placed.clone()]), Some("down"), "a service with nothing running");
        assert!(worker.unplaced_text().is_some_and(|t| t.starts_with("1 of 1 w replicas")), "{:?}", worker.unplaced_text());
        // Crash-looping replicas: below a service with none placed, above some pending.
        let looping = ServiceReplicas { running: 2, unplaced: 0, reason: String::new(), crash_loop: 4, ..placed.clone() };
        assert_eq!(looping.crash_loop_text().as_deref(), Some("web replicas crash-looping: 4 failures within a minute, 2 of 3 running"));
        assert_eq!(placed.crash_loop_text(), None);
        assert_eq!(replicas_state(&[placed.clone(), looping.clone()]), Some("crash_looping"));
        assert_eq!(replicas_state(&[looping.clone(), ServiceReplicas { running: 1, ..worker.clone() }]), Some("crash_looping"));
        assert_eq!(replicas_state(&[looping, worker]), Some("down"));
    }

    /// The `--server` CLI prints what it deserialized: every field must
    /// come back as it was sent, or local and remote JSON would differ.
    #[test]
    fn a_status_and_a_deployment_survive_the_round_trip_through_json() {
        let limits: ReleaseLimits =
            serde_json::from_value(serde_json::json!({"web": {"memory": "256m"}, "processes": {"worker": {"pids": 20}}}))
                .unwrap_or_else(|e| panic!("{e}"));
        let status = EnvironmentStatus {
            project: "shop".into(),
            environment: "live".into(),
            url: Some("http://shop-live.localhost:7880/".into()),
            active: Some(ActiveRelease {
                deployment: Uuid::now_v7(),
                commit: Some("abc".into()),
                image: Some("sha256:1".into()),
                web_port: Some(4100),
                limits: Some(limits),
                live: Some(LiveStatus { state: "crash_looping".into(), restarts: 2, last_exit: Some(1), oom_kills: 1 }),
                upstreams: vec!["10.231.0.2:30001".into(), "10.231.0.3:30001".into()],
                replicas: vec![ServiceReplicas {
                    service: "slipway-shop-live-web".into(),
                    role: "web".into(),
                    running: 1,
                    wanted: 3,
                    unplaced: 2,
                    reason: "no suitable node (scheduling constraints not satisfied on 3 nodes)".into(),
                    crash_loop: 5,
                }],
            }),
            routes: vec![RouterUrl { url: "http://shop-live.localhost:7880/".into(), router: "r1".into() }],
            queue: vec![Uuid::now_v7(), Uuid::now_v7()],
            running_status: Some("watching".into()),
            domains: vec![CertificateView {
                domain: "shop.example".into(),
                not_after: Some("2030-01-01T00:00:00+00:00".into()),
                source: Some("acme".into()),
                fingerprint: Some("cert-sha256:00".into()),
                renewal: "renews from 2029-11-01T00:00:00+00:00".into(),
                failing: false,
                redirect: true,
            }],
        };
        let json = serde_json::to_value(&status).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::from_value::<EnvironmentStatus>(json.clone()).ok(), Some(status));
        assert!(json["active"].get("web").is_none() && json["active"]["web_port"] == 4100, "one name for the port: {json}");
        let deployment = DeploymentSummary {
            deployment: Uuid::now_v7(),
            project: "shop".into(),
            environment: "live".into(),
            git_ref: "main".into(),
            status: "failed at build: no Dockerfile".into(),
            failure: Some(Failure { step: Some("build".into()), reason: "no Dockerfile".into() }),
            commit: None,
            image: None,
            requested_at: Some(Utc::now()),
            finished_at: Some(Utc::now()),
            total_ms: Some(12),
            rollback_of: None,
            promoted_from: Some(Uuid::now_v7()),
            replay_of: None,
            dry_run: true,
        };
        let json = serde_json::to_value(&deployment).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["ref"], "main");
        assert_eq!(serde_json::from_value::<DeploymentSummary>(json).ok(), Some(deployment));
    }

    #[test]
    fn a_status_from_an_older_server_is_read() {
        let older = serde_json::json!({
            "project": "shop", "environment": "live", "url": null,
            "last_succeeded": { "deployment": Uuid::nil(), "commit": "abc", "image": null, "web_port": 4100 },
        });
        let status: EnvironmentStatus = serde_json::from_value(older).unwrap_or_else(|e| panic!("{e}"));
        let active = status.active.unwrap_or_else(|| panic!("no active release"));
        assert_eq!((active.web_port, active.limits, status.queue.len()), (Some(4100), None, 0));
    }
}
