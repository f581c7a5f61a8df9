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
pub mod git;
pub mod git_remote;
pub mod health_check;
pub mod log_cap;
pub mod pinning;
pub mod pipeline;
pub mod processes;
pub mod release;
pub mod stand_in;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::Event;

/// An environment's settings, resolved to values (key -> value) for one
/// deployment. Values live here and in the store's value table, never in events.
pub type Settings = BTreeMap<String, String>;

/// Setting values shorter than this are left in evidence: "1" or "on"
/// would turn every log line into asterisks, and is no secret anyway.
pub const SCRUB_MIN_LEN: usize = 4;

/// `lines` with every occurrence of a setting's value replaced by `***`.
/// A worker holds values only, not which of them are secret (the command
/// carries key -> fingerprint), so every value of `SCRUB_MIN_LEN` characters
/// or more is treated as one, and so is the password inside a URL value
/// (an app that cannot log in tends to print just that, whatever its length).
/// Longer values go first, so a value that contains another is hidden whole.
pub fn scrub(lines: Vec<String>, settings: &Settings) -> Vec<String> {
    let long = settings.values().filter(|v| v.len() >= SCRUB_MIN_LEN).cloned();
    let passwords = settings.values().flat_map(|v| check_services::secrets_in(v));
    let mut values: Vec<String> = long.chain(passwords).collect();
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    lines
        .into_iter()
        .map(|line| values.iter().fold(line, |line, value| line.replace(value.as_str(), "***")))
        .collect()
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
