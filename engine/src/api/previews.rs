//! Environments coming and going over HTTP: a project's preview rules
//! (which pull requests or branches get an environment, whose settings it
//! inherits, how long it lives without a push), the approval of a fork's
//! head commit, a named environment added after the project's creation,
//! and the removal of an environment by hand (a preview, or a named one).
//! The recording is `lifecycle`'s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use slipway_proto::event::{PreviewTrigger, TokenScope};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, Params, QueryParams};
use super::{load_error, require_project, ApiResult, Caller, Store};
use crate::lifecycle::{self, Removable};
use crate::preview;
use crate::project::PreviewRule;

/// Which changes a rule is for: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TriggerQuery {
    /// Every pull request (GitLab: merge request) gets `pr-<number>`.
    #[serde(default)]
    pull_requests: bool,
    /// Branches matching this glob (`feature/*`) get an environment named after the branch.
    #[serde(default)]
    branches: Option<String>,
}

impl TriggerQuery {
    fn trigger(self) -> ApiResult<PreviewTrigger> {
        match (self.pull_requests, self.branches) {
            (true, None) => Ok(PreviewTrigger::PullRequests),
            (false, Some(glob)) => Ok(PreviewTrigger::Branches(glob)),
            _ => Err(ApiError::BadRequest("give exactly one of `pull_requests: true` or `branches: <glob>`".into())),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPreviewRule {
    #[serde(default)]
    pull_requests: bool,
    #[serde(default)]
    branches: Option<String>,
    /// The named environment whose settings previews take.
    inherit: String,
    /// Removed after this long without a push: `7d` (the default), `12h`, `30m`, `2s`.
    #[serde(default)]
    ttl: Option<String>,
}

#[utoipa::path(get, path = "/api/projects/{name}/previews", tag = "previews", summary = "The project's preview rules",
    params(("name" = String, Path, description = "The project")),
    responses((status = 200, body = [PreviewRule]), (status = 404, body = ErrorBody)))]
pub async fn rules(State(store): Store, Params(name): Params<String>) -> ApiResult<Json<Vec<PreviewRule>>> {
    Ok(Json(require_project(&*store, &name).await?.preview_rules))
}

#[utoipa::path(put, path = "/api/projects/{name}/previews", tag = "previews",
    summary = "Set a preview rule: each pull request, or each matching branch, gets its own environment",
    description = "Setting a trigger again replaces its rule. Answers with every rule.",
    params(("name" = String, Path, description = "The project")),
    request_body = SetPreviewRule,
    responses((status = 200, body = [PreviewRule]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_rule(
    State(store): Store,
    caller: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<SetPreviewRule>,
) -> ApiResult<Json<Vec<PreviewRule>>> {
    require_project(&*store, &name).await?;
    let trigger = TriggerQuery { pull_requests: body.pull_requests, branches: body.branches }.trigger()?;
    let ttl = body.ttl.as_deref().map(preview::parse_ttl).transpose().map_err(ApiError::BadRequest)?;
    lifecycle::set_rule(&*store, &caller.actor(), &name, trigger, &body.inherit, ttl).await??;
    Ok(Json(require_project(&*store, &name).await?.preview_rules))
}

#[utoipa::path(delete, path = "/api/projects/{name}/previews", tag = "previews",
    summary = "Remove a preview rule (its previews stay until closed, deleted or expired)",
    params(("name" = String, Path, description = "The project"), TriggerQuery),
    responses((status = 200, body = [PreviewRule]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_rule(
    State(store): Store,
    caller: Caller,
    Params(name): Params<String>,
    QueryParams(q): QueryParams<TriggerQuery>,
) -> ApiResult<Json<Vec<PreviewRule>>> {
    require_project(&*store, &name).await?;
    let trigger = q.trigger()?;
    lifecycle::remove_rule(&*store, &caller.actor(), &name, trigger).await??;
    Ok(Json(require_project(&*store, &name).await?.preview_rules))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Approved {
    environment: String,
    /// The deployment of the approved head commit.
    deployment: Uuid,
    approved_by: String,
}

#[utoipa::path(post, path = "/api/projects/{name}/environments/{env}/approve", tag = "previews",
    summary = "Approve the head commit of a fork's pull request preview and deploy it",
    description = "A fork's pull request deploys nothing until someone with deploy scope approves its head commit \
(recorded as `PreviewApproved` with the approver). Each new head commit needs its own approval.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The preview, e.g. pr-42")),
    responses((status = 202, body = Approved), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn approve(
    State(store): Store,
    caller: Caller,
    Params((name, env)): Params<(String, String)>,
) -> ApiResult<(StatusCode, Json<Approved>)> {
    require_project(&*store, &name).await?;
    let actor = caller.actor();
    let deployment = lifecycle::approve(&*store, &actor, &name, &env).await.map_err(load_error)??;
    Ok((StatusCode::ACCEPTED, Json(Approved { environment: env, deployment, approved_by: actor })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    environment: String,
    reason: String,
    /// Deployments cancelled.
    cancelled: Vec<Uuid>,
    /// The release whose containers are retired.
    retired: Option<Uuid>,
    route_removed: bool,
}

/// A named environment to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnvironment {
    /// 1-63 lowercase letters, digits or '-'.
    name: String,
}

#[utoipa::path(post, path = "/api/projects/{name}/environments", tag = "environments",
    summary = "Add a named environment to a project",
    description = "It starts empty: no settings, nothing deployed.",
    params(("name" = String, Path, description = "The project")),
    request_body = NewEnvironment,
    responses((status = 201, description = "Added"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The project has it already, or another pair holds its host name")))]
pub async fn add(
    State(store): Store,
    caller: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<NewEnvironment>,
) -> ApiResult<(StatusCode, [(axum::http::HeaderName, String); 1])> {
    lifecycle::add_environment(&*store, &caller.actor(), &name, &body.name).await.map_err(load_error)??;
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, format!("/api/projects/{name}/environments/{}", body.name))]))
}

#[utoipa::path(delete, path = "/api/projects/{name}/environments/{env}", tag = "previews",
    summary = "Remove an environment: cancel its deployments, retire its containers, remove its route",
    description = "A preview needs deploy scope; a named environment needs admin scope, and is refused (409) \
        while an auto-deploy rule, a preview rule or a preview counts on it or a domain routes to it.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    responses((status = 200, body = Removed), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(State(store): Store, caller: Caller, Params((name, env)): Params<(String, String)>) -> ApiResult<Json<Removed>> {
    let project = require_project(&*store, &name).await?;
    let named = project.environments.contains_key(&env) && !project.previews.contains_key(&env);
    if named && caller.scope < TokenScope::Admin {
        return Err(ApiError::Forbidden(format!(
            "removing the named environment {name} {env} needs scope admin; token `{}` has {}",
            caller.name, caller.scope
        )));
    }
    let removable = if caller.scope >= TokenScope::Admin { Removable::Any } else { Removable::Previews };
    let actor = caller.actor();
    let reason = format!("removed by {actor}");
    let r = lifecycle::remove_environment(&*store, &actor, &name, &env, &reason, removable).await.map_err(load_error)??;
    Ok(Json(Removed::from(r)))
}

impl From<slipway_proto::event::EnvironmentRemoved> for Removed {
    fn from(r: slipway_proto::event::EnvironmentRemoved) -> Removed {
        Removed { environment: r.name, reason: r.reason, cancelled: r.cancelled, retired: r.retired, route_removed: r.route_removed }
    }
}

/// What removing a project did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectRemoved {
    project: String,
    /// Each environment's removal.
    environments: Vec<Removed>,
}

#[utoipa::path(delete, path = "/api/projects/{name}", tag = "projects",
    summary = "Remove a project for good: every environment's deployments cancelled, containers retired, route removed",
    description = "Refused (409) while a mirror builds from it or a domain routes to one of its environments. \
        Its history stays in the log, and its name is not created again.",
    params(("name" = String, Path, description = "The project")),
    responses((status = 200, body = ProjectRemoved), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_project(State(store): Store, caller: Caller, Params(name): Params<String>) -> ApiResult<Json<ProjectRemoved>> {
    let actor = caller.actor();
    let reason = format!("removed by {actor}");
    let r = lifecycle::remove_project(&*store, &actor, &name, &reason).await.map_err(load_error)??;
    Ok(Json(ProjectRemoved { project: name, environments: r.environments.into_iter().map(Removed::from).collect() }))
}
