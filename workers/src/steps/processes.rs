//! `Step::Processes`: starts the project's other process types (workers,
//! schedulers) from the new image: for each `[processes.NAME]`, `replicas`
//! containers `...-<name>-<replica>` (replicas counted from 1) running its
//! `command` in exec form with the environment's settings.
//!
//! A process container has no health endpoint, so "started" means "still
//! running after `START_WINDOW`": a process that exits (or is restarted by
//! Docker, its restart policy being `unless-stopped`) in that window (a bad
//! command, a missing setting) fails the step with its exit code and last
//! log lines, before any traffic moves. Two seconds catches a crash on
//! start-up, where most misconfigurations show, without slowing every
//! deployment by much; a later crash is the running release's business.
//!
//! Idempotent by name: a redelivery finds the containers the first delivery
//! created, starts the ones not running, and watches them again.

use std::time::{Duration, Instant};

use bollard::Docker;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::{AppConfig, ProcessConfig};
use slipway_proto::event::{ProcessContainer, ProcessesStarted};
use slipway_proto::Event;

use super::docker::{self, ContainerSpec, Failure, Lifetime, Role, RunState};
use super::{Runtime, Settings};

/// How long every process container must keep running after its start.
pub const START_WINDOW: Duration = Duration::from_secs(2);

/// How often the containers are looked at during the window.
const WATCH_EVERY: Duration = Duration::from_millis(100);

pub async fn run(command: &RunStep, env: &Settings, _rt: &Runtime) -> Event {
    match start_processes(&command.context, env).await {
        Ok(containers) => Event::ProcessesStarted(ProcessesStarted { containers }),
        Err(failure) => failure.for_command(command),
    }
}

async fn start_processes(ctx: &DeploymentContext, env: &Settings) -> Result<Vec<ProcessContainer>, Failure> {
    let config = AppConfig::from_value(&ctx.config).map_err(Failure::new)?;
    if config.processes.is_empty() {
        return Ok(Vec::new());
    }
    let image = docker::local_image(&docker::connect().await?, ctx, "the processes").await?;
    let docker = docker::connect().await?;
    let mut started = Vec::new();
    for (name, process) in &config.processes {
        for replica in 1..=process.replicas {
            let spec = spec(ctx, env, image, name, process, replica);
            ensure_running(&docker, &spec)
                .await
                .map_err(|f| Failure::new(format!("process `{name}` (replica {replica}): {}", f.reason)))?;
            started.push(ProcessContainer { process: name.clone(), replica, container: spec.name });
        }
    }
    watch(&docker, &started, env).await?;
    Ok(started)
}

fn spec<'a>(
    ctx: &DeploymentContext,
    env: &'a Settings,
    image: &'a str,
    name: &str,
    process: &ProcessConfig,
    replica: u32,
) -> ContainerSpec<'a> {
    let role = Role::Process { name: name.to_string(), replica };
    ContainerSpec {
        name: docker::container_name(ctx, &role),
        image,
        cmd: Some(process.command.clone()),
        env,
        labels: docker::labels(ctx, &role.to_string()),
        publish: None,
        limits: process.limits(),
        lifetime: Lifetime::Serving,
    }
}

async fn ensure_running(docker: &Docker, spec: &ContainerSpec<'_>) -> Result<(), Failure> {
    let info = docker::ensure_container(docker, spec).await?;
    // A restarting container is Docker's to bring back (a start would be
    // refused); the watch reports the crash.
    if matches!(docker::run_state(&info), RunState::Created | RunState::Exited(_)) {
        docker::start(docker, &spec.name).await?;
    }
    Ok(())
}

/// Fails as soon as any container stops running within the start window,
/// or is restarted by Docker (with `unless-stopped` a crash on start-up
/// shows as a restart, and the container may be running again when looked at).
async fn watch(docker: &Docker, containers: &[ProcessContainer], env: &Settings) -> Result<(), Failure> {
    let deadline = Instant::now() + START_WINDOW;
    loop {
        for c in containers {
            let info = docker::inspect(docker, &c.container).await?;
            let how = match (docker::crash_in(&info), docker::run_state(&info)) {
                (Some(crash), _) => docker::crash_evidence(docker, &info, crash).await.describe(),
                (None, RunState::Running | RunState::Created) => continue,
                (None, other) => format!("is {other}"),
            };
            let reason = format!(
                "process `{}` (replica {}, container {}) {how} within {} of starting",
                c.process,
                c.replica,
                c.container,
                docker::human(START_WINDOW)
            );
            let details = super::scrub(docker::last_log_lines(docker, &c.container).await, env);
            return Err(Failure::new(reason).with_details(details));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY.min(deadline - now)).await;
    }
}
