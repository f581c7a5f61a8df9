//! The driver: the engine's effectful shell around the pure decider. It
//! follows the store with a catch-up subscription; for every deployment
//! stream that moved, it folds the stream, asks the decider what is next,
//! and appends the decisions (facts, and commands into the outbox) in one
//! transaction at the version it decided on. A conflict means the stream
//! moved meanwhile: fold again and decide again. Several drivers may run;
//! the expected-version check makes their decisions land once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use slipway_proto::command::ImageSource;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, environment_stream, project_stream, StepDispatched, ROUTERS_STREAM, ROUTES_STREAM};
use slipway_proto::{Command, Envelope, Event, Step, StreamId};
use slipway_store::event_store::{Outgoing, StreamAppend};
use slipway_store::subscription::Subscription;
use slipway_store::{EventStore, ExpectedVersion, StoreError, WorkerBeat};
use slipway_telemetry::trace::PlannedSpan;
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::decider::{decide, Decision, EnvironmentView, Retries};
use crate::deployment::{fold, Deployment};
use crate::environment::Environment;
use crate::load::{self, decode_all};
use crate::project::{self, Project};
use crate::routes::Traffic;
use crate::seen::{Seen, SeenDeployment, SeenTraffic};

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

    /// Decides and records what comes next for one deployment stream, on
    /// its own. Returns the time to look again if the deployment waits for one.
    pub async fn advance(&self, stream: &str) -> Result<Option<DateTime<Utc>>, DriverError> {
        for _ in 0..ROUNDS {
            // At the cutover, take the routes stream's turn before reading its version.
            let at_cutover = self.deployment(stream).await?.is_some_and(|d| d.state.next_step().is_none());
            let _turn = match at_cutover {
                true => Some(self.routes_turn.lock().await),
                false => None,
            };
            let pending = match self.plan(stream, Some(0)).await? {
                Planned::Wait(at) => return Ok(at),
                Planned::Alone => return Ok(None), // not returned when holding the turn
                Planned::Append(pending) => pending,
            };
            // A conflict wrote nothing: decide again from the store.
            if self.commit(&[&pending]).await? && !self.committed(*pending) {
                return Ok(None);
            }
        }
        // Still deciding after this many rounds: look again shortly rather
        // than hold the batch.
        tracing::warn!(%stream, rounds = ROUNDS, "deployment kept moving while deciding; looking again in a second");
        Ok(Some(self.options.clock.now() + chrono::Duration::seconds(1)))
    }

    /// What to record next for one deployment, decided from what the
    /// driver has seen. A deployment at its cutover needs the routes
    /// stream's turn: `turn` is `Some(n)` when it is held and `n` route
    /// changes are decided ahead of this one in the same append; `None`
    /// leaves a cutover undecided (`Alone`).
    async fn plan(&self, stream: &str, turn: Option<u64>) -> Result<Planned, DriverError> {
        let Some(SeenDeployment { state, last: cause }) = self.deployment(stream).await? else {
            return Ok(Planned::Wait(None));
        };
        if state.is_finished() && state.late_containers.is_empty() {
            return Ok(Planned::Wait(None));
        }
        let estream = environment_stream(&state.context.project, &state.context.environment);
        let env = self.environment(&estream).await?;
        // Routes and routers matter only once the pipeline has passed.
        let traffic = match (state.next_step(), turn) {
            (None, None) if !state.is_finished() => return Ok(Planned::Alone),
            (None, ahead) => {
                let mut traffic = self.traffic().await?;
                traffic.routes_version += ahead.unwrap_or(0);
                Some(traffic)
            }
            (Some(_), _) => None,
        };
        let routes_version = traffic.as_ref().map_or(0, |t| t.routes_version);
        let now = self.options.clock.now();
        let reusable_image = self.reusable_image(&state, now).await?;
        let view = EnvironmentView {
            may_start: env.may_start(state.id),
            active: env.active.clone(),
            drain_seconds: self.options.drain_seconds,
            traffic,
            switch_timeout: chrono::Duration::from_std(self.options.switch_timeout).unwrap_or(chrono::Duration::seconds(15)),
            now,
            reusable_image,
            retries: self.options.retries,
            heartbeat: self.heartbeat(&state).await?,
            heartbeat_timeout: chrono::Duration::from_std(self.options.heartbeat_timeout).unwrap_or(chrono::Duration::seconds(60)),
        };
        let mut decisions = decide(&state, &view);
        let wake = decisions.iter().find_map(|d| match d {
            Decision::WakeAt(at) => Some(*at),
            _ => None,
        });
        decisions.retain(|d| !matches!(d, Decision::WakeAt(_)));
        if decisions.is_empty() {
            return Ok(Planned::Wait(wake));
        }
        let out = self.materialise(stream, &estream, &cause, decisions);
        Ok(Planned::Append(Box::new(Pending {
            stream: stream.to_owned(),
            estream,
            versions: (state.version, env.version, routes_version),
            out,
        })))
    }

    /// Appends the decisions of `pendings` in one transaction; false if a
    /// stream had moved (nothing was written).
    async fn commit(&self, pendings: &[&Pending]) -> Result<bool, StoreError> {
        if pendings.is_empty() {
            return Ok(true);
        }
        // Route changes decided one after another go in as one append to
        // the routes stream, at the version the first was decided at.
        let routes: Vec<Envelope> = pendings.iter().flat_map(|p| p.out.routes.iter().cloned()).collect();
        let mut appends: Vec<StreamAppend<'_>> = pendings.iter().flat_map(|p| p.appends()).collect();
        if let Some(first) = pendings.iter().find(|p| !p.out.routes.is_empty()) {
            appends.push(StreamAppend { stream: ROUTES_STREAM, expected: ExpectedVersion::Exactly(first.versions.2), events: &routes });
        }
        let commands: Vec<Outgoing> = pendings.iter().flat_map(|p| p.out.commands.iter().cloned()).collect();
        match self.store.append_streams(&appends, &commands).await? {
            Ok(_) => Ok(true),
            Err(conflict) => {
                tracing::debug!(%conflict, "a deployment moved while deciding; deciding again");
                self.seen().forget(&conflict.stream);
                Ok(false)
            }
        }
    }

    /// After `pending` was appended: what it recorded is seen, its spans
    /// and metrics are recorded. True if the deployment's stream moved
    /// (decide again); a dispatch that recorded nothing is not repeated.
    fn committed(&self, pending: Pending) -> bool {
        let (deployment, env, routes) = pending.versions;
        {
            let mut seen = self.seen();
            for (stream, from, events) in [
                (pending.stream.as_str(), deployment, &pending.out.events),
                (pending.estream.as_str(), env, &pending.out.environment),
                (ROUTES_STREAM, routes, &pending.out.routes),
            ] {
                for (i, e) in events.iter().enumerate() {
                    seen.observe(stream, from + 1 + i as u64, e);
                }
            }
        }
        let moved = !pending.out.events.is_empty();
        pending.out.committed();
        moved
    }

    fn beats(&self) -> Option<(std::time::Instant, Arc<Vec<WorkerBeat>>)> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Nothing panics while holding it; if something did, the state
        // kept is still whole (each update is one insert or remove).
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A deployment as seen, or read and kept; `None` if it does not exist.
    async fn deployment(&self, stream: &str) -> Result<Option<SeenDeployment>, DriverError> {
        if let Some(seen) = self.seen().deployment(stream) {
            return Ok(Some(seen));
        }
        let recorded = self.store.read_stream(stream, 1).await?;
        let events = decode_all(&recorded)?;
        let (Some(state), Some(last)) = (fold(events.iter())?, recorded.last()) else { return Ok(None) };
        let seen = SeenDeployment { state, last: last.envelope.clone() };
        self.seen().put_deployment(stream, seen.clone());
        Ok(Some(seen))
    }

    /// An environment as seen, or read and kept.
    async fn environment(&self, stream: &str) -> Result<Environment, DriverError> {
        if let Some(env) = self.seen().environment(stream) {
            return Ok(env);
        }
        let env = load::environment_of_stream(&*self.store, stream).await?;
        self.seen().put_environment(stream, env.clone());
        Ok(env)
    }

    /// The traffic view as seen, or read and kept.
    async fn traffic(&self) -> Result<Traffic, DriverError> {
        if let Some(traffic) = self.seen().traffic() {
            return Ok(traffic);
        }
        Ok(self.read_traffic().await?.traffic)
    }

    /// The traffic view read from the store, and kept.
    async fn read_traffic(&self) -> Result<SeenTraffic, DriverError> {
        let seen = load::traffic_seen(&*self.store).await?;
        self.seen().put_traffic(seen.clone());
        Ok(seen)
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

    /// While a heartbeat-tracked step is dispatched: the last time a worker
    /// reported its command in progress.
    async fn heartbeat(&self, state: &Deployment) -> Result<Option<DateTime<Utc>>, DriverError> {
        let Some((step, _, command)) = state.dispatched else { return Ok(None) };
        if !crate::decider::heartbeat_tracked(step) || state.completed.contains(&step) {
            return Ok(None);
        }
        let fresh = self.beats().map(|(at, beats)| (at.elapsed() < BEATS_READ_EVERY).then_some(beats)).unwrap_or_default();
        let workers = match fresh {
            Some(beats) => beats,
            None => {
                let beats = Arc::new(self.store.workers().await?);
                *self.beats.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), beats.clone()));
                beats
            }
        };
        Ok(workers.iter().filter(|w| w.commands.contains(&command)).map(|w| w.last_seen).max())
    }

    /// When the build is about to be dispatched (first, or again past its
    /// deadline): an image a successful deployment of this project, its
    /// original or the original's mirrors already has for the same commit.
    /// Not looked up while a dispatched build runs: nothing would use it.
    async fn reusable_image(&self, state: &Deployment, now: DateTime<Utc>) -> Result<Option<ImageSource>, DriverError> {
        let ctx = &state.context;
        let reusing = state.rollback_of.is_some() || state.promoted_from.is_some();
        let running =
            matches!(state.dispatched, Some((Step::Build, _, _))) && state.dispatch_deadline.is_none_or(|deadline| deadline > now);
        // `--no-cache` asks for a fresh build: no re-use either.
        let building = state.next_step() == Some(Step::Build) && !running && !reusing && !ctx.dry_run && !ctx.no_cache;
        let (true, Some(commit)) = (building, &ctx.commit) else { return Ok(None) };
        // The project, its original and the original's mirrors (a mirror's
        // build serves the original too, and the other way round).
        let mut family = vec![ctx.project.clone()];
        if let Some(project) = self.project(&ctx.project).await? {
            let root = match &project.mirror_of {
                Some(original) => self.project(original).await?,
                None => Some(project),
            };
            if let Some(root) = root {
                family.push(root.name.clone());
                family.extend(root.mirrors);
            }
        }
        family.sort();
        family.dedup();
        self.image_for_commit(&family, commit).await
    }

    /// The newest image a successful deployment built or re-used from
    /// `commit`, among the releases of every environment of `projects`.
    async fn image_for_commit(&self, projects: &[String], commit: &str) -> Result<Option<ImageSource>, DriverError> {
        let mut best: Option<(Uuid, ImageSource)> = None;
        for name in projects {
            let Some(project) = self.project(name).await? else { continue };
            for env in project.environments.keys() {
                let releases = self.environment(&environment_stream(name, env)).await?.releases;
                for release in releases.iter().rev() {
                    if best.as_ref().is_some_and(|(newest, _)| newest > release) {
                        break; // v7 ids: everything further back is older
                    }
                    let Some(d) = self.deployment(&deployment_stream(*release)).await? else { continue };
                    if let (Some(c), Some(image_id)) = (&d.state.context.commit, &d.state.context.image_id) {
                        if c == commit {
                            best = Some((*release, ImageSource { deployment_id: *release, image_id: image_id.clone() }));
                            break;
                        }
                    }
                }
            }
        }
        Ok(best.map(|(_, source)| source))
    }

    /// A project as seen, or read and kept; `None` if it does not exist.
    async fn project(&self, name: &str) -> Result<Option<Project>, DriverError> {
        let stream = project_stream(name);
        if let Some(events) = self.seen().project(&stream) {
            return Ok(project::fold(events.iter()));
        }
        let (version, events) = crate::requests::project_events(&*self.store, name).await?;
        let folded = project::fold(events.iter());
        self.seen().put_project(&stream, version, events);
        Ok(folded)
    }

    /// Gives decisions ids, time, causation and trace context. Events keep
    /// their cause's trace context; each dispatched command gets a planned
    /// `<queue> publish` span (a child of the cause's span) whose context
    /// goes into the command and its `StepDispatched`.
    fn materialise(&self, stream: &str, env_stream: &str, cause: &Envelope, decisions: Vec<Decision>) -> Materialised {
        let now = self.options.clock.now();
        let meta = || {
            let mut m = Metadata::caused_by(cause);
            m.actor = "engine".into();
            m
        };
        let mut out = Materialised::default();
        let Materialised { events, environment, routes, commands, spans } = &mut out;
        for decision in decisions {
            // A command sent again keeps the id it was first sent with.
            let decision_id = match &decision {
                Decision::DispatchAgain { command_id, .. } => Some(*command_id),
                _ => None,
            };
            match decision {
                Decision::WakeAt(_) => {}
                Decision::Record(event) => events.extend(Envelope::new(Uuid::now_v7(), now, stream, &event, meta()).ok()),
                Decision::RecordOnEnvironment(event) => {
                    environment.extend(Envelope::new(Uuid::now_v7(), now, env_stream, &event, meta()).ok())
                }
                Decision::RecordOnRoutes(event) => routes.extend(Envelope::new(Uuid::now_v7(), now, ROUTES_STREAM, &event, meta()).ok()),
                Decision::Dispatch(command) | Decision::DispatchAgain { command, .. } => {
                    let id = decision_id.unwrap_or_else(Uuid::now_v7);
                    let span = self.publish_span(cause, &command, id);
                    let mut traced = meta();
                    traced.trace = Some(span.trace_context());
                    let Ok(envelope) = Envelope::new(id, now, stream, &command, traced.clone()) else { continue };
                    if let Command::RunStep(run) = &command {
                        let dispatched = Event::StepDispatched(StepDispatched {
                            step: run.step,
                            command_id: envelope.id,
                            attempt: run.attempt,
                            // A watch runs until its window ends, then has the step timeout to report.
                            deadline: Some(run.context.watch_until.map_or(now, |u| u.max(now)) + self.options.step_timeout(run.step)),
                            dispatched_at: Some(now),
                        });
                        // Its id says what was sent: a worker checks it (see `dispatch_id`).
                        let id = slipway_proto::command::dispatch_id(envelope.id, envelope.to_json().as_bytes());
                        events.extend(Envelope::new(id, now, stream, &dispatched, traced).ok());
                    }
                    commands.push(Outgoing { queue: command.queue(), envelope });
                    spans.push(span);
                }
            }
        }
        out
    }

    /// The `<queue> publish` span of dispatching `command` (message `id`),
    /// following the OpenTelemetry messaging conventions.
    fn publish_span(&self, cause: &Envelope, command: &Command, id: Uuid) -> PlannedSpan {
        let queue = command.queue();
        let deployment = command.deployment_id();
        PlannedSpan::child_of(cause.trace.as_ref(), format!("{queue} publish"), slipway_telemetry::trace::Kind::Producer)
            .with_attribute("messaging.system", self.options.messaging_system)
            .with_attribute("messaging.operation.type", "send")
            .with_attribute("messaging.operation.name", "publish")
            .with_attribute("messaging.destination.name", queue)
            .with_attribute("messaging.message.id", id.to_string())
            .with_attribute("slipway.deployment.id", deployment.to_string())
            .with_attribute("slipway.step", command.step().to_string())
    }
}

