//! `Step::Watch`: after every router took the new release, watch it until
//! `context.watch_until` while the previous release stays up. The release
//! fails the watch, and the engine routes the traffic back, when one of its
//! containers exits, is OOM-killed or restarts (Docker's event stream,
//! replayed from the switch so nothing between the switch and this worker's
//! start is missed), or when its health path fails `FAIL_AFTER` probes in a
//! row. Otherwise the outcome is `ReleaseWatched`.
//!
//! What counts as a failure and how it is worded is pure (`Signal`,
//! `Probes`); the loop only feeds it what Docker and the app say.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::EventsOptionsBuilder;
use bollard::Docker;
use chrono::Utc;
use futures::StreamExt;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::event::ReleaseWatched;
use slipway_proto::Event;

use super::docker::{self, Crash, Failure, LABEL_DEPLOYMENT};
use super::{scrub, Runtime, Settings};
use crate::http::get_status;

/// How often the health path is asked during the watch.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Failed probes in a row that fail the watch: one slow answer is noise,
/// three seconds without a healthy answer is an outage.
const FAIL_AFTER: u32 = 3;
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the watch saw that fails the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Exited, OOM-killed, or restarted by Docker.
    Crashed {
        container: String,
        crash: Crash,
    },
    Gone {
        container: String,
    },
    Unhealthy {
        url: String,
        failures: u32,
        last: String,
    },
}

impl Signal {
    /// The container the signal is about, for its log lines.
    pub fn container(&self) -> Option<&str> {
        match self {
            Signal::Crashed { container, .. } | Signal::Gone { container } => Some(container),
            Signal::Unhealthy { .. } => None,
        }
    }

    /// The failure reason: what happened, and how long after the switch.
    pub fn describe(&self, after: Duration) -> String {
        let after = format!("{} after the traffic switch", docker::human(after));
        match self {
            Signal::Crashed { container, crash } => format!("container {container} {} {after}", crash.describe()),
            Signal::Gone { container } => format!("container {container} no longer exists {after}"),
            Signal::Unhealthy { url, failures, last } => {
                format!("GET {url} failed {failures} times in a row (last: {last}) {after}")
            }
        }
    }
}

/// Health probes during the watch: counts, and a failure once `FAIL_AFTER`
/// fail in a row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    pub total: u32,
    pub failed: u32,
    in_a_row: u32,
}

impl Probes {
    /// Records one probe; `Err(last)` turns into a signal when it is the
    /// `FAIL_AFTER`th failure in a row.
    pub fn record(&mut self, url: &str, answer: Result<u16, String>) -> Option<Signal> {
        self.total += 1;
        let last = match answer {
            Ok(status) if (200..400).contains(&status) => {
                self.in_a_row = 0;
                return None;
            }
            Ok(status) => format!("status {status}"),
            Err(e) => e,
        };
        self.failed += 1;
        self.in_a_row += 1;
        (self.in_a_row >= FAIL_AFTER).then(|| Signal::Unhealthy { url: url.to_string(), failures: self.in_a_row, last })
    }
}

pub async fn run(command: &RunStep, env: &Settings, _rt: &Runtime) -> Event {
    match watch(&command.context, env).await {
        Ok(watched) => Event::ReleaseWatched(watched),
        Err(failure) => failure.for_command(command),
    }
}

