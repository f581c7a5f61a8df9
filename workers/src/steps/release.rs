//! `Step::Release`: runs the project's release commands (migrations), in
//! order, each in a one-off container `...-release-<i>` of the new image with
//! the environment's settings, as `/bin/sh -c <command>` (the image's
//! entrypoint, if any, still applies, as with `docker run`). A non-zero exit
//! or a command that outlives `release.timeout` fails the deployment. Each
//! command's output is kept in `<logs>/<id>/release-<i>.log`, capped by
//! `log_cap`. The one-off containers run under the web's limits, and are
//! never restarted by Docker: a migration runs once.
//!
//! A failed release's evidence (`StepFailed.details`) is the output of every
//! command that ran, not only the failing one's: a migration that fails
//! after another succeeded is often explained by the first one's output.
//! Each command's last `LOG_TAIL` lines follow a `== release.commands[i]
//! `...` (exit N)` line, scrubbed like the stored logs.
//!
//! The one-off containers are kept until the step ends (success or failure)
//! and only then removed: a redelivery after a worker crash mid-step finds
//! the commands that already finished and reuses their exit codes instead of
//! running a migration twice, and waits for one still running instead of
//! starting a second. (A crash after the removal and before the outcome is
//! recorded does re-run them; release commands should be idempotent anyway.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::Docker;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::{AppConfig, Limits};
use slipway_proto::event::{ReleaseCommandResult, ReleaseCommandsRan};
use slipway_proto::Event;

use super::docker::{self, Backoff, ContainerSpec, Failure, Lifetime, Role, RunState, LOG_TAIL};
use super::{log_cap, Runtime, Settings};

pub async fn run(command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
    if !command.context.run_release {
        // Local mode without `--migrate`.
        return Event::ReleaseCommandsRan(ReleaseCommandsRan { results: Vec::new(), skipped: true });
    }
    match release(&command.context, env, rt).await {
        Ok(results) => Event::ReleaseCommandsRan(ReleaseCommandsRan { results, skipped: false }),
        Err(failure) => failure.for_command(command),
    }
}

/// One release command and where it runs.
struct OneOff<'a> {
    index: usize,
    command: &'a str,
    spec: ContainerSpec<'a>,
    log: PathBuf,
}

async fn release(ctx: &DeploymentContext, env: &Settings, rt: &Runtime) -> Result<Vec<ReleaseCommandResult>, Failure> {
    let config = AppConfig::from_value(&ctx.config).map_err(Failure::new)?;
    if config.release.commands.is_empty() {
        return Ok(Vec::new());
    }
    let image = docker::local_image(&docker::connect().await?, ctx, "the release").await?;
    let log_dir = rt.logs.join(ctx.deployment_id.to_string());
    tokio::fs::create_dir_all(&log_dir)
        .await
        .map_err(|e| Failure::new(format!("cannot create the log directory {}: {e}", log_dir.display())))?;
    let one_offs: Vec<OneOff> = config
        .release
        .commands
        .iter()
        .enumerate()
        .map(|(index, command)| one_off(ctx, env, image, config.web.limits(), (index, command.as_str()), &log_dir))
        .collect();
    let docker = docker::connect().await?;
    let outcome = run_in_order(&docker, &one_offs, config.release.timeout.0).await;
    for one in &one_offs {
        // Best effort: a leftover is swept by label when the deployment is cleaned up.
        if let Err(e) = docker::remove_container(&docker, &one.spec.name).await {
            tracing::warn!(error = %e, "release container left behind");
        }
    }
    outcome
}

fn one_off<'a>(
    ctx: &DeploymentContext,
    env: &'a Settings,
    image: &'a str,
    limits: Limits,
    (index, command): (usize, &'a str),
    log_dir: &Path,
) -> OneOff<'a> {
    let role = Role::Release(index);
    let spec = ContainerSpec {
        name: docker::container_name(ctx, &role),
        image,
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), command.to_string()]),
        env,
        labels: docker::labels(ctx, &role.to_string()),
        publish: None,
        // A release command runs in the web's image with the web's budget.
        limits,
        lifetime: Lifetime::OneOff,
    };
    OneOff { index, command, spec, log: log_dir.join(format!("{role}.log")) }
}

