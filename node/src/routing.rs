//! Keeps a router's table in step with the routes stream. A router reads
//! every route when it starts (so a restarted router serves the current
//! releases before it accepts a connection), registers itself with its
//! lease, and then applies each new route version as one table swap and
//! acknowledges it on its own stream — the engine completes a switch when
//! every registered router has. A clean stop deregisters, so switches stop
//! waiting for it. A router that has written nothing for a third of its
//! lease acknowledges its route version again (its heartbeat); one silent
//! past its lease (killed, hung, cut off from the store) is expired by the
//! engine and no longer waited for. Each heartbeat also looks at the
//! routers stream: a router that finds itself expired (it was cut off, and
//! lives) reads every route afresh and registers again.
//!
//! While a release is watched (its route has a standby), the router also
//! reports what it counted of that release's requests when they fail
//! (`error_reports`), so the engine can roll back on the routers' 5xx and
//! upstream errors. Every few seconds it also writes each environment's
//! request and error counts per minute to the store (`traffic`), for the
//! dashboard's chart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_engine::lease::heartbeat_every;
use slipway_engine::load::{self, LoadError};
use slipway_engine::routes::{registration, Registration, Routes};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{
    deployment_stream, router_stream, RouteAcknowledged, RouterStarted, RouterStopped, ROUTERS_STREAM, ROUTES_STREAM,
};
use slipway_proto::{Envelope, Event};
use slipway_router::{Route, RouteHandle, RouteTable, Stats};

use crate::error_reports::{Reporter, Watched};
use crate::traffic::{Sampler, SAMPLE_EVERY};
use slipway_store::subscription::wait_for_wakeup;
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use uuid::Uuid;

/// How long to wait for a wake-up before reading the routes stream anyway.
const POLL: Duration = Duration::from_millis(500);
/// How often the counts of watched routes are looked at (a report goes out
/// at most once a second per route: `error_reports::EVERY`).
const LOOK_AT_COUNTS: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Stable across restarts: a switch waiting for this router is
    /// satisfied when it comes back under the same id.
    pub router_id: String,
    /// Host names are `<project>-<environment>.<domain>`.
    pub domain: String,
    /// Where it listens (recorded for operators).
    pub listen: SocketAddr,
    /// How long it may write nothing before the engine expires it (it
    /// writes at least every third of it). Recorded with its registration.
    pub lease: Duration,
}

/// The host name an environment is served under.
pub fn host_name(project: &str, environment: &str, domain: &str) -> String {
    format!("{project}-{environment}.{domain}")
}

/// The router's table for these routes. Upstreams that do not parse as
/// socket addresses are left out (and logged); they cannot come from the
/// engine, which writes `127.0.0.1:PORT`. A route whose version is the
/// same as in `previous` keeps counting into the same counters; a changed
/// one starts at zero. An environment's custom domains serve its route
/// too (the same counters); those of an environment with no route yet
/// answer that nothing is served there (503), rather than falling through
/// to a wildcard that covers them. A custom domain never takes an
/// environment's own `<project>-<env>.<domain>` name.
pub fn table(routes: &Routes, domain: &str, previous: &RouteTable) -> RouteTable {
    let by_environment: BTreeMap<(&str, &str), (String, Route)> = routes
        .by_environment
        .iter()
        .map(|((project, environment), route)| {
            let parse = |list: &[String]| -> Vec<SocketAddr> {
                list.iter()
                    .filter_map(|u| match u.parse::<SocketAddr>() {
                        Ok(addr) => Some(addr),
                        Err(e) => {
                            tracing::error!(upstream = %u, error = %e, "route names an upstream that is not HOST:PORT");
                            None
                        }
                    })
                    .collect()
            };
            let (upstreams, standby) = (parse(&route.upstreams), parse(&route.standby));
            let label = match route.deployment {
                Some(d) => format!("{project}/{environment} deployment {d}"),
                None => format!("{project}/{environment} (no release)"),
            };
            let host = host_name(project, environment, domain);
            let stats = match previous.get(&host) {
                Some(before) if before.route_version == route.version => before.stats.clone(),
                _ => Stats::default(),
            };
            ((project.as_str(), environment.as_str()), (host, Route { upstreams, standby, route_version: route.version, label, stats }))
        })
        .collect();
    let custom: Vec<(String, Route)> = routes
        .domains
        .iter()
        .map(|(name, (project, environment))| match by_environment.get(&(project.as_str(), environment.as_str())) {
            Some((_, route)) => (name.clone(), route.clone()),
            None => {
                let label = format!("{project}/{environment} (no release)");
                (name.clone(), Route { upstreams: vec![], standby: vec![], route_version: 0, label, stats: Stats::default() })
            }
        })
        .collect();
    // Later entries win: the environments' own names come last.
    RouteTable::new(custom.into_iter().chain(by_environment.into_values()))
}

