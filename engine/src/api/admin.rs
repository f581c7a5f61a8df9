//! The installation itself: worker processes (from their heartbeats), API
//! tokens, and who the caller is. A token's value is returned once, by the request that issues
//! it; lists show name, scope, issuer and state, never the value or hash.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderName, StatusCode};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_proto::event::TokenScope;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, Params};
use super::{ApiConfig, ApiResult, Caller, Store};
use crate::requests;

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    id: String,
    host: String,
    /// "alive", "missing" (silent for three heartbeats: killed or cut off) or "stopped".
    state: String,
    steps: Vec<String>,
    /// One entry per command in progress.
    busy: Vec<String>,
    started_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

#[utoipa::path(get, path = "/api/workers", tag = "installation", summary = "Worker processes from their heartbeats",
    responses((status = 200, body = [WorkerView])))]
pub async fn workers(State(store): Store, Extension(config): Extension<Arc<ApiConfig>>) -> ApiResult<Json<Vec<WorkerView>>> {
    let now = Utc::now();
    let missing_after = chrono::Duration::from_std(config.worker_missing_after).unwrap_or_default();
    let workers = store.operational().workers().await?;
    Ok(Json(
        workers
            .into_iter()
            .map(|w| {
                let state = w.state(now, missing_after);
                WorkerView {
                    id: w.id,
                    host: w.host,
                    state: state.into(),
                    steps: w.steps,
                    busy: w.busy,
                    started_at: w.started_at,
                    last_seen: w.last_seen,
                }
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    name: String,
    /// "read", "deploy" or "admin".
    #[schema(value_type = String)]
    scope: TokenScope,
    issued_by: String,
    issued_at: DateTime<Utc>,
    /// When it stops working; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
}

#[utoipa::path(get, path = "/api/tokens", tag = "installation", summary = "Every token issued (never its value)",
    responses((status = 200, body = [TokenView])))]
pub async fn tokens(State(store): Store) -> ApiResult<Json<Vec<TokenView>>> {
    let tokens = requests::load_tokens(&*store).await?;
    Ok(Json(
        tokens
            .by_name
            .into_values()
            .map(|t| TokenView {
                name: t.name,
                scope: t.scope,
                issued_by: t.issued_by,
                issued_at: t.issued_at,
                expires_at: t.expires_at,
                revoked: t.revoked,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1-64 lowercase letters, digits, '-', '_' or '.'; events it causes name `token:<name>`.
    name: String,
    /// "read", "deploy" or "admin".
    #[schema(value_type = String)]
    scope: TokenScope,
    /// When it stops working (RFC 3339, in the future); absent: never.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    name: String,
    #[schema(value_type = String)]
    scope: TokenScope,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    /// The value: shown this once, only its SHA-256 is kept.
    token: String,
}

#[utoipa::path(post, path = "/api/tokens", tag = "installation", summary = "Issue a token",
    description = "The response holds the token's value; it is never shown again.",
    request_body = NewToken,
    responses((status = 201, body = IssuedToken), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The name is taken (names of revoked tokens too)")))]
pub async fn issue_token(
    State(store): Store,
    caller: Caller,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, [(HeaderName, String); 1], Json<IssuedToken>)> {
    let token = requests::issue_expiring_token(&*store, &caller.actor(), &body.name, body.scope, body.expires_at).await??;
    let location = format!("/api/tokens/{}", body.name);
    let issued = IssuedToken { name: body.name, scope: body.scope, expires_at: body.expires_at, token };
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(issued)))
}

#[utoipa::path(delete, path = "/api/tokens/{name}", tag = "installation", summary = "Revoke a token",
    description = "Requests with it are refused from the next one on, on every API process.",
    params(("name" = String, Path, description = "The token's name")),
    responses((status = 204, description = "Revoked"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "Already revoked")))]
pub async fn revoke_token(State(store): Store, caller: Caller, Params(name): Params<String>) -> ApiResult<StatusCode> {
    match requests::load_tokens(&*store).await?.by_name.get(&name) {
        None => return Err(ApiError::NotFound(format!("no token `{name}`; GET /api/tokens lists them"))),
        Some(t) if t.revoked => return Err(ApiError::Conflict(format!("token `{name}` is already revoked"))),
        Some(_) => {}
    }
    requests::revoke_token(&*store, &caller.actor(), &name).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The token's name (events the caller causes name `token:<name>`).
    name: String,
    /// "read", "deploy" or "admin".
    #[schema(value_type = String)]
    scope: TokenScope,
    /// Always true: every route but /healthz needs a token.
    authenticated: bool,
}

#[utoipa::path(get, path = "/api/whoami", tag = "installation", summary = "The caller's token name and scope",
    description = "What a client (the dashboard) asks to offer only what the token's scope allows.",
    responses((status = 200, body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI { name: caller.name, scope: caller.scope, authenticated: true })
}

#[utoipa::path(get, path = "/metrics", tag = "installation", summary = "This process's Prometheus metrics",
    description = "Deployments by outcome, step durations, queue depth, outbox and subscription lag, router requests \
        (OpenMetrics text). Prometheus sends the token with `authorization: {credentials: ...}` in its scrape config.",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics() -> impl axum::response::IntoResponse {
    slipway_telemetry::serve::metrics().await
}
