//! Slipway's JSON HTTP API: the same requests as the client verbs (create a
//! project, change settings, request, roll back, promote, replay a
//! deployment, issue tokens) and read-only views of projects, environments,
//! deployments, their history and logs, the log's export and verification,
//! folded from the event log on each call. It owns no state of its own —
//! every write goes through `requests`, every read through the store and the
//! projections — so it can run in any process that has the store, and `app`
//! is a plain `Router` tests drive without a socket.
//!
//! Every route is declared once, in `table`: method, path, the scope it
//! needs and its handler. `app` registers the routes from it (each behind
//! `auth::guard`), the OpenAPI document takes each operation's scope from
//! it, and the tests walk it. Failures map to statuses in one place
//! (`error::ApiError`). Setting values marked secret never leave the store
//! through this API.

mod admin;
mod attempts;
mod audit;
pub mod auth;
mod certificates;
mod deployments;
mod domains;
mod environments;
mod error;
mod extract;
mod hooks;
mod live;
mod notifications;
pub mod openapi;
mod overview;
mod previews;
mod projects;
mod protection;
mod quota;
mod serving;

pub use serving::{serve_with, ServeLimits};

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Extension, Json, Router};
use serde::Serialize;
use slipway_proto::event::TokenScope;
use slipway_store::EventStore;
use uuid::Uuid;

pub use auth::{Access, Caller};
pub use error::ApiError;

use crate::deployment::Deployment;
use crate::environment::Environment;
use crate::project::Project;
use crate::requests;

type Store = State<Arc<dyn EventStore>>;
type ApiResult<T> = Result<T, ApiError>;

/// The header that says how far into the log a read model answered from
/// (`tx:position`, as the store orders events): a client that wrote waits
/// until it passes its own write. Reads catch the read models up first.
pub const READ_POSITION: &str = "slipway-read-position";
type ReadPosition = [(axum::http::HeaderName, String); 1];

fn read_position(at: slipway_store::Position) -> ReadPosition {
    [(axum::http::HeaderName::from_static(READ_POSITION), at.to_string())]
}

/// What the API needs besides the store.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The workers' data directory: build and release logs are under it
    /// (`logs/`), as `slipway logs` reads them.
    pub data_dir: PathBuf,
    /// A worker silent this long is reported missing (three heartbeats).
    pub worker_missing_after: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { data_dir: PathBuf::from(".slipway"), worker_missing_after: Duration::from_secs(15) }
    }
}

