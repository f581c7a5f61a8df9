//! Notification subscriptions over HTTP: add (the signing secret in the
//! answer, once), list, remove, the delivery attempts, and the requests to
//! send again (`notifier.rs` records them; the engine's notifier sends).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, Params, QueryParams};
use super::{ApiResult, Caller, Store};
use crate::notifier::{self, NewSubscription};
use crate::notify::Subscription;

/// A subscription, as listed (never its URL's path nor its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationSubscription {
    id: Uuid,
    /// `webhook`, `slack` or `discord`.
    target: String,
    /// The URL's scheme, host and port.
    url: String,
    /// Only this project's events; absent: every project's and the installation's.
    project: Option<String>,
    /// Only these kinds (`deployment.failed`...); empty: every kind.
    kinds: Vec<String>,
    /// Where in the log it was recorded (`tx:seq`): it hears of what follows.
    since: String,
}

impl From<&Subscription> for NotificationSubscription {
    fn from(s: &Subscription) -> Self {
        let sub = &s.subscribed;
        NotificationSubscription {
            id: sub.id,
            target: sub.target.to_string(),
            url: sub.url_shown.clone(),
            project: sub.project.clone(),
            kinds: sub.kinds.iter().map(ToString::to_string).collect(),
            since: s.since.to_string(),
        }
    }
}

#[utoipa::path(get, path = "/api/notifications", tag = "notifications", summary = "Notification subscriptions",
    responses((status = 200, body = [NotificationSubscription])))]
pub async fn list(State(store): Store) -> ApiResult<Json<Vec<NotificationSubscription>>> {
    Ok(Json(notifier::subscriptions(&*store).await?.values().map(Into::into).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// `webhook` (signed JSON), `slack` or `discord` (their incoming-webhook shapes).
    target: String,
    /// `https://...` (or `http://`); kept sealed in the value table, never shown again.
    url: String,
    #[serde(default)]
    project: Option<String>,
    /// Kinds such as `deployment.failed`; none: every kind.
    #[serde(default)]
    kinds: Vec<String>,
}

/// A new subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct Subscribed {
    id: Uuid,
    url: String,
    /// A webhook's signing secret: shown this once, never again.
    secret: Option<String>,
}

#[utoipa::path(post, path = "/api/notifications", tag = "notifications", summary = "Subscribe a target to notifications",
    description = "A webhook gets Slipway's JSON with `X-Slipway-Timestamp` and `X-Slipway-Signature: v1=<hex \
HMAC-SHA256 of \"<timestamp>.<body>\">` under the secret in this answer (shown once). Slack and Discord get their \
incoming-webhook shapes.",
    request_body = Subscribe,
    responses((status = 201, body = Subscribed), (status = 400, body = ErrorBody)))]
pub async fn subscribe(
    State(store): Store,
    caller: Caller,
    JsonBody(body): JsonBody<Subscribe>,
) -> ApiResult<(StatusCode, Json<Subscribed>)> {
    let target = body.target.parse().map_err(ApiError::BadRequest)?;
    let kinds = body.kinds.iter().map(|k| k.parse()).collect::<Result<Vec<_>, String>>().map_err(ApiError::BadRequest)?;
    let new = NewSubscription { project: body.project, kinds, target, url: body.url };
    let subscribed = notifier::subscribe(&*store, &caller.actor(), new).await??;
    Ok((StatusCode::CREATED, Json(Subscribed { id: subscribed.id, url: subscribed.url_shown, secret: subscribed.secret })))
}

#[utoipa::path(delete, path = "/api/notifications/{id}", tag = "notifications", summary = "Remove a subscription",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn unsubscribe(State(store): Store, caller: Caller, Params(id): Params<Uuid>) -> ApiResult<StatusCode> {
    notifier::unsubscribe(&*store, &caller.actor(), id).await??;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// One subscription's attempts only.
    #[serde(default)]
    subscription: Option<Uuid>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// What `redeliver` takes.
    id: Uuid,
    subscription: Uuid,
    /// The notified event's id and kind, and its place in the log.
    event: Uuid,
    kind: String,
    position: String,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    latency_ms: u64,
    /// `delivered`, `retry` or `gave_up`.
    outcome: String,
    next_at: Option<chrono::DateTime<chrono::Utc>>,
    redelivery: bool,
    at: chrono::DateTime<chrono::Utc>,
}

impl From<notifier::Attempt> for DeliveryAttempt {
    fn from(a: notifier::Attempt) -> Self {
        use slipway_proto::event::DeliveryOutcome;
        let (outcome, next_at) = match a.attempt.outcome {
            DeliveryOutcome::Delivered => ("delivered", None),
            DeliveryOutcome::Retry { next_at } => ("retry", Some(next_at)),
            DeliveryOutcome::GaveUp => ("gave_up", None),
        };
        DeliveryAttempt {
            id: a.id,
            subscription: a.subscription,
            event: a.attempt.event.event_id,
            kind: a.attempt.event.kind.to_string(),
            position: a.attempt.event.position.to_string(),
            attempt: a.attempt.attempt,
            status: a.attempt.status,
            error: a.attempt.error,
            latency_ms: a.attempt.latency_ms,
            outcome: outcome.into(),
            next_at,
            redelivery: a.attempt.redelivery,
            at: a.attempt.at,
        }
    }
}

#[utoipa::path(get, path = "/api/notifications/deliveries", tag = "notifications", summary = "Delivery attempts, oldest first",
    params(DeliveryQuery),
    responses((status = 200, body = [DeliveryAttempt]), (status = 404, body = ErrorBody)))]
pub async fn deliveries(State(store): Store, QueryParams(q): QueryParams<DeliveryQuery>) -> ApiResult<Json<Vec<DeliveryAttempt>>> {
    let attempts = notifier::deliveries(&*store, q.subscription).await??;
    Ok(Json(attempts.into_iter().map(Into::into).collect()))
}

#[utoipa::path(post, path = "/api/notifications/deliveries/{id}/redeliver", tag = "notifications",
    summary = "Send an attempt's notification once more",
    params(("id" = Uuid, Path, description = "A delivery attempt")),
    responses((status = 202), (status = 404, body = ErrorBody)))]
pub async fn redeliver(State(store): Store, caller: Caller, Params(id): Params<Uuid>) -> ApiResult<StatusCode> {
    notifier::redeliver(&*store, &caller.actor(), id).await??;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// A log position `tx:seq` (as attempts show them): every matching event after it is sent again, in order.
    from: String,
}

#[utoipa::path(post, path = "/api/notifications/{id}/replay", tag = "notifications",
    summary = "Send a subscription's notifications again from a position in the log",
    params(("id" = Uuid, Path, description = "The subscription")),
    request_body = Replay,
    responses((status = 202), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replay(
    State(store): Store,
    caller: Caller,
    Params(id): Params<Uuid>,
    JsonBody(body): JsonBody<Replay>,
) -> ApiResult<StatusCode> {
    let from = body.from.parse().map_err(ApiError::BadRequest)?;
    notifier::replay(&*store, &caller.actor(), id, from).await??;
    Ok(StatusCode::ACCEPTED)
}
