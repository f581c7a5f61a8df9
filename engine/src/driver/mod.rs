//! The driver: the engine's effectful shell around the pure decider. It
//! follows the store with a catch-up subscription; for every deployment
//! stream that moved, it folds the stream, asks the decider what is next,
//! and appends the decisions (facts, and commands into the outbox) in one
//! transaction at the version it decided on. A conflict means the stream
//! moved meanwhile: fold again and decide again. Several drivers may run;
//! the expected-version check makes their decisions land once.
//!
//! This file is the loop (the subscription, batches, timers, reroutes and
//! router leases); `plan.rs` reads and decides one deployment and appends
//! what was decided; `messages.rs` turns decisions into envelopes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, environment_stream, ROUTERS_STREAM, ROUTES_STREAM};
use slipway_proto::{Envelope, Event, Step, StreamId};
use slipway_store::event_store::StreamAppend;
use slipway_store::subscription::Subscription;
use slipway_store::{EventStore, ExpectedVersion, StoreError, WorkerBeat};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::decider::Retries;
use crate::load;
use crate::seen::Seen;

mod messages;
mod plan;

use plan::{Pending, Planned};

/// What advancing one deployment gave: a time to look again, or why not.
type Advanced = Result<Option<DateTime<Utc>>, DriverError>;

/// Deployments advanced at the same time.
const ADVANCE_CONCURRENCY: usize = 64;

/// Worker heartbeats are read at most this often: workers beat every 5 s
/// and a build's heartbeat timeout is a minute, so a second's staleness
/// changes no decision that matters, and saves a read per build decision.
const BEATS_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the subscription's position is saved.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Decide-and-append rounds for one deployment before it is left for a
/// timer (each round records something, or ends the advance).
const ROUNDS: usize = 32;

/// The checkpoint name of the engine's subscription.
pub const ENGINE_CHECKPOINT: &str = "engine";

/// Why a deployment could not be advanced: a store failure, or a history
/// the engine cannot read or follow.
pub use crate::load::LoadError as DriverError;

#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// How long a retired release's containers keep serving in-flight
    /// requests before they are stopped.
    pub drain_seconds: u64,
    /// How long a traffic switch waits for every registered router.
    pub switch_timeout: std::time::Duration,
    /// How long the engine waits for a dispatched step's outcome before it
    /// dispatches the step again (a lost command, a worker that died).
    /// Longer than any step's own limits (health check, release commands).
    pub step_timeout: std::time::Duration,
    /// The same for builds, which take longest.
    pub build_timeout: std::time::Duration,
    /// How long a started build may go without its worker's heartbeat
    /// (every 5 s) before it is dispatched again.
    pub heartbeat_timeout: std::time::Duration,
    pub retries: Retries,
    /// The queue backend's name in traces (`messaging.system` of the
    /// publish spans); `slipway_node::serve` sets it from its queue.
    pub messaging_system: &'static str,
    /// How often the engine removes previews past their time to live
    /// (`lifecycle::run_sweep`, beside the driver).
    pub preview_sweep: std::time::Duration,
    /// Where the driver gets the time from (`SystemClock`; tests move a
    /// `ManualClock`).
    pub clock: Arc<dyn Clock>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            drain_seconds: 30,
            switch_timeout: std::time::Duration::from_secs(15),
            step_timeout: std::time::Duration::from_secs(15 * 60),
            build_timeout: std::time::Duration::from_secs(60 * 60),
            heartbeat_timeout: std::time::Duration::from_secs(60),
            retries: Retries::default(),
            messaging_system: "unknown",
            preview_sweep: std::time::Duration::from_secs(60),
            clock: Arc::new(SystemClock),
        }
    }
}

impl DriverOptions {
    fn step_timeout(&self, step: Step) -> chrono::Duration {
        let timeout = if step == Step::Build { self.build_timeout } else { self.step_timeout };
        chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::days(1))
    }
}

pub struct Driver {
    store: Arc<dyn EventStore>,
    options: DriverOptions,
    /// Held from reading the routes stream's version to appending at it.
    /// Every cutover appends to the one routes stream at the version it
    /// read; advanced concurrently, all but one would conflict and decide
    /// again. In turns, a conflict is left only between engine processes.
    routes_turn: tokio::sync::Mutex<()>,
    /// Deployment, environment and traffic states, moved forward by the
    /// subscription and by the driver's own appends (see `seen`).
    seen: std::sync::Mutex<Seen>,
    /// Worker heartbeats as last read, and when (see `BEATS_READ_EVERY`).
    beats: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<WorkerBeat>>)>>,
}