/// One route: method, path (axum and OpenAPI syntax alike) and who may call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// Every route with its handler: the one list the router, the OpenAPI
/// document's scopes and the access tests are made from.
fn table() -> Vec<(Route, MethodRouter<Arc<dyn EventStore>>)> {
    use Access::{Open, Scope, Signature};
    use TokenScope::{Admin, Deploy, Read};
    let route = |method: Method, path: &'static str, access: Access, handler| (Route { method, path, access }, handler);
    vec![
        route(Method::GET, "/healthz", Open, get(health)),
        route(Method::GET, "/openapi.json", Scope(Read), get(openapi::document)),
        route(Method::GET, "/metrics", Scope(Read), get(admin::metrics)),
        route(Method::GET, "/api/projects", Scope(Read), get(projects::list)),
        route(Method::POST, "/api/projects", Scope(Admin), post(projects::create)),
        route(Method::GET, "/api/projects/{name}", Scope(Read), get(projects::show)),
        route(Method::DELETE, "/api/projects/{name}", Scope(Admin), delete(previews::remove_project)),
        route(Method::PUT, "/api/projects/{name}/source", Scope(Admin), put(projects::change_source)),
        route(Method::POST, "/api/projects/{name}/promote", Scope(Deploy), post(environments::promote)),
        route(Method::GET, "/api/environments", Scope(Read), get(overview::list)),
        route(Method::POST, "/api/projects/{name}/environments", Scope(Admin), post(previews::add)),
        route(Method::GET, "/api/projects/{name}/environments/{env}", Scope(Read), get(environments::status)),
        route(Method::GET, "/api/projects/{name}/environments/{env}/settings", Scope(Read), get(environments::settings)),
        route(Method::PUT, "/api/projects/{name}/environments/{env}/settings", Scope(Admin), put(environments::change_settings)),
        route(Method::GET, "/api/projects/{name}/environments/{env}/releases", Scope(Read), get(environments::releases)),
        route(Method::GET, "/api/projects/{name}/environments/{env}/deployments", Scope(Read), get(environments::deployments)),
        route(Method::POST, "/api/projects/{name}/environments/{env}/deployments", Scope(Deploy), post(deployments::request)),
        route(Method::POST, "/api/projects/{name}/environments/{env}/rollback", Scope(Deploy), post(environments::rollback)),
        route(Method::POST, "/api/projects/{name}/environments/{env}/migrate", Scope(Deploy), post(environments::migrate)),
        route(Method::GET, "/api/deployments", Scope(Read), get(deployments::list)),
        route(Method::GET, "/api/deployments/{id}", Scope(Read), get(deployments::show)),
        route(Method::POST, "/api/deployments/{id}/replay", Scope(Deploy), post(deployments::replay)),
        route(Method::GET, "/api/deployments/{id}/events", Scope(Read), get(deployments::events)),
        route(Method::GET, "/api/deployments/{id}/history", Scope(Read), get(deployments::history)),
        route(Method::GET, "/api/deployments/{id}/logs", Scope(Read), get(deployments::logs)),
        route(Method::GET, "/api/deployments/{id}/stream", Scope(Read), get(live::stream)),
        route(Method::POST, "/api/deployments/{id}/cancel", Scope(Deploy), post(deployments::cancel)),
        route(Method::POST, "/api/deployments/{id}/approve", Scope(Deploy), post(deployments::approve)),
        route(Method::POST, "/api/deployments/{id}/reject", Scope(Deploy), post(deployments::reject)),
        route(Method::GET, "/api/diff", Scope(Read), get(deployments::diff)),
        route(Method::GET, "/api/export", Scope(Read), get(audit::export)),
        route(Method::POST, "/api/audit/verify", Scope(Read), post(audit::verify)),
        route(Method::GET, "/api/workers", Scope(Read), get(admin::workers)),
        route(Method::GET, "/api/whoami", Scope(Read), get(admin::whoami)),
        route(Method::GET, "/api/tokens", Scope(Admin), get(admin::tokens)),
        route(Method::POST, "/api/tokens", Scope(Admin), post(admin::issue_token)),
        route(Method::DELETE, "/api/tokens/{name}", Scope(Admin), delete(admin::revoke_token)),
        route(Method::POST, "/api/projects/{name}/webhook-secret", Scope(Admin), post(hooks::rotate_secret)),
        route(Method::GET, "/api/projects/{name}/auto-deploy", Scope(Read), get(hooks::rules)),
        route(Method::PUT, "/api/projects/{name}/auto-deploy", Scope(Admin), put(hooks::set_rule)),
        route(Method::DELETE, "/api/projects/{name}/auto-deploy", Scope(Admin), delete(hooks::remove_rule)),
        route(Method::GET, "/api/projects/{name}/previews", Scope(Read), get(previews::rules)),
        route(Method::PUT, "/api/projects/{name}/previews", Scope(Admin), put(previews::set_rule)),
        route(Method::DELETE, "/api/projects/{name}/previews", Scope(Admin), delete(previews::remove_rule)),
        route(Method::POST, "/api/projects/{name}/environments/{env}/approve", Scope(Deploy), post(previews::approve)),
        route(Method::DELETE, "/api/projects/{name}/environments/{env}", Scope(Deploy), delete(previews::remove)),
        route(Method::PUT, "/api/projects/{name}/environments/{env}/protection", Scope(Admin), put(protection::protect)),
        route(Method::PUT, "/api/projects/{name}/environments/{env}/freezes", Scope(Admin), put(protection::set_freeze)),
        route(Method::DELETE, "/api/projects/{name}/environments/{env}/freezes", Scope(Admin), delete(protection::remove_freeze)),
        route(Method::GET, "/api/projects/{name}/environments/{env}/domains", Scope(Read), get(domains::list)),
        route(Method::PUT, "/api/projects/{name}/environments/{env}/domains/{domain}", Scope(Admin), put(domains::add)),
        route(Method::DELETE, "/api/projects/{name}/environments/{env}/domains/{domain}", Scope(Admin), delete(domains::remove)),
        route(Method::PUT, "/api/projects/{name}/environments/{env}/domains/{domain}/redirect", Scope(Admin), put(domains::redirect)),
        route(Method::GET, "/api/certificates", Scope(Read), get(certificates::list)),
        route(Method::PUT, "/api/certificates/{domain}", Scope(Admin), put(certificates::add)),
        route(Method::DELETE, "/api/certificates/{domain}", Scope(Admin), delete(certificates::remove)),
        route(Method::GET, "/api/notifications", Scope(Read), get(notifications::list)),
        route(Method::POST, "/api/notifications", Scope(Admin), post(notifications::subscribe)),
        route(Method::DELETE, "/api/notifications/{id}", Scope(Admin), delete(notifications::unsubscribe)),
        route(Method::POST, "/api/notifications/{id}/replay", Scope(Admin), post(notifications::replay)),
        route(Method::GET, "/api/notifications/deliveries", Scope(Read), get(notifications::deliveries)),
        route(Method::POST, "/api/notifications/deliveries/{id}/redeliver", Scope(Admin), post(notifications::redeliver)),
        route(
            Method::POST,
            "/api/hooks/{provider}/{project}",
            Signature,
            post(hooks::receive).layer(axum::extract::DefaultBodyLimit::max(crate::webhook::MAX_BODY)),
        ),
    ]
}

