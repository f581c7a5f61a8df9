//! The outbox relay: publishes commands that were committed to the outbox
//! to their queues, in the store's gap-safe order, and advances its
//! checkpoint only after the broker confirmed them. Killed at any point, it
//! loses nothing: a restart re-publishes from the checkpoint, so a command may
//! arrive twice, always with the same message id (consumers deduplicate).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::event_store::{EventStore, OutboxEntry, Position, StoreError};
use crate::queue::{Queue, QueueError, QueueMessage};
use crate::subscription::wait_for_wakeup;

/// The checkpoint name the relay stores its position under.
pub const RELAY_CHECKPOINT: &str = "outbox-relay";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Commands published per round trip to the broker.
    pub batch: usize,
    /// How long to wait without a wake-up before polling the outbox.
    pub poll: Duration,
    /// Delete published rows from the outbox.
    pub prune: bool,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions { batch: 500, poll: Duration::from_millis(500), prune: true }
    }
}

pub struct Relay {
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    options: RelayOptions,
    declared: HashSet<String>,
    cursor: Option<Position>,
    /// Where the last prune ended; `None` (at the start, after a failure)
    /// prunes from the outbox's start.
    pruned: Option<Position>,
}

impl Relay {
    pub fn new(store: Arc<dyn EventStore>, queue: Arc<dyn Queue>, options: RelayOptions) -> Self {
        Relay { store, queue, options, declared: HashSet::new(), cursor: None, pruned: None }
    }

    /// Publishes one batch of pending commands; returns how many.
    pub async fn relay_once(&mut self) -> Result<usize, RelayError> {
        let cursor = match self.cursor {
            Some(c) => c,
            None => *self.cursor.insert(self.store.operational().load_checkpoint(RELAY_CHECKPOINT).await?),
        };
        if self.options.prune && self.pruned.is_none() && cursor > Position::START {
            // A relay killed between its checkpoint and its prune left
            // published rows behind; they go now, even if nothing new comes.
            self.store.outbox().prune(Position::START, cursor).await?;
            self.pruned = Some(cursor);
        }
        let pending = self.store.outbox().read(cursor, self.options.batch).await?;
        let Some(last) = pending.last().map(|e| e.position) else {
            return Ok(0);
        };
        for queue in pending.iter().map(|e| &e.queue) {
            if !self.declared.contains(queue) {
                self.queue.declare(queue).await?;
                self.declared.insert(queue.clone());
            }
        }
        let messages: Vec<QueueMessage> = pending.iter().map(to_message).collect();
        // Confirmed by the broker before the checkpoint moves: a crash in
        // between re-publishes these (same ids), never skips them.
        self.queue.publish(&messages).await?;
        self.store.operational().save_checkpoint(RELAY_CHECKPOINT, last).await?;
        self.cursor = Some(last);
        if self.options.prune {
            self.store.outbox().prune(self.pruned.unwrap_or(Position::START), last).await?;
            self.pruned = Some(last);
        }
        Ok(pending.len())
    }

    /// Relays until `shutdown` resolves. Failures are logged and retried with
    /// backoff; the relay never gives up on a command.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut wake = self.store.wakeups();
        let mut backoff = Duration::from_millis(50);
        loop {
            wake.borrow_and_update();
            let wait = match self.relay_once().await {
                Ok(n) if n > 0 => {
                    backoff = Duration::from_millis(50);
                    continue;
                }
                Ok(_) => self.options.poll,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay failed; retrying");
                    // Forget the cursor: re-read the checkpoint after a failure.
                    self.cursor = None;
                    self.pruned = None;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wait_for_wakeup(&mut wake, wait) => {}
            }
        }
    }
}

fn to_message(entry: &OutboxEntry) -> QueueMessage {
    QueueMessage {
        id: entry.message_id,
        queue: entry.queue.clone(),
        body: entry.body.clone().into_bytes(),
        traceparent: entry.traceparent.clone(),
    }
}
