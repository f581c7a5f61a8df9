//! `Step::HealthCheck`: GETs `http://127.0.0.1:<web port><web.health_path>`
//! until the app has answered 2xx or 3xx without a break for `web.min_ready`
//! (and at least `MIN_SUCCESSES` times in a row), within
//! `web.health_timeout`. Only then does the engine move traffic: an app that
//! answers once and falls over a second later must fail here, while the old
//! release still serves, not after the switch.
//!
//! Until the first healthy answer, polling starts at 20 ms and backs off
//! ×1.5 to 1 s, so an app that is already up is seen on the first attempt
//! and one that takes a few seconds costs at most a second more. Once it
//! answers, it is probed every `SETTLE_EVERY`; a failed probe starts the
//! settling period again.
//!
//! Between attempts the web container is inspected: once it has exited, been
//! restarted by Docker (its policy is `unless-stopped`, so a crash shows as a
//! restart, not an exit) or been OOM-killed, the step fails at once, naming
//! the exit code, the signal and the OOM kill, with the container's last log
//! lines (setting values scrubbed) as details. That look is best effort:
//! without Docker the HTTP answers alone decide.

use std::time::{Duration, Instant};

use bollard::Docker;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::event::HealthCheckPassed;
use slipway_proto::Event;

use super::docker::{self, Backoff, Failure, Role};
use super::{scrub, Runtime, Settings};
use crate::http::get_status;

const FIRST_DELAY: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// One attempt never waits longer than this for an answer, so a hung
/// connection does not stop the container from being looked at.
/// Even the last attempt before the deadline gets this long to answer.
const MIN_ATTEMPT: Duration = Duration::from_millis(250);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a settling app is probed (and its container inspected): often
/// enough that a crash is seen within a quarter second, rarely enough to
/// cost the app nothing.
pub const SETTLE_EVERY: Duration = Duration::from_millis(250);
/// Healthy answers in a row that settling needs besides the time, so a
/// `min_ready` shorter than the probe interval still sees the app answer
/// more than once.
pub const MIN_SUCCESSES: u32 = 3;

pub async fn run(command: &RunStep, env: &Settings, _rt: &Runtime) -> Event {
    match check(&command.context, env).await {
        Ok(passed) => Event::HealthCheckPassed(passed),
        Err(failure) => failure.for_command(command),
    }
}

/// The settling counter: how long the app has answered healthily without a
/// break. Times are offsets from the start of the check, so it reads no clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settling {
    min_ready: Duration,
    /// When the current run of healthy answers began, and how many it has.
    streak: Option<(Duration, u32)>,
    /// How long the last run a failed probe broke had lasted: a crash is
    /// usually seen by the probe first (connection refused), and the reason
    /// should still say that the app had answered.
    broken: Option<Duration>,
}

impl Settling {
    pub fn new(min_ready: Duration) -> Settling {
        Settling { min_ready, streak: None, broken: None }
    }

    /// Records one probe's answer at `at`; true once the app has settled.
    /// A `min_ready` of zero settles on the first healthy answer.
    pub fn record(&mut self, healthy: bool, at: Duration) -> bool {
        if !healthy {
            if let Some((since, _)) = self.streak.take() {
                self.broken = Some(at.saturating_sub(since));
            }
            return false;
        }
        let (since, count) = self.streak.get_or_insert((at, 0));
        *count += 1;
        let needed = if self.min_ready.is_zero() { 1 } else { MIN_SUCCESSES };
        *count >= needed && at.saturating_sub(*since) >= self.min_ready
    }

    /// How long the current run of healthy answers has lasted at `at`, or
    /// else the last one, if the app has answered at all.
    pub fn healthy_for(&self, at: Duration) -> Option<Duration> {
        self.streak.map(|(since, _)| at.saturating_sub(since)).or(self.broken)
    }
}

async fn check(ctx: &DeploymentContext, env: &Settings) -> Result<HealthCheckPassed, Failure> {
    let web = AppConfig::from_value(&ctx.config).map_err(Failure::new)?.web;
    let port = ctx
        .web_port
        .ok_or_else(|| Failure::new("no web port recorded for this deployment; the deploy step must run before the health check"))?;
    let url = format!("http://127.0.0.1:{port}{}", web.health_path);
    let container = ctx.web_container.clone().unwrap_or_else(|| docker::container_name(ctx, &Role::Web));
    let docker = docker::connect().await.ok();
    let timeout = web.health_timeout.0;
    let min_ready = web.min_ready.0;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut backoff = Backoff::new(FIRST_DELAY, MAX_DELAY);
    let mut settling = Settling::new(min_ready);
    let mut answered = false;
    let mut attempts = 0;
    // The last answer the app gave, kept apart from a last attempt that the
    // deadline cut short: "status 404" says more than "no answer within 1 ms".
    let mut last_answer: Option<String> = None;
    loop {
        attempts += 1;
        let wait = deadline.saturating_duration_since(Instant::now()).clamp(MIN_ATTEMPT, ATTEMPT_TIMEOUT);
        let (healthy, last) = match get_status(&url, wait).await {
            Ok(status) if (200..400).contains(&status) => (Some(status), format!("status {status}")),
            Ok(status) => {
                last_answer = Some(format!("status {status}"));
                (None, format!("status {status}"))
            }
            Err(e) => (None, last_answer.clone().unwrap_or(e)),
        };
        answered |= healthy.is_some();
        let settled = settling.record(healthy.is_some(), started.elapsed());
        // Looked at even when settled: an answer from a container Docker
        // has just restarted must not pass.
        if let Some(docker) = &docker {
            if let Some(gone) = crashed(docker, &container).await {
                let when = match settling.healthy_for(started.elapsed()) {
                    Some(for_) => settling_cut_short(&url, for_, min_ready),
                    None => format!("before GET {url} answered 2xx or 3xx (last: {last})"),
                };
                return Err(
                    Failure::new(format!("web container {container} {gone} {when}")).with_details(evidence(docker, &container, env).await)
                );
            }
        }
        if let (true, Some(status)) = (settled, healthy) {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            return Ok(HealthCheckPassed { path: web.health_path, status, attempts, elapsed_ms });
        }
        let now = Instant::now();
        if now >= deadline {
            let reason = timed_out(&url, timeout, min_ready, attempts, &last, settling.healthy_for(started.elapsed()));
            let details = match &docker {
                Some(docker) => evidence(docker, &container, env).await,
                None => Vec::new(),
            };
            return Err(Failure::new(reason).with_details(details));
        }
        let delay = if answered { SETTLE_EVERY } else { backoff.next_delay() };
        tokio::time::sleep(delay.min(deadline - now)).await;
    }
}