/// Every route the API serves, in the order of `table`.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The API's routes over `store`, with the default configuration.
pub fn app(store: Arc<dyn EventStore>) -> Router {
    app_with(store, ApiConfig::default())
}

/// The API's routes over `store`: each registered from `table`, behind a
/// check for its scope.
pub fn app_with(store: Arc<dyn EventStore>, config: ApiConfig) -> Router {
    let mut router = Router::new();
    let gate = auth::Gate::new(store.clone());
    for (route, handler) in table() {
        // Routes of one path merge into one method router.
        router = router.route(route.path, auth::guard(handler, &gate, route.access));
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(Extension(Arc::new(config)))
        .layer(Extension(Arc::new(quota::Quotas::default())))
        .with_state(store)
}

/// Serves `app` on `listener` with the default [`ServeLimits`] until
/// `shutdown` resolves, then lets requests in flight finish (live streams
/// end then too).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serving::serve_with(listener, app, ServeLimits::default(), shutdown).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always "ok" (a store that does not answer is a 500).
    status: String,
    /// "postgres" or "sqlite".
    store: String,
}

/// Answers only when the store does, so a load balancer sees a dead database.
#[utoipa::path(get, path = "/healthz", tag = "health", summary = "Is the API up and its store reachable?",
    responses((status = 200, body = Health), (status = 500, body = error::ErrorBody)))]
async fn health(State(store): Store) -> ApiResult<Json<Health>> {
    store.stream_version("health-check").await?;
    Ok(Json(Health { status: "ok".into(), store: store.backend().into() }))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}; GET /openapi.json lists the endpoints", uri.path()))
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
        return Err(ApiError::NotFound(format!("project `{name}` has no environment `{env}` (it has: {})", known.join(", "))));
    }
    Ok(project)
}

async fn load_environment(store: &dyn EventStore, name: &str, env: &str) -> ApiResult<Environment> {
    crate::load::environment(store, name, env).await.map_err(load_error)
}

async fn load_deployment(store: &dyn EventStore, id: Uuid) -> ApiResult<Deployment> {
    crate::load::deployment(store, id).await.map_err(load_error)?.ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))
}

/// A history that cannot be read or followed is the server's problem.
fn load_error(e: crate::load::LoadError) -> ApiError {
    match e {
        crate::load::LoadError::Store(e) => e.into(),
        other => ApiError::Internal(format!("{other}; check the log with `slipway audit verify`")),
    }
}

/// The deployments of the environment that run before `id`, oldest first
/// (none once it finished and left the queue).
async fn queued_behind(store: &dyn EventStore, name: &str, env: &str, id: Uuid) -> ApiResult<Vec<Uuid>> {
    let queue = load_environment(store, name, env).await?.queue;
    let ahead = queue.iter().position(|d| *d == id).unwrap_or(0);
    Ok(queue[..ahead].to_vec())
}
