//! The worker loop. For each delivery: decode the command (an undecodable
//! one goes to the dead-letter queue, it never crash-loops the worker); if
//! its outcome is already recorded (a redelivery), just ack; otherwise run
//! the step, append the outcome, and ack only after the append committed.
//! The outcome's event id derives from the command id, so two workers that
//! both ran a redelivered command record one outcome, not two.

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use slipway_proto::command::dispatch_id;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{
    deployment_stream, known_host_field, project_stream, same_host_key, trusted_for, SourceAccess, SourceHostKeyPinned, StepFailed,
};
use slipway_proto::{Command, Envelope, Event, Step, TraceContext};
use slipway_store::queue::{Delivery, Queue, QueueError};
use slipway_store::{EventStore, ExpectedVersion, StoreError};
use slipway_telemetry::trace::{self, Delivered};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::group::Group;
use crate::steps::{git, git_remote, Executor, Settings};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Which steps' queues this worker serves.
    pub steps: Vec<Step>,
    /// Unacknowledged deliveries per step queue (at least `concurrency`).
    pub prefetch: u16,
    /// Commands run at once per step queue. 1 (the default) runs one
    /// build, one deploy, ... at a time: a worker process is a unit of
    /// capacity, and more capacity is more processes.
    pub concurrency: usize,
    /// Who the outcome events name as their actor.
    pub actor: String,
    /// This process's id in the workers table (`slipway workers`).
    pub id: String,
    pub host: String,
    /// The host agent (reconciler and supervisor of this Docker host), run
    /// where the deploy step is served; `None` runs none.
    pub agent: Option<crate::host::AgentOptions>,
    /// The swarm watcher (records the serving releases' Swarm task changes
    /// and moves routes to where their replicas run), run where the deploy
    /// step is served on the swarm runtime.
    pub swarm_watch: bool,
    /// Removes this worker's row when it stops cleanly with nothing in
    /// progress, rather than keep it listed as stopped: for the workers a
    /// CLI command runs in-process for its own deployment (embedded mode),
    /// which `slipway workers` would otherwise list, one per command run,
    /// for a day. One stopped in the middle of a command keeps its row.
    pub forget_when_stopped: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "local".into());
        WorkerOptions {
            steps: Step::ALL.to_vec(),
            prefetch: 4,
            concurrency: 1,
            actor: "worker".into(),
            id: format!("{host}-{}-{}", std::process::id(), &Uuid::now_v7().simple().to_string()[26..]),
            host,
            agent: Some(crate::host::AgentOptions::default()),
            swarm_watch: false,
            forget_when_stopped: false,
        }
    }
}

/// Releases one worker watches, or retires, at once: a watch holds its
/// delivery for the whole window, a retirement for the drain (30 s by
/// default) and the stop grace, both mostly waiting. At `--concurrency`
/// (1 by default) the old releases of ten environments deployed together
/// would be retired one after the other, the last some six minutes later.
pub const WATCHES: usize = 256;

/// Commands run at once, and deliveries unacknowledged, on `step`'s queue (pure).
fn capacity(step: Step, concurrency: usize, prefetch: u16) -> (usize, u16) {
    match step {
        Step::Watch | Step::Retire => (concurrency.max(WATCHES), prefetch.max(WATCHES as u16)),
        _ => (concurrency, prefetch),
    }
}

/// How often a worker records its heartbeat; `slipway workers` calls one
/// silent for three intervals missing.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// A worker silent this long (stopped, or gone with its host) is forgotten
/// by the next worker that starts: a farm whose workers come and go lists
/// those of the last week, not every one it ever had.
pub const FORGOTTEN_AFTER: chrono::Duration = chrono::Duration::days(7);

/// Commands in progress in this process, for the heartbeat.
type Busy = Arc<std::sync::Mutex<std::collections::BTreeMap<Uuid, String>>>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The id of the outcome event of command `command_id`.
pub fn outcome_id(command_id: Uuid) -> Uuid {
    Uuid::new_v5(&command_id, b"slipway-outcome")
}

