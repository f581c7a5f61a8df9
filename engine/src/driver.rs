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
use slipway_proto::event::StepDispatched;
use slipway_proto::{Command, Envelope, Event};
use slipway_store::event_store::Outgoing;
use slipway_store::subscription::Subscription;
use slipway_store::{EventStore, ExpectedVersion, RecordedEvent, StoreError};
use uuid::Uuid;

use crate::decider::{decide, Decision};
use crate::deployment::{fold, IllegalTransition};

/// The checkpoint name of the engine's subscription.
pub const ENGINE_CHECKPOINT: &str = "engine";

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stream `{stream}` holds an undecodable event at version {version}: {reason}")]
    Undecodable { stream: String, version: u64, reason: String },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

pub struct Driver {
    store: Arc<dyn EventStore>,
}

impl Driver {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Driver { store }
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
            let streams: BTreeSet<&str> =
                batch.iter().map(|e| e.stream.as_str()).filter(|s| s.starts_with("deployment-")).collect();
            for stream in streams {
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
            let decisions = decide(&state);
            if decisions.is_empty() {
                return Ok(());
            }
            let Some(cause) = recorded.last() else { return Ok(()) };
            let (events, commands) = self.materialise(stream, &cause.envelope, decisions);
            match self.store.append(stream, ExpectedVersion::Exactly(state.version), &events, &commands).await? {
                Ok(_) => return Ok(()),
                Err(conflict) => tracing::debug!(%conflict, "deployment moved while deciding; deciding again"),
            }
        }
    }

    /// Gives decisions ids, time, causation and trace context.
    fn materialise(&self, stream: &str, cause: &Envelope, decisions: Vec<Decision>) -> (Vec<Envelope>, Vec<Outgoing>) {
        let now = Utc::now();
        let meta = || {
            let mut m = Metadata::caused_by(cause);
            m.actor = "engine".into();
            m.trace = cause.trace.as_ref().map(|t| t.child(rand_span()));
            m
        };
        let mut events = Vec::new();
        let mut commands = Vec::new();
        for decision in decisions {
            match decision {
                Decision::Record(event) => events.extend(Envelope::new(Uuid::now_v7(), now, stream, &event, meta()).ok()),
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
        (events, commands)
    }
}

fn decode_all(recorded: &[RecordedEvent]) -> Result<Vec<Event>, DriverError> {
    recorded
        .iter()
        .map(|r| {
            r.envelope.decode::<Event>().map_err(|e| DriverError::Undecodable {
                stream: r.stream.clone(),
                version: r.version,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn rand_span() -> u64 {
    // The low bits of a v7 UUID are random: good enough for a span id.
    Uuid::now_v7().as_u128() as u64
}