/// A router's view of the routes, loaded and registered: call `follow` to
/// keep it current.
pub struct Follower {
    store: Arc<dyn EventStore>,
    options: RouterOptions,
    routes: Routes,
    handle: RouteHandle,
    reporter: Reporter,
    /// How far the routers stream has been read (from this router's last
    /// registration on), and whether it is registered as of there.
    registry: u64,
    registered: bool,
    /// When it last wrote on its own stream (an acknowledgement), and last
    /// looked at the routers stream.
    wrote: tokio::time::Instant,
    looked: tokio::time::Instant,
    /// Per-minute traffic not yet written for good, and when it was last sampled.
    sampler: Sampler,
    sampled: tokio::time::Instant,
}

impl Follower {
    /// Reads every route, builds the table, registers the router and
    /// acknowledges the route version it serves.
    pub async fn start(store: Arc<dyn EventStore>, options: RouterOptions) -> Result<Follower, LoadError> {
        let routes = load::routes(&*store).await?;
        let handle = RouteHandle::new(table(&routes, &options.domain, &RouteTable::default()));
        let (reporter, now) = (Reporter::default(), tokio::time::Instant::now());
        let mut follower = Follower {
            store,
            options,
            routes,
            handle,
            reporter,
            registry: 0,
            registered: false,
            wrote: now,
            looked: now,
            sampler: Sampler::default(),
            sampled: now,
        };
        follower.register().await?;
        follower.acknowledge().await?;
        Ok(follower)
    }

    /// Records `RouterStarted` with the lease: from now on switches wait for it.
    async fn register(&mut self) -> Result<(), StoreError> {
        let lease_ms = u64::try_from(self.options.lease.as_millis()).unwrap_or(u64::MAX);
        let started = Event::RouterStarted(RouterStarted {
            router_id: self.options.router_id.clone(),
            listen: self.options.listen.to_string(),
            domain: self.options.domain.clone(),
            lease_ms: Some(lease_ms),
        });
        self.registry = append(&*self.store, &self.options.router_id, ROUTERS_STREAM, &started).await?;
        self.registered = true;
        Ok(())
    }

    /// The handle the proxy serves from.
    pub fn handle(&self) -> RouteHandle {
        self.handle.clone()
    }

