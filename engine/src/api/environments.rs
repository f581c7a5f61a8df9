//! One environment of a project: what it serves and queues, its settings
//! (secret values are never read, only shown as "(secret)"), its releases and
//! deployments, and the requests that act on what it serves — rollback,
//! migrate, and promotion to another environment. The requests are
//! `requests`', and their refusals carry their kind (nothing to roll back
//! to, nothing serving: a conflict), so handlers only pass them on.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderName, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use slipway_proto::event::BuildMode;
use utoipa::ToSchema;
use uuid::Uuid;

use slipway_store::read_model::DeploymentQuery;

use super::deployments::Limit;
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, OptionalJson, Params, QueryParams};
use super::{load_deployment, load_environment, load_error, queued_behind, require_environment, ApiResult, Caller, ReadPosition, Store};
use crate::history::Release;
use crate::queries::{self, DeploymentSummary, EnvironmentStatus};
use crate::requests::{self, SettingValue};

pub(super) type Accepted<T> = (StatusCode, [(HeaderName, String); 1], Json<T>);

/// 202 with the deployment's address and `body`.
pub(super) fn accepted<T>(id: Uuid, body: T) -> Accepted<T> {
    (StatusCode::ACCEPTED, [(LOCATION, format!("/api/deployments/{id}"))], Json(body))
}

#[utoipa::path(get, path = "/api/projects/{name}/environments/{env}", tag = "environments",
    summary = "What an environment serves and queues",
    description = "The same view as `slipway status --json` (`queries::EnvironmentStatus`).",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    responses((status = 200, body = EnvironmentStatus), (status = 404, body = ErrorBody)))]
pub async fn status(State(store): Store, Params((name, env)): Params<(String, String)>) -> ApiResult<Json<EnvironmentStatus>> {
    Ok(Json(queries::status(&*store, &name, &env).await.map_err(load_error)??))
}

/// Settings by key: the value, or "(secret)" for a secret one.
#[utoipa::path(get, path = "/api/projects/{name}/environments/{env}/settings", tag = "environments",
    summary = "An environment's settings, secret values masked",
    description = "Each key maps to its value, or to \"(secret)\" for a secret setting (whose value is never read).",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    responses((status = 200, body = BTreeMap<String, String>), (status = 404, body = ErrorBody)))]
pub async fn settings(State(store): Store, Params((name, env)): Params<(String, String)>) -> ApiResult<Json<BTreeMap<String, String>>> {
    let project = require_environment(&*store, &name, &env).await?;
    let settings = project.environments.get(&env).cloned().unwrap_or_default();
    let plain: Vec<String> = settings.values().filter(|s| !s.secret).map(|s| s.fingerprint.clone()).collect();
    let values = store.operational().values(&plain).await?;
    let shown = settings
        .into_iter()
        .map(|(key, s)| {
            let value = if s.secret { "(secret)".to_string() } else { values.get(&s.fingerprint).cloned().unwrap_or_default() };
            (key, value)
        })
        .collect();
    Ok(Json(shown))
}

/// A value to set: plain text (not secret), or with its secrecy.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum NewValue {
    Plain(String),
    Full(FullValue),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FullValue {
    value: String,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    /// KEY: "value" or KEY: {"value": "...", "secret": true}.
    #[serde(default)]
    set: BTreeMap<String, NewValue>,
    /// KEY: "value", all secret (the older form of `secret: true`).
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Keys to remove.
    #[serde(default)]
    unset: Vec<String>,
}

impl SettingsChange {
    /// One key, one fate: a key both set and unset (or set as plain and as
    /// secret) has no obvious meaning, so it is refused rather than guessed.
    fn check(&self) -> Result<(), ApiError> {
        if self.set.is_empty() && self.secrets.is_empty() && self.unset.is_empty() {
            return Err(ApiError::BadRequest("nothing to change: give `set`, `secrets` or `unset`".into()));
        }
        let mut seen = BTreeSet::new();
        let keys = self.set.keys().chain(self.secrets.keys()).chain(&self.unset);
        match keys.into_iter().find(|k| !seen.insert(k.as_str())) {
            Some(twice) => Err(ApiError::BadRequest(format!("setting `{twice}` appears more than once in `set`, `secrets` and `unset`"))),
            None => Ok(()),
        }
    }
}

#[utoipa::path(put, path = "/api/projects/{name}/environments/{env}/settings", tag = "environments",
    summary = "Set and remove settings",
    description = "Values go to the value table; the recorded event holds keys and fingerprints only.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    request_body = SettingsChange,
    responses((status = 204, description = "Changed"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn change_settings(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    caller: Caller,
    JsonBody(change): JsonBody<SettingsChange>,
) -> ApiResult<StatusCode> {
    change.check()?;
    require_environment(&*store, &name, &env).await?;
    let set = change.set.into_iter().map(|(key, v)| match v {
        NewValue::Plain(value) => SettingValue { key, value, secret: false },
        NewValue::Full(FullValue { value, secret }) => SettingValue { key, value, secret },
    });
    let secret = change.secrets.into_iter().map(|(key, value)| SettingValue { key, value, secret: true });
    requests::change_settings(&*store, &caller.actor(), &name, &env, set.chain(secret).collect(), change.unset).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/projects/{name}/environments/{env}/releases", tag = "environments",
    summary = "An environment's releases, newest first (what rollback can go back to)",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    responses((status = 200, body = [Release]), (status = 404, body = ErrorBody)))]
pub async fn releases(State(store): Store, Params((name, env)): Params<(String, String)>) -> ApiResult<Json<Vec<Release>>> {
    Ok(Json(queries::releases(&*store, &name, &env).await.map_err(load_error)??))
}

#[utoipa::path(get, path = "/api/projects/{name}/environments/{env}/deployments", tag = "environments",
    summary = "An environment's deployments, newest first",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment"), Limit),
    responses((status = 200, body = [DeploymentSummary]), (status = 404, body = ErrorBody)))]
