//! `GET /api/environments`: every environment at a glance, for the
//! dashboard's first page. Each environment's status (the serving release
//! and its live state, its domains and their certificates, what is queued)
//! and its traffic over the last hour, in one answer: a page of 200
//! projects would otherwise cost the browser several requests per
//! environment, each reading the routes and certificates again.
//!
//! The traffic comes from the routers' per-minute samples
//! (`slipway_store::traffic`), summed over the routers.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::deployments::{Limit, MAX_LIMIT};
use super::error::ErrorBody;
use super::extract::QueryParams;
use super::{load_error, read_position, ApiResult, ReadPosition, Store};
use crate::queries::{self, EnvironmentStatus, Surroundings};

/// How far back the traffic goes, in minutes.
const TRAFFIC_MINUTES: i64 = 60;
/// Environments whose status is read at once (each reads two streams).
const AT_ONCE: usize = 8;

/// `?limit=N&after=NAME`: a page of projects, by name.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OverviewPage {
    /// At most this many projects' environments (default and most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// Only projects whose name sorts after this one.
    after: Option<String>,
}

/// One environment: its status and its recent traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentGlance {
    #[serde(flatten)]
    status: EnvironmentStatus,
    /// Requests and errors per minute over the last hour, summed over the
    /// routers, oldest first; minutes without a sample are left out.
    traffic: Vec<TrafficMinute>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct TrafficMinute {
    /// Whole minutes since the Unix epoch (UTC).
    minute: i64,
    requests: i64,
    /// 5xx answers and upstream errors.
    errors: i64,
}

#[utoipa::path(get, path = "/api/environments", tag = "environments",
    summary = "Every environment at a glance: status and the last hour's traffic",
    description = "For each project of the page (by name) and each of its environments: the same status as \
`GET /api/projects/{name}/environments/{env}`, plus `traffic`, the routers' request and error counts per minute over the \
last hour (summed over the routers).",
    params(OverviewPage),
    responses((status = 200, body = [EnvironmentGlance]), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(store): Store,
    QueryParams(q): QueryParams<OverviewPage>,
) -> ApiResult<(ReadPosition, Json<Vec<EnvironmentGlance>>)> {
    let limit = Limit { limit: q.limit }.get_or(MAX_LIMIT)?;
    let (projects, at) = queries::projects(&*store, q.after.as_deref(), limit).await?;
    let around = Surroundings::load(&*store).await.map_err(load_error)?;
    let since = slipway_store::traffic::minute_of(chrono::Utc::now().timestamp()) - TRAFFIC_MINUTES + 1;
    let mut traffic = summed(store.operational().traffic(since).await?);
    let envs: Vec<(String, String)> = projects.iter().flat_map(|p| p.environments.iter().map(|e| (p.name.clone(), e.clone()))).collect();
    let (store, around) = (&*store, &around);
    let statuses: Vec<EnvironmentStatus> = stream::iter(envs)
        .map(|(project, env)| async move { queries::status_in(store, &project, &env, around).await })
        .buffered(AT_ONCE)
        .try_collect()
        .await
        .map_err(load_error)?;
    let glances = statuses
        .into_iter()
        .map(|status| {
            let traffic = traffic.remove(&(status.project.clone(), status.environment.clone())).unwrap_or_default();
            EnvironmentGlance { status, traffic }
        })
        .collect();
    Ok((read_position(at), Json(glances)))
}

/// The routers' samples summed per environment and minute, oldest first.
fn summed(samples: Vec<slipway_store::traffic::TrafficSample>) -> BTreeMap<(String, String), Vec<TrafficMinute>> {
    let mut by_minute: BTreeMap<(String, String), BTreeMap<i64, TrafficMinute>> = BTreeMap::new();
    for s in samples {
        let minute = by_minute.entry((s.project, s.environment)).or_default().entry(s.minute).or_default();
        minute.minute = s.minute;
        minute.requests = minute.requests.saturating_add(s.requests);
        minute.errors = minute.errors.saturating_add(s.errors);
    }
    by_minute.into_iter().map(|(env, minutes)| (env, minutes.into_values().collect())).collect()
}

#[cfg(test)]
mod tests {
    use slipway_store::traffic::TrafficSample;

    use super::*;

    fn sample(router: &str, env: &str, minute: i64, requests: i64, errors: i64) -> TrafficSample {
        TrafficSample { router: router.into(), project: "p".into(), environment: env.into(), minute, requests, errors }
    }

    #[test]
    fn routers_are_summed_per_environment_and_minute() {
        let got = summed(vec![
            sample("r1", "live", 11, 5, 1),
            sample("r2", "live", 10, 2, 0),
            sample("r2", "live", 11, 3, 0),
            sample("r1", "test", 11, 1, 1),
        ]);
        let live = &got[&("p".to_string(), "live".to_string())];
        assert_eq!(live, &[TrafficMinute { minute: 10, requests: 2, errors: 0 }, TrafficMinute { minute: 11, requests: 8, errors: 1 }]);
        assert_eq!(got[&("p".to_string(), "test".to_string())], [TrafficMinute { minute: 11, requests: 1, errors: 1 }]);
    }
}
