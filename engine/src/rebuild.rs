//! Rebuilding the projections from the log. Slipway's projections
//! (deployments, environments, projects, routes) are folds computed on
//! read, so "rebuilding" means: fold every stream again from its events,
//! report any history that cannot be read or followed, and move the
//! engine's stored subscription checkpoint back to the start, so the next
//! engine to start (restart the running ones) decides again over the whole
//! log. Decisions are idempotent (they land at the version they were
//! decided on), so that appends nothing: the state before and after is
//! identical, which `State::digest` lets a caller check. The read models
//! (`projector`), which are tables, are emptied and refilled from the log.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use slipway_proto::StreamId;
use slipway_store::{EventStore, Position, StoreError};

use crate::driver::ENGINE_CHECKPOINT;
use crate::load::{self, LoadError};

/// Every projection, by stream, in a printable form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub streams: BTreeMap<String, String>,
    /// Streams whose history cannot be read or followed, with why.
    pub broken: BTreeMap<String, String>,
}

impl State {
    /// A SHA-256 over every projection: equal digests, equal state.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (stream, state) in &self.streams {
            h.update(stream.as_bytes());
            h.update(b"\n");
            h.update(state.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }
}

/// Folds every deployment, environment, project and the routes again.
pub async fn fold_all(store: &dyn EventStore) -> Result<State, StoreError> {
    let mut names: Vec<String> = Vec::new();
    let mut all = store.stream_all(Position::START);
    while let Some(r) = all.try_next().await? {
        if r.version == 1 {
            names.push(r.stream);
        }
    }
    let mut state = State::default();
    for stream in names {
        let folded = match StreamId::parse(&stream) {
            StreamId::Deployment(id) => load::deployment(store, id).await.map(|d| format!("{d:?}")),
            StreamId::Environment(_) => load::environment_of_stream(store, &stream).await.map(|e| format!("{e:?}")),
            StreamId::Project(name) => {
                crate::requests::load_project(store, &name).await.map(|p| format!("{p:?}")).map_err(LoadError::Store)
            }
            StreamId::Routes => load::routes(store).await.map(|r| format!("{r:?}")),
            _ => continue,
        };
        match folded {
            Ok(text) => {
                state.streams.insert(stream, text);
            }
            Err(LoadError::Store(e)) => return Err(e),
            Err(e) => {
                state.broken.insert(stream, e.to_string());
            }
        }
    }
    Ok(state)
}

/// Folds everything, moves the engine's subscription to the start, and
/// refills the read models from the log.
pub async fn rebuild(store: &dyn EventStore) -> Result<State, StoreError> {
    let state = fold_all(store).await?;
    store.operational().save_checkpoint(ENGINE_CHECKPOINT, Position::START).await?;
    crate::projector::rebuild(store).await?;
    Ok(state)
}
