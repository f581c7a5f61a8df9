//! The verbs that request a deployment and follow it to its end against
//! the store: deploy, promote, replay, migrate, rollback (and cancel, which
//! only asks). With the in-process queue (`--queue memory`) they bring
//! their own engine and workers for the run (`start_embedded`); otherwise a
//! server and workers elsewhere pick the request up. `--server` has their
//! twins in `remote.rs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use slipway_engine::driver::DriverOptions;
use slipway_engine::requests::{self, DeployRequest};
use slipway_node::Parts;
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::{Event, Step};
use slipway_store::EventStore;
use uuid::Uuid;

use crate::args::{DeployArgs, FollowArgs};
use crate::{actor, connect, exit, follow, machinery, processes, progress, report};

/// Where a deployment verb runs: the store, the queue (in-process machinery
/// when it is `memory`), the workers' data directory and the build farm's
/// registry, and whether to print JSON.
pub struct Here {
    pub store: Arc<dyn EventStore>,
    pub queue_url: String,
    pub embedded: bool,
    pub data_dir: PathBuf,
    pub registry: Option<String>,
    pub json: bool,
}

impl Here {
    async fn start(&self, drain: u64) -> anyhow::Result<Running> {
        start_embedded(&self.store, &self.queue_url, self.embedded, &self.data_dir, self.registry.clone(), drain).await
    }

    async fn finish(&self, running: Running, target: Target, follow: &FollowArgs) -> anyhow::Result<ExitCode> {
        finish(&*self.store, running, target, &self.data_dir, follow, self.json).await
    }
}

impl Here {
    /// The build mode for `--local`/`--cloud`: local by default when
    /// everything runs in this process, cloud with a shared server.
    pub fn mode(&self, local: bool, cloud: bool) -> BuildMode {
        if local || (!cloud && self.embedded) {
            BuildMode::Local
        } else {
            BuildMode::Cloud
        }
    }
}

pub async fn promote(
    here: &Here,
    project: String,
    from: String,
    to: String,
    mode: BuildMode,
    migrate: bool,
    follow: FollowArgs,
) -> anyhow::Result<ExitCode> {
    let running = here.start(follow.drain).await?;
    let run_release = mode == BuildMode::Cloud || migrate;
    let (id, source) = match requests::request_promotion(&*here.store, &actor::actor(), &project, &from, &to, mode, run_release).await? {
        Ok(r) => r,
        Err(rejection) => return Err(refused(running, rejection).await),
    };
    let target = Target {
        id,
        project: project.clone(),
        env: to.clone(),
        intro: format!("deployment {id}: {project} {to} gets the image of {from}'s release {source}"),
    };
    here.finish(running, target, &follow).await
}

pub async fn replay(here: &Here, deployment: Uuid, from_step: Option<Step>, follow: FollowArgs) -> anyhow::Result<ExitCode> {
    let original = slipway_engine::load::deployment(&*here.store, deployment)
        .await?
        .ok_or_else(|| exit::not_found(format!("no deployment {deployment}")))?;
    let running = here.start(follow.drain).await?;
    let replay = match requests::request_replay(&*here.store, &actor::actor(), deployment, from_step).await? {
        Ok(r) => r,
        Err(rejection) => return Err(refused(running, rejection).await),
    };
    let intro = format!("deployment {}: replays {deployment} from {}", replay.deployment_id, replay.from_step);
    let (project, env) = (original.context.project, original.context.environment);
    let target = Target { id: replay.deployment_id, project, env, intro };
    here.finish(running, target, &follow).await
}