impl Driver {
    pub fn new(store: Arc<dyn EventStore>, options: DriverOptions) -> Self {
        Driver { store, options, routes_turn: tokio::sync::Mutex::new(()), seen: Default::default(), beats: Default::default() }
    }

    /// Follows the store until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StoreError> {
        tokio::pin!(shutdown);
        let mut sub = Subscription::start(self.store.clone(), ENGINE_CHECKPOINT).await?;
        // Deployments waiting for a time (a step's or a switch's deadline).
        // Kept in memory: at start, every running deployment is looked at
        // again, which re-arms its timer.
        let mut timers: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        let mut streams: BTreeSet<String> = self.in_flight().await?;
        // Environments whose serving release was rerouted and that wait for
        // the routers' acknowledgements, with their deadlines.
        let mut reroutes: BTreeMap<String, DateTime<Utc>> = self.rerouting().await?;
        // When the next router's lease passes (see `expire_routers`).
        let (_, mut lease_ends) = self.expire_routers().await?;
        let (mut saved, mut saved_at) = (sub.cursor(), tokio::time::Instant::now());
        loop {
            // Deployments are independent: advance several at once (the
            // expected-version checks settle any overlap on shared streams).
            let batch: Vec<String> = std::mem::take(&mut streams).into_iter().collect();
            let advanced = self.advance_all(batch).await;
            for (stream, result) in advanced {
                timers.remove(&stream);
                match result {
                    Ok(Some(at)) => {
                        timers.insert(stream, at);
                    }
                    Ok(None) => {}
                    // A store outage: stop here without checkpointing; the
                    // caller restarts us and the batch is seen again.
                    Err(DriverError::Store(e)) => return Err(e),
                    // A history the decider cannot follow is reported and
                    // left alone; it must not stop every other deployment.
                    Err(e) => tracing::error!(%stream, error = %e, "cannot advance deployment"),
                }
            }
            // A restart from an older checkpoint decides again what was
            // decided (idempotent): saving it at most this often is enough.
            if sub.cursor() != saved && saved_at.elapsed() >= CHECKPOINT_EVERY {
                sub.checkpoint().await?;
                (saved, saved_at) = (sub.cursor(), tokio::time::Instant::now());
            }
            let next_timer = timers.values().chain(reroutes.values()).min().copied().into_iter().chain(lease_ends).min();
            let sleep = async {
                match next_timer {
                    Some(at) => self.options.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let batch = tokio::select! {
                _ = &mut shutdown => {
                    // Not saved: the next start decides a little again.
                    if let Err(e) = sub.checkpoint().await {
                        tracing::warn!(error = %e, "could not save the engine's position at shutdown");
                    }
                    return Ok(());
                }
                _ = sleep => {
                    let now = self.options.clock.now();
                    streams.extend(timers.iter().filter(|(_, at)| **at <= now).map(|(s, _)| s.clone()));
                    if reroutes.values().any(|at| *at <= now) {
                        self.settle_reroutes(&mut reroutes).await?;
                    }
                    if lease_ends.is_some_and(|at| at <= now) {
                        let expired;
                        (expired, lease_ends) = self.expire_routers().await?;
                        if expired {
                            // Switches waiting for them may be complete now.
                            streams.extend(timers.keys().cloned());
                        }
                    }
                    continue;
                }
                // Progress not saved yet, and nothing else happening: save it.
                _ = tokio::time::sleep_until(saved_at + CHECKPOINT_EVERY), if sub.cursor() != saved => continue,
                batch = sub.next_batch(256) => batch?,
            };
            {
                let mut seen = self.seen();
                for e in &batch {
                    seen.observe(&e.stream, e.version, &e.envelope);
                    // Decisions are appended at these heads: no need to read them.
                    self.store.saw(e);
                }
                seen.trim();
            }
            if batch.iter().any(|e| StreamId::parse(&e.stream).is_router()) {
                // A router registered, went, or was heard from: its lease moved.
                let expired;
                (expired, lease_ends) = self.expire_routers().await?;
                if expired {
                    streams.extend(timers.keys().cloned());
                }
            }
            for e in &batch {
                let id = StreamId::parse(&e.stream);
                if let StreamId::Deployment(_) = id {
                    streams.insert(e.stream.clone());
                } else if let StreamId::Environment(_) = id {
                    if e.envelope.message_type == "ReleaseUpstreamsObserved" {
                        match self.follow_release(&e.stream, &e.envelope).await {
                            Ok(Some(deadline)) => {
                                reroutes.insert(e.stream.clone(), deadline);
                            }
                            Ok(None) => {}
                            Err(DriverError::Store(err)) => return Err(err),
                            Err(err) => tracing::error!(stream = %e.stream, error = %err, "cannot move the route to the release"),
                        }
                    }
                    // A deployment left or joined the queue: the head may start.
                    match self.environment(&e.stream).await {
                        Ok(env) => streams.extend(env.queue.first().map(|d| deployment_stream(*d))),
                        Err(DriverError::Store(err)) => return Err(err),
                        Err(err) => tracing::error!(stream = %e.stream, error = %err, "cannot read environment"),
                    }
                } else if id.is_router() {
                    // An acknowledgement, or a router came or went: every
                    // switch in progress may be complete now.
                    streams.extend(timers.keys().cloned());
                }
            }
            if !reroutes.is_empty()
                && batch.iter().any(|e| matches!(StreamId::parse(&e.stream), StreamId::Routes | StreamId::Routers | StreamId::Router(_)))
            {
                self.settle_reroutes(&mut reroutes).await?;
            }
        }
    }

    /// Records the end of each pending reroute that is complete (every
    /// router acknowledged) or past its deadline (`reconcile::reroute_settled`),
    /// at the environment's version it was decided on; keeps the others.
    async fn settle_reroutes(&self, reroutes: &mut BTreeMap<String, DateTime<Utc>>) -> Result<(), StoreError> {
        let traffic = match self.read_traffic().await {
            Ok(seen) => seen.traffic,
            Err(DriverError::Store(e)) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the routers' acknowledgements");
                return Ok(());
            }
        };
        let now = self.options.clock.now();
        for stream in reroutes.keys().cloned().collect::<Vec<_>>() {
            let env = match load::environment_of_stream(&*self.store, &stream).await {
                Ok(env) => env,
                Err(DriverError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::error!(%stream, error = %e, "cannot read environment");
                    reroutes.remove(&stream);
                    continue;
                }
            };
            if env.rerouting.is_none() {
                reroutes.remove(&stream);
                continue;
            }
            let Some(settled) = crate::reconcile::reroute_settled(&env, &traffic, now) else { continue };
            let id = Uuid::now_v7();
            let meta = Metadata { correlation_id: id, causation_id: None, actor: "engine".into(), trace: None };
            let Ok(envelope) = Envelope::new(id, now, &stream, &Event::RerouteSettled(settled), meta) else { continue };
            match self.store.append(&stream, ExpectedVersion::Exactly(env.version), &[envelope], &[]).await? {
                Ok(_) => {
                    reroutes.remove(&stream);
                }
                // The environment moved on: looked at again with the next event or timer.
                Err(conflict) => tracing::debug!(%conflict, %stream, "the environment moved while settling its reroute"),
            }
        }
        Ok(())
    }

