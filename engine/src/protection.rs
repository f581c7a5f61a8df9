//! Protected environments, recorded: `protect`, `set_freeze`,
//! `remove_freeze` (on the project stream), `approve` and `reject` (at the
//! deployment stream's version decided on; a rejection comes with a
//! `CancelRequested`, so it ends the way every cancel does). Who may
//! override a freeze (admin scope) is the API's and the local CLI's to
//! say; this module records who did and why. The pure decisions
//! (`may_approve`, `frozen`, `gate`, schedule and duration checks) are
//! `slipway_core::protection`, re-exported here.

pub use slipway_core::protection::*;

use slipway_proto::event::{
    deployment_stream, project_stream, CancelRequested, DeploymentApproved, DeploymentRejected, EnvironmentProtected, FreezeWindowRemoved,
    FreezeWindowSet,
};
use slipway_proto::Event;
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use uuid::Uuid;

use crate::deployment::Deployment;
use crate::rejection::Rejection;
use crate::requests::{envelope, project_environment};
use slipway_core::project::Project;

/// A refused protection request is a `Rejection`: `Forbidden` when the
/// actor may not do it (self-approval, a second approval by the same
/// actor), `Conflict` when the environment is inside a freeze window
/// (naming it), `NotFound` and `Invalid` as elsewhere.
pub type Outcome<T> = Result<Result<T, Rejection>, StoreError>;

/// Appends `event` to the project's stream once `check` passes on the
/// project (whose `environment` must exist).
async fn append_to_project(
    store: &dyn EventStore,
    actor: &str,
    (project, environment): (&str, &str),
    event: Event,
    check: impl FnOnce(&Project) -> Result<(), Rejection>,
) -> Outcome<()> {
    let p = match project_environment(store, project, environment).await? {
        Ok(p) => p,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Err(rejection) = check(&p) {
        return Ok(Err(rejection));
    }
    let stream = project_stream(project);
    let e = envelope(&stream, &event, Uuid::now_v7(), actor, None);
    store
        .append(&stream, ExpectedVersion::Any, &[e], &[])
        .await?
        .map_err(|c| StoreError::InvalidAppend { stream: c.stream, reason: "an append at any version conflicted".into() })?;
    Ok(Ok(()))
}

/// A deployment to `environment` waits for `approvals` approvals from now on (0: none).
pub async fn protect(store: &dyn EventStore, actor: &str, project: &str, environment: &str, approvals: u32) -> Outcome<()> {
    let approvals = match check_approvals(approvals) {
        Ok(n) => n,
        Err(e) => return Ok(Err(Rejection::Invalid(e))),
    };
    let event = Event::EnvironmentProtected(EnvironmentProtected { environment: environment.into(), approvals });
    append_to_project(store, actor, (project, environment), event, |_| Ok(())).await
}

pub async fn set_freeze(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    environment: &str,
    schedule: &str,
    duration: u64,
) -> Outcome<()> {
    if let Err(e) = check_schedule(schedule) {
        return Ok(Err(Rejection::Invalid(e)));
    }
    let event =
        Event::FreezeWindowSet(FreezeWindowSet { environment: environment.into(), schedule: schedule.into(), duration_seconds: duration });
    append_to_project(store, actor, (project, environment), event, |_| Ok(())).await
}

pub async fn remove_freeze(store: &dyn EventStore, actor: &str, project: &str, environment: &str, schedule: &str) -> Outcome<()> {
    let event = Event::FreezeWindowRemoved(FreezeWindowRemoved { environment: environment.into(), schedule: schedule.into() });
    append_to_project(store, actor, (project, environment), event, |p| freeze_to_remove(p, environment, schedule)).await
}

/// The deployment and who requested it (the actor of its request).
async fn requested(store: &dyn EventStore, id: Uuid) -> Outcome<(Deployment, String, u64)> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    let requester = recorded.first().map(|r| r.envelope.actor.clone()).unwrap_or_default();
    let version = recorded.last().map_or(0, |r| r.version);
    let mut state = None;
    for r in &recorded {
        let event = r.envelope.decode::<Event>().map_err(|e| StoreError::Corrupt {
            stream: r.stream.clone(),
            version: r.version,
            reason: e.to_string(),
        })?;
        state = crate::deployment::evolve(state, &event).ok();
    }
    match state {
        Some(d) => Ok(Ok((d, requester, version))),
        None => Ok(Err(Rejection::NotFound(format!("no deployment {id}")))),
    }
}