pub async fn cancel(store: &dyn EventStore, deployment: Uuid, reason: &str) -> anyhow::Result<ExitCode> {
    match requests::request_cancel(store, &actor::actor(), deployment, reason).await? {
        Ok(()) => println!("deployment {deployment}: cancel requested; the engine stops it and removes its containers"),
        Err(rejection) => return Err(exit::rejected(rejection)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Approves a deployment waiting for approval (never the requester's own).
pub async fn approve(store: &dyn EventStore, deployment: Uuid, reason: &str) -> anyhow::Result<ExitCode> {
    let approvals = slipway_engine::protection::approve(store, &actor::actor(), deployment, reason).await?.map_err(exit::rejected)?;
    println!("deployment {deployment}: approved by {}; {}", actor::actor(), approvals.summary());
    Ok(ExitCode::SUCCESS)
}

/// Rejects a deployment waiting for approval: the engine cancels it.
pub async fn reject(store: &dyn EventStore, deployment: Uuid, reason: &str) -> anyhow::Result<ExitCode> {
    slipway_engine::protection::reject(store, &actor::actor(), deployment, reason).await?.map_err(exit::rejected)?;
    println!("deployment {deployment}: rejected by {}; the engine cancels it", actor::actor());
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(here: &Here, project: String, env: String, follow: FollowArgs) -> anyhow::Result<ExitCode> {
    let running = here.start(follow.drain).await?;
    let migrate = match requests::request_migrate(&*here.store, &actor::actor(), &project, &env).await? {
        Ok(r) => r,
        Err(rejection) => return Err(refused(running, rejection).await),
    };
    let target = Target {
        id: migrate.deployment_id,
        project: project.clone(),
        env: env.clone(),
        intro: format!("deployment {}: runs the release commands of {project} {env}", migrate.deployment_id),
    };
    here.finish(running, target, &follow).await
}

pub async fn rollback(here: &Here, project: String, env: String, to: Option<Uuid>, follow: FollowArgs) -> anyhow::Result<ExitCode> {
    let running = here.start(follow.drain).await?;
    let rollback = match requests::request_rollback(&*here.store, &actor::actor(), &project, &env, to).await? {
        Ok(r) => r,
        Err(rejection) => return Err(refused(running, rejection).await),
    };
    for warning in &rollback.warnings {
        eprintln!("warning: {warning}");
    }
    let target = Target {
        id: rollback.deployment_id,
        project: project.clone(),
        env: env.clone(),
        intro: format!("deployment {}: {project} {env} rolls back to deployment {}", rollback.deployment_id, rollback.target),
    };
    here.finish(running, target, &follow).await
}

pub async fn deploy(here: &Here, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let mode = here.mode(args.local, args.cloud);
    let request = DeployRequest {
        project: args.project.clone(),
        environment: args.env.clone(),
        git_ref: args.git_ref,
        mode,
        no_cache: args.no_cache,
        run_release: mode == BuildMode::Cloud || args.migrate,
        dry_run: args.dry_run,
    };
    let running = here.start(args.follow.drain).await?;
    let id = match requests::request_deployment_overriding(&*here.store, &actor::actor(), request, args.override_freeze.as_deref()).await? {
        Ok(id) => id,
        Err(rejection) => return Err(refused(running, rejection).await),
    };
    let target = Target {
        id,
        project: args.project.clone(),
        env: args.env.clone(),
        intro: format!("deployment {id}: {} {} ({mode:?} mode)", args.project, args.env),
    };
    here.finish(running, target, &args.follow).await
}

/// A request refused: the in-process machinery started for it stops
/// cleanly (its workers record that they stopped, rather than being listed
/// as missing from then on), and the refusal is the command's error.
async fn refused(running: Running, rejection: slipway_engine::rejection::Rejection) -> anyhow::Error {
    if let Some((stop, task)) = running {
        let _ = stop.send(());
        if let Ok(Err(e)) = task.await {
            tracing::debug!(error = %e, "stopping the in-process machinery");
        }
    }
    exit::rejected(rejection)
}

type Running = Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>;

/// In-process runs bring their own engine and workers (no router: it would
/// die with this process); otherwise a server and workers elsewhere pick the
/// request up.
async fn start_embedded(
    store: &Arc<dyn EventStore>,
    queue_url: &str,
    embedded: bool,
    data_dir: &Path,
    registry: Option<String>,
    drain: u64,
) -> anyhow::Result<Running> {
    if !embedded {
        return Ok(None);
    }
    // Only the in-process queue runs embedded: no namespace to apply.
    let queue = connect::queue(queue_url, None).await?;
    let (stop, shutdown) = machinery::manual();
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: drain, ..Default::default() }),
        workers: Some((
            processes::embedded_workers(format!("worker:{}", processes::hostname())),
            machinery::pipeline(data_dir, registry, false),
        )),
        ..Default::default()
    };
    let task = tokio::spawn(machinery::serve(store.clone(), queue, parts, None, shutdown));
    Ok(Some((stop, task)))
}

/// The deployment a verb asked for, and the sentence that announces it.
struct Target {
    id: Uuid,
    project: String,
    env: String,
    intro: String,
}

/// Follows a deployment to its end, stops in-process machinery once the
/// clean-up it asked for is done, and says where the release is served.
async fn finish(
    store: &dyn EventStore,
    running: Running,
    target: Target,
    data_dir: &Path,
    args: &FollowArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Target { id, project, env, intro } = target;
    let mut reporter = report::Reporter::new(report::Style::choose(json, args.quiet));
    reporter.requested(id, &project, &env, &intro);
    let queue = slipway_engine::load::environment(store, &project, &env).await?.queue;
    if let Some(ahead) = queue.first().filter(|first| **first != id) {
        let n = queue.iter().position(|d| *d == id).unwrap_or(1);
        reporter.note(&format!("waiting for deployment {ahead} to finish ({n} ahead in {env})"));
    }
    let logs = args.logs.then(|| follow::Logs::new(data_dir));
    let mut source = follow::StoreSource::new(store, id);
    let followed = follow::follow(&mut source, &mut reporter, id, logs, Duration::from_secs(args.timeout)).await;
    let timed_out = matches!(&followed, Err(e) if exit::code_of(e) == exit::Exit::TimedOut);
    if let Some((stop, task)) = running {
        // Refused only when it finished meanwhile: nothing left to cancel.
        let mut cancelled = false;
        if timed_out {
            // The workers run in this process and stop with it: left
            // running, the deployment would hold its environment's queue
            // until its step deadline. Cancelled, it ends failed now and
            // its containers are removed.
            let reason = format!("`--timeout {}` passed, and the embedded workers stop with this command", args.timeout);
            cancelled = requests::request_cancel(store, &actor::actor(), id, &reason).await?.is_ok();
            wait_until_finished(store, id, Duration::from_secs(30)).await;
        }
        // The in-process queue dies with this process: let the clean-up
        // the deployment just asked for (retire or remove) finish first.
        let succeeded = followed.as_ref().is_ok_and(|ending| ending.succeeded);
        wait_for_cleanup(store, id, succeeded, Duration::from_secs(args.drain + 60)).await;
        let _ = stop.send(());
        task.await.context("the engine panicked")??;
        if timed_out {
            let what = if cancelled {
                "was cancelled: without --queue and a server, the workers run in this command and stop with it \
                 (the previous release keeps serving"
            } else {
                "finished as the timeout passed (its outcome"
            };
            let timeout = args.timeout;
            let message = format!("deployment {id} did not finish within {timeout} s and {what}; see `slipway history {id}`)");
            return Err(exit::coded(exit::Exit::TimedOut, message));
        }
    }
    let ending = followed?;
    let routes = slipway_engine::queries::router_urls(store, &project, &env).await?;
    Ok(conclude(&mut reporter, id, &project, &env, &ending, &routes))
}

/// The result of a followed deployment: where it is served, or why it
/// failed (exit status 1) and that `slipway logs` has the details (from
/// the workers' log files, or through a server from its API).
pub fn conclude(
    reporter: &mut report::Reporter,
    id: Uuid,
    project: &str,
    env: &str,
    ending: &progress::Ending,
    routes: &[slipway_engine::queries::RouterUrl],
) -> ExitCode {
    let urls: Vec<String> = routes.iter().map(|r| r.url.clone()).collect();
    let value = follow::result_json(id, ending, &urls);
    if ending.succeeded {
        let mut lines = vec![match ending.web_port {
            Some(port) => format!("\n{project} {env} is served at http://127.0.0.1:{port}/"),
            None => format!("\ndeployment {id} succeeded"),
        }];
        lines.extend(routes.iter().map(|r| format!("{project} {env} is routed at {} (router {})", r.url, r.router)));
        reporter.result(true, &lines, value);
        ExitCode::SUCCESS
    } else {
        let lines = [
            format!("\ndeployment {id} {}", slipway_engine::deployment::failure_text(ending.failed_step, &ending.reason)),
            format!("the previous release (if any) keeps serving; details: slipway logs {id}"),
        ];
        reporter.result(false, &lines, value);
        exit::Exit::Failed.into()
    }
}

/// Waits until deployment `id` has its verdict, or `limit` passed.
async fn wait_until_finished(store: &dyn EventStore, id: Uuid, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut wake = store.wakeups();
    while tokio::time::Instant::now() < deadline {
        match slipway_engine::load::deployment(store, id).await {
            Ok(Some(d)) if !d.is_finished() => {}
            _ => return,
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(200)).await;
    }
}

/// Waits until the commands a finished deployment dispatched have been
/// carried out: the previous release retired, or the failed one's
/// containers removed. Gives up quietly after `limit`.
async fn wait_for_cleanup(store: &dyn EventStore, id: Uuid, succeeded: bool, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut wake = store.wakeups();
    loop {
        let Ok(Some(d)) = slipway_engine::load::deployment(store, id).await else { return };
        let pending = if succeeded { previous_release_pending(store, &d).await } else { !d.containers.is_empty() };
        if !pending || tokio::time::Instant::now() > deadline {
            return;
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(200)).await;
    }
}

/// Is a retire of the release this deployment replaced still outstanding?
async fn previous_release_pending(store: &dyn EventStore, d: &slipway_engine::Deployment) -> bool {
    let env_stream = slipway_proto::event::environment_stream(&d.context.project, &d.context.environment);
    let Ok(recorded) = store.read_stream(&env_stream, 1).await else { return false };
    let finished = |r: &slipway_store::RecordedEvent| match r.envelope.decode::<Event>() {
        Ok(Event::DeploymentFinished(f)) if f.succeeded && !f.containers.is_empty() => Some(f.deployment_id),
        _ => None,
    };
    let Some(mine) = recorded.iter().position(|r| finished(r) == Some(d.id)) else { return false };
    // The release this one replaced: the success recorded just before it.
    let Some(previous) = recorded[..mine].iter().rev().find_map(finished) else { return false };
    let since = recorded[mine].recorded_at;
    let Ok(prev) = store.read_stream(&deployment_stream(previous), 1).await else { return false };
    !prev.iter().any(|r| r.envelope.message_type == "ContainersRemoved" && r.recorded_at >= since)
}