/// Serves the configured steps' queues until `shutdown` resolves.
pub async fn run(
    queue: Arc<dyn Queue>,
    store: Arc<dyn EventStore>,
    executor: Arc<dyn Executor>,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let mut tasks = JoinSet::new();
    let busy: Busy = Arc::default();
    let group = Group::start(store.clone(), &STOPS_STEPS);
    let concurrency = options.concurrency.max(1);
    let prefetch = options.prefetch.max(u16::try_from(concurrency).unwrap_or(u16::MAX));
    for step in &options.steps {
        let name = step.queue();
        // Watches and retirements mostly wait: every release watched or
        // retired at once must be, whatever `--concurrency` says.
        let (concurrency, prefetch) = capacity(*step, concurrency, prefetch);
        queue.declare(&name).await?;
        let mut consumer = queue.consume(&name, prefetch).await?;
        let (store, group, executor, actor, busy, host) =
            (store.clone(), group.clone(), executor.clone(), options.actor.clone(), busy.clone(), options.host.clone());
        let system = queue.system();
        tasks.spawn(async move {
            // The consumer lives until every delivery it gave is settled.
            let mut running = JoinSet::new();
            loop {
                while running.len() >= concurrency {
                    running.join_next().await;
                }
                let Some(delivery) = consumer.next().await else { break };
                let (store, group, executor, actor, busy, name, host) =
                    (store.clone(), group.clone(), executor.clone(), actor.clone(), busy.clone(), name.clone(), host.clone());
                running.spawn(async move {
                    let calls = Calls { store: &*store, group: &group };
                    if let Err(e) = handle_tracked(calls, &*executor, (&actor, &host, system), delivery, &busy).await {
                        tracing::warn!(error = %e, queue = %name, "delivery not settled; it will be redelivered");
                    }
                });
            }
            while running.join_next().await.is_some() {}
        });
    }
    let started_at = Utc::now();
    let beat = |stopped: bool| {
        // One look at what runs: the readable list and the ids agree.
        let (busy, commands) = busy.lock().map(|b| (b.values().cloned().collect(), b.keys().copied().collect())).unwrap_or_default();
        slipway_store::WorkerBeat {
            id: options.id.clone(),
            host: options.host.clone(),
            steps: options.steps.iter().map(|s| s.to_string()).collect(),
            busy,
            commands,
            started_at,
            last_seen: Utc::now(),
            stopped,
        }
    };
    match store.operational().forget_workers(started_at - FORGOTTEN_AFTER).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(forgotten = n, "forgot the workers silent for a week"),
        Err(e) => tracing::warn!(error = %e, "could not forget the workers silent for a week"),
    }
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = store.operational().heartbeat(&beat(false)).await {
            tracing::warn!(error = %e, "could not record the worker heartbeat");
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
    tasks.shutdown().await;
    // A command cut short by the stop stays listed in the last beat: the
    // engine's heartbeat timeout then dispatches it again soon, rather than
    // at the step's deadline. Only a worker that stopped idle is forgotten.
    let idle = busy.lock().map(|b| b.is_empty()).unwrap_or(false);
    let stopped = match options.forget_when_stopped && idle {
        true => store.operational().forget_worker(&options.id).await,
        false => store.operational().heartbeat(&beat(true)).await,
    };
    if let Err(e) = stopped {
        tracing::warn!(error = %e, "could not record the worker's stop");
    }
    Ok(())
}

/// Who records outcomes (the actor) and the queue backend's name (for traces).
/// The actor outcomes are recorded as, the Docker host, the messaging system.
type Identity<'a> = (&'a str, &'a str, &'static str);

/// The store, and the same calls made in groups (see `group`).
#[derive(Clone, Copy)]
struct Calls<'a> {
    store: &'a dyn EventStore,
    group: &'a Group,
}

