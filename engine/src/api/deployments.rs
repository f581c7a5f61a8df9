//! Deployments: request one, read its folded state, read its events. The
//! API only records the request; the engine starts it when it heads its
//! environment's queue, so the answer is 202 with the deployments ahead.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderName, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::Step;
use slipway_store::RecordedEvent;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Actor, JsonBody, Params};
use super::{load_deployment, load_environment, require_environment, ApiResult, Store};
use crate::deployment::Status;
use crate::requests::{self, DeployRequest};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployBody {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// Cloud unless asked: a server's deployments run their release commands.
    mode: Option<BuildMode>,
    no_cache: bool,
    /// Run the release commands in local mode too.
    migrate: bool,
    dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Requested {
    deployment: Uuid,
    /// Deployments of the environment that run before this one, oldest first.
    queued_behind: Vec<Uuid>,
}

pub async fn request(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    Actor(actor): Actor,
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
    let id = requests::request_deployment(&*store, &actor, request).await??;
    let queue = load_environment(&*store, &name, &env).await?.queue;
    // Gone from the queue already (it finished): nothing is ahead of it.
    let ahead = queue.iter().position(|d| *d == id).unwrap_or(0);
    let requested = Requested { deployment: id, queued_behind: queue[..ahead].to_vec() };
    Ok((StatusCode::ACCEPTED, [(LOCATION, format!("/api/deployments/{id}"))], Json(requested)))
}

pub(super) fn parse_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|e| {
        ApiError::BadRequest(format!(
            "`{raw}` is not a deployment id ({e}); ids look like 0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f"
        ))
    })
}

#[derive(Debug, Serialize)]
pub struct DeploymentView {
    id: Uuid,
    project: String,
    environment: String,
    #[serde(rename = "ref")]
    git_ref: String,
    mode: BuildMode,
    no_cache: bool,
    run_release: bool,
    dry_run: bool,
    /// "running", "succeeded" or "failed".
    status: &'static str,
    /// Where and why it failed; null unless failed.
    failure: Option<Failure>,
    /// The step dispatched last, while running.
    current_step: Option<Step>,
    /// Steps completed (or skipped), in order.
    completed: Vec<Step>,
    commit: Option<String>,
    image: Option<String>,
    web_port: Option<u16>,
    /// The number of events folded.
    version: u64,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    step: Step,
    reason: String,
}

pub async fn show(State(store): Store, Params(id): Params<String>) -> ApiResult<Json<DeploymentView>> {
    let d = load_deployment(&*store, parse_id(&id)?).await?;
    // Dispatched and not yet done: what a worker is (or will be) running.
    let current_step = match d.status {
        Status::Running => d.dispatched.map(|(step, _, _)| step).filter(|s| !d.completed.contains(s)),
        _ => None,
    };
    let (status, failure) = match d.status {
        Status::Running => ("running", None),
        Status::Succeeded => ("succeeded", None),
        Status::Failed { step, reason } => ("failed", Some(Failure { step, reason })),
    };
    let c = d.context;
    Ok(Json(DeploymentView {
        id: d.id,
        project: c.project,
        environment: c.environment,
        git_ref: c.git_ref,
        mode: c.mode,
        no_cache: c.no_cache,
        run_release: c.run_release,
        dry_run: c.dry_run,
        status,
        failure,
        current_step,
        completed: d.completed,
        commit: c.commit,
        image: c.image_id,
        web_port: c.web_port,
        version: d.version,
    }))
}

#[derive(Debug, Serialize)]
pub struct EventView {
    version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    message_type: String,
    schema_version: u32,
    actor: String,
    recorded_at: DateTime<Utc>,
    hash: String,
    /// As stored. Events carry setting keys and fingerprints, never values.
    payload: Value,
}

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
