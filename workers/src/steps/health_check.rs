//! `Step::HealthCheck`: GETs `http://127.0.0.1:<web port><web.health_path>`
//! until it answers 2xx or 3xx or `web.health_timeout` passes. Only then
//! does the engine move traffic.
//!
//! Polling starts at 20 ms and backs off ×1.5 to 1 s, so an app that is
//! already up is seen on the first attempt and one that takes a few seconds
//! costs at most a second more. Between attempts the web container is
//! looked at: once it has exited no answer can come, so the step fails at
//! once (with the container's last log lines) instead of waiting out the
//! timeout. That look is best effort: without Docker the HTTP answer alone
//! decides.

use std::time::{Duration, Instant};

use bollard::Docker;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::event::HealthCheckPassed;
use slipway_proto::Event;

use super::docker::{self, Backoff, Failure, Role, RunState};
use super::{Runtime, Settings};
use crate::http::get_status;

const FIRST_DELAY: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// One attempt never waits longer than this for an answer, so a hung
/// connection does not stop the container from being looked at.
/// Even the last attempt before the deadline gets this long to answer.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(command: &RunStep, _env: &Settings, _rt: &Runtime) -> Event {
    match check(&command.context).await {
        Ok(passed) => Event::HealthCheckPassed(passed),
        Err(failure) => failure.for_command(command),
    }
}

async fn check(ctx: &DeploymentContext) -> Result<HealthCheckPassed, Failure> {
    let web = AppConfig::from_value(&ctx.config).map_err(Failure::new)?.web;
    let port = ctx.web_port.ok_or_else(|| {
        Failure::new("no web port recorded for this deployment; the deploy step must run before the health check")
    })?;
    let url = format!("http://127.0.0.1:{port}{}", web.health_path);
    let container = ctx.web_container.clone().unwrap_or_else(|| docker::container_name(ctx, &Role::Web));
    let docker = docker::connect().await.ok();
    let timeout = web.health_timeout.0;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY);
    let mut attempts = 0;
    // The last answer the app gave, kept apart from a last attempt that the
    // deadline cut short: "status 404" says more than "no answer within 1 ms".
    let mut last_answer: Option<String> = None;
    loop {
        attempts += 1;
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(MIN_ATTEMPT, ATTEMPT_TIMEOUT);
        let last = match get_status(&url, wait).await {
            Ok(status) if (200..400).contains(&status) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                return Ok(HealthCheckPassed { path: web.health_path, status, attempts, elapsed_ms });
            }
            Ok(status) => {
                last_answer = Some(format!("status {status}"));
                format!("status {status}")
            }
            Err(e) => last_answer.clone().unwrap_or(e),
        };
        if let Some(docker) = &docker {
            if let Some(gone) = not_running(docker, &container).await {
                let reason =
                    format!("web container {container} {gone} before GET {url} answered 2xx or 3xx (last: {last})");
                return Err(Failure::new(reason).with_details(docker::last_log_lines(docker, &container).await));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let reason = format!(
                "GET {url} did not answer 2xx or 3xx within {} ({attempts} attempts; last: {last})",
                docker::human(timeout)
            );
            let details = match &docker {
                Some(docker) => docker::last_log_lines(docker, &container).await,
                None => Vec::new(),
            };
            return Err(Failure::new(reason).with_details(details));
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}

/// Why the web container can no longer answer, if it cannot.
async fn not_running(docker: &Docker, container: &str) -> Option<String> {
    match docker::find_container(docker, container).await {
        Ok(Some(info)) => match docker::run_state(&info) {
            RunState::Exited(code) => Some(format!("exited with code {code}")),
            _ => None,
        },
        Ok(None) => Some("no longer exists".into()),
        // Docker trouble is not the app's fault; keep asking the app.
        Err(_) => None,
    }
}
