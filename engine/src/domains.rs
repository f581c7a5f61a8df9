//! Custom domains, recorded: `add` and `remove` append `DomainAdded` /
//! `DomainRemoved` to the routes stream at the routes version they were
//! decided on, and decide again on a conflict, so one stream decides who
//! holds a name (a second environment asking for one is refused with the
//! holder named). An addition is recorded on the environment's stream as
//! well, so that it and the environment's removal exclude each other.
//! `set_redirect` turns a domain's redirect to HTTPS on or off. The name's
//! form and the fold are pure and live in `slipway_core::domains`,
//! re-exported here.

pub use slipway_core::domains::*;

use slipway_proto::event::{environment_stream, DomainAdded, DomainRemoved, ROUTES_STREAM};
use slipway_proto::Event;
use slipway_store::{EventStore, ExpectedVersion, StreamAppend};
use uuid::Uuid;

use crate::load;
use crate::requests::{self, Outcome, Rejection};

/// Routes `domain` to `project`'s `environment`. Adding a domain the
/// environment has already is accepted and records nothing. Refused as
/// invalid (a bad name), not found (no such environment), or a conflict
/// when another environment holds the name (the holder is named).
pub async fn add(store: &dyn EventStore, actor: &str, project: &str, environment: &str, domain: &str) -> Outcome<String> {
    let domain = match parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    // An unknown environment is named as such, whoever holds the domain
    // (and checked again below, against a removal meanwhile).
    if let Err(rejection) = requests::project_environment(store, project, environment).await? {
        return Ok(Err(rejection));
    }
    let routers = load::routers(store).await.map_err(load_error)?;
    if let Some(under) = under_router_domain(&domain, routers.values().map(|r| r.domain.as_str())) {
        return Ok(Err(Rejection::invalid(format!(
            "`{domain}` is one label under `{under}`, where routers serve every environment as `<project>-<env>.{under}`: \
             it could take another environment's host name; choose a name outside `{under}` (or deeper in it)"
        ))));
    }
    let event = Event::DomainAdded(DomainAdded { project: project.into(), environment: environment.into(), domain: domain.clone() });
    let environment_stream = environment_stream(project, environment);
    for _ in 0..5 {
        let routes = load::routes(store).await.map_err(load_error)?;
        match routes.domains.get(&domain) {
            Some((p, e)) if p == project && e == environment => return Ok(Ok(domain)),
            Some((p, e)) => {
                return Ok(Err(Rejection::conflict(format!(
                    "domain `{domain}` already routes to {p} {e}; remove it there first (slipway domain remove {p} {e} {domain})"
                ))))
            }
            None => {}
        }
        // Read after the routes: an environment removed since is seen here
        // or, removed in between, moves its stream past `version` below.
        let version = store.stream_version(&environment_stream).await?;
        if let Err(rejection) = requests::project_environment(store, project, environment).await? {
            return Ok(Err(rejection));
        }
        // Recorded on the environment's stream too, at the version it was
        // decided on: an environment removal (which writes that stream at
        // the version it read, with the routes it read) and this addition
        // cannot both land, so no domain is left routing to a removed
        // environment.
        let routes_at = ExpectedVersion::Exactly(routes.version);
        let appends = [
            (ROUTES_STREAM, routes_at, requests::envelope(ROUTES_STREAM, &event, Uuid::now_v7(), actor, None)),
            (
                environment_stream.as_str(),
                ExpectedVersion::Exactly(version),
                requests::envelope(&environment_stream, &event, Uuid::now_v7(), actor, None),
            ),
        ];
        let appends: Vec<StreamAppend<'_>> = appends
            .iter()
            .map(|(stream, expected, e)| StreamAppend { stream, expected: *expected, events: std::slice::from_ref(e) })
            .collect();
        if store.append_streams(&appends, &[]).await?.is_ok() {
            return Ok(Ok(domain));
        }
    }
    Ok(Err(Rejection::unavailable("the routes kept changing while the domain was added; try again")))
}

/// Stops routing `domain` to `project`'s `environment`; refused (not
/// found) when the environment does not have it.
pub async fn remove(store: &dyn EventStore, actor: &str, project: &str, environment: &str, domain: &str) -> Outcome<String> {
    let domain = match parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let event = Event::DomainRemoved(DomainRemoved { project: project.into(), environment: environment.into(), domain: domain.clone() });
    for _ in 0..5 {
        let routes = load::routes(store).await.map_err(load_error)?;
        if routes.domains.get(&domain) != Some(&(project.to_string(), environment.to_string())) {
            return Ok(Err(not_held(project, environment, &domain)));
        }
        if append_at(store, actor, routes.version, &event).await? {
            return Ok(Ok(domain));
        }
    }
    Ok(Err(Rejection::unavailable("the routes kept changing while the domain was removed; try again")))
}

/// Turns the redirect from plain HTTP to HTTPS of `domain`, which
/// `project`'s `environment` must have, on or off (recorded on the
/// certificates stream, which the routers' TLS tables follow).
pub async fn set_redirect(
    store: &dyn EventStore,
    actor: &str,
    project: &str,
    environment: &str,
    domain: &str,
    redirect: bool,
) -> Outcome<slipway_proto::event::HttpsRedirectSet> {
    let domain = match parse(domain) {
        Ok(d) => d,
        Err(e) => return Ok(Err(Rejection::invalid(e))),
    };
    let routes = load::routes(store).await.map_err(load_error)?;
    if routes.domains.get(&domain) != Some(&(project.to_string(), environment.to_string())) {
        return Ok(Err(not_held(project, environment, &domain)));
    }
    crate::certificates::set_redirect(store, actor, &domain, redirect).await
}

fn not_held(project: &str, environment: &str, domain: &str) -> Rejection {
    Rejection::not_found(format!("{project} {environment} has no domain `{domain}`; see slipway domain list {project}"))
}

/// Appends at `version` of the routes stream; `false` when it moved on.
async fn append_at(store: &dyn EventStore, actor: &str, version: u64, event: &Event) -> Result<bool, slipway_store::StoreError> {
    let envelope = requests::envelope(ROUTES_STREAM, event, uuid::Uuid::now_v7(), actor, None);
    Ok(store.append(ROUTES_STREAM, ExpectedVersion::Exactly(version), std::slice::from_ref(&envelope), &[]).await?.is_ok())
}

fn load_error(e: load::LoadError) -> slipway_store::StoreError {
    match e {
        load::LoadError::Store(e) => e,
        other => slipway_store::StoreError::Corrupt { stream: ROUTES_STREAM.into(), version: 0, reason: other.to_string() },
    }
}
