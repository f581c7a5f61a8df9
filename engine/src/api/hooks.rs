//! Deploy on push over HTTP: `POST /api/hooks/{provider}/{project}`, where
//! git hosts send push webhooks, and the routes that manage them — a
//! project's webhook secret (rotated, shown once) and its auto-deploy rules.
//!
//! A webhook carries no bearer token: its signature is the credential (an
//! HMAC of the body under the project's secret; GitLab sends the secret).
//! So the hook route is registered as `Access::Signature` and checks that
//! itself, before anything is read from the payload. A refused webhook
//! records nothing but the `slipway_webhooks_total` counter. An unknown
//! project, a project without a secret and a wrong signature get the same
//! 401 with the same message (after the same HMAC work), so the endpoint
//! tells an unauthenticated caller nothing about which projects exist.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_proto::event::WebhookProvider;
use slipway_store::EventStore;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, Params, QueryParams};
use super::{load_error, require_project, ApiResult, Caller, Store};
use crate::auto_deploy::{self, PushError, PushOutcome};
use crate::project::AutoDeployRule;
use crate::pull_requests::{self, PrOutcome, PrRecorded};
use crate::webhook::{self, EventKind, MAX_BODY};
use slipway_proto::event::PreviewTrigger;

/// What a webhook came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookReply {
    /// `deployed`, `unmatched` (no rule matched the branch), `skipped`,
    /// `duplicate` (this delivery id was accepted before) or `ignored` (not a push).
    status: String,
    /// The same in words.
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    deployments: Vec<HookDeployment>,
    /// Waiting deployments of earlier pushes that this one cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    superseded: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookDeployment {
    environment: String,
    deployment: Uuid,
    /// The rule's branch glob.
    rule: String,
}

fn reply(status: &str, message: String) -> HookReply {
    HookReply { status: status.into(), message, deployments: vec![], superseded: vec![] }
}

#[utoipa::path(post, path = "/api/hooks/{provider}/{project}", tag = "webhooks", summary = "Receive a push webhook",
    description = "For GitHub (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, `X-GitHub-Delivery`, \
`X-GitHub-Event: push`), GitLab (`X-Gitlab-Token: <secret>`, `Idempotency-Key` or `X-Gitlab-Event-UUID`, \
`X-Gitlab-Event: Push Hook`), Gitea and Forgejo (`X-Gitea-Signature` or `X-Forgejo-Signature: <hex>`, \
`X-Gitea-Delivery`/`X-Forgejo-Delivery`, `X-Gitea-Event`/`X-Forgejo-Event: push`) and `generic` \
(`X-Slipway-Signature: sha256=<hex>`, `X-Slipway-Delivery`, body `{\"ref\", \"after\", \"pusher\", \
\"head_commit_message\"}`). The secret is the project's webhook secret. Pull request events (GitHub and Gitea \
`pull_request`, GitLab `Merge Request Hook`) drive previews under a `pull requests` preview rule: opened, reopened or \
new commits add `pr-<number>` (settings inherited) and deploy the head commit; closed or merged removes it (deployments \
cancelled, containers retired, route removed). A fork's head commit waits for an approval (`awaiting_approval`). A push \
to a branch a `branches` preview rule matches deploys its preview too; deleting the branch removes it. A push to a branch an auto-deploy \
rule matches requests a deployment of the pushed commit (actor `webhook:<provider>:<pusher>`), cancelling \
the waiting deployments of earlier pushes to that environment; `[skip deploy]` or `[deploy skip]` in the \
head commit's message, or a deleted branch, records the push as skipped. A delivery id accepted before is \
acknowledged with 200 and deploys nothing. Bodies over 1 MiB: 413. A wrong or missing signature, an \
unknown project and a project without a secret are all the same 401, and record nothing.",
    params(("provider" = String, Path, description = "github, gitlab, gitea or generic"), ("project" = String, Path, description = "The project")),
    request_body(content = Object, description = "The provider's push payload"),
    responses((status = 202, body = HookReply, description = "Recorded: deployed, unmatched or skipped"),
        (status = 200, body = HookReply, description = "Duplicate delivery, or not a push event"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such provider"),
        (status = 409, body = ErrorBody, description = "The project kept changing; deliver again"), (status = 413, body = ErrorBody)))]
pub async fn receive(
    State(store): Store,
    Params((provider, project)): Params<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(provider) = provider.parse::<WebhookProvider>() else {
        return ApiError::NotFound(format!("no webhook provider `{provider}`; one of github, gitlab, gitea, generic")).into_response();
    };
    let (outcome, result) = match handle(&*store, provider, &project, &headers, body).await {
        Ok((outcome, status, reply)) => (outcome, Ok((status, Json(reply)))),
        Err(e) => {
            let outcome = match e.status() {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                s if s.is_client_error() => "bad_request",
                _ => "failed",
            };
            (outcome, Err(e))
        }
    };
    slipway_telemetry::metrics::global().webhook(provider.as_str(), outcome);
    result.into_response()
}