async fn watch(ctx: &DeploymentContext, settings: &Settings) -> Result<ReleaseWatched, Failure> {
    let config = AppConfig::from_value(&ctx.config).map_err(Failure::new)?;
    let until = ctx.watch_until.ok_or_else(|| Failure::new("the watch has no end recorded (no ReleaseWatchStarted)"))?;
    let window = chrono::Duration::from_std(config.web.watch.0).unwrap_or(chrono::Duration::zero());
    let switched_at = until - window;
    let port = ctx.web_port.ok_or_else(|| Failure::new("no web port recorded for this deployment"))?;
    let url = format!("http://127.0.0.1:{port}{}", config.web.health_path);
    let docker = docker::connect().await.map_err(Failure::from)?;
    let started = Utc::now();

    // Events from the switch on: a crash before this worker started is replayed.
    let label = format!("{LABEL_DEPLOYMENT}={}", ctx.deployment_id);
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("label", vec![label]),
        ("event", vec!["die".to_string(), "oom".to_string()]),
    ]);
    let since = switched_at.timestamp().to_string();
    let options = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
    let mut events = docker.events(Some(options));

    let containers = docker::deployment_containers(&docker, ctx.deployment_id).await.map_err(Failure::from)?;
    let fail = |signal: Signal| evidence(&docker, ctx, settings, switched_at, signal);
    for container in &containers {
        if let Some(signal) = inspect(&docker, container).await {
            return Err(fail(signal).await);
        }
    }
    if let Some(web) = &ctx.web_container {
        if !containers.contains(web) {
            return Err(fail(Signal::Gone { container: web.clone() }).await);
        }
    }

    let mut probes = Probes::default();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + (until - Utc::now()).to_std().unwrap_or_default();
    let mut events_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            event = events.next(), if events_open => match event {
                Some(Ok(message)) => {
                    let Some(name) = message.actor.as_ref().and_then(|a| a.attributes.as_ref()?.get("name").cloned()) else { continue };
                    let oom = message.action.as_deref() == Some("oom");
                    let exit_code = message.actor.and_then(|a| a.attributes?.get("exitCode")?.parse().ok());
                    let seen = Crash { exit_code, oom, restarts: 0 };
                    let crash = match docker::find_container(&docker, &name).await {
                        Ok(Some(info)) => docker::crash_evidence(&docker, &info, docker::crash_in(&info).unwrap_or(seen)).await,
                        _ => seen,
                    };
                    return Err(fail(Signal::Crashed { container: name, crash }).await);
                }
                // Docker's stream broke (a daemon restart): go on with the
                // probes and inspections alone.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Docker's event stream failed during the watch; watching by probes");
                    events_open = false;
                }
                None => events_open = false,
            },
            _ = tick.tick() => {
                if let Some(signal) = probes.record(&url, get_status(&url, PROBE_TIMEOUT).await) {
                    return Err(fail(signal).await);
                }
                if !events_open {
                    for container in &containers {
                        if let Some(signal) = inspect(&docker, container).await {
                            return Err(fail(signal).await);
                        }
                    }
                }
            }
        }
    }
    // The window passed. Without Docker's events, one last look, so a
    // crash in its last instant counts (with them, a crash would have
    // ended the watch already).
    if !events_open {
        for container in &containers {
            if let Some(signal) = inspect(&docker, container).await {
                return Err(fail(signal).await);
            }
        }
    }
    Ok(ReleaseWatched {
        watched_ms: (Utc::now() - started).num_milliseconds().max(0) as u64,
        probes: probes.total,
        failed_probes: probes.failed,
        containers,
    })
}

/// The failure a signal makes: the reason, with the last log lines of the
/// container it is about (the web container's for a failed probe), scrubbed.
async fn evidence(
    docker: &Docker,
    ctx: &DeploymentContext,
    settings: &Settings,
    switched_at: chrono::DateTime<Utc>,
    signal: Signal,
) -> Failure {
    let after = (Utc::now() - switched_at).to_std().unwrap_or_default();
    let container = signal.container().map(str::to_string).or_else(|| ctx.web_container.clone());
    let lines = match container {
        Some(c) => docker::last_log_lines(docker, &c).await,
        None => vec![],
    };
    Failure::new(signal.describe(after)).with_details(scrub(lines, settings))
}

/// A container's state as a watch signal; Docker trouble is not the app's
/// fault and says nothing.
async fn inspect(docker: &Docker, container: &str) -> Option<Signal> {
    match docker::find_container(docker, container).await {
        Ok(Some(info)) => {
            let crash = docker::crash_in(&info)?;
            let crash = docker::crash_evidence(docker, &info, crash).await;
            Some(Signal::Crashed { container: container.to_string(), crash })
        }
        Ok(None) => Some(Signal::Gone { container: container.to_string() }),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_names_the_container_what_happened_and_when() {
        let crash = Crash { exit_code: Some(137), oom: false, restarts: 0 };
        let s = Signal::Crashed { container: "web".into(), crash };
        assert_eq!(s.describe(Duration::from_secs(2)), "container web exited with code 137 (SIGKILL) 2s after the traffic switch");
        let oom = Signal::Crashed { container: "w".into(), crash: Crash { exit_code: Some(137), oom: true, restarts: 1 } };
        assert!(oom.describe(Duration::ZERO).contains("OOM-killed"), "{}", oom.describe(Duration::ZERO));
        assert_eq!(Signal::Gone { container: "w".into() }.container(), Some("w"));
    }

    #[test]
    fn three_failed_probes_in_a_row_fail_the_watch() {
        let mut p = Probes::default();
        assert_eq!(p.record("u", Err("refused".into())), None);
        assert_eq!(p.record("u", Ok(500)), None);
        assert_eq!(p.record("u", Ok(200)), None, "a healthy answer starts the count again");
        assert_eq!(p.record("u", Ok(503)), None);
        assert_eq!(p.record("u", Err("refused".into())), None);
        let signal = p.record("u", Err("timed out".into())).expect("the third failure in a row");
        assert_eq!(signal, Signal::Unhealthy { url: "u".into(), failures: 3, last: "timed out".into() });
        assert_eq!((p.total, p.failed), (6, 5));
    }
}