/// What deciding for one deployment gave.
enum Planned {
    /// Nothing to record: look again at this time (or when something happens).
    Wait(Option<DateTime<Utc>>),
    /// At the cutover: to be advanced on its own, holding the routes turn.
    Alone,
    Append(Box<Pending>),
}

/// Decisions to append, with the versions they were decided at:
/// (deployment, environment, routes).
struct Pending {
    stream: String,
    estream: String,
    versions: (u64, u64, u64),
    out: Materialised,
}

impl Pending {
    /// The deployment's stream (always: its version is what was decided
    /// on), and the environment stream if written to. (Route changes are
    /// appended by `Driver::commit`, all of a batch's together.)
    fn appends(&self) -> Vec<StreamAppend<'_>> {
        let (deployment, env, _) = self.versions;
        let mut appends =
            vec![StreamAppend { stream: &self.stream, expected: ExpectedVersion::Exactly(deployment), events: &self.out.events }];
        if !self.out.environment.is_empty() {
            appends.push(StreamAppend { stream: &self.estream, expected: ExpectedVersion::Exactly(env), events: &self.out.environment });
        }
        appends
    }
}

/// Decisions with ids and metadata, by the stream they go to, and the
/// publish spans of the commands.
#[derive(Default)]
struct Materialised {
    events: Vec<Envelope>,
    environment: Vec<Envelope>,
    routes: Vec<Envelope>,
    commands: Vec<Outgoing>,
    spans: Vec<PlannedSpan>,
}

impl Materialised {
    /// The append committed: the dispatches happened (record their spans)
    /// and a deployment that ended is counted.
    fn committed(self) {
        for span in self.spans {
            span.record();
        }
        let metrics = slipway_telemetry::metrics::global();
        for e in &self.events {
            if let Some(outcome) = slipway_telemetry::metrics::deployment_outcome(&e.message_type) {
                metrics.deployment_finished(outcome);
            }
        }
    }
}
