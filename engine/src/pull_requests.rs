//! Pull request (merge request) webhooks, recorded: each accepted delivery
//! is one `PullRequestReceived` on the project's stream (so a redelivery is
//! a duplicate, as for pushes), in the same transaction as what it did to
//! its preview — added and deployed, waiting for a fork approval, or
//! removed with everything of it. What to do is `preview::plan_pull_request`
//! (pure); this module lands it at the versions it was decided from, and
//! decides again after a lost race.

use chrono::Utc;
use slipway_proto::event::{project_stream, PullRequestReceived, WebhookProvider};
use slipway_proto::Event;
use slipway_store::{EventStore, ExpectedVersion};
use uuid::Uuid;

use crate::auto_deploy::{turn, PushError};
use crate::lifecycle::{self, Writes};
use crate::preview::{self, Plan, PullRequest};
use crate::project::Project;
use crate::push;
use crate::requests::load_project;

/// How often a pull request is decided again after losing a race.
const ATTEMPTS: usize = 50;

/// What a verified pull request event came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrOutcome {
    /// Its delivery id was accepted before: nothing recorded now.
    Duplicate,
    /// Nothing for previews (no rule, an action that changes nothing): nothing recorded.
    Ignored(String),
    /// Recorded; what happened to `environment`, in words, and the
    /// deployment requested if any.
    Recorded { environment: String, outcome: PrRecorded },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrRecorded {
    Deployed { deployment: Uuid, superseded: Vec<Uuid>, added: bool },
    AwaitingApproval { commit: String, added: bool },
    Removed,
    Unchanged(String),
}

impl PrRecorded {
    /// The outcome recorded on `PullRequestReceived`.
    fn describe(&self, pr: &PullRequest) -> String {
        let commit = push::short(&pr.head_commit);
        match self {
            PrRecorded::Deployed { .. } => format!("deploying {commit}"),
            PrRecorded::AwaitingApproval { .. } => format!("{commit} is from a fork: waiting for an approval"),
            PrRecorded::Removed => "removed".into(),
            PrRecorded::Unchanged(why) => why.clone(),
        }
    }
}

/// Records a pull request event whose signature `project`'s secret verified.
pub async fn record_pull_request(
    store: &dyn EventStore,
    provider: WebhookProvider,
    delivery: &str,
    body_sha256: Option<&str>,
    pr: &PullRequest,
    project: Project,
) -> Result<PrOutcome, PushError> {
    let name = project.name.clone();
    let _turn = turn(&name).await;
    let actor = push::actor(provider, &pr.sender);
    let source = crate::requests::source_of(store, &project).await?;
    let fresh = store.stream_version(&project_stream(&name)).await? == project.version;
    let mut current = fresh.then_some(project);
    for _ in 0..ATTEMPTS {
        let mut p = match current.take() {
            Some(p) => p,
            None => load_project(store, &name).await?.ok_or_else(|| PushError::Contended(name.clone()))?,
        };
        if p.delivered(provider, delivery, body_sha256) {
            return Ok(PrOutcome::Duplicate);
        }
        let now = Utc::now();
        let mut w = Writes::default();
        let (environment, outcome) = match preview::plan_pull_request(&p, pr) {
            Plan::Ignore(why) => return Ok(PrOutcome::Ignored(why)),
            Plan::Unchanged { environment, reason } => (environment, PrRecorded::Unchanged(reason)),
            Plan::Deploy { environment, add, commit, .. } => {
                if let Some(new) = &add {
                    lifecycle::add_preview(store, &mut w, &mut p, new, &actor, now).await?;
                }
                let r = match lifecycle::request_deployment(store, &mut w, &p, &environment, &commit, &actor, &source).await? {
                    Ok(r) => r,
                    Err(refused) => return Ok(PrOutcome::Ignored(refused.to_string())),
                };
                (environment, PrRecorded::Deployed { deployment: r.deployment, superseded: r.superseded, added: add.is_some() })
            }
            Plan::AwaitApproval { environment, add, commit } => {
                if let Some(new) = &add {
                    lifecycle::add_preview(store, &mut w, &mut p, new, &actor, now).await?;
                }
                (environment, PrRecorded::AwaitingApproval { commit, added: add.is_some() })
            }
            Plan::Remove { environment, reason } => {
                let (env, routes) = lifecycle::read_for_removal(store, &p.name, &environment).await?;
                lifecycle::write_removal(&mut w, &p, (&environment, &env), &reason, &actor, &routes);
                (environment, PrRecorded::Removed)
            }
        };
        let (deployment, superseded) = match &outcome {
            PrRecorded::Deployed { deployment, superseded, .. } => (Some(*deployment), superseded.clone()),
            _ => (None, Vec::new()),
        };
        let received = Event::PullRequestReceived(PullRequestReceived {
            provider,
            delivery: delivery.into(),
            body_sha256: body_sha256.map(Into::into),
            action: pr.raw_action.clone(),
            number: pr.number,
            head_commit: pr.head_commit.clone(),
            head_branch: pr.head_branch.clone(),
            fork: pr.fork,
            sender: pr.sender.clone(),
            environment: environment.clone(),
            outcome: outcome.describe(pr),
            deployment,
            superseded,
            at: now,
        });
        w.add(&project_stream(&name), ExpectedVersion::Exactly(p.version), &received, Uuid::now_v7(), &actor);
        if w.commit(store).await? {
            return Ok(PrOutcome::Recorded { environment, outcome });
        }
    }
    Err(PushError::Contended(name))
}
