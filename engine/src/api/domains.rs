//! Custom domains over HTTP: list, add and remove an environment's domains
//! (`domains.rs` records them), and turn a domain's redirect to HTTPS on
//! or off (`certificates::set_redirect`). A name another environment holds
//! is a 409 naming the holder.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::{JsonBody, Params};
use super::{load_error, require_environment, ApiResult, Caller, Store};
use crate::domains;
use crate::load;

/// An environment's custom domains.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentDomains {
    project: String,
    environment: String,
    /// Sorted; `*.example.com` is a one-level wildcard.
    domains: Vec<String>,
}

async fn listed(store: &dyn slipway_store::EventStore, name: String, env: String) -> ApiResult<Json<EnvironmentDomains>> {
    let routes = load::routes(store).await.map_err(load_error)?;
    let domains = domains::of_environment(&routes.domains, &name, &env);
    Ok(Json(EnvironmentDomains { project: name, environment: env, domains }))
}

#[utoipa::path(get, path = "/api/projects/{name}/environments/{env}/domains", tag = "domains",
    summary = "The environment's custom domains",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment")),
    responses((status = 200, body = EnvironmentDomains), (status = 404, body = ErrorBody)))]
pub async fn list(State(store): Store, Params((name, env)): Params<(String, String)>) -> ApiResult<Json<EnvironmentDomains>> {
    require_environment(&*store, &name, &env).await?;
    listed(&*store, name, env).await
}

#[utoipa::path(put, path = "/api/projects/{name}/environments/{env}/domains/{domain}", tag = "domains",
    summary = "Serve the environment under a custom domain too",
    description = "An exact name (`www.example.com`) or a one-level wildcard (`*.example.com`). Adding a domain \
the environment has already changes nothing. A domain belongs to one environment at a time: 409 names its holder. \
Answers with every domain of the environment.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment"),
        ("domain" = String, Path, description = "The domain")),
    responses((status = 200, body = EnvironmentDomains), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add(
    State(store): Store,
    caller: Caller,
    Params((name, env, domain)): Params<(String, String, String)>,
) -> ApiResult<Json<EnvironmentDomains>> {
    require_environment(&*store, &name, &env).await?;
    domains::add(&*store, &caller.actor(), &name, &env, &domain).await??;
    listed(&*store, name, env).await
}

#[utoipa::path(delete, path = "/api/projects/{name}/environments/{env}/domains/{domain}", tag = "domains",
    summary = "Stop serving the environment under a custom domain",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment"),
        ("domain" = String, Path, description = "The domain")),
    responses((status = 200, body = EnvironmentDomains), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(store): Store,
    caller: Caller,
    Params((name, env, domain)): Params<(String, String, String)>,
) -> ApiResult<Json<EnvironmentDomains>> {
    require_environment(&*store, &name, &env).await?;
    domains::remove(&*store, &caller.actor(), &name, &env, &domain).await??;
    listed(&*store, name, env).await
}

/// A domain's redirect from plain HTTP to HTTPS.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `true`: plain-HTTP requests are answered with a 308 to HTTPS while
    /// the domain has a certificate (the default); `false`: served over
    /// plain HTTP too.
    pub redirect: bool,
}

#[utoipa::path(put, path = "/api/projects/{name}/environments/{env}/domains/{domain}/redirect", tag = "domains",
    summary = "Turn a custom domain's redirect to HTTPS on or off",
    description = "Recorded as `HttpsRedirectSet`; every router applies it from its next request. Setting what is set \
already records nothing.",
    params(("name" = String, Path, description = "The project"), ("env" = String, Path, description = "The environment"),
        ("domain" = String, Path, description = "The domain")),
    request_body = Redirect,
    responses((status = 200, body = Redirect), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn redirect(
    State(store): Store,
    caller: Caller,
    Params((name, env, domain)): Params<(String, String, String)>,
    JsonBody(body): JsonBody<Redirect>,
) -> ApiResult<Json<Redirect>> {
    require_environment(&*store, &name, &env).await?;
    let set = domains::set_redirect(&*store, &caller.actor(), &name, &env, &domain, body.redirect).await??;
    Ok(Json(Redirect { redirect: set.redirect }))
}
