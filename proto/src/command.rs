//! What the engine asks workers to do. A command is idempotent: it carries
//! everything its step needs (the recorded inputs, so a replay or a
//! redelivery acts on the same facts), and its id is the key a worker uses to
//! find an outcome it already recorded.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::BuildMode;
use crate::step::Step;

/// The facts a deployment has gathered so far, handed to each step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentContext {
    pub deployment_id: Uuid,
    pub project: String,
    pub environment: String,
    pub repository: String,
    pub git_ref: String,
    #[serde(default)]
    pub mode: BuildMode,
    #[serde(default)]
    pub no_cache: bool,
    #[serde(default = "yes")]
    pub run_release: bool,
    #[serde(default)]
    pub dry_run: bool,
    /// The environment's settings as key -> fingerprint; workers resolve
    /// the values from the store, so no value travels through the queue.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// How to reach the repository: credentials by fingerprint (workers
    /// resolve them like settings), trusted SSH host keys.
    #[serde(default, skip_serializing_if = "crate::event::SourceAccess::is_empty")]
    pub source: crate::event::SourceAccess,
    /// Set once checked out.
    #[serde(default)]
    pub commit: Option<String>,
    /// `slipway.toml` as recorded at checkout.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Set once built or re-used.
    #[serde(default)]
    pub image_id: Option<String>,
    /// The image's registry reference by digest, when it was pushed: a host
    /// that does not have `image_id` pulls it from there.
    #[serde(default)]
    pub image_ref: Option<String>,
    /// Set once the web container runs.
    #[serde(default)]
    pub web_container: Option<String>,
    #[serde(default)]
    pub web_port: Option<u16>,
    /// Every web replica's `ADDRESS:PORT` when the runtime reported them
    /// (`WebContainerStarted::upstreams`); empty means `127.0.0.1:<web_port>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub web_upstreams: Vec<String>,
    /// An image a successful deployment built from the same commit (of this
    /// project or its mirror original): the build step re-uses it if the
    /// Docker engine still has it, and builds otherwise.
    #[serde(default)]
    pub reuse: Option<ImageSource>,
    /// Set once the watch after the cutover started: until when the new
    /// release is watched (a redelivered watch keeps the same end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl DeploymentContext {
    /// Where the web replicas answer: what the runtime reported, else
    /// `127.0.0.1:<web_port>` (the single engine's one container); empty
    /// before the deploy step.
    pub fn upstreams(&self) -> Vec<String> {
        if !self.web_upstreams.is_empty() {
            return self.web_upstreams.clone();
        }
        self.web_port.map(|port| vec![format!("127.0.0.1:{port}")]).unwrap_or_default()
    }
}

/// An image and the deployment that built it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    pub deployment_id: Uuid,
    pub image_id: String,
}

fn yes() -> bool {
    true
}

/// Run one pipeline step for a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    pub step: Step,
    pub attempt: u32,
    pub context: DeploymentContext,
}

/// Remove a failed deployment's containers (rollback); the old release is untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveContainers {
    pub deployment_id: Uuid,
    pub containers: Vec<String>,
}

/// Drain and stop the containers of a release that no longer serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireRelease {
    pub deployment_id: Uuid,
    pub containers: Vec<String>,
    pub drain_seconds: u64,
}

crate::message_family! {
    /// Every command type, with its current schema version.
    Command, "command" {
        RunStep(RunStep) = 1,
        RemoveContainers(RemoveContainers) = 1,
        RetireRelease(RetireRelease) = 1,
    }
}

impl Command {
    /// The step whose queue carries this command.
    pub fn step(&self) -> Step {
        match self {
            Command::RunStep(c) => c.step,
            Command::RemoveContainers(_) => Step::Cleanup,
            Command::RetireRelease(_) => Step::Retire,
        }
    }

    pub fn queue(&self) -> String {
        self.step().queue()
    }

    /// The deployment the command acts for (whose stream its outcome joins).
    pub fn deployment_id(&self) -> Uuid {
        match self {
            Command::RunStep(c) => c.context.deployment_id,
            Command::RemoveContainers(c) => c.deployment_id,
            Command::RetireRelease(c) => c.deployment_id,
        }
    }
}

/// The event id of the `StepDispatched` that records sending exactly this
/// command: derived from the command's id and the SHA-256 of its body as
/// published. A worker computes it from what it received and runs the step
/// only if the deployment's stream holds that event, so a message the
/// engine did not send — forged by someone who can publish to the broker,
/// or a real one altered (another image, another project's settings) — is
/// refused.
pub fn dispatch_id(command_id: uuid::Uuid, body: &[u8]) -> uuid::Uuid {
    use sha2::Digest;
    uuid::Uuid::new_v5(&command_id, &sha2::Sha256::digest(body))
}
