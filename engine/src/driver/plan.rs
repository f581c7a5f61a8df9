//! Planning one deployment's next step: read what the decision needs (the
//! deployment, its environment, the traffic, worker heartbeats, a re-usable
//! image), ask the pure decider, and append what it decided at the versions
//! it read, batch by batch; a conflict means something moved: read and
//! decide again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use slipway_proto::command::ImageSource;
use slipway_proto::event::{deployment_stream, environment_stream, project_stream, ROUTES_STREAM};
use slipway_proto::{Envelope, Step};
use slipway_store::event_store::{Outgoing, StreamAppend};
use slipway_store::{ExpectedVersion, StoreError, WorkerBeat};
use uuid::Uuid;

use super::messages::Materialised;
use super::{Driver, DriverError, BEATS_READ_EVERY, ROUNDS};
use crate::decider::{decide, Decision, EnvironmentView};
use crate::deployment::{fold, Deployment};
use crate::environment::Environment;
use crate::load::{self, decode_all};
use crate::project::{self, Project};
use crate::routes::Traffic;
use crate::seen::{Seen, SeenDeployment, SeenTraffic};

impl Driver {
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
    pub(super) async fn plan(&self, stream: &str, turn: Option<u64>) -> Result<Planned, DriverError> {
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
    pub(super) async fn commit(&self, pendings: &[&Pending]) -> Result<bool, StoreError> {
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
    pub(super) fn committed(&self, pending: Pending) -> bool {
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

    pub(super) fn beats(&self) -> Option<(std::time::Instant, Arc<Vec<WorkerBeat>>)> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Nothing panics while holding it; if something did, the state
        // kept is still whole (each update is one insert or remove).
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A deployment as seen, or read and kept; `None` if it does not exist.
    pub(super) async fn deployment(&self, stream: &str) -> Result<Option<SeenDeployment>, DriverError> {
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
    pub(super) async fn environment(&self, stream: &str) -> Result<Environment, DriverError> {
        if let Some(env) = self.seen().environment(stream) {
            return Ok(env);
        }
        let env = load::environment_of_stream(&*self.store, stream).await?;
        self.seen().put_environment(stream, env.clone());
        Ok(env)
    }

    /// The traffic view as seen, or read and kept.
    pub(super) async fn traffic(&self) -> Result<Traffic, DriverError> {
        if let Some(traffic) = self.seen().traffic() {
            return Ok(traffic);
        }
        Ok(self.read_traffic().await?.traffic)
    }

    /// The traffic view read from the store, and kept.
    pub(super) async fn read_traffic(&self) -> Result<SeenTraffic, DriverError> {
        let seen = load::traffic_seen(&*self.store).await?;
        self.seen().put_traffic(seen.clone());
        Ok(seen)
    }

    /// While a heartbeat-tracked step is dispatched: the last time a worker
    /// reported its command in progress.
    pub(super) async fn heartbeat(&self, state: &Deployment) -> Result<Option<DateTime<Utc>>, DriverError> {
        let Some((step, _, command)) = state.dispatched else { return Ok(None) };
        if !crate::decider::heartbeat_tracked(step) || state.completed.contains(&step) {
            return Ok(None);
        }
        let fresh = self.beats().map(|(at, beats)| (at.elapsed() < BEATS_READ_EVERY).then_some(beats)).unwrap_or_default();
        let workers = match fresh {
            Some(beats) => beats,
            None => {
                let beats = Arc::new(self.store.operational().workers().await?);
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
    pub(super) async fn reusable_image(&self, state: &Deployment, now: DateTime<Utc>) -> Result<Option<ImageSource>, DriverError> {
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
    pub(super) async fn image_for_commit(&self, projects: &[String], commit: &str) -> Result<Option<ImageSource>, DriverError> {
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
    pub(super) async fn project(&self, name: &str) -> Result<Option<Project>, DriverError> {
        let stream = project_stream(name);
        if let Some(events) = self.seen().project(&stream) {
            return Ok(project::fold(events.iter()));
        }
        let (version, events) = crate::requests::project_events(&*self.store, name).await?;
        let folded = project::fold(events.iter());
        self.seen().put_project(&stream, version, events);
        Ok(folded)
    }
}

/// What deciding for one deployment gave.
pub(super) enum Planned {
    /// Nothing to record: look again at this time (or when something happens).
    Wait(Option<DateTime<Utc>>),
    /// At the cutover: to be advanced on its own, holding the routes turn.
    Alone,
    Append(Box<Pending>),
}

/// Decisions to append, with the versions they were decided at:
/// (deployment, environment, routes).
pub(super) struct Pending {
    pub(super) stream: String,
    pub(super) estream: String,
    pub(super) versions: (u64, u64, u64),
    pub(super) out: Materialised,
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