/// `handle`, with the command listed as in progress while it runs.
async fn handle_tracked(
    calls: Calls<'_>,
    executor: &dyn Executor,
    who: Identity<'_>,
    delivery: Delivery,
    busy: &Busy,
) -> Result<(), WorkerError> {
    let what = Envelope::from_json(&delivery.message.body)
        .ok()
        .and_then(|e| e.decode::<Command>().ok().map(|c| (e.id, format!("{} of deployment {}", c.step(), c.deployment_id()))));
    if let (Some((id, what)), Ok(mut b)) = (&what, busy.lock()) {
        b.insert(*id, what.clone());
    }
    let result = handle(calls, executor, who, delivery).await;
    if let (Some((id, _)), Ok(mut b)) = (&what, busy.lock()) {
        b.remove(id);
    }
    result
}

/// Events after which a deployment's steps are not run any more: a step
/// command delivered late (or again) would only start containers that
/// belong to no release.
const STOPS_STEPS: [&str; 3] = ["DeploymentSucceeded", "DeploymentFailed", "CancelRequested"];

/// Handles one delivery to the end: settled one way or another, or left
/// unsettled (redelivered later) when the store is unavailable. The step
/// runs inside its `<queue> process` span, a child of the span that
/// dispatched it; the outcome carries this span's trace context.
async fn handle(
    Calls { store, group }: Calls<'_>,
    executor: &dyn Executor,
    (actor, host, system): Identity<'_>,
    delivery: Delivery,
) -> Result<(), WorkerError> {
    let envelope = match Envelope::from_json(&delivery.message.body) {
        Ok(e) => e,
        Err(e) => return Ok(delivery.dead_letter(&format!("undecodable envelope: {e}")).await?),
    };
    let command = match envelope.decode::<Command>() {
        Ok(c) => c,
        Err(e) => return Ok(delivery.dead_letter(&e.to_string()).await?),
    };
    let stream = deployment_stream(command.deployment_id());
    let id = outcome_id(envelope.id);
    // A step runs only as the engine sent it: its dispatch is recorded
    // under an id derived from exactly these bytes.
    let sent = dispatch_id(envelope.id, &delivery.message.body);
    let checked = matches!(command, Command::RunStep(_));
    let (holds, dispatched) = tokio::join!(group.holds(&stream, id), async {
        if checked {
            group.holds(&stream, sent).await.map(|h| h.id)
        } else {
            Ok(true)
        }
    });
    let (holds, dispatched) = match (holds, dispatched) {
        (Ok(h), Ok(d)) => (h, d),
        (Err(e), _) | (_, Err(e)) => {
            delivery.retry().await?;
            return Err(e.into());
        }
    };
    if !dispatched && !holds.id {
        tracing::warn!(command = %envelope.id, %stream, "no recorded dispatch matches this message: refused");
        return Ok(delivery
            .dead_letter(&format!(
                "refused: {stream} records no dispatch of command {} with exactly this content (forged, altered, or sent before this check existed)",
                envelope.id
            ))
            .await?);
    }
    if holds.id {
        tracing::info!(command = %envelope.id, "outcome already recorded; acking the redelivery");
        return Ok(delivery.ack().await?);
    }
    if matches!(command, Command::RunStep(_)) && holds.any_of_types {
        tracing::info!(command = %envelope.id, %stream, "deployment finished or cancelled; not running the step");
        return Ok(delivery.ack().await?);
    }
    let (queue, message_id, deployment) = (command.queue(), envelope.id.to_string(), command.deployment_id().to_string());
    let step = command.step().to_string();
    let delivered =
        Delivered { system, queue: &queue, message_id: &message_id, deployment_id: &deployment, step: &step, attempt: delivery.attempt };
    let span = trace::process_span(&delivered, delivered_trace(&delivery, &envelope).as_ref());
    let ran = async {
        // A value this process cannot open (no key, or the wrong one) does
        // not open on a retry either: the step fails, saying why.
        let (settings, unopenable) = match resolve_settings(store, &command).await {
            Ok(s) => (s, None),
            Err(StoreError::Sealing { reason }) => (Settings::new(), Some(reason)),
            Err(e) => {
                delivery.retry().await?;
                return Err(e.into());
            }
        };
        let started = std::time::Instant::now();
        let ran = match (unopenable, &command) {
            (Some(reason), Command::RunStep(run)) => Event::StepFailed(StepFailed {
                step: run.step,
                reason: format!("{reason}; this worker runs on {host}"),
                attempt: run.attempt,
                details: vec![],
                evidence: None,
            }),
            _ => execute(executor, &command, &settings).await,
        };
        let mut event = crate::steps::scrub_outcome(ran, &settings);
        if let Event::WebContainerStarted(started) = &mut event {
            started.host = host.to_string();
        }
        let mut meta = Metadata::caused_by(&envelope);
        meta.actor = actor.to_string();
        // The next dispatch is a child of this step's span (when it is exported).
        meta.trace = trace::context_of(&span).or(meta.trace);
        let event = match settle_host_key(store, &command, event, &meta).await {
            Ok(event) => event,
            Err(e) => {
                delivery.retry().await?;
                return Err(e.into());
            }
        };
        let outcome = match &event {
            Event::StepFailed(f) => {
                trace::mark_failed(&span, &f.reason);
                "failed"
            }
            Event::StepSkipped(_) => "skipped",
            _ => "succeeded",
        };
        slipway_telemetry::metrics::global().step_finished(&step, outcome, started.elapsed());
        let outcome = match Envelope::new(id, Utc::now(), &stream, &event, meta) {
            Ok(o) => o,
            Err(e) => return Ok(delivery.dead_letter(&format!("cannot encode the outcome: {e}")).await?),
        };
        match group.record(&stream, outcome).await {
            Ok(_) | Err(StoreError::Duplicate { .. }) => Ok(delivery.ack().await?),
            Err(e) => {
                delivery.retry().await?;
                Err(e.into())
            }
        }
    };
    tracing::Instrument::instrument(ran, span.clone()).await
}

