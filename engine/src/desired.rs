//! What every environment wants, kept from one look to the next.
//!
//! A host agent reconciles every 30 s and on Docker's events, and the swarm
//! watcher looks twice a second; each needs every environment's state
//! (`reconcile::Desired`). Loading that afresh (`load::desired`) reads every
//! project's and every environment's stream: on a farm with thousands of
//! projects, thousands of reads per look, however little changed.
//!
//! `DesiredView` loads them all once, remembering the log position the read
//! models had reached before it read (everything up to there is in what it
//! read). Each refresh then reads only the events appended since: their
//! streams name what changed. A project stream that moved is read again for
//! its environments (one added or removed); an environment stream that
//! moved is read again and folded. A refresh costs what changed, not how
//! many environments there are. Reading a stream twice is harmless (a fold
//! of the whole stream), so an event seen both by the first load and by the
//! next refresh changes nothing; an error forgets the position, and the next
//! refresh loads everything again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;

use slipway_proto::event::environment_stream;
use slipway_proto::StreamId;
use slipway_store::{EventStore, Position};

use crate::load::{self, LoadError};
use crate::reconcile::Desired;

/// Every environment's state, brought up to date by `refresh`.
#[derive(Debug, Default)]
pub struct DesiredView {
    /// The log position everything in `environments` includes; `None`
    /// before the first load and after an error.
    at: Option<Position>,
    /// Sorted by (project, environment), as `load::desired` returns them.
    environments: Vec<Desired>,
    /// Each environment stream's pair (its combined name cannot be split).
    pairs: HashMap<String, (String, String)>,
}

impl DesiredView {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every environment, by (project, environment), as of the last refresh.
    pub fn environments(&self) -> &[Desired] {
        &self.environments
    }

    /// Reads what changed since the last refresh (everything, the first
    /// time); returns how many environment streams it read.
    pub async fn refresh(&mut self, store: &dyn EventStore) -> Result<usize, LoadError> {
        let outcome = self.try_refresh(store).await;
        if outcome.is_err() {
            self.at = None;
        }
        outcome
    }

    async fn try_refresh(&mut self, store: &dyn EventStore) -> Result<usize, LoadError> {
        let Some(mut at) = self.at else {
            // Taken first: whatever is appended while the streams are read
            // comes again in the next refresh.
            let at = crate::projector::catch_up(store).await?;
            self.environments = load::desired(store).await?;
            self.pairs = self
                .environments
                .iter()
                .map(|d| (environment_stream(&d.project, &d.environment), (d.project.clone(), d.environment.clone())))
                .collect();
            self.at = Some(at);
            return Ok(self.environments.len());
        };
        let (mut projects, mut streams) = (BTreeSet::new(), BTreeSet::new());
        let mut appended = store.stream_all(at);
        while let Some(r) = appended.next().await {
            let r = r?;
            at = r.position;
            match StreamId::parse(&r.stream) {
                StreamId::Project(p) => {
                    projects.insert(p.into_owned());
                }
                StreamId::Environment(_) => {
                    streams.insert(r.stream);
                }
                _ => {}
            }
        }
        // Its connection back to the pool before the reads below.
        drop(appended);
        if projects.is_empty() && streams.is_empty() {
            self.at = Some(at);
            return Ok(0);
        }
        let mut by_pair: BTreeMap<(String, String), Desired> =
            std::mem::take(&mut self.environments).into_iter().map(|d| ((d.project.clone(), d.environment.clone()), d)).collect();
        // A project that moved may have gained or lost environments.
        for project in &projects {
            let now: BTreeSet<String> =
                crate::requests::load_project(store, project).await?.map(|p| p.environments.into_keys().collect()).unwrap_or_default();
            by_pair.retain(|(p, e), _| p != project || now.contains(e));
            self.pairs.retain(|_, (p, e)| p != project || now.contains(e));
            for e in now {
                let stream = environment_stream(project, &e);
                if let std::collections::hash_map::Entry::Vacant(new) = self.pairs.entry(stream.clone()) {
                    new.insert((project.clone(), e));
                    streams.insert(stream);
                }
            }
        }
        let mut read = 0;
        for stream in &streams {
            // A stream of an environment no project holds (removed) is left out.
            let Some((project, environment)) = self.pairs.get(stream) else { continue };
            let d = load::desired_of(store, project, environment).await?;
            by_pair.insert((project.clone(), environment.clone()), d);
            read += 1;
        }
        self.environments = by_pair.into_values().collect();
        self.at = Some(at);
        Ok(read)
    }
}