    /// Environments with a reroute waiting for acknowledgements, at start.
    async fn rerouting(&self) -> Result<BTreeMap<String, DateTime<Utc>>, StoreError> {
        let mut pending = BTreeMap::new();
        for (project, env) in load::environment_names(&*self.store).await? {
            match load::environment(&*self.store, &project, &env).await {
                Ok(e) => {
                    if let Some(r) = e.rerouting {
                        pending.insert(environment_stream(&project, &env), r.deadline);
                    }
                }
                Err(DriverError::Store(e)) => return Err(e),
                Err(e) => tracing::error!(%project, %env, error = %e, "cannot read environment"),
            }
        }
        Ok(pending)
    }

    /// The host agent saw the serving release answer elsewhere than its
    /// route says (its container came back on a new port): the route
    /// follows it (`reconcile::route_correction`), holding the routes turn.
    /// Level-triggered, so a repeated or late observation changes nothing.
    /// Recorded with it on the environment's stream: `ReleaseRerouted`, the
    /// route version every registered router must acknowledge and until
    /// when (the switch timeout); returns that deadline when it moved the route.
    async fn follow_release(&self, estream: &str, cause: &Envelope) -> Result<Option<DateTime<Utc>>, DriverError> {
        for _ in 0..3 {
            let _turn = self.routes_turn.lock().await;
            let env = self.environment(estream).await?;
            let routes = load::routes(&*self.store).await?;
            let found = routes.by_environment.iter().find(|((p, e), _)| environment_stream(p, e) == estream);
            let Some(((project, environment), route)) = found else { return Ok(None) };
            let Some(changed) = crate::reconcile::route_correction(project, environment, &env, Some(route)) else {
                return Ok(None);
            };
            let now = self.options.clock.now();
            let deadline = now + chrono::Duration::from_std(self.options.switch_timeout).unwrap_or(chrono::Duration::seconds(15));
            let routers: Vec<String> = self.read_traffic().await?.traffic.routers.into_iter().collect();
            let rerouted = Event::ReleaseRerouted(slipway_proto::event::ReleaseRerouted {
                deployment_id: changed.deployment_id.unwrap_or_default(),
                upstreams: changed.upstreams.clone(),
                route_version: routes.version + 1,
                routers,
                deadline,
            });
            let mut meta = Metadata::caused_by(cause);
            meta.actor = "engine".into();
            let (Ok(route_event), Ok(env_event)) = (
                Envelope::new(Uuid::now_v7(), now, ROUTES_STREAM, &Event::RouteChanged(changed), meta.clone()),
                Envelope::new(Uuid::now_v7(), now, estream, &rerouted, meta),
            ) else {
                return Ok(None);
            };
            let (r, e) = ([route_event], [env_event]);
            let appends = [
                StreamAppend { stream: ROUTES_STREAM, expected: ExpectedVersion::Exactly(routes.version), events: &r },
                StreamAppend { stream: estream, expected: ExpectedVersion::Any, events: &e },
            ];
            match self.store.append_streams(&appends, &[]).await? {
                Ok(_) => {
                    tracing::info!(%project, %environment, "route moved to where the serving release answers now");
                    self.seen().observe(ROUTES_STREAM, routes.version + 1, &r[0]);
                    return Ok(Some(deadline));
                }
                Err(conflict) => tracing::debug!(%conflict, "the routes moved while rerouting; reading them again"),
            }
        }
        Ok(None)
    }

