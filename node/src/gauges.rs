//! Samples the gauges that no event moves: how many commands wait in each
//! step queue, how many commands the outbox has not relayed yet, and how
//! many events the engine's subscription has still to read. Every few
//! seconds, in the processes that run the engine or workers; a failed
//! sample keeps the last value (and says so at debug level).

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::driver::ENGINE_CHECKPOINT;
use slipway_proto::Step;
use slipway_store::queue::Queue;
use slipway_store::relay::RELAY_CHECKPOINT;
use slipway_store::{EventStore, StoreError};
use slipway_telemetry::metrics;

use crate::shutdown::Shutdown;

/// How often the gauges are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Lags are counted up to this many (a lag that large reads as "at least").
pub const LAG_CAP: usize = 10_000;

/// What to sample: the lags (only where the engine runs) and which queues.
pub struct Sampled {
    pub lags: bool,
    pub queues: Vec<Step>,
}

/// Samples until `shutdown`.
pub async fn run(store: Arc<dyn EventStore>, queue: Arc<dyn Queue>, sampled: Sampled, shutdown: Shutdown) {
    loop {
        sample(&*store, &*queue, &sampled).await;
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// One round of samples.
pub async fn sample(store: &dyn EventStore, queue: &dyn Queue, sampled: &Sampled) {
    let m = metrics::global();
    for step in &sampled.queues {
        let name = step.queue();
        match queue.depth(&name).await {
            Ok(depth) => m.set_queue_depth(&name, depth),
            Err(e) => tracing::debug!(queue = %name, error = %e, "cannot sample the queue depth"),
        }
    }
    if sampled.lags {
        match lags(store).await {
            Ok((outbox, engine)) => {
                m.set_outbox_lag(outbox);
                m.set_subscription_lag(ENGINE_CHECKPOINT, engine);
            }
            Err(e) => tracing::debug!(error = %e, "cannot sample the outbox and subscription lags"),
        }
    }
}

/// Commands after the relay's checkpoint, events after the engine's.
async fn lags(store: &dyn EventStore) -> Result<(u64, u64), StoreError> {
    let relayed = store.operational().load_checkpoint(RELAY_CHECKPOINT).await?;
    let outbox = store.outbox().read(relayed, LAG_CAP).await?.len() as u64;
    let read = store.operational().load_checkpoint(ENGINE_CHECKPOINT).await?;
    let events = store.read_all(read, LAG_CAP).await?.len() as u64;
    Ok((outbox, events))
}