/// Where a deployment's approvals stand after one was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Approvals {
    /// Approvals recorded, this one included.
    pub given: u32,
    /// Approvals the deployment waits for before it starts.
    pub required: u32,
}

impl Approvals {
    /// What approving `deployment` once more makes of its approvals.
    fn after_one_more(deployment: &Deployment) -> Approvals {
        let given = u32::try_from(deployment.approvals.len()).unwrap_or(u32::MAX).saturating_add(1);
        Approvals { given, required: deployment.approvals_required }
    }

    /// "1 of 2 approvals: it waits for 1 more" or "2 of 2 approvals: it starts".
    pub fn summary(&self) -> String {
        let Approvals { given, required } = *self;
        if given >= required {
            format!("{given} of {required} approval(s): it starts")
        } else {
            format!("{given} of {required} approval(s): it waits for {} more", required - given)
        }
    }
}

/// Approves deployment `id` as `actor`; it starts once it has every approval it waits for.
pub async fn approve(store: &dyn EventStore, actor: &str, id: Uuid, reason: &str) -> Outcome<Approvals> {
    let approved = |_: &Deployment| vec![Event::DeploymentApproved(DeploymentApproved { by: actor.into(), reason: reason.into() })];
    Ok(decide(store, actor, id, may_approve, approved).await?.map(|d| Approvals::after_one_more(&d)))
}

/// Rejects deployment `id` as `actor`: it is cancelled, naming who and why.
pub async fn reject(store: &dyn EventStore, actor: &str, id: Uuid, reason: &str) -> Outcome<()> {
    let rejected = decide(store, actor, id, may_reject, |_| {
        let why = if reason.is_empty() { format!("rejected by {actor}") } else { format!("rejected by {actor}: {reason}") };
        vec![
            Event::DeploymentRejected(DeploymentRejected { by: actor.into(), reason: reason.into() }),
            Event::CancelRequested(CancelRequested { reason: why }),
        ]
    })
    .await?;
    Ok(rejected.map(|_| ()))
}

/// Records `events` on deployment `id` as `actor`, if `rule` allows it;
/// returns the deployment as it was decided on (before the events).
async fn decide(
    store: &dyn EventStore,
    actor: &str,
    id: Uuid,
    rule: fn(&Deployment, &str, &str) -> Result<(), Rejection>,
    events: impl Fn(&Deployment) -> Vec<Event>,
) -> Outcome<Deployment> {
    loop {
        let (d, requester, version) = match requested(store, id).await? {
            Ok(found) => found,
            Err(refused) => return Ok(Err(refused)),
        };
        if let Err(refused) = rule(&d, &requester, actor) {
            return Ok(Err(refused));
        }
        let stream = deployment_stream(id);
        let envelopes: Vec<_> = events(&d).iter().map(|e| envelope(&stream, e, id, actor, None)).collect();
        // At the version decided on: a second approver racing this one reads again.
        if store.append(&stream, ExpectedVersion::Exactly(version), &envelopes, &[]).await?.is_ok() {
            return Ok(Ok(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Approvals;

    #[test]
    fn an_approval_says_how_many_of_how_many_and_what_follows() {
        assert_eq!(Approvals { given: 1, required: 2 }.summary(), "1 of 2 approval(s): it waits for 1 more");
        assert_eq!(Approvals { given: 2, required: 2 }.summary(), "2 of 2 approval(s): it starts");
        assert_eq!(Approvals { given: 1, required: 3 }.summary(), "1 of 3 approval(s): it waits for 2 more");
    }
}
