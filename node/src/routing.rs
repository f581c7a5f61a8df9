//! Keeps a router's table in step with the routes stream. A router reads
//! every route when it starts (so a restarted router serves the current
//! releases before it accepts a connection), registers itself, and then
//! applies each new route version as one table swap and acknowledges it on
//! its own stream — the engine completes a switch when every registered
//! router has. A clean stop deregisters, so switches stop waiting for it; a
//! crashed router stays registered, and switches fail until it is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_engine::load::{self, LoadError};
use slipway_engine::routes::Routes;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{router_stream, RouteAcknowledged, RouterStarted, RouterStopped, ROUTERS_STREAM, ROUTES_STREAM};
use slipway_proto::{Envelope, Event};
use slipway_router::{Route, RouteHandle, RouteTable};
use slipway_store::subscription::wait_for_wakeup;
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use uuid::Uuid;

/// How long to wait for a wake-up before reading the routes stream anyway.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Stable across restarts: a switch waiting for this router is
    /// satisfied when it comes back under the same id.
    pub router_id: String,
    /// Host names are `<project>-<environment>.<domain>`.
    pub domain: String,
    /// Where it listens (recorded for operators).
    pub listen: SocketAddr,
}

/// The host name an environment is served under.
pub fn host_name(project: &str, environment: &str, domain: &str) -> String {
    format!("{project}-{environment}.{domain}")
}

/// The router's table for these routes. Upstreams that do not parse as
/// socket addresses are left out (and logged); they cannot come from the
/// engine, which writes `127.0.0.1:PORT`.
pub fn table(routes: &Routes, domain: &str) -> RouteTable {
    RouteTable::new(routes.by_environment.iter().map(|((project, environment), route)| {
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
        (host_name(project, environment, domain), Route { upstreams, standby, route_version: route.version, label })
    }))
}

/// A router's view of the routes, loaded and registered: call `follow` to
/// keep it current.
pub struct Follower {
    store: Arc<dyn EventStore>,
    options: RouterOptions,
    routes: Routes,
    handle: RouteHandle,
}

impl Follower {
    /// Reads every route, builds the table, registers the router and
    /// acknowledges the route version it serves.
    pub async fn start(store: Arc<dyn EventStore>, options: RouterOptions) -> Result<Follower, LoadError> {
        let routes = load::routes(&*store).await?;
        let handle = RouteHandle::new(table(&routes, &options.domain));
        let started = Event::RouterStarted(RouterStarted {
            router_id: options.router_id.clone(),
            listen: options.listen.to_string(),
            domain: options.domain.clone(),
        });
        append(&*store, &options.router_id, ROUTERS_STREAM, &started).await?;
        let follower = Follower { store, options, routes, handle };
        follower.acknowledge().await?;
        Ok(follower)
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
        loop {
            wake.borrow_and_update();
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "reading routes failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wait_for_wakeup(&mut wake, POLL) => {}
            }
        }
        let stopped = Event::RouterStopped(RouterStopped { router_id: self.options.router_id.clone() });
        if let Err(e) = append(&*self.store, &self.options.router_id, ROUTERS_STREAM, &stopped).await {
            tracing::warn!(error = %e, "could not deregister the router; switches will wait for it until it is back");
        }
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
        self.handle.replace(table(&self.routes, &self.options.domain));
        tracing::debug!(route_version = self.routes.version, "routes applied");
        self.acknowledge().await?;
        Ok(())
    }

    async fn acknowledge(&self) -> Result<(), StoreError> {
        let ack = Event::RouteAcknowledged(RouteAcknowledged {
            router_id: self.options.router_id.clone(),
            route_version: self.routes.version,
        });
        append(&*self.store, &self.options.router_id, &router_stream(&self.options.router_id), &ack).await
    }
}

async fn append(store: &dyn EventStore, router_id: &str, stream: &str, event: &Event) -> Result<(), StoreError> {
    let id = Uuid::now_v7();
    let meta = Metadata { correlation_id: id, causation_id: None, actor: format!("router:{router_id}"), trace: None };
    let invalid = |reason: String| StoreError::InvalidAppend { stream: stream.to_string(), reason };
    let envelope = Envelope::new(id, Utc::now(), stream, event, meta).map_err(|e| invalid(e.to_string()))?;
    // `Any` cannot conflict; the arm is there for the type.
    store.append(stream, ExpectedVersion::Any, &[envelope], &[]).await?.map_err(|c| invalid(c.to_string()))?;
    Ok(())
}
