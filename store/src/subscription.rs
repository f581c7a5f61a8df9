//! Catch-up subscriptions: history first, then live, from a checkpoint stored
//! per consumer. The store's wake-up hint makes live delivery prompt; a poll
//! interval makes it certain when a hint is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::event_store::{EventStore, Position, RecordedEvent, StoreError};

/// How long to wait without a wake-up before polling anyway.
pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

pub struct Subscription {
    store: Arc<dyn EventStore>,
    name: String,
    cursor: Position,
    wake: watch::Receiver<u64>,
    poll: Duration,
}

impl Subscription {
    /// Starts from the consumer's stored checkpoint (or the beginning).
    pub async fn start(store: Arc<dyn EventStore>, name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        let cursor = store.operational().load_checkpoint(&name).await?;
        let wake = store.wakeups();
        Ok(Subscription { store, name, cursor, wake, poll: DEFAULT_POLL })
    }

    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Where this subscription has read up to (not necessarily saved).
    pub fn cursor(&self) -> Position {
        self.cursor
    }

    /// The next events, waiting until there is at least one.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // After a wake-up that found nothing (a transaction older than the new
        // event is still open), retry soon rather than waiting a full poll.
        let mut retry = Duration::from_millis(2);
        loop {
            self.wake.borrow_and_update();
            let batch = self.store.read_all(self.cursor, max).await?;
            if let Some(last) = batch.last() {
                self.cursor = last.position;
                return Ok(batch);
            }
            let woke = wait_for_wakeup(&mut self.wake, retry.min(self.poll)).await;
            retry = if woke { Duration::from_millis(2) } else { (retry * 2).min(self.poll) };
        }
    }

    /// Like `next_batch`, but gives up after `wait` with an empty batch.
    pub async fn poll_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<RecordedEvent>, StoreError> {
        match tokio::time::timeout(wait, self.next_batch(max)).await {
            Ok(result) => result,
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Stores the cursor, so a restart resumes after what was handled.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.store.operational().save_checkpoint(&self.name, self.cursor).await
    }
}

/// Waits up to `max` for the store's wake-up hint; true if it came. A closed
/// hint channel just means waiting out `max` (polling carries on).
pub async fn wait_for_wakeup(wake: &mut watch::Receiver<u64>, max: Duration) -> bool {
    let changed = async {
        if wake.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::time::timeout(max, changed).await.is_ok()
}