    /// Deployments that may wait for a deadline: the head of every
    /// environment's queue (a step's outcome, a switch). Looking at them
    /// once at start re-arms their timers; the rest is driven by events.
    async fn in_flight(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut streams = BTreeSet::new();
        for (project, env) in load::environment_names(&*self.store).await? {
            match load::environment(&*self.store, &project, &env).await {
                Ok(e) => streams.extend(e.queue.first().map(|d| deployment_stream(*d))),
                Err(DriverError::Store(e)) => return Err(e),
                Err(e) => tracing::error!(%project, %env, error = %e, "cannot read environment"),
            }
        }
        Ok(streams)
    }

    /// Advances many deployments: decides for each (several at once), then
    /// records all their decisions in one append, and decides again for
    /// those that moved. Deployments at their cutover, which append to the
    /// one routes stream, are decided one after another holding its turn,
    /// each at the route version the previous one leaves. If the joint
    /// append conflicts (it wrote nothing), each is advanced on its own.
    async fn advance_all(&self, streams: Vec<String>) -> Vec<(String, Advanced)> {
        let mut done: Vec<(String, Advanced)> = Vec::new();
        let mut round = streams;
        for _ in 0..ROUNDS {
            if round.is_empty() {
                return done;
            }
            let mut planned: Vec<(String, Result<Planned, DriverError>)> =
                futures::stream::iter(std::mem::take(&mut round).into_iter().map(|stream| async move {
                    let planned = self.plan(&stream, None).await;
                    (stream, planned)
                }))
                .buffer_unordered(ADVANCE_CONCURRENCY)
                .collect()
                .await;
            let cutovers: Vec<String> =
                planned.iter().filter(|(_, p)| matches!(p, Ok(Planned::Alone))).map(|(stream, _)| stream.clone()).collect();
            let turn = match cutovers.is_empty() {
                true => None,
                false => Some(self.routes_turn.lock().await),
            };
            let mut ahead = 0;
            for stream in cutovers {
                let at_turn = self.plan(&stream, Some(ahead)).await;
                if let Ok(Planned::Append(p)) = &at_turn {
                    ahead += p.out.routes.len() as u64;
                }
                planned.retain(|(s, _)| *s != stream);
                planned.push((stream, at_turn));
            }
            let (mut joint, mut alone) = (Vec::new(), Vec::new());
            for (stream, planned) in planned {
                match planned {
                    Ok(Planned::Wait(at)) => done.push((stream, Ok(at))),
                    Ok(Planned::Alone) => alone.push(stream),
                    Ok(Planned::Append(pending)) => joint.push((stream, pending)),
                    Err(e) => done.push((stream, Err(e))),
                }
            }
            let pendings: Vec<&Pending> = joint.iter().map(|(_, p)| p.as_ref()).collect();
            match self.commit(&pendings).await {
                Ok(true) => {
                    for (stream, pending) in joint {
                        if self.committed(*pending) {
                            round.push(stream);
                        } else {
                            done.push((stream, Ok(None)));
                        }
                    }
                }
                Ok(false) => alone.extend(joint.into_iter().map(|(stream, _)| stream)),
                Err(e) => {
                    // The driver stops on a store failure; the rest of the
                    // batch is seen again when it restarts.
                    let stream = joint.into_iter().next().map(|(stream, _)| stream).unwrap_or_default();
                    done.push((stream, Err(e.into())));
                    return done;
                }
            }
            drop(turn);
            let one_by_one: Vec<(String, Advanced)> = futures::stream::iter(alone.into_iter().map(|stream| async move {
                let result = self.advance(&stream).await;
                (stream, result)
            }))
            .buffer_unordered(ADVANCE_CONCURRENCY)
            .collect()
            .await;
            done.extend(one_by_one);
        }
        // Still moving after this many rounds: look again shortly.
        let soon = self.options.clock.now() + chrono::Duration::seconds(1);
        done.extend(round.into_iter().map(|stream| (stream, Ok(Some(soon)))));
        done
    }

