//! The host agent: the engine stays responsible for the serving release for
//! as long as it serves. It runs beside the workers that serve the deploy
//! step (one Docker host each) and
//!
//! - reconciles what is recorded with what Docker runs — at start, after the
//!   Docker daemon came back (its event stream ended and was re-established),
//!   and every `AgentOptions::every` — carrying out the corrections of
//!   `slipway_engine::reconcile` and recording each with its reason on the
//!   environment's stream;
//! - supervises the serving release's containers through Docker's events
//!   (exits, OOM kills, starts, health), recording them rate-limited
//!   (`slipway_engine::supervise`).
//!
//! It is idempotent and safe with several agents on one host: corrections
//! are decided from the recorded state and carried out idempotently, and a
//! correction's event id derives from what it corrects (a removal: the
//! container instance; a start or new upstreams: the environment version it
//! was decided at), so two agents that decide the same correction record
//! it once. The route change a new port needs is the
//! engine's (the driver reacts to `ReleaseUpstreamsObserved`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use slipway_engine::desired::DesiredView;
use slipway_engine::load;
use slipway_engine::reconcile::{self, Correction, StartBackoff};
use slipway_engine::supervise::{Limits, Signal, Supervisor};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{environment_stream, ContainerAction, ContainerReconciled, ReleaseUpstreamsObserved};
use slipway_proto::{Envelope, Event};
use slipway_store::{EventStore, StoreError};
use slipway_workers::host::{self, AgentOptions, HostEvent};
use slipway_workers::steps::docker;
use uuid::Uuid;

use crate::shutdown::Shutdown;

/// How often held-back supervision records are looked at.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before trying an unreachable Docker daemon again.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);
/// The longest pause between two starts of a container that exits at once.
const START_BACKOFF_CAP: Duration = Duration::from_secs(600);
/// Event ids of corrections: UUID v5 in this namespace.
const CORRECTIONS: Uuid = Uuid::from_u128(0x5119_a7a6_e47c_4e0b_9f6e_7265_636f_6e63);

/// Runs the agent for the Docker host this process talks to until `shutdown`.
pub async fn run(store: Arc<dyn EventStore>, host_name: String, options: AgentOptions, shutdown: Shutdown) {
    let mut agent = Agent {
        store,
        host: host_name,
        options,
        supervisor: Supervisor::new(Limits::default()),
        desired: DesiredView::new(),
        read_at: None,
        backoff: StartBackoff::default(),
    };
    let mut unreachable_logged = false;
    loop {
        let docker = match docker::connect().await {
            Ok(docker) => docker,
            Err(e) => {
                if !unreachable_logged {
                    tracing::warn!(error = %e, "host agent: Docker is not reachable; trying again");
                    unreachable_logged = true;
                }
                tokio::select! {
                    _ = shutdown.clone() => return,
                    _ = tokio::time::sleep(RECONNECT_EVERY) => continue,
                }
            }
        };
        if unreachable_logged {
            tracing::info!("host agent: Docker is back; reconciling");
            unreachable_logged = false;
        }
        // Docker (re)started: every container stopped with it may start at once.
        agent.backoff.clear();
        // Follow events first, so nothing between the pass and the stream is missed.
        let mut events = Box::pin(host::events(&docker));
        agent.reconcile(&docker).await;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + agent.options.every, agent.options.every);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.clone() => return,
                _ = every.tick() => agent.reconcile(&docker).await,
                _ = flush.tick() => {
                    let due = agent.supervisor.flush(Utc::now());
                    agent.record_supervised(due).await;
                }
                item = events.next() => match item {
                    Some(Ok(event)) => agent.supervise(&docker, event).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "host agent: Docker's event stream ended; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("host agent: Docker's event stream ended; reconnecting");
                        break;
                    }
                },
            }
        }
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(RECONNECT_EVERY) => {}
        }
    }
}

struct Agent {
    store: Arc<dyn EventStore>,
    host: String,
    options: AgentOptions,
    supervisor: Supervisor,
    /// The recorded state as last read (only what changed is read
    /// again), and when.
    desired: DesiredView,
    read_at: Option<std::time::Instant>,
    backoff: StartBackoff,
}

