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
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, environment_stream, StepDispatched, ROUTES_STREAM};
use slipway_proto::command::ImageSource;
use slipway_proto::{Command, Envelope, Event, Step};
use slipway_store::event_store::{Outgoing, StreamAppend};
use slipway_store::subscription::Subscription;
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use slipway_telemetry::trace::PlannedSpan;
use uuid::Uuid;

use crate::decider::{decide, Decision, EnvironmentView, Retries};
use crate::deployment::{fold, Deployment};
use crate::environment::Environment;
use crate::load::{self, decode_all};
use crate::routes::Traffic;
use crate::seen::{Seen, SeenDeployment};

/// What advancing one deployment gave: a time to look again, or why not.
type Advanced = Result<Option<DateTime<Utc>>, DriverError>;

/// Deployments advanced at the same time.
const ADVANCE_CONCURRENCY: usize = 64;

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
}

impl Driver {
    pub fn new(store: Arc<dyn EventStore>, options: DriverOptions) -> Self {
        Driver { store, options, routes_turn: tokio::sync::Mutex::new(()), seen: Default::default() }
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
        let (mut saved, mut saved_at) = (sub.cursor(), tokio::time::Instant::now());
        loop {
            // Deployments are independent: advance several at once (the
            // expected-version checks settle any overlap on shared streams).
            let batch: Vec<String> = std::mem::take(&mut streams).into_iter().collect();
            let this = &self;
            let advanced: Vec<(String, Advanced)> =
                futures::stream::iter(batch.into_iter().map(|stream| async move {
                    let result = this.advance(&stream).await;
                    (stream, result)
                }))
                .buffer_unordered(ADVANCE_CONCURRENCY)
                .collect()
                .await;
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
            let next_timer = timers.values().min().copied();
            let sleep = async {
                match next_timer {
                    Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
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
                    let now = Utc::now();
                    streams.extend(timers.iter().filter(|(_, at)| **at <= now).map(|(s, _)| s.clone()));
                    continue;
                }
                // Progress not saved yet, and nothing else happening: save it.
                _ = tokio::time::sleep_until(saved_at + CHECKPOINT_EVERY), if sub.cursor() != saved => continue,
                batch = sub.next_batch(256) => batch?,
            };
            {
                let mut seen = self.seen();
                for e in &batch {
                    seen.observe(&e.stream, e.version, &e.envelope, e.envelope.decode::<Event>().ok().as_ref());
                    // Decisions are appended at these heads: no need to read them.
                    self.store.saw(e);
                }
                seen.trim();
            }
            for e in &batch {
                if e.stream.starts_with("deployment-") {
                    streams.insert(e.stream.clone());
                } else if e.stream.starts_with("environment-") {
                    // A deployment left or joined the queue: the head may start.
                    match self.environment(&e.stream).await {
                        Ok(env) => streams.extend(env.queue.first().map(|d| deployment_stream(*d))),
                        Err(DriverError::Store(err)) => return Err(err),
                        Err(err) => tracing::error!(stream = %e.stream, error = %err, "cannot read environment"),
                    }
                } else if e.stream.starts_with("router") {
                    // An acknowledgement, or a router came or went: every
                    // switch in progress may be complete now.
                    streams.extend(timers.keys().cloned());
                }
            }
        }
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

    /// Decides and records what comes next for one deployment stream.
    /// Returns the time to look again if the deployment waits for one.
    pub async fn advance(&self, stream: &str) -> Result<Option<DateTime<Utc>>, DriverError> {
        for _ in 0..ROUNDS {
            let Some(SeenDeployment { state, last: cause }) = self.deployment(stream).await? else { return Ok(None) };
            if state.is_finished() && state.late_containers.is_empty() {
                return Ok(None);
            }
            let estream = environment_stream(&state.context.project, &state.context.environment);
            let env = self.environment(&estream).await?;
            // Routes and routers matter only once the pipeline has passed.
            let _turn = match state.next_step() {
                None => Some(self.routes_turn.lock().await),
                Some(_) => None,
            };
            let traffic = match state.next_step() {
                None => Some(self.traffic().await?),
                Some(_) => None,
            };
            let routes_version = traffic.as_ref().map_or(0, |t| t.routes_version);
            let now = Utc::now();
            let reusable_image = self.reusable_image(&state, now).await?;
            let view = EnvironmentView {
                may_start: env.may_start(state.id),
                active: env.active.clone(),
                drain_seconds: self.options.drain_seconds,
                traffic,
                switch_timeout: chrono::Duration::from_std(self.options.switch_timeout)
                    .unwrap_or(chrono::Duration::seconds(15)),
                now,
                reusable_image,
                retries: self.options.retries,
                heartbeat: self.heartbeat(&state).await?,
                heartbeat_timeout: chrono::Duration::from_std(self.options.heartbeat_timeout)
                    .unwrap_or(chrono::Duration::seconds(60)),
            };
            let mut decisions = decide(&state, &view);
            let wake = decisions.iter().find_map(|d| match d {
                Decision::WakeAt(at) => Some(*at),
                _ => None,
            });
            decisions.retain(|d| !matches!(d, Decision::WakeAt(_)));
            if decisions.is_empty() {
                return Ok(wake);
            }
            let out = self.materialise(stream, &estream, &cause, decisions);
            let mut appends =
                vec![StreamAppend { stream, expected: ExpectedVersion::Exactly(state.version), events: &out.events }];
            if !out.environment.is_empty() {
                appends.push(StreamAppend {
                    stream: &estream,
                    expected: ExpectedVersion::Exactly(env.version),
                    events: &out.environment,
                });
            }
            if !out.routes.is_empty() {
                appends.push(StreamAppend {
                    stream: ROUTES_STREAM,
                    expected: ExpectedVersion::Exactly(routes_version),
                    events: &out.routes,
                });
            }
            match self.store.append_streams(&appends, &out.commands).await? {
                Ok(_) => {
                    let moved = !out.events.is_empty();
                    {
                        let mut seen = self.seen();
                        for (stream, from, events) in
                            [(stream, state.version, &out.events), (&estream, env.version, &out.environment), (ROUTES_STREAM, routes_version, &out.routes)]
                        {
                            for (i, e) in events.iter().enumerate() {
                                seen.observe(stream, from + 1 + i as u64, e, e.decode::<Event>().ok().as_ref());
                            }
                        }
                    }
                    out.committed();
                    // Decide again from the state just recorded (which
                    // arms a deadline's timer, or goes on at once); a
                    // dispatch that recorded nothing is not repeated.
                    if !moved {
                        return Ok(None);
                    }
                }
                Err(conflict) => {
                    tracing::debug!(%conflict, "deployment moved while deciding; deciding again");
                    self.seen().forget(&conflict.stream);
                }
            }
        }
        // Still deciding after this many rounds: look again shortly rather
        // than hold the batch.
        tracing::warn!(%stream, rounds = ROUNDS, "deployment kept moving while deciding; looking again in a second");
        Ok(Some(Utc::now() + chrono::Duration::seconds(1)))
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
        let seen = load::traffic_seen(&*self.store).await?;
        let traffic = seen.traffic.clone();
        self.seen().put_traffic(seen);
        Ok(traffic)
    }

    /// While a heartbeat-tracked step is dispatched: the last time a worker
    /// reported its command in progress.
    async fn heartbeat(&self, state: &Deployment) -> Result<Option<DateTime<Utc>>, DriverError> {
        let Some((step, _, command)) = state.dispatched else { return Ok(None) };
        if !crate::decider::heartbeat_tracked(step) || state.completed.contains(&step) {
            return Ok(None);
        }
        let workers = self.store.workers().await?;
        Ok(workers.iter().filter(|w| w.commands.contains(&command)).map(|w| w.last_seen).max())
    }

    /// When the build is about to be dispatched (first, or again past its
    /// deadline): an image a successful deployment of this project, its
    /// original or the original's mirrors already has for the same commit.
    /// Not looked up while a dispatched build runs: nothing would use it.
    async fn reusable_image(&self, state: &Deployment, now: DateTime<Utc>) -> Result<Option<ImageSource>, DriverError> {
        let ctx = &state.context;
        let reusing = state.rollback_of.is_some() || state.promoted_from.is_some();
        let running = matches!(state.dispatched, Some((Step::Build, _, _)))
            && state.dispatch_deadline.is_none_or(|deadline| deadline > now);
        // `--no-cache` asks for a fresh build: no re-use either.
        let building =
            state.next_step() == Some(Step::Build) && !running && !reusing && !ctx.dry_run && !ctx.no_cache;
        let (true, Some(commit)) = (building, &ctx.commit) else { return Ok(None) };
        // The project, its original and the original's mirrors (a mirror's
        // build serves the original too, and the other way round).
        let mut family = vec![ctx.project.clone()];
        if let Some(project) = crate::requests::load_project(&*self.store, &ctx.project).await? {
            let root = match &project.mirror_of {
                Some(original) => crate::requests::load_project(&*self.store, original).await?,
                None => Some(project),
            };
            if let Some(root) = root {
                family.push(root.name.clone());
                family.extend(root.mirrors);
            }
        }
        family.sort();
        family.dedup();
        load::image_for_commit(&*self.store, &family, commit).await
    }

    /// Gives decisions ids, time, causation and trace context. Events keep
    /// their cause's trace context; each dispatched command gets a planned
    /// `<queue> publish` span (a child of the cause's span) whose context
    /// goes into the command and its `StepDispatched`.
    fn materialise(
        &self,
        stream: &str,
        env_stream: &str,
        cause: &Envelope,
        decisions: Vec<Decision>,
    ) -> Materialised {
        let now = Utc::now();
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
                Decision::RecordOnRoutes(event) => {
                    routes.extend(Envelope::new(Uuid::now_v7(), now, ROUTES_STREAM, &event, meta()).ok())
                }
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
                            deadline: Some(now + self.options.step_timeout(run.step)),
                            dispatched_at: Some(now),
                        });
                        events.extend(Envelope::new(Uuid::now_v7(), now, stream, &dispatched, traced).ok());
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