    /// Records `RouterExpired` for each registered router silent past its
    /// lease (`lease::Liveness::expired`), and says whether it expired any
    /// (switches waiting for them may be complete) and when the next lease
    /// passes. Decided from what the driver has seen, then confirmed from
    /// the store (its subscription may lag behind a router's heartbeat);
    /// appended at the routers stream's version under ids derived from the
    /// registrations, so several engines record each expiry once.
    async fn expire_routers(&self) -> Result<(bool, Option<DateTime<Utc>>), StoreError> {
        let mut expired_any = false;
        for _ in 0..3 {
            let kept = self.seen().traffic_seen();
            let seen = match kept {
                Some(seen) => Ok(seen),
                None => self.read_traffic().await,
            };
            let checked = match seen {
                Ok(seen) if seen.liveness.expired(self.options.clock.now()).is_empty() => {
                    return Ok((expired_any, seen.liveness.next_expiry()))
                }
                Ok(_) => self.read_traffic().await,
                Err(e) => Err(e),
            };
            let fresh = match checked {
                Ok(fresh) => fresh,
                Err(DriverError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the routers' registrations; no router is expired");
                    return Ok((expired_any, None));
                }
            };
            let now = self.options.clock.now();
            let expired = fresh.liveness.expired(now);
            if expired.is_empty() {
                continue; // heard from meanwhile
            }
            let envelopes: Vec<Envelope> = expired
                .iter()
                .filter_map(|(id, event)| {
                    let meta = Metadata { correlation_id: *id, causation_id: None, actor: "engine".into(), trace: None };
                    Envelope::new(*id, now, ROUTERS_STREAM, &Event::RouterExpired(event.clone()), meta).ok()
                })
                .collect();
            match self.store.append(ROUTERS_STREAM, ExpectedVersion::Exactly(fresh.registry), &envelopes, &[]).await {
                Ok(Ok(_)) => {
                    let mut seen = self.seen();
                    for (i, envelope) in envelopes.iter().enumerate() {
                        seen.observe(ROUTERS_STREAM, fresh.registry + 1 + i as u64, envelope);
                    }
                    for (_, e) in &expired {
                        tracing::warn!(router = %e.router_id, last_seen = %e.last_seen, lease_ms = e.lease_ms, "router silent past its lease: expired, switches no longer wait for it");
                    }
                    expired_any = true;
                }
                // A router registered, or another engine recorded the
                // expiry first: read again.
                Ok(Err(conflict)) => {
                    tracing::debug!(%conflict, "the routers stream moved while expiring; reading it again");
                    self.seen().forget(ROUTERS_STREAM);
                }
                Err(StoreError::Duplicate { .. }) => self.seen().forget(ROUTERS_STREAM),
                Err(e) => return Err(e),
            }
        }
        Ok((expired_any, Some(self.options.clock.now() + chrono::Duration::seconds(1))))
    }
}
