//! Realistic messages for the benchmarks: the events one deployment records,
//! from `DeploymentRequested` to `DeploymentSucceeded`, and the `RunStep`
//! command the engine dispatches. Each phase and its baseline are fed from
//! the same factory, so both write and read exactly the same bodies (same
//! types, same sizes) and differ only in what the store adds around them.

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use slipway_proto::envelope::Metadata;
use slipway_proto::{Command, Envelope, Event, Message, TraceContext};
use uuid::Uuid;

/// Builds envelopes by stamping a fresh id, stream and time onto templates
/// built once, so producing a message costs about what a caller pays to
/// hand over an already-built envelope.
#[derive(Debug, Clone)]
pub struct Factory {
    events: Vec<Envelope>,
    command: Envelope,
}

impl Factory {
    pub fn new() -> anyhow::Result<Self> {
        let deployment = Uuid::now_v7();
        let meta = || Metadata {
            correlation_id: deployment,
            causation_id: Some(Uuid::now_v7()),
            actor: "alice@example.com".into(),
            trace: Some(TraceContext::root(u128::from_be_bytes(*deployment.as_bytes()), 0x5eed)),
        };
        let template = |event: &Event| Envelope::new(Uuid::now_v7(), Utc::now(), "template", event, meta());
        let events = sample_events(deployment)?.iter().map(template).collect::<Result<_, _>>()?;
        let command = Envelope::new(Uuid::now_v7(), Utc::now(), "template", &sample_command(deployment)?, meta())?;
        Ok(Factory { events, command })
    }

    /// The `n`-th event of the sample deployment (cycling), on `stream`,
    /// with a correlation id of its own.
    pub fn event(&self, n: usize, stream: &str) -> Envelope {
        stamp(&self.events[n % self.events.len()], stream, Uuid::now_v7())
    }

    /// `count` consecutive events on `stream`, starting at the `first`-th,
    /// sharing one new correlation id (as one deployment's events do).
    pub fn events(&self, first: usize, count: usize, stream: &str) -> Vec<Envelope> {
        let correlation = Uuid::now_v7();
        (first..first + count).map(|n| stamp(&self.events[n % self.events.len()], stream, correlation)).collect()
    }

    /// A `RunStep` command acting on `stream`.
    pub fn command(&self, stream: &str) -> Envelope {
        stamp(&self.command, stream, Uuid::now_v7())
    }

    /// Mean stored body size of the sample events, in bytes.
    pub fn mean_event_bytes(&self) -> usize {
        self.events.iter().map(|e| e.to_json().len()).sum::<usize>() / self.events.len()
    }
}

fn stamp(template: &Envelope, stream: &str, correlation_id: Uuid) -> Envelope {
    Envelope { id: Uuid::now_v7(), stream: stream.to_owned(), correlation_id, timestamp: Utc::now(), ..template.clone() }
}

/// What one successful cloud deployment records, in order. Built from JSON
/// (as stored) so fields added later with a default do not break the bench.
fn sample_events(deployment: Uuid) -> anyhow::Result<Vec<Event>> {
    let image = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let commit = "2f1c0e7a9b4d3c8e6f5a1b0c9d8e7f6a5b4c3d2e";
    let dispatched = |step: &str| ("StepDispatched", json!({"step": step, "command_id": Uuid::now_v7(), "attempt": 1}));
    let payloads = [
        (
            "DeploymentRequested",
            json!({
                "deployment_id": deployment, "project": "shop", "environment": "production",
                "repository": "file:///srv/git/shop.git", "git_ref": "refs/heads/main", "mode": "cloud",
                "no_cache": false, "run_release": true,
                "settings": {"DATABASE_URL": "fp:3b1f0c9d", "SECRET_KEY_BASE": "fp:a94a8fe5"}
            }),
        ),
        dispatched("check_services"),
        (
            "ServicesChecked",
            json!({"services": [
                {"name": "db", "kind": "postgres", "elapsed_ms": 12},
                {"name": "cache", "kind": "redis", "elapsed_ms": 3}
            ]}),
        ),
        dispatched("checkout"),
        (
            "CheckedOut",
            json!({
                "commit": commit, "workspace": format!("/var/lib/slipway/work/{deployment}"),
                "config": {
                    "web": {"command": "bin/server", "port": 8080}, "release": ["bin/migrate"],
                    "processes": {"worker": {"command": "bin/worker", "replicas": 2}},
                    "health_check": {"path": "/health"}
                }
            }),
        ),
        dispatched("build"),
        (
            "ImageBuilt",
            json!({
                "image_id": image, "tag": format!("slipway/shop:{deployment}"), "cache_used": false,
                "duration_ms": 48_210, "log_ref": format!("logs/{deployment}/build.log"),
                "log_digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            }),
        ),
        ("WebContainerStarted", json!({"container": format!("shop-web-{deployment}"), "host_port": 49_153})),
        (
            "ReleaseCommandsRan",
            json!({"results": [{
            "command": "bin/migrate", "exit_code": 0, "duration_ms": 1_830,
            "log_ref": format!("logs/{deployment}/release-0.log")
        }], "skipped": false}),
        ),
        (
            "ProcessesStarted",
            json!({"containers": [
                {"process": "worker", "replica": 0, "container": format!("shop-worker-0-{deployment}")},
                {"process": "worker", "replica": 1, "container": format!("shop-worker-1-{deployment}")}
            ]}),
        ),
        ("HealthCheckPassed", json!({"path": "/health", "status": 200, "attempts": 3, "elapsed_ms": 2_140})),
        ("DeploymentSucceeded", json!({"image_id": image, "commit": commit})),
    ];
    payloads.into_iter().map(|(kind, payload)| Event::from_payload(kind, payload).with_context(|| format!("sample {kind} event"))).collect()
}

/// The command the engine sends a build worker.
fn sample_command(deployment: Uuid) -> anyhow::Result<Command> {
    let payload = json!({
        "step": "build",
        "attempt": 1,
        "context": {
            "deployment_id": deployment, "project": "shop", "environment": "production",
            "repository": "file:///srv/git/shop.git", "git_ref": "refs/heads/main", "mode": "cloud",
            "no_cache": false, "run_release": true, "commit": "2f1c0e7a9b4d3c8e6f5a1b0c9d8e7f6a5b4c3d2e",
            "config": {"web": {"command": "bin/server", "port": 8080}}
        }
    });
    Command::from_payload("RunStep", payload).context("sample RunStep command")
}
