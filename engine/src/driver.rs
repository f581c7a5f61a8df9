//! The driver: the engine's effectful shell around the pure decider. It
//! follows the store with a catch-up subscription; for every deployment
//! stream that moved, it folds the stream, asks the decider what is next,
//! and appends the decisions (facts, and commands into the outbox) in one
//! transaction at the version it decided on. A conflict means the stream
//! moved meanwhile: fold again and decide again. Several drivers may run;
//! the expected-version check makes their decisions land once.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, environment_stream, StepDispatched};
use slipway_proto::{Command, Envelope, Event};
use slipway_store::event_store::{Outgoing, StreamAppend};
use slipway_store::subscription::Subscription;
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use uuid::Uuid;

use crate::decider::{decide, Decision, EnvironmentView};
use crate::deployment::fold;
use crate::load::{self, decode_all};

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
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions { drain_seconds: 30 }
    }
}

pub struct Driver {
    store: Arc<dyn EventStore>,
    options: DriverOptions,
}

impl Driver {
    pub fn new(store: Arc<dyn EventStore>, options: DriverOptions) -> Self {
        Driver { store, options }
    }

    /// Follows the store until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StoreError> {
        tokio::pin!(shutdown);
        let mut sub = Subscription::start(self.store.clone(), ENGINE_CHECKPOINT).await?;
        loop {
            let batch = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                batch = sub.next_batch(256) => batch?,
            };
            let mut streams: BTreeSet<String> = BTreeSet::new();
            for e in &batch {
                if e.stream.starts_with("deployment-") {
                    streams.insert(e.stream.clone());
                } else if e.stream.starts_with("environment-") {
                    // A deployment left or joined the queue: the head may start.
                    match load::environment_of_stream(&*self.store, &e.stream).await {
                        Ok(env) => streams.extend(env.queue.first().map(|d| deployment_stream(*d))),
                        Err(DriverError::Store(err)) => return Err(err),
                        Err(err) => tracing::error!(stream = %e.stream, error = %err, "cannot read environment"),
                    }
                }
            }
            for stream in &streams {
                match self.advance(stream).await {
                    Ok(()) => {}
                    // A store outage: stop here without checkpointing; the
                    // caller restarts us and the batch is seen again.
                    Err(DriverError::Store(e)) => return Err(e),
                    // A history the decider cannot follow is reported and
                    // left alone; it must not stop every other deployment.
                    Err(e) => tracing::error!(%stream, error = %e, "cannot advance deployment"),
                }
            }
            sub.checkpoint().await?;
        }
    }

    /// Decides and records what comes next for one deployment stream.
    pub async fn advance(&self, stream: &str) -> Result<(), DriverError> {
        loop {
            let recorded = self.store.read_stream(stream, 1).await?;
            let events = decode_all(&recorded)?;
            let Some(state) = fold(events.iter())? else { return Ok(()) };
            let estream = environment_stream(&state.context.project, &state.context.environment);
            let env = load::environment_of_stream(&*self.store, &estream).await?;
            let view = EnvironmentView {
                may_start: env.may_start(state.id),
                active: env.last_succeeded.map(|id| (id, env.active_containers.clone())),
                drain_seconds: self.options.drain_seconds,
            };
            let decisions = decide(&state, &view);
            if decisions.is_empty() {
                return Ok(());
            }
            let Some(cause) = recorded.last() else { return Ok(()) };
            let (events, env_events, commands) = self.materialise(stream, &estream, &cause.envelope, decisions);
            let mut appends = vec![StreamAppend { stream, expected: ExpectedVersion::Exactly(state.version), events: &events }];
            if !env_events.is_empty() {
                appends.push(StreamAppend { stream: &estream, expected: ExpectedVersion::Exactly(env.version), events: &env_events });
            }
            match self.store.append_streams(&appends, &commands).await? {
                Ok(_) => return Ok(()),
                Err(conflict) => tracing::debug!(%conflict, "deployment moved while deciding; deciding again"),
            }
        }
    }

    /// Gives decisions ids, time, causation and trace context.
    fn materialise(
        &self,
        stream: &str,
        env_stream: &str,
        cause: &Envelope,
        decisions: Vec<Decision>,
    ) -> (Vec<Envelope>, Vec<Envelope>, Vec<Outgoing>) {
        let now = Utc::now();
        let meta = || {
            let mut m = Metadata::caused_by(cause);
            m.actor = "engine".into();
            m.trace = cause.trace.as_ref().map(|t| t.child(rand_span()));
            m
        };
        let mut events = Vec::new();
        let mut env_events = Vec::new();
        let mut commands = Vec::new();
        for decision in decisions {
            match decision {
                Decision::Record(event) => events.extend(Envelope::new(Uuid::now_v7(), now, stream, &event, meta()).ok()),
                Decision::RecordOnEnvironment(event) => {
                    env_events.extend(Envelope::new(Uuid::now_v7(), now, env_stream, &event, meta()).ok())
                }
                Decision::Dispatch(command) => {
                    let Ok(envelope) = Envelope::new(Uuid::now_v7(), now, stream, &command, meta()) else { continue };
                    if let Command::RunStep(run) = &command {
                        let dispatched = Event::StepDispatched(StepDispatched {
                            step: run.step,
                            command_id: envelope.id,
                            attempt: run.attempt,
                        });
                        events.extend(Envelope::new(Uuid::now_v7(), now, stream, &dispatched, meta()).ok());
                    }
                    commands.push(Outgoing { queue: command.queue(), envelope });
                }
            }
        }
        (events, env_events, commands)
    }
}

fn rand_span() -> u64 {
    // The low bits of a v7 UUID are random: good enough for a span id.
    Uuid::now_v7().as_u128() as u64
}