    /// Applies and acknowledges new route versions until `shutdown`, then
    /// deregisters. A store outage is retried; routing carries on with the
    /// table it has.
    pub async fn follow(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut wake = self.store.wakeups();
        let mut look = tokio::time::interval(LOOK_AT_COUNTS);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            wake.borrow_and_update();
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "reading routes failed; retrying");
            }
            let every = heartbeat_every(self.options.lease);
            if self.looked.elapsed() >= every || self.wrote.elapsed() >= every {
                self.keep_alive(every).await;
            }
            // Between two reads of the routes, look at the counts.
            let wait = wait_for_wakeup(&mut wake, POLL);
            tokio::pin!(wait);
            let stop = loop {
                tokio::select! {
                    _ = &mut shutdown => break true,
                    _ = &mut wait => break false,
                    _ = look.tick() => {
                        self.report_errors().await;
                        if self.sampled.elapsed() >= SAMPLE_EVERY {
                            self.sample_traffic().await;
                        }
                    }
                }
            };
            if stop {
                break;
            }
        }
        let stopped = Event::RouterStopped(RouterStopped { router_id: self.options.router_id.clone() });
        if let Err(e) = append(&*self.store, &self.options.router_id, ROUTERS_STREAM, &stopped).await {
            tracing::warn!(error = %e, "could not deregister the router; switches will wait for it until it is back");
        }
    }

    /// Every third of the lease: registers again if the engine expired the
    /// router meanwhile (looked at even while route changes keep it
    /// writing: it may have been cut off before them), and, if it has
    /// written nothing for that long, acknowledges the route version it
    /// serves (the heartbeat). A failure is logged and tried again on the
    /// next pass (every `POLL`).
    async fn keep_alive(&mut self, every: Duration) {
        let mut rejoined = false;
        match self.still_registered().await {
            Ok(true) => self.looked = tokio::time::Instant::now(),
            Ok(false) => {
                if let Err(e) = self.rejoin().await {
                    tracing::warn!(error = %e, "could not register the router again; retrying");
                    return;
                }
                (self.looked, rejoined) = (tokio::time::Instant::now(), true);
                tracing::warn!(router = %self.options.router_id, "the engine had expired this router (silent past its lease); every route read again, registered again");
            }
            // Heartbeat anyway: being heard from matters more than the look.
            Err(e) => tracing::warn!(error = %e, "could not read the routers' registrations"),
        }
        // After registering again: acknowledge the routes read afresh.
        if self.wrote.elapsed() < every && !rejoined {
            return;
        }
        if let Err(e) = self.acknowledge().await {
            tracing::warn!(error = %e, "the router's heartbeat failed; retrying");
        }
    }

    /// Reads the routers stream past what was read: is this router still
    /// registered (not expired, nor stopped by a namesake)? An event it
    /// cannot read (a newer version's) is logged and passed over.
    async fn still_registered(&mut self) -> Result<bool, StoreError> {
        let recorded = self.store.read_stream(ROUTERS_STREAM, self.registry + 1).await?;
        for r in &recorded {
            self.registry = r.version;
            let event = match r.envelope.decode::<Event>() {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(version = r.version, error = %e, "an event of the routers stream cannot be read; passed over");
                    continue;
                }
            };
            match registration(&event) {
                Some(Registration::Started(s)) if s.router_id == self.options.router_id => self.registered = true,
                Some(Registration::Gone(id)) if id == self.options.router_id => self.registered = false,
                _ => {}
            }
        }
        Ok(self.registered)
    }

    /// Back after an expiry: every route read afresh (any change made while
    /// it was cut off is in), the table swapped, then registered again, so
    /// every switch from now on waits for it.
    async fn rejoin(&mut self) -> Result<(), LoadError> {
        let routes = load::routes(&*self.store).await?;
        self.handle.replace(table(&routes, &self.options.domain, &self.handle.current()));
        self.routes = routes;
        self.register().await?;
        Ok(())
    }

    /// Applies route versions after the current one, if any, and acknowledges.
    async fn catch_up(&mut self) -> Result<(), LoadError> {
        let recorded = self.store.read_stream(ROUTES_STREAM, self.routes.version + 1).await?;
        if recorded.is_empty() {
            return Ok(());
        }
        for event in load::decode_all(&recorded)? {
            self.routes.apply(&event);
        }
        self.handle.replace(table(&self.routes, &self.options.domain, &self.handle.current()));
        tracing::debug!(route_version = self.routes.version, "routes applied");
        self.acknowledge().await?;
        Ok(())
    }

    /// Reports the error counts of watched routes that are due (see
    /// `error_reports`) on their deployments' streams.
    async fn report_errors(&mut self) {
        let table = self.handle.current();
        let watched: Vec<Watched> = self
            .routes
            .by_environment
            .iter()
            .filter(|(_, route)| !route.standby.is_empty())
            .filter_map(|((project, environment), route)| {
                let deployment = route.deployment?;
                let served = table.get(&host_name(project, environment, &self.options.domain))?;
                (served.route_version == route.version).then(|| Watched {
                    deployment,
                    route_version: route.version,
                    counts: served.stats.counts(),
                })
            })
            .collect();
        if watched.is_empty() {
            return;
        }
        for (deployment, observed) in self.reporter.due(&self.options.router_id, Utc::now(), &watched) {
            let version = observed.route_version;
            let event = Event::RouterErrorsObserved(observed);
            if let Err(e) = append(&*self.store, &self.options.router_id, &deployment_stream(deployment), &event).await {
                tracing::warn!(%deployment, error = %e, "could not report the router's error counts; trying again");
                self.reporter.unsent(deployment, version);
            }
        }
    }

    /// Adds each environment's counts since the last look to the current
    /// minute and writes the minutes held (`traffic`). A failed write is
    /// logged and the minutes kept for the next try; routing is not
    /// disturbed either way.
    async fn sample_traffic(&mut self) {
        self.sampled = tokio::time::Instant::now();
        let now_s = Utc::now().timestamp();
        let table = self.handle.current();
        for (project, environment) in self.routes.by_environment.keys() {
            if let Some(served) = table.get(&host_name(project, environment, &self.options.domain)) {
                self.sampler.observe(project, environment, served.route_version, &served.stats.counts(), now_s);
            }
        }
        let samples = self.sampler.samples(&self.options.router_id);
        match self.store.operational().record_traffic(&samples, Sampler::prune_before(now_s)).await {
            Ok(()) => {
                let routed = &self.routes.by_environment;
                self.sampler.written(now_s, |p, e| routed.contains_key(&(p.to_string(), e.to_string())));
            }
            Err(e) => tracing::warn!(error = %e, "could not write the router's traffic samples; trying again"),
        }
    }

    /// Acknowledges the route version it serves (also its heartbeat).
    async fn acknowledge(&mut self) -> Result<(), StoreError> {
        let ack =
            Event::RouteAcknowledged(RouteAcknowledged { router_id: self.options.router_id.clone(), route_version: self.routes.version });
        append(&*self.store, &self.options.router_id, &router_stream(&self.options.router_id), &ack).await?;
        self.wrote = tokio::time::Instant::now();
        Ok(())
    }
}