pub async fn deployments(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    QueryParams(limit): QueryParams<Limit>,
) -> ApiResult<(ReadPosition, Json<Vec<DeploymentSummary>>)> {
    let query = DeploymentQuery { project: Some(name), environment: Some(env), limit: limit.get()?, ..Default::default() };
    super::deployments::page(&*store, &query).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackBody {
    /// The release to go back to (default: the one before the release serving now).
    to: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RollbackAccepted {
    deployment: Uuid,
    /// The release it serves again.
    target: Uuid,
    /// Release commands that ran since (they are not undone).
    warnings: Vec<String>,
    queued_behind: Vec<Uuid>,
}

#[utoipa::path(post, path = "/api/projects/{name}/environments/{env}/rollback", tag = "environments",
    summary = "Serve an earlier release again",
    description = "A new deployment with the earlier release's image, commit, slipway.toml and settings; no build, no release commands.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    request_body(content = RollbackBody, description = "Optional"),
    responses((status = 202, body = RollbackAccepted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Nothing to roll back to, or the release already serves")))]
pub async fn rollback(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    caller: Caller,
    OptionalJson(body): OptionalJson<RollbackBody>,
) -> ApiResult<Accepted<RollbackAccepted>> {
    require_environment(&*store, &name, &env).await?;
    let r = requests::request_rollback(&*store, &caller.actor(), &name, &env, body.to).await??;
    let queued_behind = queued_behind(&*store, &name, &env, r.deployment_id).await?;
    let id = r.deployment_id;
    Ok(accepted(id, RollbackAccepted { deployment: id, target: r.target, warnings: r.warnings, queued_behind }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAccepted {
    deployment: Uuid,
    /// The deployment it re-runs.
    replay_of: Uuid,
    /// The step it resumes at.
    #[schema(value_type = String)]
    from_step: slipway_proto::Step,
    queued_behind: Vec<Uuid>,
}

impl ReplayAccepted {
    pub(super) async fn new(
        store: &dyn slipway_store::EventStore,
        original: &crate::Deployment,
        r: requests::ReplayRequested,
    ) -> ApiResult<Accepted<ReplayAccepted>> {
        let c = &original.context;
        let queued_behind = queued_behind(store, &c.project, &c.environment, r.deployment_id).await?;
        let id = r.deployment_id;
        Ok(accepted(id, ReplayAccepted { deployment: id, replay_of: original.id, from_step: r.from_step, queued_behind }))
    }
}

#[utoipa::path(post, path = "/api/projects/{name}/environments/{env}/migrate", tag = "environments",
    summary = "Run the release commands against the serving release",
    description = "A replay of the serving release from the release step with release commands on, health-checked and cut over.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    responses((status = 202, body = ReplayAccepted), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Nothing serves, or the serving release is still being replaced")))]
pub async fn migrate(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    caller: Caller,
) -> ApiResult<Accepted<ReplayAccepted>> {
    require_environment(&*store, &name, &env).await?;
    let Some(serving) = load_environment(&*store, &name, &env).await?.last_succeeded() else {
        return Err(ApiError::Conflict(format!("{name} {env} serves no release to migrate; deploy first")));
    };
    let original = load_deployment(&*store, serving).await?;
    let r = requests::request_migrate(&*store, &caller.actor(), &name, &env).await??;
    ReplayAccepted::new(&*store, &original, r).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The environment whose serving image is promoted.
    from: String,
    /// The environment that gets it (with its own settings).
    to: String,
    /// "cloud" (default: release commands run) or "local".
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    mode: Option<BuildMode>,
    /// Run the release commands in local mode too.
    #[serde(default)]
    migrate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromoteAccepted {
    deployment: Uuid,
    /// The release of `from` whose image `to` gets.
    source: Uuid,
    queued_behind: Vec<Uuid>,
}

#[utoipa::path(post, path = "/api/projects/{name}/promote", tag = "environments",
    summary = "Deploy to one environment exactly the image another serves",
    params(("name" = String, Path, description = "The project")),
    request_body = PromoteBody,
    responses((status = 202, body = PromoteAccepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`from` serves nothing")))]
pub async fn promote(
    State(store): Store,
    Params(name): Params<String>,
    caller: Caller,
    JsonBody(body): JsonBody<PromoteBody>,
) -> ApiResult<Accepted<PromoteAccepted>> {
    require_environment(&*store, &name, &body.from).await?;
    require_environment(&*store, &name, &body.to).await?;
    let mode = body.mode.unwrap_or(BuildMode::Cloud);
    let run_release = mode == BuildMode::Cloud || body.migrate;
    let (id, source) = requests::request_promotion(&*store, &caller.actor(), &name, &body.from, &body.to, mode, run_release).await??;
    let queued_behind = queued_behind(&*store, &name, &body.to, id).await?;
    Ok(accepted(id, PromoteAccepted { deployment: id, source, queued_behind }))
}