/// The end of a settling period cut short by a crash.
fn settling_cut_short(url: &str, healthy_for: Duration, min_ready: Duration) -> String {
    format!(
        "after GET {url} had answered healthily for {} of web.min_ready ({})",
        docker::human(round_ms(healthy_for)),
        docker::human(min_ready)
    )
}

/// Why the health timeout passed without the app settling.
fn timed_out(url: &str, timeout: Duration, min_ready: Duration, attempts: u32, last: &str, healthy_for: Option<Duration>) -> String {
    match healthy_for {
        Some(for_) => format!(
            "GET {url} answered healthily for only {} of web.min_ready ({}) within web.health_timeout ({}); \
             a failed probe restarts the settling period ({attempts} attempts)",
            docker::human(round_ms(for_)),
            docker::human(min_ready),
            docker::human(timeout)
        ),
        None => format!("GET {url} did not answer 2xx or 3xx within {} ({attempts} attempts; last: {last})", docker::human(timeout)),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The container's last log lines, with every setting value scrubbed.
async fn evidence(docker: &Docker, container: &str, env: &Settings) -> Vec<String> {
    scrub(docker::last_log_lines(docker, container).await, env)
}

/// What happened to the web container, if it can no longer be trusted to
/// answer: exited, restarted, OOM-killed, or gone.
async fn crashed(docker: &Docker, container: &str) -> Option<String> {
    match docker::find_container(docker, container).await {
        Ok(Some(info)) => {
            let crash = docker::crash_in(&info)?;
            Some(docker::crash_evidence(docker, &info, crash).await.describe())
        }
        Ok(None) => Some("no longer exists".into()),
        // Docker trouble is not the app's fault; keep asking the app.
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn settling_needs_the_time_and_three_answers_in_a_row() {
        let mut s = Settling::new(MS(1000));
        assert!(!s.record(true, MS(0)));
        assert!(!s.record(true, MS(250)));
        assert!(!s.record(true, MS(500)), "three answers, but not yet a second");
        assert!(s.record(true, MS(1000)));

        let mut quick = Settling::new(MS(100));
        assert!(!quick.record(true, MS(0)));
        assert!(!quick.record(true, MS(250)), "the time has passed, but only two answers");
        assert!(quick.record(true, MS(500)));
    }

    #[test]
    fn a_failed_probe_starts_the_settling_period_again() {
        let mut s = Settling::new(MS(1000));
        s.record(true, MS(0));
        s.record(true, MS(250));
        assert_eq!(s.healthy_for(MS(600)), Some(MS(600)));
        assert!(!s.record(false, MS(500)));
        assert_eq!(s.healthy_for(MS(600)), Some(MS(500)), "the run the failure broke");
        assert!(!s.record(true, MS(750)));
        assert_eq!(s.healthy_for(MS(800)), Some(MS(50)));
        assert!(!s.record(true, MS(1000)));
        assert!(!s.record(true, MS(1500)), "one second after 0 ms, but the run began at 750 ms");
        assert!(s.record(true, MS(1750)));
    }

    #[test]
    fn no_min_ready_passes_on_the_first_answer() {
        assert!(Settling::new(Duration::ZERO).record(true, MS(20)));
    }

    #[test]
    fn reasons_say_how_far_the_app_got() {
        let url = "http://127.0.0.1:1/healthz";
        assert_eq!(
            settling_cut_short(url, Duration::from_micros(1_250_400), MS(3000)),
            "after GET http://127.0.0.1:1/healthz had answered healthily for 1250ms of web.min_ready (3s)"
        );
        let never = timed_out(url, MS(10_000), MS(3000), 12, "status 503", None);
        assert_eq!(never, "GET http://127.0.0.1:1/healthz did not answer 2xx or 3xx within 10s (12 attempts; last: status 503)");
        let flapping = timed_out(url, MS(10_000), MS(3000), 40, "status 503", Some(MS(500)));
        assert!(flapping.contains("healthily for only 500ms of web.min_ready (3s) within web.health_timeout (10s)"), "{flapping}");
    }
}
