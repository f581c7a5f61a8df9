//! Projects: list, create, show (with each environment's settings as key,
//! fingerprint and whether secret; only non-secret values are read from the
//! value table at all).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use utoipa::IntoParams;

use crate::project::{AutoDeployRule, PreviewRule};

use super::deployments::{Limit, MAX_LIMIT};
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, Params, QueryParams};
use super::{read_position, require_project, ApiResult, Caller, ReadPosition, Store};
use crate::queries::{self, ProjectSummary};
use crate::requests::{self, NewProject};
use crate::source::SourceChange;

/// `?limit=N&after=NAME` of the project list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectPage {
    /// At most this many, by name (default and most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// Only projects whose name sorts after this one (the last of the page before).
    after: Option<String>,
}

#[utoipa::path(get, path = "/api/projects", tag = "projects", summary = "Projects by name, a page at a time",
    description = "Read from the projects read model once it caught up with the log; the `Slipway-Read-Position` header says how far into the log that is.",
    params(ProjectPage),
    responses((status = 200, body = [ProjectSummary]), (status = 400, body = ErrorBody)))]
pub async fn list(State(store): Store, QueryParams(q): QueryParams<ProjectPage>) -> ApiResult<(ReadPosition, Json<Vec<ProjectSummary>>)> {
    let limit = Limit { limit: q.limit }.get_or(MAX_LIMIT)?;
    let (projects, at) = queries::projects(&*store, q.after.as_deref(), limit).await?;
    Ok((read_position(at), Json(projects)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    /// An absolute path or a URL such as file:///srv/app.git (`repository`
    /// is accepted too). Leave out for a mirror (it builds from its original's).
    #[serde(default, alias = "repository")]
    repo: String,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    environments: Option<Vec<String>>,
    #[serde(default)]
    mirror_of: Option<String>,
    /// How workers reach the repository, set with the creation in one
    /// step: credentials (kept as secrets), trusted host keys, submodules.
    #[serde(default)]
    source: Option<SourceChangeBody>,
}

#[utoipa::path(post, path = "/api/projects", tag = "projects", summary = "Create a project",
    description = "Environments default to test and live, the branch to main.",
    request_body = CreateProject,
    responses((status = 201, body = ProjectSummary), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(store): Store,
    caller: Caller,
    JsonBody(body): JsonBody<CreateProject>,
) -> ApiResult<(StatusCode, [(axum::http::HeaderName, String); 1], Json<ProjectSummary>)> {
    // Workers resolve the repository on their own hosts, so a path relative
    // to wherever this server runs would mean nothing to them.
    let mirror_without_repository = body.mirror_of.is_some() && body.repo.is_empty();
    let relative_path = !body.repo.contains("://")
        && !std::path::Path::new(&body.repo).is_absolute()
        && !body.repo.split('/').next().unwrap_or_default().contains(':');
    if body.mirror_of.is_none() && body.repo.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "`repo` is required: an absolute path or a URL such as https://git.example.com/org/app.git (or `mirror_of`, for a mirror)"
                .into(),
        ));
    }
    if !mirror_without_repository && relative_path {
        return Err(ApiError::BadRequest(format!(
            "repo `{}` must be an absolute path or a URL such as https://git.example.com/org/app.git, \
             ssh://git@git.example.com/org/app.git or file:///srv/app.git",
            body.repo
        )));
    }
    let new = NewProject {
        name: body.name.clone(),
        repository: body.repo.clone(),
        default_branch: body.default_branch.clone().unwrap_or_else(|| "main".into()),
        environments: body.environments.clone().unwrap_or_else(|| vec!["test".into(), "live".into()]),
        mirror_of: body.mirror_of.clone(),
    };
    let source = body.source.map(SourceChangeBody::change).unwrap_or_default();
    // The original of a mirror is named in the body: missing, it is bad input.
    requests::create_project_with_source(&*store, &caller.actor(), new, source).await?.map_err(ApiError::from_body)?;
    let project = require_project(&*store, &body.name).await?;
    let location = format!("/api/projects/{}", project.name);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(ProjectSummary::from(&project))))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectDetail {
    name: String,
    repo: String,
    default_branch: String,
    mirror_of: Option<String>,
    environments: BTreeMap<String, EnvironmentSettings>,
    source: queries::SourceView,
    /// Whether a push webhook secret is set (its value is never shown again).
    webhook_secret: bool,
    auto_deploy: Vec<AutoDeployRule>,
    preview_rules: Vec<PreviewRule>,
    /// The preview environments there are now, with the head commit each was last pushed.
    previews: Vec<queries::PreviewView>,
}

/// A change to a project's source access. Credential values are kept as
/// secrets (the log records fingerprints) and never shown again.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SourceChangeBody {
    /// Credential name (token, username, password, ssh_key, ssh_key_passphrase, ca_cert) -> value.
    set: BTreeMap<String, String>,
    /// Credential names to remove.
    remove: Vec<String>,
    /// Replaces every trusted SSH host key (OpenSSH known_hosts lines); `[]` forgets them.
    known_hosts: Option<Vec<String>>,
    submodules: Option<bool>,
    /// The public half of the `ssh_key` in `set`, when the client made the key (an OpenSSH line, shown again by GET).
    deploy_key: Option<String>,
}

impl SourceChangeBody {
    fn change(self) -> SourceChange {
        SourceChange {
            set: self.set,
            removed: self.remove,
            known_hosts: self.known_hosts,
            submodules: self.submodules,
            deploy_key: self.deploy_key,
        }
    }
}

#[utoipa::path(put, path = "/api/projects/{name}/source", tag = "projects",
    summary = "Change how workers reach a project's repository",
    description = "Credentials are kept as secrets: events record their fingerprints, and no answer shows them. \
Deployments requested from now on use the new access.",
    params(("name" = String, Path, description = "The project")),
    request_body = SourceChangeBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn change_source(
    State(store): Store,
    Params(name): Params<String>,
    caller: Caller,
    JsonBody(body): JsonBody<SourceChangeBody>,
) -> ApiResult<StatusCode> {
    require_project(&*store, &name).await?;
    requests::change_source(&*store, &caller.actor(), &name, body.change()).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentSettings {
    settings: BTreeMap<String, SettingView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SettingView {
    fingerprint: String,
    secret: bool,
    /// Present for non-secret settings only.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

#[utoipa::path(get, path = "/api/projects/{name}", tag = "projects", summary = "A project with its environments' settings",
    description = "Settings show key, fingerprint and whether secret; values of non-secret settings only.",
    params(("name" = String, Path, description = "The project")),
    responses((status = 200, body = ProjectDetail), (status = 404, body = ErrorBody)))]
pub async fn show(State(store): Store, Params(name): Params<String>) -> ApiResult<Json<ProjectDetail>> {
    let p = require_project(&*store, &name).await?;
    let plain: Vec<String> =
        p.environments.values().flat_map(|s| s.values()).filter(|s| !s.secret).map(|s| s.fingerprint.clone()).collect();
    let values = store.operational().values(&plain).await?;
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
    let (source, previews) = (queries::source_view(&p), queries::previews(&p));
    Ok(Json(ProjectDetail {
        name: p.name,
        repo: p.repository,
        default_branch: p.default_branch,
        mirror_of: p.mirror_of,
        environments,
        source,
        previews,
        webhook_secret: p.webhook_secret.is_some(),
        auto_deploy: p.auto_deploy,
        preview_rules: p.preview_rules,
    }))
}