async fn handle(
    store: &dyn EventStore,
    provider: WebhookProvider,
    project: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(&'static str, StatusCode, HookReply), ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("a webhook body may be at most {MAX_BODY} bytes"))
        } else {
            ApiError::BadRequest(format!("could not read the webhook body: {}", e.body_text()))
        }
    })?;
    let presented = webhook::presented(provider, headers).map_err(ApiError::Unauthorized)?;
    let loaded = crate::requests::load_project(store, project).await?;
    let secret = match &loaded {
        Some(p) => auto_deploy::webhook_secret(store, p).await?,
        None => None,
    };
    // Unknown project, no secret, wrong signature: one answer, after the
    // same HMAC work (against a secret nobody has when there is none).
    let verified = webhook::verify(provider, &presented, &body, secret.as_deref().unwrap_or(UNUSABLE));
    let (Some(p), true) = (loaded, verified && secret.is_some()) else {
        return Err(ApiError::Unauthorized(format!(
            "the `{}` header does not verify against the webhook secret of project `{project}` (an unknown project, \
             or one without a secret, is refused the same way; `slipway project webhook {project} rotate` makes one)",
            presented.header
        )));
    };
    match webhook::event_kind(provider, headers).map_err(ApiError::BadRequest)? {
        EventKind::Other(event) => {
            let message = format!("`{event}` is not a push or pull request event; nothing to deploy");
            return Ok(("ignored", StatusCode::OK, reply("ignored", message)));
        }
        EventKind::PullRequest => return pull_request(store, provider, headers, &body, p).await,
        EventKind::Push => {}
    }
    let delivery = webhook::delivery(provider, headers).map_err(ApiError::BadRequest)?;
    let push = webhook::parse_push(provider, &body).map_err(ApiError::BadRequest)?;
    let digest = hex::encode(Sha256::digest(&body));
    let outcome = auto_deploy::record_push(store, provider, &delivery, Some(&digest), &push, p).await.map_err(push_error)?;
    Ok(match outcome {
        PushOutcome::Duplicate => {
            let message = format!("delivery `{delivery}` was received before; it is not deployed again");
            ("duplicate", StatusCode::OK, reply("duplicate", message))
        }
        PushOutcome::Skipped(reason) => ("skipped", StatusCode::ACCEPTED, reply("skipped", format!("recorded, not deployed: {reason}"))),
        PushOutcome::Deployed { deployments, refused, .. } if deployments.is_empty() && !refused.is_empty() => {
            let message = format!("recorded; nothing deployed: {}", refused.join("; "));
            ("refused", StatusCode::ACCEPTED, reply("refused", message))
        }
        PushOutcome::Deployed { deployments, .. } if deployments.is_empty() => {
            let message = format!("recorded; no auto-deploy rule of project `{project}` matches {}", push.git_ref);
            ("unmatched", StatusCode::ACCEPTED, reply("unmatched", message))
        }
        PushOutcome::Deployed { deployments, superseded, refused } => {
            let envs: Vec<&str> = deployments.iter().map(|d| d.environment.as_str()).collect();
            let mut message = format!("deploying {} to {}", crate::push::short(&push.commit), envs.join(", "));
            if !refused.is_empty() {
                message.push_str(&format!("; not deployed: {}", refused.join("; ")));
            }
            let deployments = deployments
                .into_iter()
                .map(|d| HookDeployment { environment: d.environment, deployment: d.deployment_id, rule: d.rule })
                .collect();
            ("deployed", StatusCode::ACCEPTED, HookReply { status: "deployed".into(), message, deployments, superseded })
        }
    })
}

fn push_error(e: PushError) -> ApiError {
    match e {
        PushError::Load(e) => load_error(e),
        e @ PushError::Contended(_) => ApiError::Conflict(e.to_string()),
    }
}