/// The command's settings (key -> fingerprint) resolved to values, with
/// the repository's credentials under their source keys (which no app
/// container gets). A value missing from the store stays missing; the
/// step that needs it says so.
async fn resolve_settings(store: &dyn EventStore, command: &Command) -> Result<Settings, StoreError> {
    let Command::RunStep(run) = command else { return Ok(Settings::new()) };
    let context = &run.context;
    let (app, source) = needs_values(run.step);
    let credentials = context.source.credentials.iter().map(|(name, f)| (git_remote::source_key(name), f));
    let settings = context.settings.iter().map(|(k, f)| (k.clone(), f));
    let wanted: Vec<(String, &String)> = settings.filter(|_| app).chain(credentials.filter(|_| source)).collect();
    if wanted.is_empty() {
        return Ok(Settings::new());
    }
    let fingerprints: Vec<String> = wanted.iter().map(|(_, f)| (*f).clone()).collect();
    let values = store.operational().values(&fingerprints).await?;
    Ok(wanted.into_iter().filter_map(|(key, f)| values.get(f).map(|v| (key, v.clone()))).collect())
}

/// Which values a step is given (app settings, repository credentials):
/// the app's settings only to the steps that start, check or watch its
/// containers (and the services check, which connects to its services);
/// the repository's credentials only to the steps that fetch it. The build
/// gets neither, so a host that only builds never reads a value.
fn needs_values(step: Step) -> (bool, bool) {
    match step {
        Step::CheckServices => (true, true),
        Step::Checkout => (false, true),
        Step::Deploy | Step::Release | Step::Processes | Step::HealthCheck | Step::Watch => (true, false),
        Step::Build | Step::Cutover | Step::Retire | Step::Cleanup => (false, false),
    }
}

