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
pub mod health_check;
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
