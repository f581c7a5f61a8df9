//! An environment's protections over HTTP: how many approvals a deployment
//! to it waits for, and its freeze windows (`protection.rs` records them;
//! the decider applies them). Admin scope: they decide who may deploy.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, Params, QueryParams};
use super::{require_environment, ApiResult, Caller, Store};
use crate::protection;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// Approvals a deployment waits for, each by someone other than its requester (0: none).
    approvals: u32,
}

#[utoipa::path(put, path = "/api/projects/{name}/environments/{env}/protection", tag = "environments",
    summary = "Require approvals for deployments to an environment",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    request_body = Protection,
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn protect(
    State(store): Store,
    caller: Caller,
    Params((name, env)): Params<(String, String)>,
    JsonBody(body): JsonBody<Protection>,
) -> ApiResult<StatusCode> {
    require_environment(&*store, &name, &env).await?;
    protection::protect(&*store, &caller.actor(), &name, &env, body.approvals).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// When each window starts: five cron fields, in UTC (`0 18 * * FRI`).
    schedule: String,
    /// How long each lasts: `64h`, `30m`, `2d`.
    duration: String,
}

#[utoipa::path(put, path = "/api/projects/{name}/environments/{env}/freezes", tag = "environments",
    summary = "Add a freeze window: deployments starting inside it are refused unless an admin overrides it",
    description = "Setting a schedule again gives it the new duration.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    request_body = FreezeWindow,
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_freeze(
    State(store): Store,
    caller: Caller,
    Params((name, env)): Params<(String, String)>,
    JsonBody(body): JsonBody<FreezeWindow>,
) -> ApiResult<StatusCode> {
    require_environment(&*store, &name, &env).await?;
    let seconds = protection::parse_duration(&body.duration).map_err(|e| ApiError::BadRequest(format!("duration: {e}")))?;
    protection::set_freeze(&*store, &caller.actor(), &name, &env, &body.schedule, seconds).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ScheduleQuery {
    /// The window's schedule, exactly as set.
    schedule: String,
}

#[utoipa::path(delete, path = "/api/projects/{name}/environments/{env}/freezes", tag = "environments",
    summary = "Remove a freeze window",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment"), ScheduleQuery),
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_freeze(
    State(store): Store,
    caller: Caller,
    Params((name, env)): Params<(String, String)>,
    QueryParams(q): QueryParams<ScheduleQuery>,
) -> ApiResult<StatusCode> {
    require_environment(&*store, &name, &env).await?;
    protection::remove_freeze(&*store, &caller.actor(), &name, &env, &q.schedule).await??;
    Ok(StatusCode::NO_CONTENT)
}
