//! Keeps the read models up with the log: reads the events after their
//! checkpoint, folds them (`read_model::Folder`, pure) and writes the rows
//! with the new checkpoint in one transaction. The engine runs it as a
//! catch-up subscription (`run`); a read that must see every write so far —
//! the embedded CLI has no engine running — calls `catch_up` first, which
//! costs one empty read when nothing is new. Several writers may race; each
//! batch is written only if the checkpoint is still where it was read from.

use std::sync::Arc;
use std::time::Duration;

use slipway_store::read_model::{DeploymentQuery, DeploymentRow, ProjectRow};
use slipway_store::subscription::{wait_for_wakeup, DEFAULT_POLL};
use slipway_store::{EventStore, Position, RecordedEvent, StoreError};

use crate::read_model::{Folded, Folder};

/// Events folded per transaction.
const BATCH: usize = 2_000;

/// A fold of the log into the read models, remembering the running
/// deployments' states between batches.
#[derive(Debug, Default)]
pub struct Projector {
    folder: Folder,
}

impl Projector {
    /// Folds everything the log holds past the read models' checkpoint;
    /// returns the position they are at then.
    pub async fn catch_up(&mut self, store: &dyn EventStore) -> Result<Position, StoreError> {
        let models = store.read_models();
        loop {
            let from = models.position().await?;
            let batch = store.read_all(from, BATCH).await?;
            let Some(to) = batch.last().map(|r| r.position) else { return Ok(from) };
            let changes = self.changes(store, &batch).await?;
            // Not written: another writer moved the checkpoint; read again from there.
            models.apply(from, to, &changes).await?;
        }
    }

    async fn changes(
        &mut self,
        store: &dyn EventStore,
        batch: &[RecordedEvent],
    ) -> Result<Vec<slipway_store::read_model::Change>, StoreError> {
        let mut changes = Vec::new();
        for r in batch {
            let mut folded = self.folder.fold(r);
            if let Folded::NeedsHistory { deployment, version } = folded {
                let mut history = store.read_stream(&r.stream, 1).await?;
                history.retain(|h| h.version < version);
                folded = match self.folder.seed(deployment, &history) {
                    Ok(()) => self.folder.fold(r),
                    Err(why) => Folded::Unreadable(why),
                };
            }
            match folded {
                Folded::Changes(c) => changes.extend(c),
                Folded::Unreadable(why) => {
                    tracing::warn!(stream = %r.stream, version = r.version, %why, "read models: event left out")
                }
                Folded::NeedsHistory { deployment, version } => tracing::warn!(
                    %deployment, version, "read models: the deployment's history does not lead to this event; left out"
                ),
            }
        }
        Ok(changes)
    }

    /// The read models' subscriber: catches up, then again whenever the
    /// store hints at an append (or a poll interval passes), until
    /// `shutdown`. A store outage is retried after a pause.
    pub async fn run(mut self, store: Arc<dyn EventStore>, shutdown: impl std::future::Future<Output = ()>) {
        let mut wake = store.wakeups();
        tokio::pin!(shutdown);
        loop {
            wake.borrow_and_update();
            let pause = match self.catch_up(&*store).await {
                Ok(_) => DEFAULT_POLL,
                Err(e) => {
                    tracing::error!(error = %e, "read models: catching up failed; retrying in 1 s");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wait_for_wakeup(&mut wake, pause) => {}
            }
        }
    }
}

/// Brings the read models up to the log's head before a read.
pub async fn catch_up(store: &dyn EventStore) -> Result<Position, StoreError> {
    Projector::default().catch_up(store).await
}

/// Empties the read models and folds the whole log into them again.
pub async fn rebuild(store: &dyn EventStore) -> Result<Position, StoreError> {
    store.read_models().reset().await?;
    catch_up(store).await
}

/// Projects by name after `after`, at most `limit`, with the read models'
/// position, once they caught up with the log.
pub async fn projects(store: &dyn EventStore, after: Option<&str>, limit: usize) -> Result<(Vec<ProjectRow>, Position), StoreError> {
    let at = catch_up(store).await?;
    Ok((store.read_models().projects(after, limit).await?, at))
}

/// A page of deployments, newest first, with the read models' position,
/// once they caught up with the log.
pub async fn deployments(store: &dyn EventStore, query: &DeploymentQuery) -> Result<(Vec<DeploymentRow>, Position), StoreError> {
    let at = catch_up(store).await?;
    Ok((store.read_models().deployments(query).await?, at))
}

/// Every project's name, once the read models caught up with the log.
pub async fn project_names(store: &dyn EventStore) -> Result<Vec<String>, StoreError> {
    catch_up(store).await?;
    let mut names: Vec<String> = Vec::new();
    loop {
        let page = store.read_models().projects(names.last().map(String::as_str), 1_000).await?;
        if page.is_empty() {
            return Ok(names);
        }
        names.extend(page.into_iter().map(|p| p.name));
    }
}