/// Runs the commands one after another, stopping at the first failure,
/// whose details then hold the output of every command that ran.
async fn run_in_order(docker: &Docker, one_offs: &[OneOff<'_>], timeout: Duration) -> Result<Vec<ReleaseCommandResult>, Failure> {
    let mut results = Vec::with_capacity(one_offs.len());
    let mut outputs = Vec::new();
    for one in one_offs {
        match run_one(docker, one, timeout).await {
            Ok((result, text)) => {
                outputs.extend(output(one, "exit 0", &text));
                results.push(result);
            }
            Err(mut failure) => {
                outputs.append(&mut failure.details);
                failure.details = outputs;
                return Err(failure);
            }
        }
    }
    Ok(results)
}

/// One command's part of a failure's details: a line naming it and how it
/// ended, then its last lines (scrubbed).
fn output(one: &OneOff<'_>, ended: &str, text: &str) -> Vec<String> {
    let mut lines = vec![format!("== release.commands[{}] `{}` ({ended})", one.index, one.command)];
    let tail = super::scrub(docker::tail_lines(text, LOG_TAIL), one.spec.env);
    if tail.is_empty() {
        lines.push("(no output)".into());
    }
    lines.extend(tail);
    lines
}

/// Runs one command to its end: its result and its output, or the failure
/// with its output as details.
async fn run_one(docker: &Docker, one: &OneOff<'_>, timeout: Duration) -> Result<(ReleaseCommandResult, String), Failure> {
    let started = Instant::now();
    let exit = run_to_exit(docker, &one.spec, timeout).await?;
    let text = match docker::logs_if_present(docker, &one.spec.name).await? {
        Some(text) => {
            // The stored log is scrubbed like everything else the worker
            // records, in pieces straight into its cap (no scrubbed copy).
            let scrubber = super::Scrubber::new(one.spec.env);
            tokio::fs::write(&one.log, log_cap::capped(|push| scrubber.scrub_into(&text, push)))
                .await
                .map_err(|e| Failure::new(format!("cannot write the release log {}: {e}", one.log.display())))?;
            text
        }
        // Another delivery of this command ran it to the end (the exit code
        // above is that run's) and is removing it: it stores the log, and of
        // the two outcomes, recorded under one command id, one counts.
        None => String::new(),
    };
    let what = format!("release command `{}` (release.commands[{}])", one.command, one.index);
    let failure = match exit {
        Some(0) => None,
        Some(code) => Some((format!("{what} exited with code {code}"), format!("exit {code}"))),
        None => Some((format!("{what} timed out after {}", docker::human(timeout)), "timed out".into())),
    };
    if let Some((reason, ended)) = failure {
        return Err(Failure::new(reason).with_details(output(one, &ended, &text)));
    }
    let ran = docker::inspect(docker, &one.spec.name).await.ok().and_then(|info| docker::run_duration(&info));
    let result = ReleaseCommandResult {
        command: one.command.to_string(),
        exit_code: 0,
        duration_ms: ran.unwrap_or_else(|| started.elapsed()).as_millis() as u64,
        log_ref: Some(one.log.display().to_string()),
    };
    Ok((result, text))
}

/// Runs the one-off to its end: its exit code, or `None` when it outlived
/// `timeout` (it is killed then).
async fn run_to_exit(docker: &Docker, spec: &ContainerSpec<'_>, timeout: Duration) -> Result<Option<i64>, Failure> {
    let name = &spec.name;
    let info = docker::ensure_container(docker, spec).await?;
    let exit = match docker::run_state(&info) {
        // An earlier delivery ran it to the end.
        RunState::Exited(code) => return Ok(Some(code)),
        RunState::Created => {
            docker::start(docker, name).await?;
            wait_for_exit(docker, name, timeout).await?
        }
        // An earlier delivery started it: wait for that run rather than start another.
        RunState::Running | RunState::Other(_) => wait_for_exit(docker, name, timeout).await?,
    };
    if exit.is_none() {
        docker::kill(docker, name).await?;
    }
    Ok(exit)
}

/// Polls until the container exits (its exit code) or `timeout` passes (`None`).
async fn wait_for_exit(docker: &Docker, name: &str, timeout: Duration) -> Result<Option<i64>, Failure> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
    loop {
        if let RunState::Exited(code) = docker::run_state(&docker::inspect(docker, name).await?) {
            return Ok(Some(code));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}
