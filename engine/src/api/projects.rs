//! Projects, their settings and their environments' status. Settings are
//! shown as key, fingerprint and whether secret; only non-secret values are
//! read from the value table at all.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Actor, JsonBody, Params};
use super::{load_deployment, load_environment, require_environment, require_project, ApiResult, Store};
use crate::project::Project;
use crate::requests::{self, NewProject, SettingValue};

#[derive(Debug, Serialize)]
pub struct ProjectSummary {
    name: String,
    repository: String,
    default_branch: String,
    environments: Vec<String>,
}

impl From<&Project> for ProjectSummary {
    fn from(p: &Project) -> Self {
        ProjectSummary {
            name: p.name.clone(),
            repository: p.repository.clone(),
            default_branch: p.default_branch.clone(),
            environments: p.environments.keys().cloned().collect(),
        }
    }
}

pub async fn list(State(store): Store) -> ApiResult<Json<Vec<ProjectSummary>>> {
    let mut projects = Vec::new();
    for name in requests::project_names(&*store).await? {
        if let Some(p) = requests::load_project(&*store, &name).await? {
            projects.push(ProjectSummary::from(&p));
        }
    }
    Ok(Json(projects))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    /// Leave out for a mirror (it builds from its original's repository).
    #[serde(default)]
    repository: String,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    environments: Option<Vec<String>>,
    #[serde(default)]
    mirror_of: Option<String>,
}

pub async fn create(
    State(store): Store,
    Actor(actor): Actor,
    JsonBody(body): JsonBody<CreateProject>,
) -> ApiResult<(StatusCode, [(axum::http::HeaderName, String); 1], Json<ProjectSummary>)> {
    let taken = || ApiError::Conflict(format!("project `{}` already exists; pick another name", body.name));
    // Workers resolve the repository on their own hosts, so a path relative
    // to wherever this server runs would mean nothing to them.
    let mirror_without_repository = body.mirror_of.is_some() && body.repository.is_empty();
    if !(mirror_without_repository || body.repository.contains("://") || std::path::Path::new(&body.repository).is_absolute()) {
        return Err(ApiError::BadRequest(format!(
            "repository `{}` must be an absolute path or a URL such as file:///srv/app.git",
            body.repository
        )));
    }
    if requests::load_project(&*store, &body.name).await?.is_some() {
        return Err(taken());
    }
    let new = NewProject {
        name: body.name.clone(),
        repository: body.repository.clone(),
        default_branch: body.default_branch.clone().unwrap_or_else(|| "main".into()),
        environments: body.environments.clone().unwrap_or_else(|| vec!["test".into(), "live".into()]),
        mirror_of: body.mirror_of.clone(),
    };
    if let Err(rejection) = requests::create_project(&*store, &actor, new).await? {
        // Another request may have taken the name since the check above.
        let exists = requests::load_project(&*store, &body.name).await?.is_some();
        return Err(if exists { taken() } else { rejection.into() });
    }
    let project = require_project(&*store, &body.name).await?;
    let location = format!("/api/projects/{}", project.name);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(ProjectSummary::from(&project))))
}

#[derive(Debug, Serialize)]
pub struct ProjectDetail {
    name: String,
    repository: String,
    default_branch: String,
    mirror_of: Option<String>,
    environments: BTreeMap<String, EnvironmentSettings>,
}

#[derive(Debug, Serialize)]
pub struct EnvironmentSettings {
    settings: BTreeMap<String, SettingView>,
}

#[derive(Debug, Serialize)]
pub struct SettingView {
    fingerprint: String,
    secret: bool,
    /// Present for non-secret settings only.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

pub async fn show(State(store): Store, Params(name): Params<String>) -> ApiResult<Json<ProjectDetail>> {
    let p = require_project(&*store, &name).await?;
    let plain: Vec<String> =
        p.environments.values().flat_map(|s| s.values()).filter(|s| !s.secret).map(|s| s.fingerprint.clone()).collect();
    let values = store.values(&plain).await?;
    let environments = p
        .environments
        .iter()
        .map(|(env, settings)| {
            let settings = settings
                .iter()
                .map(|(key, s)| {
                    let value = if s.secret { None } else { values.get(&s.fingerprint).cloned() };
                    (key.clone(), SettingView { fingerprint: s.fingerprint.clone(), secret: s.secret, value })
                })
                .collect();
            (env.clone(), EnvironmentSettings { settings })
        })
        .collect();
    Ok(Json(ProjectDetail {
        name: p.name,
        repository: p.repository,
        default_branch: p.default_branch,
        mirror_of: p.mirror_of,
        environments,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsChange {
    set: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
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
            Some(twice) => Err(ApiError::BadRequest(format!(
                "setting `{twice}` appears more than once in `set`, `secrets` and `unset`"
            ))),
            None => Ok(()),
        }
    }
}

pub async fn change_settings(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
    Actor(actor): Actor,
    JsonBody(change): JsonBody<SettingsChange>,
) -> ApiResult<StatusCode> {
    change.check()?;
    require_environment(&*store, &name, &env).await?;
    let plain = change.set.into_iter().map(|(key, value)| SettingValue { key, value, secret: false });
    let secret = change.secrets.into_iter().map(|(key, value)| SettingValue { key, value, secret: true });
    requests::change_settings(&*store, &actor, &name, &env, plain.chain(secret).collect(), change.unset).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct EnvironmentStatus {
    project: String,
    environment: String,
    /// The release serving now: the last deployment that succeeded.
    last_succeeded: Option<Release>,
    /// Deployments not finished, oldest first; the first one runs.
    queue: Vec<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct Release {
    deployment: Uuid,
    commit: Option<String>,
    image: Option<String>,
    web_port: Option<u16>,
}

pub async fn environment(
    State(store): Store,
    Params((name, env)): Params<(String, String)>,
) -> ApiResult<Json<EnvironmentStatus>> {
    require_environment(&*store, &name, &env).await?;
    let state = load_environment(&*store, &name, &env).await?;
    let last_succeeded = match state.last_succeeded() {
        Some(id) => {
            let d = load_deployment(&*store, id).await?;
            Some(Release {
                deployment: id,
                commit: d.context.commit,
                image: d.context.image_id,
                web_port: d.context.web_port,
            })
        }
        None => None,
    };
    Ok(Json(EnvironmentStatus { project: name, environment: env, last_succeeded, queue: state.queue }))
}
