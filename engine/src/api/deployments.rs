//! Deployments: request one, list them, read one's folded state, events,
//! timeline and logs, compare two, replay one. The API only records
//! requests; the engine starts each when it heads its environment's queue,
//! so the answer is 202 with the deployments ahead.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, StatusCode};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::{Event, Step};
use slipway_store::read_model::{parse_since, Before, DeploymentQuery, STATUSES};
use slipway_store::{EventStore, RecordedEvent};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::environments::{Accepted, ReplayAccepted};
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, OptionalJson, Params, QueryParams};
use super::{
    load_deployment, load_error, queued_behind, read_position, require_environment, ApiConfig, ApiResult, Caller, ReadPosition, Store,
};
use crate::deployment::Status;
use crate::history::{self, Outcome, Timeline};
use crate::queries::{self, DeploymentSummary};
use crate::requests::{self, DeployRequest};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeployBody {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// "cloud" unless asked ("local"): a server's deployments run their release commands.
    #[schema(value_type = Option<String>)]
    mode: Option<BuildMode>,
    no_cache: bool,
    /// Run the release commands in local mode too.
    migrate: bool,
    dry_run: bool,
    /// Deploy inside a freeze window anyway, for this reason (admin scope).
    override_freeze: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requested {
    deployment: Uuid,
    /// Deployments of the environment that run before this one, oldest first.
    queued_behind: Vec<Uuid>,
}

#[utoipa::path(post, path = "/api/projects/{name}/environments/{env}/deployments", tag = "deployments",
    summary = "Request a deployment",
    description = "It queues behind the environment's unfinished deployments; the engine runs one at a time.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    request_body = DeployBody,
    responses((status = 202, body = Requested), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn request(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    caller: Caller,
    JsonBody(body): JsonBody<DeployBody>,
) -> ApiResult<(StatusCode, [(HeaderName, String); 1], Json<Requested>)> {
    if body.git_ref.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(ApiError::BadRequest("`ref` is empty; leave it out to deploy the project's default branch".into()));
    }
    require_environment(&*store, &name, &env).await?;
    let mode = body.mode.unwrap_or(BuildMode::Cloud);
    let request = DeployRequest {
        project: name.clone(),
        environment: env.clone(),
        git_ref: body.git_ref,
        mode,
        no_cache: body.no_cache,
        run_release: mode == BuildMode::Cloud || body.migrate,
        dry_run: body.dry_run,
    };
    if body.override_freeze.is_some() && caller.scope < slipway_proto::event::TokenScope::Admin {
        return Err(ApiError::Forbidden("overriding a freeze window needs admin scope".into()));
    }
    let id = requests::request_deployment_overriding(&*store, &caller.actor(), request, body.override_freeze.as_deref()).await??;
    let requested = Requested { deployment: id, queued_behind: queued_behind(&*store, &name, &env, id).await? };
    Ok(super::environments::accepted(id, requested))
}

pub(super) fn parse_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|e| {
        ApiError::BadRequest(format!("`{raw}` is not a deployment id ({e}); ids look like 0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f"))
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentView {
    id: Uuid,
    project: String,
    environment: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[schema(value_type = String)]
    mode: BuildMode,
    no_cache: bool,
    run_release: bool,
    dry_run: bool,
    /// "awaiting approval", "queued" (behind another deployment of its
    /// environment; no step dispatched yet), "running", "watching"
    /// (traffic moved, the watch window not yet passed), "succeeded",
    /// "rolling back" or "failed".
    status: String,
    /// Where and why it failed; null unless failed.
    failure: Option<Failure>,
    /// The step dispatched last, while running.
    #[schema(value_type = Option<String>)]
    current_step: Option<Step>,
    /// Steps completed (or skipped), in order.
    #[schema(value_type = Vec<String>)]
    completed: Vec<Step>,
    /// Each step from its first dispatch to its outcome, in pipeline order.
    steps: Vec<StepView>,
    commit: Option<String>,
    image: Option<String>,
    web_port: Option<u16>,
    /// Where the release answers (its loopback port), once started; null
    /// once it failed (its containers are removed).
    url: Option<String>,
    rollback_of: Option<Uuid>,
    promoted_from: Option<Uuid>,
    replay_of: Option<Uuid>,
    requested_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// The number of events folded.
    version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Failure {
    #[schema(value_type = String)]
    step: Step,
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    #[schema(value_type = String)]
    step: Step,
    /// "running", "succeeded", "failed" or "skipped".
    state: String,
    attempts: u32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
}

impl StepView {
    fn of(t: &history::StepTiming) -> StepView {
        let state = match &t.outcome {
            None => "running",
            Some(Outcome::Ok) => "succeeded",
            Some(Outcome::Failed { .. }) => "failed",
            Some(Outcome::Skipped { .. }) => "skipped",
        };
        let finished_at = match (t.dispatched_at, t.duration_ms) {
            (Some(at), Some(ms)) => Some(at + chrono::Duration::milliseconds(ms)),
            _ => None,
        };
        StepView {
            step: t.step,
            state: state.into(),
            attempts: t.attempts,
            started_at: t.dispatched_at,
            finished_at,
            duration_ms: t.duration_ms,
        }
    }
}

#[utoipa::path(get, path = "/api/deployments/{id}", tag = "deployments", summary = "A deployment's state and steps",
    params(("id" = Uuid, Path, description = "The deployment")),
    responses((status = 200, body = DeploymentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(State(store): Store, Params(id): Params<String>) -> ApiResult<Json<DeploymentView>> {
    let t = timeline(&*store, parse_id(&id)?).await?;
    let steps = t.steps.iter().map(StepView::of).collect();
    let (requested_at, finished_at) = (t.summary.started_at, t.summary.finished_at);
    let d = t.deployment;
    // Dispatched and not yet done: what a worker is (or will be) running.
    let current_step = match d.status {
        Status::Running => d.dispatched.map(|(step, _, _)| step).filter(|s| !d.completed.contains(s)),
        _ => None,
    };
    let word = d.status_word();
    let (status, failure) = match d.status {
        Status::Failed { step, reason } => (word, Some(Failure { step, reason })),
        _ => (word, None),
    };
    let c = d.context;
    // A failed deployment's containers are removed: nothing answers there.
    let url = c.web_port.filter(|_| failure.is_none()).map(|p| format!("http://127.0.0.1:{p}/"));
    Ok(Json(DeploymentView {
        id: d.id,
        project: c.project,
        environment: c.environment,
        git_ref: c.git_ref,
        mode: c.mode,
        no_cache: c.no_cache,
        run_release: c.run_release,
        dry_run: c.dry_run,
        status: status.into(),
        failure,
        current_step,
        completed: d.completed,
        steps,
        commit: c.commit,
        image: c.image_id,
        web_port: c.web_port,
        url,
        rollback_of: d.rollback_of,
        promoted_from: d.promoted_from,
        replay_of: d.replay_of.map(|r| r.deployment_id),
        requested_at,
        finished_at,
        version: d.version,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub(super) version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    message_type: String,
    schema_version: u32,
    actor: String,
    recorded_at: DateTime<Utc>,
    hash: String,
    /// As stored. Events carry setting keys and fingerprints, never values.
    #[schema(value_type = Object)]
    payload: Value,
}

#[utoipa::path(get, path = "/api/deployments/{id}/events", tag = "deployments", summary = "A deployment's recorded events",
    params(("id" = Uuid, Path, description = "The deployment")),
    responses((status = 200, body = [EventView]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(State(store): Store, Params(id): Params<String>) -> ApiResult<Json<Vec<EventView>>> {
    let id = parse_id(&id)?;
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    if recorded.is_empty() {
        return Err(ApiError::NotFound(format!("no deployment {id}")));
    }
    Ok(Json(recorded.into_iter().map(EventView::from).collect()))
}

/// One recorded event as `/events` lists it and `/stream` sends it.
impl From<RecordedEvent> for EventView {
    fn from(r: RecordedEvent) -> Self {
        EventView {
            payload: r.envelope.payload_value(),
            version: r.version,
            id: r.envelope.id,
            message_type: r.envelope.message_type,
            schema_version: r.envelope.schema_version,
            actor: r.envelope.actor,
            recorded_at: r.recorded_at,
            hash: r.hash,
        }
    }
}

/// `?limit=N` of the deployment lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// At most this many, newest first (default 20, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub(super) limit: Option<usize>,
}

pub(super) const MAX_LIMIT: usize = 500;

impl Limit {
    pub fn get(&self) -> ApiResult<usize> {
        self.get_or(20)
    }

    /// The limit, or `default` when none was given.
    pub(super) fn get_or(&self, default: usize) -> ApiResult<usize> {
        match self.limit {
            None => Ok(default),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::BadRequest(format!("limit {n} is out of range: give 1 to {MAX_LIMIT}"))),
        }
    }
}

/// A page of deployment summaries from the read model, with its position.
pub(super) async fn page(store: &dyn EventStore, query: &DeploymentQuery) -> ApiResult<(ReadPosition, Json<Vec<DeploymentSummary>>)> {
    let (summaries, at) = queries::deployments(store, query).await??;
    Ok((read_position(at), Json(summaries)))
}

/// `before` of a deployment list: a deployment id or an RFC 3339 time.
fn parse_before(raw: Option<&str>) -> ApiResult<Option<Before>> {
    raw.map(|raw| raw.parse::<Before>().map_err(|why| ApiError::BadRequest(format!("before {why}")))).transpose()
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this project's deployments.
    project: Option<String>,
    /// Only this environment's (needs `project`).
    environment: Option<String>,
    /// Only those with this status: awaiting approval, queued, running, watching, rolling back, succeeded or failed.
    status: Option<String>,
    /// Only those this actor requested, exactly as recorded (`cli:ann`, `token:ci`, `webhook:github:ann`).
    actor: Option<String>,
    /// Only those requested at or after this RFC 3339 time.
    since: Option<String>,
    /// Only those requested before this deployment (its id) or this RFC 3339 time: the next page.
    before: Option<String>,
    /// At most this many, newest first (default 20, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/deployments", tag = "deployments", summary = "Deployments, newest first, a page at a time",
    description = "Read from the deployments read model once it caught up with the log; the `Slipway-Read-Position` header says how far into the log that is.",
    params(ListQuery),
    responses((status = 200, body = [DeploymentSummary]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(State(store): Store, QueryParams(q): QueryParams<ListQuery>) -> ApiResult<(ReadPosition, Json<Vec<DeploymentSummary>>)> {
    let limit = Limit { limit: q.limit }.get()?;
    if let Some(status) = q.status.as_deref().filter(|s| !STATUSES.contains(s)) {
        return Err(ApiError::BadRequest(format!("status `{status}` is not one of: {}", STATUSES.join(", "))));
    }
    let since = q.since.as_deref().map(parse_since).transpose().map_err(|why| ApiError::BadRequest(format!("since {why}")))?;
    let query = DeploymentQuery {
        before: parse_before(q.before.as_deref())?,
        project: q.project,
        environment: q.environment,
        status: q.status,
        actor: q.actor,
        since,
        limit,
    };
    page(&*store, &query).await
}

async fn timeline(store: &dyn EventStore, id: Uuid) -> ApiResult<Timeline> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    history::timeline(&recorded).map_err(load_error)?.ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))
}

#[utoipa::path(get, path = "/api/deployments/{id}/history", tag = "deployments",
    summary = "A deployment's timeline: each event's step, actor and outcome, each step's duration",
    params(("id" = Uuid, Path, description = "The deployment")),
    responses((status = 200, body = Object, description = "summary, steps and entries, as `slipway history --json`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn history(State(store): Store, Params(id): Params<String>) -> ApiResult<Json<Timeline>> {
    Ok(Json(timeline(&*store, parse_id(&id)?).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// Deployment A.
    a: String,
    /// Deployment B.
    b: String,
}

#[utoipa::path(get, path = "/api/diff", tag = "deployments",
    summary = "What changed from deployment A to B",
    description = "Commit, image, settings keys (by fingerprint, no value is read), release commands, step durations.",
    params(DiffQuery),
    responses((status = 200, body = Object, description = "as `slipway diff`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn diff(State(store): Store, QueryParams(q): QueryParams<DiffQuery>) -> ApiResult<Json<history::Diff>> {
    let (a, b) = (parse_id(&q.a)?, parse_id(&q.b)?);
    let (ta, tb) = (timeline(&*store, a).await?, timeline(&*store, b).await?);
    Ok(Json(history::diff(&ta, &tb)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayBody {
    /// Resume at this pipeline step (default: the one that failed; a
    /// succeeded deployment runs again from the start).
    #[schema(value_type = Option<String>)]
    from_step: Option<Step>,
}

#[utoipa::path(post, path = "/api/deployments/{id}/replay", tag = "deployments",
    summary = "Re-run a finished deployment with its recorded inputs",
    params(("id" = Uuid, Path, description = "The deployment")),
    request_body(content = ReplayBody, description = "Optional"),
    responses((status = 202, body = ReplayAccepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "It is still running")))]
pub async fn replay(
    State(store): Store,
    Params(id): Params<String>,
    caller: Caller,
    OptionalJson(body): OptionalJson<ReplayBody>,
) -> ApiResult<Accepted<ReplayAccepted>> {
    let original = load_deployment(&*store, parse_id(&id)?).await?;
    let r = requests::request_replay(&*store, &caller.actor(), original.id, body.from_step).await??;
    ReplayAccepted::new(&*store, &original, r).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CancelBody {
    /// Why, for the record (it becomes part of the failure reason).
    reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelAccepted {
    deployment: Uuid,
}

#[utoipa::path(post, path = "/api/deployments/{id}/cancel", tag = "deployments",
    summary = "Stop a deployment that has not finished",
    description = "The engine fails it at the step it is at and removes its containers; the serving release keeps serving.",
    params(("id" = Uuid, Path, description = "The deployment")),
    request_body(content = CancelBody, description = "Optional"),
    responses((status = 202, body = CancelAccepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "It has finished already")))]
pub async fn cancel(
    State(store): Store,
    Params(id): Params<String>,
    caller: Caller,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<Accepted<CancelAccepted>> {
    let d = load_deployment(&*store, parse_id(&id)?).await?;
    let reason = body.reason.unwrap_or_default();
    requests::request_cancel(&*store, &caller.actor(), d.id, &reason).await??;
    Ok(super::environments::accepted(d.id, CancelAccepted { deployment: d.id }))
}

#[utoipa::path(get, path = "/api/deployments/{id}/logs", tag = "deployments",
    summary = "A deployment's build and release logs, as text",
    description = "Each log the deployment recorded (the build's, each release command's), and a failed step's details and output.",
    params(("id" = Uuid, Path, description = "The deployment")),
    responses((status = 200, content_type = "text/plain", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(store): Store,
    Extension(config): Extension<Arc<ApiConfig>>,
    Params(id): Params<String>,
) -> ApiResult<([(HeaderName, &'static str); 1], String)> {
    let id = parse_id(&id)?;
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    if recorded.is_empty() {
        return Err(ApiError::NotFound(format!("no deployment {id}")));
    }
    let mut text = String::new();
    for r in &recorded {
        let (title, refs): (String, Vec<Option<String>>) = match r.envelope.decode::<Event>() {
            Ok(Event::ImageBuilt(b)) => ("build".into(), vec![b.log_ref]),
            Ok(Event::ReleaseCommandsRan(rc)) => {
                for c in rc.results {
                    section(
                        &mut text,
                        &format!("release command `{}` (exit {})", c.command, c.exit_code),
                        c.log_ref.as_deref(),
                        &config.data_dir,
                    );
                }
                continue;
            }
            Ok(Event::StepFailed(f)) => {
                text.push_str(&format!("== {} failed (attempt {}): {}\n", f.step, f.attempt, f.reason));
                f.details.iter().for_each(|d| text.push_str(&format!("{d}\n")));
                if let Some(evidence) = &f.evidence {
                    section(&mut text, &format!("{} output", f.step), Some(&evidence.path), &config.data_dir);
                }
                continue;
            }
            _ => continue,
        };
        for log_ref in refs {
            section(&mut text, &title, log_ref.as_deref(), &config.data_dir);
        }
    }
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// Appends one log under a `== title` line, or why it cannot be shown.
fn section(text: &mut String, title: &str, log_ref: Option<&str>, data_dir: &Path) {
    text.push_str(&format!("== {title}\n"));
    let Some(log_ref) = log_ref else {
        text.push_str("(no log recorded)\n");
        return;
    };
    match log_path(data_dir, log_ref) {
        None => text.push_str(&format!("(log {log_ref} is outside the data directory; not shown)\n")),
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(log) => {
                text.push_str(&log);
                if !log.ends_with('\n') {
                    text.push('\n');
                }
            }
            Err(e) => text.push_str(&format!("(log {} unavailable here: {e})\n", path.display())),
        },
    }
}

/// Where a recorded log is, as `slipway logs` finds it: an absolute path as
/// is, a relative one under the data directory (or, as the workers wrote it,
/// relative to where they ran). Only a file inside the data directory is
/// shown: a path that climbs out with `..`, an absolute path elsewhere (an
/// event naming `/etc/passwd`), and a symbolic link leading out are
/// refused. The API shows logs, not files.
fn log_path(data_dir: &Path, log_ref: &str) -> Option<PathBuf> {
    let path = Path::new(log_ref);
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let candidate = if path.is_absolute() {
        path.to_path_buf()
    } else {
        let under = data_dir.join(path);
        if under.exists() || !path.exists() {
            under
        } else {
            path.to_path_buf()
        }
    };
    match (std::fs::canonicalize(data_dir), std::fs::canonicalize(&candidate)) {
        // Both exist: compare where they really are (symlinks resolved).
        (Ok(root), Ok(real)) => real.starts_with(&root).then_some(real),
        // The file (or the whole directory) is missing here: say so, but
        // only for a path inside the data directory as written.
        _ => {
            let root = std::path::absolute(data_dir).ok()?;
            std::path::absolute(&candidate).ok().filter(|c| c.starts_with(&root))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_resolve_like_the_cli_and_never_climb() {
        let data = Path::new("/var/lib/slipway");
        assert_eq!(log_path(data, "/var/lib/slipway/logs/x/build.log"), Some(PathBuf::from("/var/lib/slipway/logs/x/build.log")));
        assert_eq!(log_path(data, "logs/x/build.log"), Some(PathBuf::from("/var/lib/slipway/logs/x/build.log")));
        assert_eq!(log_path(data, "logs/../../../etc/passwd"), None);
        assert_eq!(log_path(data, "/var/lib/slipway/../../etc/passwd"), None);
        assert_eq!(log_path(data, "/etc/passwd"), None, "an absolute path elsewhere");
    }

    #[test]
    fn a_log_is_shown_only_from_inside_the_data_directory_symlinks_resolved() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let logs = dir.path().join("logs/d");
        std::fs::create_dir_all(&logs).expect("mkdir");
        std::fs::write(logs.join("build.log"), "built\n").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", logs.join("release-0.log")).expect("symlink");
        let real = std::fs::canonicalize(logs.join("build.log")).expect("canonical");
        assert_eq!(log_path(dir.path(), "logs/d/build.log"), Some(real.clone()));
        assert_eq!(log_path(dir.path(), real.to_str().expect("utf-8")), Some(real));
        assert_eq!(log_path(dir.path(), "logs/d/release-0.log"), None, "a symlink leading out");
        assert_eq!(log_path(dir.path(), "/etc/passwd"), None);
    }

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(Limit { limit: None }.get().ok(), Some(20));
        assert_eq!(Limit { limit: Some(500) }.get().ok(), Some(500));
        assert!(Limit { limit: Some(0) }.get().is_err());
        assert!(Limit { limit: Some(501) }.get().is_err());
    }
}

#[utoipa::path(post, path = "/api/deployments/{id}/approve", tag = "deployments",
    summary = "Approve a deployment waiting for approval",
    description = "Whoever requested it cannot approve it (403), nor can one actor approve it twice.",
    params(("id" = Uuid, Path, description = "The deployment")),
    request_body(content = CancelBody, description = "Optional: the reason"),
    responses((status = 202, body = ApprovalAccepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "It is not waiting for approval")))]
pub async fn approve(
    State(store): Store,
    Params(id): Params<String>,
    caller: Caller,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<Accepted<ApprovalAccepted>> {
    let id = parse_id(&id)?;
    let approvals = crate::protection::approve(&*store, &caller.actor(), id, &body.reason.unwrap_or_default()).await??;
    Ok(super::environments::accepted(id, ApprovalAccepted { deployment: id, approvals }))
}

/// An approval recorded, and how many the deployment has of those it waits for.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalAccepted {
    deployment: Uuid,
    approvals: crate::protection::Approvals,
}

#[utoipa::path(post, path = "/api/deployments/{id}/reject", tag = "deployments",
    summary = "Reject a deployment waiting for approval: it is cancelled",
    params(("id" = Uuid, Path, description = "The deployment")),
    request_body(content = CancelBody, description = "Optional: the reason"),
    responses((status = 202, body = CancelAccepted), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "It is not waiting for approval")))]
pub async fn reject(
    State(store): Store,
    Params(id): Params<String>,
    caller: Caller,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<Accepted<CancelAccepted>> {
    let id = parse_id(&id)?;
    crate::protection::reject(&*store, &caller.actor(), id, &body.reason.unwrap_or_default()).await??;
    Ok(super::environments::accepted(id, CancelAccepted { deployment: id }))
}