/// Trust on first use: the SSH host key a source step accepted because its
/// command named no trusted key is recorded on the project before the
/// outcome, so later fetches refuse any other key. The project is read
/// first: the services check and the checkout of one deployment both meet
/// the key, and only the first records it. If the project meanwhile trusts
/// another key for that host (a concurrent first use, or a change between
/// the two steps), the step fails as for a changed key. Appended at the
/// version read, so two first uses cannot both record.
async fn settle_host_key(store: &dyn EventStore, command: &Command, event: Event, meta: &Metadata) -> Result<Event, StoreError> {
    let met = match &event {
        Event::ServicesChecked(s) => s.source_host_key.clone(),
        Event::CheckedOut(c) => c.source_host_key.clone(),
        _ => None,
    };
    let (Some(met), Command::RunStep(run)) = (met, command) else { return Ok(event) };
    let stream = project_stream(&run.context.project);
    let host = known_host_field(&met).to_string();
    loop {
        let recorded = store.read_stream(&stream, 1).await?;
        let version = recorded.last().map_or(0, |r| r.version);
        let mut access = SourceAccess::default();
        for event in recorded.iter().filter_map(|r| r.envelope.decode::<Event>().ok()) {
            access.apply(&event);
        }
        let trusted: Vec<&String> = trusted_for(&access.known_hosts, &host).collect();
        if trusted.iter().any(|line| same_host_key(line, &met)) {
            return Ok(event);
        }
        if !trusted.is_empty() {
            let changed = git::SourceError::HostKeyChanged {
                repo: git::shown_repository(&run.context.repository),
                git_ref: run.context.git_ref.clone(),
                met,
            };
            let reason = changed.to_string();
            return Ok(Event::StepFailed(StepFailed { step: run.step, reason, attempt: run.attempt, details: vec![], evidence: None }));
        }
        let pinned = Event::SourceHostKeyPinned(SourceHostKeyPinned { known_host: met.clone(), deployment_id: run.context.deployment_id });
        let Ok(envelope) = Envelope::new(Uuid::now_v7(), Utc::now(), &stream, &pinned, meta.clone()) else {
            return Ok(event);
        };
        if store.append(&stream, ExpectedVersion::Exactly(version), &[envelope], &[]).await?.is_ok() {
            return Ok(event);
        }
    }
}

async fn execute(executor: &dyn Executor, command: &Command, settings: &Settings) -> Event {
    match command {
        Command::RunStep(c) => executor.run_step(c, settings).await,
        Command::RemoveContainers(c) => executor.remove_containers(c).await,
        Command::RetireRelease(c) => executor.retire(c).await,
    }
}

/// The dispatcher's trace context: the message's `traceparent` header
/// (what any AMQP-aware tool sees), with the envelope's `tracestate` when
/// both name the same span; the envelope's alone when the header is missing
/// or malformed.
fn delivered_trace(delivery: &Delivery, envelope: &Envelope) -> Option<TraceContext> {
    let header = delivery.message.traceparent.as_deref().and_then(|t| TraceContext::parse(t).ok());
    match (header, &envelope.trace) {
        (Some(h), Some(e)) if h.traceparent == e.traceparent => Some(e.clone()),
        (Some(h), _) => Some(h),
        (None, e) => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_that_mostly_wait_run_many_at_once_whatever_the_concurrency() {
        assert_eq!(capacity(Step::Watch, 1, 4), (WATCHES, WATCHES as u16));
        assert_eq!(capacity(Step::Retire, 1, 4), (WATCHES, WATCHES as u16), "one retirement's drain must not hold up the next");
        assert_eq!(capacity(Step::Build, 1, 4), (1, 4));
        assert_eq!(capacity(Step::Deploy, 3, 1), (3, 1));
    }
}
