//! A stand-in executor for benchmarks: every step "succeeds" after a fixed
//! time without touching Docker or Git, so the engine, the outbox, the
//! queues and the store can be measured alone (`slipway worker
//! --stand-in-ms`, `slipway-bench-cutover`, `slipway-bench-farm`). The real
//! executors are untouched by it.

use std::time::Duration;

use async_trait::async_trait;
use slipway_proto::command::{RemoveContainers, RetireRelease, RunStep};
use slipway_proto::event::*;
use slipway_proto::{Event, Step};

use super::{Executor, Settings};

#[derive(Debug, Clone, Copy)]
pub struct StandIn {
    /// How long each step takes.
    pub step_time: Duration,
}

#[async_trait]
impl Executor for StandIn {
    async fn run_step(&self, c: &RunStep, _env: &Settings) -> Event {
        if !self.step_time.is_zero() {
            tokio::time::sleep(self.step_time).await;
        }
        match c.step {
            Step::CheckServices => Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None }),
            Step::Checkout => Event::CheckedOut(CheckedOut {
                commit: "0".repeat(40),
                workspace: String::new(),
                config: serde_json::json!({}),
                source_host_key: None,
            }),
            Step::Build => Event::ImageBuilt(ImageBuilt {
                image_id: "sha256:stand-in".into(),
                tag: "stand-in".into(),
                cache_used: true,
                duration_ms: self.step_time.as_millis() as u64,
                log_ref: None,
                log_digest: None,
                mode: BuildMode::Local,
                warnings: vec![],
                pushed: None,
                base_images: vec![],
            }),
            Step::Deploy => Event::WebContainerStarted(WebContainerStarted {
                container: format!("stand-in-{}", c.context.deployment_id.simple()),
                host_port: 9,
                host: String::new(),
                upstreams: vec![],
                warnings: vec![],
            }),
            Step::Release => Event::ReleaseCommandsRan(ReleaseCommandsRan { results: vec![], skipped: true }),
            Step::Processes => Event::ProcessesStarted(ProcessesStarted { containers: vec![] }),
            Step::Watch => Event::ReleaseWatched(slipway_proto::event::ReleaseWatched {
                watched_ms: self.step_time.as_millis() as u64,
                probes: 0,
                failed_probes: 0,
                containers: vec![],
            }),
            step => Event::HealthCheckPassed(HealthCheckPassed { path: format!("/{step}"), status: 200, attempts: 1, elapsed_ms: 0 }),
        }
    }

    async fn remove_containers(&self, c: &RemoveContainers) -> Event {
        Event::ContainersRemoved(ContainersRemoved { containers: c.containers.clone() })
    }

    async fn retire(&self, c: &RetireRelease) -> Event {
        Event::ContainersRemoved(ContainersRemoved { containers: c.containers.clone() })
    }
}