/// Appends `event` to `stream` as this router; the stream's version after it.
async fn append(store: &dyn EventStore, router_id: &str, stream: &str, event: &Event) -> Result<u64, StoreError> {
    let id = Uuid::now_v7();
    let meta = Metadata { correlation_id: id, causation_id: None, actor: format!("router:{router_id}"), trace: None };
    let invalid = |reason: String| StoreError::InvalidAppend { stream: stream.to_string(), reason };
    let envelope = Envelope::new(id, Utc::now(), stream, event, meta).map_err(|e| invalid(e.to_string()))?;
    // `Any` cannot conflict; the arm is there for the type.
    let appended = store.append(stream, ExpectedVersion::Any, &[envelope], &[]).await?.map_err(|c| invalid(c.to_string()))?;
    Ok(appended.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_engine::routes::Route as Recorded;

    fn routes(versions: &[(&str, u64)]) -> Routes {
        let by_environment = versions
            .iter()
            .map(|(env, version)| {
                let route = Recorded { deployment: None, upstreams: vec!["127.0.0.1:1".into()], standby: vec![], version: *version };
                (("p".to_string(), env.to_string()), route)
            })
            .collect();
        Routes { version: 9, by_environment, ..Default::default() }
    }

    #[test]
    fn a_custom_domain_serves_its_environments_route_with_the_same_counters() {
        let mut recorded = routes(&[("a", 1)]);
        recorded.domains.insert("*.shop.example".into(), ("p".into(), "a".into()));
        // A domain of an environment without a route (yet) serves nothing:
        // no upstream (503), even under a wildcard another environment has.
        recorded.domains.insert("other.example".into(), ("p".into(), "b".into()));
        recorded.domains.insert("b.shop.example".into(), ("p".into(), "b".into()));
        // A custom domain never takes an environment's own name.
        recorded.domains.insert("p-a.d".into(), ("p".into(), "c".into()));
        let t = table(&recorded, "d", &RouteTable::default());
        let (own, custom) = (t.get("p-a.d").unwrap(), t.get("www.shop.example").unwrap());
        assert_eq!((custom.upstreams.clone(), custom.stats.clone()), (own.upstreams.clone(), own.stats.clone()));
        assert_eq!(own.label, "p/a (no release)", "p-a.d is environment a's");
        for unserved in ["other.example", "b.shop.example"] {
            assert_eq!(t.resolve(Some(unserved), 0), slipway_router::Resolution::NoUpstream(unserved.into()), "{unserved}");
        }
    }

    #[test]
    fn a_route_keeps_its_counters_while_its_version_stays_and_starts_afresh_when_it_changes() {
        let before = table(&routes(&[("a", 1), ("b", 2)]), "d", &RouteTable::default());
        let (a, b) = (before.get("p-a.d").unwrap().stats.clone(), before.get("p-b.d").unwrap().stats.clone());
        let after = table(&routes(&[("a", 1), ("b", 3)]), "d", &before);
        assert_eq!(after.get("p-a.d").unwrap().stats, a, "another route changed: same counters");
        assert_ne!(after.get("p-b.d").unwrap().stats, b, "a new version counts from zero");
    }
}