/// A verified pull request (merge request) event: its preview added and
/// deployed, waiting for an approval, or removed.
async fn pull_request(
    store: &dyn EventStore,
    provider: WebhookProvider,
    headers: &HeaderMap,
    body: &[u8],
    p: crate::project::Project,
) -> Result<(&'static str, StatusCode, HookReply), ApiError> {
    let name = p.name.clone();
    let delivery = webhook::delivery(provider, headers).map_err(ApiError::BadRequest)?;
    let pr = webhook::parse_pull_request(provider, body).map_err(ApiError::BadRequest)?;
    let digest = hex::encode(Sha256::digest(body));
    let outcome = pull_requests::record_pull_request(store, provider, &delivery, Some(&digest), &pr, p).await.map_err(push_error)?;
    let (environment, recorded) = match outcome {
        PrOutcome::Duplicate => {
            let message = format!("delivery `{delivery}` was received before; it is not acted on again");
            return Ok(("duplicate", StatusCode::OK, reply("duplicate", message)));
        }
        PrOutcome::Ignored(why) => return Ok(("ignored", StatusCode::OK, reply("ignored", why))),
        PrOutcome::Recorded { environment, outcome } => (environment, outcome),
    };
    let commit = crate::push::short(&pr.head_commit);
    Ok(match recorded {
        PrRecorded::Deployed { deployment, superseded, .. } => {
            let message = format!("deploying {commit} to preview {environment}");
            let deployments = vec![HookDeployment { environment, deployment, rule: PreviewTrigger::PullRequests.to_string() }];
            ("deployed", StatusCode::ACCEPTED, HookReply { status: "deployed".into(), message, deployments, superseded })
        }
        PrRecorded::AwaitingApproval { .. } => {
            let message = format!(
                "{commit} comes from a fork: preview {environment} waits until someone with deploy scope approves it \
                 (`slipway preview approve {name} {environment}`, or POST /api/projects/{name}/environments/{environment}/approve)"
            );
            ("awaiting_approval", StatusCode::ACCEPTED, reply("awaiting_approval", message))
        }
        PrRecorded::Removed => ("removed", StatusCode::ACCEPTED, reply("removed", format!("preview {environment} removed"))),
        PrRecorded::Unchanged(why) => ("unchanged", StatusCode::ACCEPTED, reply("unchanged", format!("preview {environment}: {why}"))),
    })
}

/// Verified against when a project has no secret (the result is ignored):
/// not a value `generate_secret` makes, so it never matches by accident.
const UNUSABLE: &str = "no webhook secret";

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    /// The new secret: shown this once, never again.
    secret: String,
    /// Where each provider's webhooks go (paths on this server).
    hooks: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(post, path = "/api/projects/{name}/webhook-secret", tag = "webhooks",
    summary = "Generate the project's webhook secret anew",
    description = "Returns the new secret once; the previous one stops verifying. Only its fingerprint is recorded \
(`WebhookSecretRotated`).",
    params(("name" = String, Path, description = "The project")),
    responses((status = 201, body = WebhookSecret), (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(store): Store,
    caller: Caller,
    Params(name): Params<String>,
) -> ApiResult<(StatusCode, Json<WebhookSecret>)> {
    require_project(&*store, &name).await?;
    let secret = auto_deploy::rotate_webhook_secret(&*store, &caller.actor(), &name).await??;
    let hooks = WebhookProvider::ALL.iter().map(|p| (p.to_string(), format!("/api/hooks/{p}/{name}"))).collect();
    Ok((StatusCode::CREATED, Json(WebhookSecret { secret, hooks })))
}

#[utoipa::path(get, path = "/api/projects/{name}/auto-deploy", tag = "webhooks", summary = "The project's auto-deploy rules",
    params(("name" = String, Path, description = "The project")),
    responses((status = 200, body = [AutoDeployRule]), (status = 404, body = ErrorBody)))]
pub async fn rules(State(store): Store, Params(name): Params<String>) -> ApiResult<Json<Vec<AutoDeployRule>>> {
    Ok(Json(require_project(&*store, &name).await?.auto_deploy))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRule {
    /// A branch glob: `main`, `release/*` (`*` within one path segment), `release/**` (any depth).
    branch: String,
    environment: String,
    /// Also poll the repository's matching branches this often (seconds, at least 5).
    #[serde(default)]
    poll_seconds: Option<u64>,
}

#[utoipa::path(put, path = "/api/projects/{name}/auto-deploy", tag = "webhooks",
    summary = "Set an auto-deploy rule: pushes to matching branches deploy to the environment",
    description = "Setting a glob again gives it the new environment. Answers with every rule.",
    params(("name" = String, Path, description = "The project")),
    request_body = SetRule,
    responses((status = 200, body = [AutoDeployRule]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_rule(
    State(store): Store,
    caller: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<SetRule>,
) -> ApiResult<Json<Vec<AutoDeployRule>>> {
    require_project(&*store, &name).await?;
    auto_deploy::set_rule(&*store, &caller.actor(), &name, &body.branch, &body.environment, body.poll_seconds)
        .await?
        .map_err(ApiError::from_body)?;
    Ok(Json(require_project(&*store, &name).await?.auto_deploy))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RuleQuery {
    /// The rule's glob, exactly as set.
    branch: String,
}

#[utoipa::path(delete, path = "/api/projects/{name}/auto-deploy", tag = "webhooks", summary = "Remove an auto-deploy rule",
    params(("name" = String, Path, description = "The project"), RuleQuery),
    responses((status = 200, body = [AutoDeployRule]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_rule(
    State(store): Store,
    caller: Caller,
    Params(name): Params<String>,
    QueryParams(q): QueryParams<RuleQuery>,
) -> ApiResult<Json<Vec<AutoDeployRule>>> {
    require_project(&*store, &name).await?;
    auto_deploy::remove_rule(&*store, &caller.actor(), &name, &q.branch).await??;
    Ok(Json(require_project(&*store, &name).await?.auto_deploy))
}
