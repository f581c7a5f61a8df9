//! Projections of traffic: the routes stream (which upstreams serve each
//! environment, and the route version — the stream's version — that routers
//! acknowledge) and the routers stream (which routers a switch waits for).
//! Pure; the routers and the driver load them through `load`.

use std::collections::{BTreeMap, BTreeSet};

use slipway_proto::event::{RouteReason, RouterStarted};
use slipway_proto::Event;
use uuid::Uuid;

/// One environment's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub deployment: Option<Uuid>,
    pub upstreams: Vec<String>,
    /// Where a request goes if the upstreams refuse it (the previous
    /// release, while the new one is watched).
    pub standby: Vec<String>,
    /// The route version that last changed it.
    pub version: u64,
}

/// Every environment's route, as of route version `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub version: u64,
    /// (project, environment) -> route.
    pub by_environment: BTreeMap<(String, String), Route>,
    /// Environments whose route was removed and no cutover has routed since.
    pub removed: BTreeSet<(String, String)>,
    /// Custom domains, to the environment each routes to (`domains.rs`).
    pub domains: crate::domains::Domains,
}

impl Routes {
    /// Applies the routes stream's next event (version `self.version + 1`).
    pub fn apply(&mut self, event: &Event) {
        self.version += 1;
        crate::domains::apply(&mut self.domains, event);
        if let Event::RouteRemoved(r) = event {
            let key = (r.project.clone(), r.environment.clone());
            self.by_environment.remove(&key);
            self.removed.insert(key);
        }
        if let Event::RouteChanged(r) = event {
            let key = (r.project.clone(), r.environment.clone());
            // A deployment cancelled by the removal may still move the route
            // back (revert, rollback): that must not bring the host name
            // back. Only a new release's cutover routes it again.
            if r.reason != RouteReason::Cutover && self.removed.contains(&key) {
                return;
            }
            self.removed.remove(&key);
            self.by_environment.insert(
                (r.project.clone(), r.environment.clone()),
                Route { deployment: r.deployment_id, upstreams: r.upstreams.clone(), standby: r.standby.clone(), version: self.version },
            );
        }
    }
}

pub fn fold_routes<'a>(events: impl IntoIterator<Item = &'a Event>) -> Routes {
    let Ok(routes) = crate::projection::fold(events);
    routes
}

/// The routers registered now (started, and neither cleanly stopped nor
/// expired since).
pub fn fold_routers<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeSet<String> {
    fold_registry(events).into_keys().collect()
}

/// The routers registered now, each with how it last registered (where it
/// listens, its domain).
pub fn fold_registry<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeMap<String, RouterStarted> {
    let mut live = BTreeMap::new();
    for e in events {
        match registration(e) {
            Some(Registration::Started(r)) => {
                live.insert(r.router_id.clone(), r.clone());
            }
            Some(Registration::Gone(id)) => {
                live.remove(id);
            }
            None => {}
        }
    }
    live
}

/// What an event of the routers stream says of a router.
pub enum Registration<'a> {
    /// It registered (again): switches from now on wait for it.
    Started(&'a RouterStarted),
    /// It stopped cleanly, or was expired: switches no longer wait for it.
    Gone(&'a str),
}

/// What `event` says of a router's registration, if anything.
pub fn registration(event: &Event) -> Option<Registration<'_>> {
    match event {
        Event::RouterStarted(r) => Some(Registration::Started(r)),
        Event::RouterStopped(r) => Some(Registration::Gone(&r.router_id)),
        Event::RouterExpired(r) => Some(Registration::Gone(&r.router_id)),
        _ => None,
    }
}

/// What a traffic switch needs to know: the current route version, the
/// registered routers and how far each has acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub routes_version: u64,
    pub routers: BTreeSet<String>,
    pub acknowledged: BTreeMap<String, u64>,
}

impl Traffic {
    /// The routers among `expected` that are still registered and have not
    /// acknowledged `version` yet. A router that stopped cleanly or was
    /// expired (`lease`) is not waited for; one that started later read
    /// every route when it started.
    pub fn waiting_for(&self, expected: &[String], version: u64) -> Vec<String> {
        expected
            .iter()
            .filter(|r| self.routers.contains(*r))
            .filter(|r| self.acknowledged.get(*r).copied().unwrap_or(0) < version)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use slipway_proto::event::{RouteChanged, RouteRemoved, RouterExpired, RouterStopped};

    fn changed(env: &str, port: u16) -> Event {
        Event::RouteChanged(RouteChanged {
            project: "hello".into(),
            environment: env.into(),
            deployment_id: Some(Uuid::from_u128(port as u128)),
            upstreams: vec![format!("127.0.0.1:{port}")],
            reason: RouteReason::Cutover,
            standby: vec![],
        })
    }

    #[test]
    fn the_last_change_of_each_environment_wins_and_versions_count_every_event() {
        let routes = fold_routes(&[changed("test", 1), changed("live", 2), changed("test", 3)]);
        assert_eq!(routes.version, 3);
        let test = &routes.by_environment[&("hello".to_string(), "test".to_string())];
        assert_eq!((test.upstreams.as_slice(), test.version), (&["127.0.0.1:3".to_string()][..], 3));
        assert_eq!(routes.by_environment[&("hello".to_string(), "live".to_string())].version, 2);
    }

    #[test]
    fn a_removed_route_comes_back_only_with_a_cutover() {
        let removed = Event::RouteRemoved(RouteRemoved { project: "hello".into(), environment: "test".into() });
        let mut revert = changed("test", 4);
        if let Event::RouteChanged(r) = &mut revert {
            r.reason = RouteReason::Revert;
        }
        let routes = fold_routes(&[changed("test", 1), changed("live", 2), removed.clone(), revert.clone()]);
        assert_eq!(routes.version, 4);
        assert!(!routes.by_environment.contains_key(&("hello".to_string(), "test".to_string())), "a revert after the removal");
        assert!(routes.by_environment.contains_key(&("hello".to_string(), "live".to_string())));
        let routes = fold_routes(&[changed("test", 1), removed, changed("test", 5), revert]);
        assert_eq!(routes.by_environment[&("hello".to_string(), "test".to_string())].upstreams, vec!["127.0.0.1:4".to_string()]);
    }

    #[test]
    fn stopped_and_expired_routers_are_not_waited_for_and_unacknowledged_ones_are() {
        let started = |id: &str| {
            Event::RouterStarted(RouterStarted { router_id: id.into(), listen: String::new(), domain: String::new(), lease_ms: None })
        };
        let expired = Event::RouterExpired(RouterExpired { router_id: "d".into(), last_seen: DateTime::UNIX_EPOCH, lease_ms: 1 });
        let stopped = Event::RouterStopped(RouterStopped { router_id: "b".into() });
        let routers = fold_routers(&[started("a"), started("b"), started("c"), started("d"), stopped, expired.clone()]);
        let traffic = Traffic { routes_version: 5, routers, acknowledged: [("a".to_string(), 5)].into() };
        let expected = vec!["a".to_string(), "b".to_string(), "c".to_string(), "d".to_string()];
        assert_eq!(traffic.waiting_for(&expected, 5), vec!["c".to_string()]);
        assert_eq!(traffic.waiting_for(&expected, 4), vec!["c".to_string()]);
        // Registered again, it is waited for by switches that begin from then on.
        let routers = fold_routers(&[started("d"), expired, started("d")]);
        assert!(routers.contains("d"));
    }
}
