//! The step executors. Each pipeline step lives in its own file with the
//! same small API — `pub async fn run(command: &RunStep, env: &Settings,
//! rt: &Runtime) -> Event` — and reports its outcome as an event: the step's
//! own success event, `StepSkipped`, or `StepFailed` with the reason.
//! Executors never touch the store or the queue (the worker loop does), and
//! bollard and git2 types stay inside the step files.

pub mod build;
pub mod check_services;
pub mod checkout;
pub mod cleanup;
pub mod deploy;
pub mod docker;
pub mod dry_run;
pub mod evidence;
pub mod git;
pub mod git_http;
pub mod git_remote;
pub mod health_check;
pub mod log_cap;
pub mod pinning;
pub mod pipeline;
pub mod processes;
pub mod release;
pub mod runtime;
pub mod scrub;
pub mod stand_in;
pub mod swarm;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::Event;

/// An environment's settings, resolved to values (key -> value) for one
/// deployment. Values live here and in the store's value table, never in events.
pub type Settings = BTreeMap<String, String>;

pub use scrub::{Scrubber, SCRUB_MIN_LEN};

/// `lines` with every occurrence of a setting's value replaced by `***`
/// (see `scrub`).
pub fn scrub(lines: Vec<String>, settings: &Settings) -> Vec<String> {
    let scrubber = Scrubber::new(settings);
    lines.into_iter().map(|line| scrubber.scrub_owned(line)).collect()
}

/// A step's outcome with every setting value (and source credential)
/// scrubbed from the text it records: a failure's reason and details. The
/// worker applies it to every outcome before recording it, whatever the
/// step, so no step's message can carry a value into the permanent log.
pub fn scrub_outcome(event: slipway_proto::Event, settings: &Settings) -> slipway_proto::Event {
    match event {
        slipway_proto::Event::StepFailed(mut failed) if !settings.is_empty() => {
            let scrubber = Scrubber::new(settings);
            failed.reason = scrubber.scrub_owned(failed.reason);
            failed.details = failed.details.into_iter().map(|line| scrubber.scrub_owned(line)).collect();
            slipway_proto::Event::StepFailed(failed)
        }
        other => other,
    }
}

/// What steps need besides their command: where to keep checkouts and logs.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Per-deployment checkouts live in `<workspaces>/<deployment id>`.
    pub workspaces: PathBuf,
    /// Build and release logs live in `<logs>/<deployment id>/`.
    pub logs: PathBuf,
    /// `HOST:PORT` of the build farm's image registry: builds are pushed
    /// there, and a host without an image pulls it by digest.
    pub registry: Option<String>,
    /// Pull base images before each build (off by default: without a
    /// reachable registry a pull fails the build, with the registry's error).
    pub pull_base_images: bool,
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs one pipeline step. Must be idempotent: a redelivered command
    /// finds what the first attempt created and reports it.
    async fn run_step(&self, command: &RunStep, env: &Settings) -> Event;
    /// Removes a failed deployment's containers.
    async fn remove_containers(&self, command: &RemoveContainers) -> Event;
    /// Drains and stops a retired release's containers.
    async fn retire(&self, command: &RetireRelease) -> Event;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_scrubbed_of_values_raw_url_encoded_and_base64() {
        use base64::Engine as _;
        let settings = Settings::from([("TOKEN".to_string(), "s3cr3t/+value".to_string())]);
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t/+value");
        let failed = slipway_proto::Event::StepFailed(slipway_proto::event::StepFailed {
            step: slipway_proto::Step::CheckServices,
            reason: "service `q` at s3cr3t/+value unreachable".into(),
            attempt: 1,
            details: vec!["GET /?t=s3cr3t%2F%2Bvalue".into(), format!("Authorization: Basic {b64}")],
            evidence: None,
        });
        let slipway_proto::Event::StepFailed(scrubbed) = scrub_outcome(failed, &settings) else { unreachable!() };
        assert_eq!(scrubbed.reason, "service `q` at *** unreachable");
        assert_eq!(scrubbed.details, ["GET /?t=***", "Authorization: Basic ***"]);
    }

    #[test]
    fn scrubbing_hides_every_value_longest_first_but_not_tiny_ones() {
        let settings = Settings::from([
            ("DATABASE_URL".to_string(), "postgres://app:hunter22@db/app".to_string()),
            ("PASSWORD".to_string(), "hunter22".to_string()),
            ("DEBUG".to_string(), "1".to_string()),
            ("CACHE_URL".to_string(), "redis://:p%40s@cache:6379".to_string()),
        ]);
        let lines = vec![
            "connecting to postgres://app:hunter22@db/app".to_string(),
            "auth failed for hunter22 hunter22 (attempt 1)".to_string(),
            "cache refused password p@s (p%40s as written)".to_string(),
        ];
        assert_eq!(
            scrub(lines, &settings),
            vec!["connecting to ***", "auth failed for *** *** (attempt 1)", "cache refused password *** (*** as written)"]
        );
    }
}
