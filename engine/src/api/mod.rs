//! Slipway's JSON HTTP API: the same requests as the client verbs (create a
//! project, change settings, request a deployment) and read-only views of
//! projects, environments and deployments, folded from the event log on each
//! call. It owns no state of its own — every write goes through `requests`,
//! every read through the store and the projections — so it can run in any
//! process that has the store, and `app` is a plain `Router` tests drive
//! without a socket.
//!
//! Failures map to statuses in one place (`error::ApiError`). Setting values
//! marked secret never leave the store through this API.
//!
//! There is no authentication: anyone who reaches the socket can deploy, so
//! the `slipway` binary binds it to 127.0.0.1 unless told otherwise.

mod deployments;
mod error;
mod extract;
mod live;
mod projects;
mod whoami;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use slipway_store::EventStore;
use uuid::Uuid;

pub use error::ApiError;
pub use extract::ACTOR_HEADER;
pub use live::{with_logs, LogsDir};

use crate::deployment::Deployment;
use crate::environment::Environment;
use crate::project::Project;
use crate::requests;

type Store = State<Arc<dyn EventStore>>;
type ApiResult<T> = Result<T, ApiError>;

/// The API's routes over `store`.
pub fn app(store: Arc<dyn EventStore>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/projects", get(projects::list).post(projects::create))
        .route("/api/projects/{name}", get(projects::show))
        .route("/api/projects/{name}/environments/{env}", get(projects::environment))
        .route("/api/projects/{name}/environments/{env}/settings", put(projects::change_settings))
        .route("/api/projects/{name}/environments/{env}/deployments", post(deployments::request))
        .route("/api/deployments/{id}", get(deployments::show))
        .route("/api/deployments/{id}/events", get(deployments::events))
        .route("/api/deployments/{id}/stream", get(live::stream))
        .route("/api/whoami", get(whoami::whoami))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(store)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests
/// in flight finish (live streams end then too).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing, app) = live::closing(app);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.await; closing.close() }).await
}

/// Answers only when the store does, so a load balancer sees a dead database.
async fn health(State(store): Store) -> ApiResult<Json<Value>> {
    store.stream_version("health-check").await?;
    Ok(Json(json!({ "status": "ok", "store": store.backend() })))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no endpoint {method} {}; the endpoints are under /api/projects and /api/deployments",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}; the Allow header lists what is", uri.path()))
}

async fn require_project(store: &dyn EventStore, name: &str) -> ApiResult<Project> {
    requests::load_project(store, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no project `{name}`; create it with POST /api/projects")))
}

async fn require_environment(store: &dyn EventStore, name: &str, env: &str) -> ApiResult<Project> {
    let project = require_project(store, name).await?;
    if !project.environments.contains_key(env) {
        let known: Vec<&str> = project.environments.keys().map(String::as_str).collect();
        return Err(ApiError::NotFound(format!(
            "project `{name}` has no environment `{env}` (it has: {})",
            known.join(", ")
        )));
    }
    Ok(project)
}

async fn load_environment(store: &dyn EventStore, name: &str, env: &str) -> ApiResult<Environment> {
    crate::load::environment(store, name, env).await.map_err(load_error)
}

async fn load_deployment(store: &dyn EventStore, id: Uuid) -> ApiResult<Deployment> {
    crate::load::deployment(store, id)
        .await
        .map_err(load_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))
}

/// A history that cannot be read or followed is the server's problem.
fn load_error(e: crate::load::LoadError) -> ApiError {
    match e {
        crate::load::LoadError::Store(e) => e.into(),
        other => ApiError::Internal(format!("{other}; check the log with `slipway audit verify`")),
    }
}