impl Agent {
    /// One reconciliation, and another right after it if it started
    /// containers (they publish new ports, which the second one records).
    async fn reconcile(&mut self, docker: &host::Docker) {
        for _ in 0..2 {
            match self.pass(docker).await {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "host agent: reconciliation failed; trying again later");
                    return;
                }
            }
        }
    }

    /// Returns whether it started a container.
    async fn pass(&mut self, docker: &host::Docker) -> Result<bool, String> {
        self.read_desired().await.map_err(|e| e.to_string())?;
        let observed = host::containers(docker).await.map_err(|e| e.to_string())?;
        let corrections = reconcile::reconcile(self.desired.environments(), &observed, Utc::now(), self.grace(), &self.host);
        let mut started = false;
        for correction in corrections {
            let (action, deployment, container, reason, done) = match &correction {
                Correction::Remove { deployment, container, reason, .. } => {
                    (ContainerAction::Removed, deployment, container, reason, host::remove(docker, container).await)
                }
                Correction::Start { container, .. } if !self.backoff.may_start(container, Utc::now(), self.every(), cap()) => {
                    tracing::debug!(%container, "host agent: started a moment ago and exited again; waiting before the next start");
                    continue;
                }
                Correction::Start { project, environment, deployment, .. }
                    if !self.still_serves(project, environment, *deployment).await =>
                {
                    continue;
                }
                Correction::Start { deployment, container, reason, .. } => {
                    (ContainerAction::Started, deployment, container, reason, host::start(docker, container).await)
                }
                Correction::Restore { .. } => {
                    self.restore(&correction).await;
                    continue;
                }
                Correction::Reroute { deployment, upstreams, previous, .. } => {
                    let event = Event::ReleaseUpstreamsObserved(ReleaseUpstreamsObserved {
                        deployment_id: *deployment,
                        upstreams: upstreams.clone(),
                        previous: previous.clone(),
                        host: self.host.clone(),
                    });
                    tracing::info!(?correction, "host agent: corrected");
                    self.record_correction(&correction, event).await;
                    continue;
                }
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, %container, ?action, "host agent: could not correct a container");
                continue;
            }
            if action == ContainerAction::Started {
                started = true;
                self.backoff.started(container, Utc::now(), cap());
            }
            let event = Event::ContainerReconciled(ContainerReconciled {
                action,
                deployment_id: *deployment,
                container: container.clone(),
                reason: reason.clone(),
                host: self.host.clone(),
            });
            tracing::info!(?correction, "host agent: corrected");
            self.record_correction(&correction, event).await;
        }
        let serving: Vec<Uuid> = self.desired.environments().iter().filter_map(|d| d.state.active.as_ref().map(|a| a.deployment)).collect();
        self.supervisor.retain(|_, deployment| serving.contains(&deployment));
        Ok(started)
    }

    /// Requests a deployment of the serving release whose containers are
    /// gone, and records why. Each environment's restore waits a doubling
    /// pause after the previous one (a release that cannot start, its image
    /// gone too, is not requested at every pass); the request is recorded
    /// only at the environment version it was decided on.
    async fn restore(&mut self, correction: &Correction) {
        let Correction::Restore { project, environment, deployment, missing, version, reason } = correction else { return };
        let key = format!("restore/{project}/{environment}");
        if !self.backoff.may_start(&key, Utc::now(), self.every(), cap()) {
            return;
        }
        self.backoff.started(&key, Utc::now(), cap());
        let actor = format!("agent:{}", self.host);
        let requested = match slipway_engine::requests::request_restore(&*self.store, &actor, project, environment, *deployment, *version)
            .await
        {
            Ok(Ok(id)) => id,
            Ok(Err(rejection)) => {
                tracing::info!(%project, %environment, reason = %rejection, "host agent: no restore (decided already, or not possible)");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, %project, %environment, "host agent: could not request a restore");
                return;
            }
        };
        let event = Event::ContainerReconciled(ContainerReconciled {
            action: ContainerAction::Redeployed,
            deployment_id: *deployment,
            container: missing.join(","),
            reason: format!("{reason}; deployment {requested} starts the release again"),
            host: self.host.clone(),
        });
        tracing::info!(?correction, %requested, "host agent: corrected");
        self.record_correction(correction, event).await;
    }

    /// Read again just before starting a container: a release replaced a
    /// moment ago is being retired, and must not be started again.
    async fn still_serves(&self, project: &str, environment: &str, deployment: Uuid) -> bool {
        match load::environment(&*self.store, project, environment).await {
            Ok(env) => env.last_succeeded() == Some(deployment),
            Err(e) => {
                tracing::warn!(error = %e, "host agent: could not read what serves");
                false
            }
        }
    }

    fn every(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.options.every).unwrap_or(chrono::Duration::seconds(30))
    }

    fn grace(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.options.grace).unwrap_or(chrono::Duration::minutes(2))
    }

    async fn read_desired(&mut self) -> Result<(), load::LoadError> {
        self.desired.refresh(&*self.store).await?;
        self.read_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Records a correction once, however many agents decided it: a
    /// removal's id derives from the container instance (Docker's id), the
    /// others' from the environment's version and the correction.
    async fn record_correction(&self, correction: &Correction, event: Event) {
        let (project, environment, key) = match correction {
            // Once per container instance, whoever removed it and whenever.
            Correction::Remove { project, environment, id, .. } => (project, environment, format!("remove/{id}")),
            Correction::Start { project, environment, container, .. } => (project, environment, format!("start/{container}")),
            Correction::Reroute { project, environment, upstreams, .. } => {
                (project, environment, format!("reroute/{}", upstreams.join(",")))
            }
            Correction::Restore { project, environment, .. } => (project, environment, "restore".to_string()),
        };
        let stream = environment_stream(project, environment);
        let version = self
            .desired
            .environments()
            .iter()
            .find(|d| d.project == *project && d.environment == *environment)
            .map_or(0, |d| d.state.version);
        let id = match correction {
            Correction::Remove { .. } => Uuid::new_v5(&CORRECTIONS, format!("{stream}/{key}").as_bytes()),
            _ => Uuid::new_v5(&CORRECTIONS, format!("{stream}@{version}/{key}").as_bytes()),
        };
        self.append(&stream, id, &event).await;
    }

    async fn append(&self, stream: &str, id: Uuid, event: &Event) {
        append(&*self.store, &format!("agent:{}", self.host), stream, id, event).await;
    }

    /// One Docker event: a signal about a serving container goes to the supervisor.
    async fn supervise(&mut self, docker: &host::Docker, event: HostEvent) {
        let Some(mut signal) = Signal::of_docker_action(&event.action, event.exit_code) else { return };
        let Ok(deployment) = event.deployment.parse::<Uuid>() else { return };
        if !self.serves(&event, deployment) && self.read_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            // A release that began serving since the last read?
            if let Err(e) = self.read_desired().await {
                tracing::warn!(error = %e, "host agent: could not read what serves");
            }
        }
        if !self.serves(&event, deployment) {
            return;
        }
        if let Signal::Died { restarting, .. } = &mut signal {
            // Docker marks it restarting before it reports the exit.
            *restarting = host::restarting(docker, &event.name).await;
        }
        let at = chrono::DateTime::from_timestamp_nanos(event.time_nano);
        let due = self.supervisor.observe(&event.name, deployment, signal, at);
        self.record_supervised(due.into_iter().collect()).await;
    }

    fn serves(&self, event: &HostEvent, deployment: Uuid) -> bool {
        self.desired.environments().iter().any(|d| {
            d.project == event.project
                && d.environment == event.environment
                && d.state.active.as_ref().is_some_and(|a| a.deployment == deployment)
                && !event.role.starts_with("release-")
        })
    }

    async fn record_supervised(&self, records: Vec<slipway_proto::event::ContainerSupervised>) {
        for mut record in records {
            let Some(d) =
                self.desired.environments().iter().find(|d| d.state.active.as_ref().is_some_and(|a| a.deployment == record.deployment_id))
            else {
                continue;
            };
            // What was read may be a moment old: a release replaced since
            // then is being retired, and its containers' exits are no news.
            match load::environment(&*self.store, &d.project, &d.environment).await {
                Ok(env) if env.last_succeeded() == Some(record.deployment_id) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "host agent: could not read what serves");
                    continue;
                }
            }
            record.host = self.host.clone();
            tracing::info!(container = %record.container, state = record.state.as_str(), "host agent: supervised");
            let stream = environment_stream(&d.project, &d.environment);
            self.append(&stream, Uuid::now_v7(), &Event::ContainerSupervised(record)).await;
        }
    }
}

fn cap() -> chrono::Duration {
    chrono::Duration::from_std(START_BACKOFF_CAP).unwrap_or(chrono::Duration::minutes(10))
}

/// Records `event` as `actor` once (an id recorded already is a duplicate,
/// not an error); a failure is logged: the next pass decides again.
pub(crate) async fn append(store: &dyn EventStore, actor: &str, stream: &str, id: Uuid, event: &Event) {
    let meta = Metadata { correlation_id: id, causation_id: None, actor: actor.to_string(), trace: None };
    let Ok(envelope) = Envelope::new(id, Utc::now(), stream, event, meta) else { return };
    match store.append_each(&[(stream, &envelope)]).await {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) | Some(Err(StoreError::Duplicate { .. })) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, %stream, %actor, "could not record"),
        },
        Err(e) => tracing::warn!(error = %e, %stream, %actor, "could not record"),
    }
}
