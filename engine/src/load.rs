//! Loading a stream's state: read it, decode every event (refusing to fold
//! around one that cannot be read — a state that silently skipped an event
//! would be wrong: `slipway_core::projection::Projection`'s one policy),
//! and fold. The driver, the API and the CLI all load deployments,
//! environments and the routes this one way.

use slipway_proto::event::{deployment_stream, environment_stream, router_stream, RouterStarted, ROUTERS_STREAM, ROUTES_STREAM};
use slipway_proto::Event;
use slipway_store::{EventStore, RecordedEvent, StoreError};
use uuid::Uuid;

use std::convert::Infallible;

use crate::deployment::{Deployment, IllegalTransition};
use crate::environment::Environment;
use crate::lease::Liveness;
use crate::projection::{self, FoldError, Projection};
use crate::routes::{self, Routes, Traffic};
use crate::seen::SeenTraffic;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stream `{stream}` holds an undecodable event at version {version}: {reason}")]
    Undecodable { stream: String, version: u64, reason: String },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

impl<R: Into<LoadError>> From<FoldError<R>> for LoadError {
    fn from(e: FoldError<R>) -> Self {
        match e {
            FoldError::Unreadable { stream, version, reason } => LoadError::Undecodable { stream, version, reason },
            FoldError::Refused(refused) => refused.into(),
        }
    }
}

impl From<Infallible> for LoadError {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

/// Folds a stream as read into any projection, under the one policy for
/// unreadable events (`Projection`'s docs): the first is an error naming it.
pub fn fold_recorded<P>(recorded: &[RecordedEvent]) -> Result<P, LoadError>
where
    P: Projection,
    P::Refusal: Into<LoadError>,
{
    Ok(projection::fold_stored(recorded.iter().map(|r| (r.stream.as_str(), r.version, &r.envelope)))?)
}

/// Decodes every recorded event, or names the first that cannot be read.
pub fn decode_all(recorded: &[RecordedEvent]) -> Result<Vec<Event>, LoadError> {
    recorded
        .iter()
        .map(|r| {
            r.envelope.decode::<Event>().map_err(|e| LoadError::Undecodable {
                stream: r.stream.clone(),
                version: r.version,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// A deployment's state and its recorded events; `None` if it does not exist.
pub async fn deployment_with_events(store: &dyn EventStore, id: Uuid) -> Result<Option<(Deployment, Vec<RecordedEvent>)>, LoadError> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    let folded: Option<Deployment> = fold_recorded(&recorded)?;
    Ok(folded.map(|d| (d, recorded)))
}

/// A deployment's state; `None` if it does not exist.
pub async fn deployment(store: &dyn EventStore, id: Uuid) -> Result<Option<Deployment>, LoadError> {
    Ok(deployment_with_events(store, id).await?.map(|(d, _)| d))
}

/// An environment's queue and serving release.
pub async fn environment(store: &dyn EventStore, project: &str, env: &str) -> Result<Environment, LoadError> {
    environment_of_stream(store, &environment_stream(project, env)).await
}

/// Like `environment`, by stream name.
pub async fn environment_of_stream(store: &dyn EventStore, stream: &str) -> Result<Environment, LoadError> {
    let recorded = store.read_stream(stream, 1).await?;
    fold_recorded(&recorded)
}

/// Every environment as the reconciler needs it: its projection and when a
/// deployment last finished there.
pub async fn desired(store: &dyn EventStore) -> Result<Vec<crate::reconcile::Desired>, LoadError> {
    let mut out = Vec::new();
    for (project, environment) in environment_names(store).await? {
        out.push(desired_of(store, &project, &environment).await?);
    }
    Ok(out)
}

/// One environment as the reconciler needs it (`desired`'s part for one).
pub async fn desired_of(store: &dyn EventStore, project: &str, environment: &str) -> Result<crate::reconcile::Desired, LoadError> {
    let recorded = store.read_stream(&environment_stream(project, environment), 1).await?;
    let settled_at = recorded.iter().rev().find(|r| r.envelope.message_type == "DeploymentFinished").map(|r| r.recorded_at);
    let state = fold_recorded(&recorded)?;
    Ok(crate::reconcile::Desired { project: project.into(), environment: environment.into(), state, settled_at })
}

/// Every environment's route, from the routes stream.
pub async fn routes(store: &dyn EventStore) -> Result<Routes, LoadError> {
    let recorded = store.read_stream(ROUTES_STREAM, 1).await?;
    fold_recorded(&recorded)
}

/// The registered routers, with where each listens.
pub async fn routers(store: &dyn EventStore) -> Result<std::collections::BTreeMap<String, RouterStarted>, LoadError> {
    let registry = store.read_stream(ROUTERS_STREAM, 1).await?;
    Ok(routes::fold_registry(decode_all(&registry)?.iter()))
}

/// The route version, the registered routers and each one's latest
/// acknowledgement (the last event of its own stream, which also says when
/// it was last heard from).
pub async fn traffic(store: &dyn EventStore) -> Result<Traffic, LoadError> {
    Ok(traffic_seen(store).await?.traffic)
}

/// `traffic`, with the stream versions it was read at (what the driver
/// keeps and moves forward from its subscription).
pub async fn traffic_seen(store: &dyn EventStore) -> Result<SeenTraffic, LoadError> {
    let routes_version = store.stream_version(ROUTES_STREAM).await?;
    let registry = store.read_stream(ROUTERS_STREAM, 1).await?;
    let events = decode_all(&registry)?;
    let routers = routes::fold_routers(events.iter());
    let mut liveness = Liveness::default();
    for (recorded, event) in registry.iter().zip(&events) {
        liveness.registry(recorded.version, recorded.envelope.timestamp, event);
    }
    let mut acknowledged = std::collections::BTreeMap::new();
    let mut acknowledgements = std::collections::BTreeMap::new();
    for router in &routers {
        let stream = router_stream(router);
        let last = store.stream_version(&stream).await?;
        if last == 0 {
            continue;
        }
        acknowledgements.insert(router.clone(), last);
        let tail = store.read_stream(&stream, last).await?;
        for (recorded, event) in tail.iter().zip(decode_all(&tail)?) {
            liveness.heard(router, recorded.envelope.timestamp);
            if let Event::RouteAcknowledged(a) = event {
                acknowledged.insert(router.clone(), a.route_version);
            }
        }
    }
    Ok(SeenTraffic {
        traffic: Traffic { routes_version, routers, acknowledged },
        registry: registry.last().map_or(0, |r| r.version),
        acknowledgements,
        liveness,
    })
}

/// Every (project, environment) the log knows.
pub async fn environment_names(store: &dyn EventStore) -> Result<Vec<(String, String)>, StoreError> {
    let mut names = Vec::new();
    for project in crate::requests::project_names(store).await? {
        if let Some(p) = crate::requests::load_project(store, &project).await? {
            names.extend(p.environments.into_keys().map(|env| (project.clone(), env)));
        }
    }
    Ok(names)
}

/// An environment's releases, newest first, each with what it ran.
pub async fn releases(store: &dyn EventStore, project: &str, env: &str) -> Result<Vec<crate::history::Release>, LoadError> {
    let state = environment(store, project, env).await?;
    let serving = state.last_succeeded();
    let mut releases = Vec::with_capacity(state.releases.len());
    for id in state.releases.iter().rev() {
        if let Some((d, events)) = deployment_with_events(store, *id).await? {
            releases.push(crate::history::release(&d, &events, Some(*id) == serving));
        }
    }
    Ok(releases)
}
