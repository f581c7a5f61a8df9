//! Every fact Slipway records. Deployment events live in the stream
//! `deployment-<id>`, project facts in `project-<name>`, and which release an
//! environment serves in `environment-<project>-<env>` (the forms are
//! `crate::stream::StreamId`'s). Payloads carry setting
//! key names and fingerprints, never secret values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::step::Step;
use crate::stream::StreamId;

/// Cloud builds never use the layer cache; local builds do (seed: "Docker
/// image/layer caching and re-use").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BuildMode {
    #[default]
    Cloud,
    Local,
}

// Stream names are written by `StreamId` (`crate::stream`), read back by
// `StreamId::parse`; these are the names as strings, for the store's API.
pub fn deployment_stream(id: Uuid) -> String {
    StreamId::deployment(id).to_string()
}
pub fn project_stream(project: &str) -> String {
    StreamId::project(project).to_string()
}
pub fn environment_stream(project: &str, environment: &str) -> String {
    StreamId::environment(project, environment).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectCreated {
    pub name: String,
    pub repository: String,
    #[serde(default)]
    pub mirror_of: Option<String>,
    pub environments: Vec<String>,
    /// The ref deployed when none is given.
    #[serde(default = "default_branch")]
    pub default_branch: String,
}

fn default_branch() -> String {
    "main".into()
}

/// How workers reach a project's repository over the network: which
/// credentials it has (by name, each with the fingerprint of its value in
/// the value table, never the value), the SSH host keys it trusts, and
/// whether submodules are fetched too. Carried by each deployment request,
/// so a worker resolves exactly the credentials of the time of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SourceAccess {
    /// Credential name ([`SOURCE_CREDENTIALS`]) -> fingerprint of its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    /// Trusted SSH host keys as OpenSSH `known_hosts` lines
    /// (`[host]:port key-type base64`): public, so kept in the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub submodules: bool,
    /// The public half of the deploy key Slipway made (`--generate-ssh-key`),
    /// an OpenSSH line: public, so kept in the log, to be shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_key: Option<String>,
}

impl SourceAccess {
    pub fn is_empty(&self) -> bool {
        self == &SourceAccess::default()
    }

    /// Folds one event of the project's stream: `SourceAccessChanged` sets
    /// and removes credentials and replaces the trusted host keys;
    /// `SourceHostKeyPinned` (trust on first use) adds its key only while
    /// nothing is trusted for that host, so two first fetches racing each
    /// other pin once. Other events change nothing.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::SourceAccessChanged(c) => {
                for name in &c.removed {
                    self.credentials.remove(name);
                }
                // The public half goes with the key it belongs to.
                if c.removed.iter().any(|n| n == "ssh_key") || c.set.contains_key("ssh_key") {
                    self.deploy_key = c.deploy_key.clone().filter(|_| c.set.contains_key("ssh_key"));
                }
                self.credentials.extend(c.set.clone());
                if let Some(known) = &c.known_hosts {
                    self.known_hosts = known.clone();
                }
                if let Some(submodules) = c.submodules {
                    self.submodules = submodules;
                }
            }
            Event::SourceHostKeyPinned(pin) => {
                let host = known_host_field(&pin.known_host);
                if trusted_for(&self.known_hosts, host).next().is_none() {
                    self.known_hosts.push(pin.known_host.clone());
                }
            }
            _ => {}
        }
    }
}

/// The host field of an OpenSSH `known_hosts` line (`[host]:port` or `host`).
pub fn known_host_field(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or_default()
}

/// The lines of `known_hosts` that are for `host` (a host field).
pub fn trusted_for<'a>(known_hosts: &'a [String], host: &'a str) -> impl Iterator<Item = &'a String> {
    known_hosts.iter().filter(move |line| known_host_field(line) == host)
}

/// Whether two `known_hosts` lines name the same key (type and key; hosts aside).
pub fn same_host_key(a: &str, b: &str) -> bool {
    a.split_whitespace().skip(1).take(2).eq(b.split_whitespace().skip(1).take(2))
}

/// The credentials a project's source access may hold: an HTTPS `token`
/// (sent as the password, with `username` or `x-access-token`), or a
/// `username` and `password`; an SSH deploy key (`ssh_key`, OpenSSH or
/// PEM private key text) and, when the key is encrypted, its passphrase
/// (`ssh_key_passphrase`); a PEM CA certificate (`ca_cert`) trusted for
/// this project's HTTPS server besides the system's CA bundle.
pub const SOURCE_CREDENTIALS: [&str; 6] = ["token", "username", "password", "ssh_key", "ssh_key_passphrase", "ca_cert"];

/// A project's source access changed (on its project stream): credentials
/// set (by fingerprint) or removed, host keys replaced, submodules on or off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SourceAccessChanged {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub removed: Vec<String>,
    /// `Some` replaces every trusted host key (an empty list forgets them,
    /// so the next fetch trusts and records the key it meets).
    #[serde(default)]
    pub known_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub submodules: Option<bool>,
    /// The public half of the `ssh_key` set here, when Slipway made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_key: Option<String>,
}

/// The SSH host key a worker met on its first fetch of a project's
/// repository, when none was trusted yet: trusted from now on (trust on
/// first use), so a different key is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceHostKeyPinned {
    /// An OpenSSH `known_hosts` line.
    pub known_host: String,
    /// The deployment whose fetch met it.
    pub deployment_id: Uuid,
}

/// A (project, environment) pair took its combined name `<project>-<env>`,
/// which names its environment stream, its host name and its containers
/// (on the stream `name-<project>-<env>`, written with the pair's creation
/// and only if that stream is new): no other pair can ever share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameClaimed {
    pub project: String,
    pub environment: String,
}

/// The stream of the claim on the name `<project>-<environment>`.
pub fn name_stream(project: &str, environment: &str) -> String {
    StreamId::name(project, environment).to_string()
}

/// A mirror of this project was created (on the original's stream), so
/// the original can re-use the mirror's builds too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorAdded {
    pub mirror: String,
}

/// Where a push webhook came from: the provider decides how its signature
/// and payload are read (`POST /api/hooks/{provider}/{project}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookProvider {
    /// `X-Hub-Signature-256`, `X-GitHub-Delivery`, `X-GitHub-Event`.
    Github,
    /// `X-Gitlab-Token`, `X-Gitlab-Event-UUID`, `X-Gitlab-Event`.
    Gitlab,
    /// Gitea and Forgejo: `X-Gitea-Signature` (or `X-Forgejo-...`).
    Gitea,
    /// Slipway's own small form: `X-Slipway-Signature`, `X-Slipway-Delivery`.
    Generic,
    /// Not a webhook: Slipway's own poll of the repository (`--poll`), for
    /// git hosts that cannot reach Slipway. No endpoint takes it.
    Poll,
}

impl WebhookProvider {
    pub const ALL: [WebhookProvider; 4] =
        [WebhookProvider::Github, WebhookProvider::Gitlab, WebhookProvider::Gitea, WebhookProvider::Generic];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookProvider::Github => "github",
            WebhookProvider::Gitlab => "gitlab",
            WebhookProvider::Gitea => "gitea",
            WebhookProvider::Generic => "generic",
            WebhookProvider::Poll => "poll",
        }
    }
}

impl std::fmt::Display for WebhookProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WebhookProvider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        WebhookProvider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("webhook provider `{s}` is not one of github, gitlab, gitea, generic"))
    }
}

/// The project's webhook secret was generated anew (on the project's
/// stream). The value is in the value table under `fingerprint`, shown once
/// to whoever rotated it; the previous secret no longer verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSecretRotated {
    pub fingerprint: String,
}

/// An auto-deploy rule (on the project's stream): a push to a branch that
/// `branch` matches (`main`, `release/*`) deploys the pushed commit to
/// `environment`. Setting a glob again gives it the new environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoDeploySet {
    pub branch: String,
    pub environment: String,
    /// Also poll the repository's matching branches this often (seconds),
    /// for git hosts that cannot send webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<u64>,
}

/// The auto-deploy rule for `branch` (the glob as set) was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoDeployRemoved {
    pub branch: String,
}

/// Where a preview environment comes from: a pull request (merge request)
/// or a branch, and whether its code comes from a fork of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewOrigin {
    pub kind: PreviewKind,
    /// The pull request's number (GitLab: the merge request's `iid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// The branch: the pull request's head branch, or the pushed branch.
    pub branch: String,
    /// The head commit lives in another repository than the project's (a
    /// fork): each head commit waits for an approval before it deploys.
    #[serde(default)]
    pub head_repo_fork: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewKind {
    PullRequest,
    Branch,
}

/// An environment joined the project (on the project's stream, and on the
/// environment's own stream, where it starts a new life of that name): a
/// preview, named from its pull request or branch, whose settings are its
/// parent's (`inherits`) overlaid with its own; or, without `preview` and
/// `inherits`, a named environment added by hand (`slipway env add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentAdded {
    pub name: String,
    #[serde(default)]
    pub inherits: Option<String>,
    #[serde(default)]
    pub preview: Option<PreviewOrigin>,
    /// With no push for this long, the environment is removed.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// An environment left the project (on the project's stream and on the
/// environment's): its settings overlay is gone, and in the same
/// transaction its queued and running deployments were cancelled, its
/// serving release's retirement sent to the workers and its route removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRemoved {
    pub name: String,
    /// Why, in words: "pull request #42 closed", "branch deleted", "no push for 7d".
    pub reason: String,
    /// Deployments cancelled (queued or running then).
    #[serde(default)]
    pub cancelled: Vec<Uuid>,
    /// The release that served it, whose containers are retired.
    #[serde(default)]
    pub retired: Option<Uuid>,
    /// Its route was removed from the routes stream.
    #[serde(default)]
    pub route_removed: bool,
}

/// A project was removed (on its stream, after the `EnvironmentRemoved` of
/// each of its environments, in the same transaction): it is gone from
/// every list and request, and its name is never created again, so the
/// log's `project-<name>` stays one project's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRemoved {
    pub name: String,
    /// Why, in words: "removed by cli:ann@laptop".
    pub reason: String,
}

/// Which changes make previews: every pull request, or pushes to branches
/// matching a glob.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewTrigger {
    PullRequests,
    Branches(String),
}

impl std::fmt::Display for PreviewTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreviewTrigger::PullRequests => f.write_str("pull requests"),
            PreviewTrigger::Branches(glob) => write!(f, "branches {glob}"),
        }
    }
}

/// A preview rule (on the project's stream): each `trigger` gets its own
/// environment inheriting `inherit`'s settings, removed after `ttl_seconds`
/// without a push. Setting a trigger again replaces its rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRuleSet {
    pub trigger: PreviewTrigger,
    pub inherit: String,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRuleRemoved {
    pub trigger: PreviewTrigger,
}

/// A signed pull request (merge request) webhook was accepted (on the
/// project's stream), with what it did to its preview environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestReceived {
    pub provider: WebhookProvider,
    pub delivery: String,
    /// The provider's action: `opened`, `synchronize`, `closed`, `update`...
    pub action: String,
    pub number: u64,
    pub head_commit: String,
    pub head_branch: String,
    pub fork: bool,
    pub sender: String,
    /// The preview environment it concerns.
    pub environment: String,
    /// What happened, in words (deployed, waiting for approval, removed, nothing).
    pub outcome: String,
    #[serde(default)]
    pub deployment: Option<Uuid>,
    #[serde(default)]
    pub superseded: Vec<Uuid>,
    pub at: chrono::DateTime<chrono::Utc>,
    /// SHA-256 of the signed body (hex): the same body again is the same
    /// delivery, whatever delivery id comes with it (a captured webhook
    /// replayed under a new id deploys nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// Someone with deploy scope approved a fork's head commit for a preview
/// (on the project's stream); its deployment is requested with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewApproved {
    pub environment: String,
    pub commit: String,
    pub approved_by: String,
    pub deployment: Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A deployment a push requested, and the rule that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushDeployment {
    pub environment: String,
    pub deployment_id: Uuid,
    /// The rule's branch glob.
    pub rule: String,
}

/// A signed push webhook was accepted (on the project's stream), in the
/// same transaction as the deployments it requested: `delivery` is the
/// provider's id for it, so a redelivery is acknowledged, not deployed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReceived {
    pub provider: WebhookProvider,
    pub delivery: String,
    /// The pushed ref (`refs/heads/main`).
    pub git_ref: String,
    /// The commit pushed (`after`).
    pub commit: String,
    pub pusher: String,
    /// One per environment whose rule matched; none when no rule did.
    #[serde(default)]
    pub deployments: Vec<PushDeployment>,
    /// Deployments of earlier pushes, still waiting in the same
    /// environments' queues, that this push cancelled.
    #[serde(default)]
    pub superseded: Vec<Uuid>,
    /// When it was received (what a preview's time to live counts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Environments whose rule matched but that refused the deployment (a
    /// freeze window), each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// SHA-256 of the signed body (hex): the same body again is the same
    /// delivery, whatever delivery id comes with it (a captured webhook
    /// replayed under a new id deploys nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// A signed push that deploys nothing on purpose (on the project's stream):
/// its head commit asks so (`[skip deploy]`), or it deleted the branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSkipped {
    pub provider: WebhookProvider,
    pub delivery: String,
    pub git_ref: String,
    pub commit: String,
    pub pusher: String,
    pub reason: String,
    /// SHA-256 of the signed body (hex): the same body again is the same
    /// delivery, whatever delivery id comes with it (a captured webhook
    /// replayed under a new id deploys nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// Settings changed for one environment. Values stay outside the log: the
/// event holds each key with a fingerprint of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsChanged {
    pub environment: String,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub removed: Vec<String>,
    /// Which of the keys in `set` hold secrets (shown as such, never printed).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// A deployment joined its environment's queue: one deployment runs at a
/// time per environment, in the order they were requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEnqueued {
    pub deployment_id: Uuid,
}

/// A deployment left its environment's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFinished {
    pub deployment_id: Uuid,
    pub succeeded: bool,
    /// On success: the containers of the release that now serves.
    #[serde(default)]
    pub containers: Vec<String>,
    /// On success: where the release answers (`127.0.0.1:PORT`), what a
    /// failed switch reverts the route to.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// A dry run finished: it changes nothing about what serves.
    #[serde(default)]
    pub dry_run: bool,
    /// On success: the Docker host its web container runs on (empty in
    /// logs recorded before hosts were: the one host there was).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRequested {
    pub deployment_id: Uuid,
    pub project: String,
    pub environment: String,
    pub repository: String,
    pub git_ref: String,
    pub mode: BuildMode,
    #[serde(default)]
    pub no_cache: bool,
    /// Release commands run in cloud mode always, in local mode only with `--migrate`.
    #[serde(default = "yes")]
    pub run_release: bool,
    /// Fingerprints of the settings this deployment runs with.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Walk the pipeline without side effects: every step records a
    /// `StepSkipped` instead of acting.
    #[serde(default)]
    pub dry_run: bool,
    /// A rollback: re-activate this earlier release's image, commit and
    /// `slipway.toml` (no checkout, no build, no release commands).
    #[serde(default)]
    pub rollback_of: Option<ReleaseSource>,
    /// A promotion: deploy exactly the image another environment's release
    /// runs (no checkout, no build; release commands run as usual, with
    /// this environment's settings).
    #[serde(default)]
    pub promoted_from: Option<ReleaseSource>,
    /// A replay: the same recorded inputs (commit, settings snapshot, mode)
    /// as an earlier deployment, resuming at `from_step`.
    #[serde(default)]
    pub replay_of: Option<ReplaySource>,
    /// How workers reach the repository (credentials by fingerprint, host keys).
    #[serde(default, skip_serializing_if = "SourceAccess::is_empty")]
    pub source: SourceAccess,
}

/// What a replay takes from the deployment it re-runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaySource {
    pub deployment_id: Uuid,
    /// Steps before it re-use what the original produced (its image, if
    /// Docker still has it; its release commands are not run again).
    pub from_step: Step,
    /// The original's image, if it built one.
    #[serde(default)]
    pub image_id: Option<String>,
}

/// Recorded on the original deployment's stream: it was replayed as `replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentReplayed {
    pub replay: Uuid,
    pub from_step: Step,
}

/// What a rollback or a promotion re-uses from an earlier release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSource {
    pub deployment_id: Uuid,
    pub commit: String,
    pub image_id: String,
    #[serde(default)]
    pub config: serde_json::Value,
}

fn yes() -> bool {
    true
}

/// A step's command was written to the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDispatched {
    pub step: Step,
    pub command_id: Uuid,
    pub attempt: u32,
    /// When the engine stops waiting for this attempt's outcome and
    /// dispatches the step again (or fails it after the last attempt).
    #[serde(default)]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// When it was dispatched: heartbeats of a worker running it count only
    /// from then on.
    #[serde(default)]
    pub dispatched_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCheck {
    pub name: String,
    pub kind: String,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesChecked {
    pub services: Vec<ServiceCheck>,
    /// The SSH host key the fetch met when the project trusted none yet
    /// (an OpenSSH `known_hosts` line); the worker pins it on the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedOut {
    pub commit: String,
    pub workspace: String,
    /// The app's `slipway.toml` as it was at this commit (JSON form), so a
    /// replay runs with exactly the recorded configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// As in [`ServicesChecked::source_host_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuilt {
    pub image_id: String,
    pub tag: String,
    pub cache_used: bool,
    pub duration_ms: u64,
    /// Where the build log is kept (outside event payloads) and its digest.
    #[serde(default)]
    pub log_ref: Option<String>,
    #[serde(default)]
    pub log_digest: Option<String>,
    /// Build mode (cloud: no layer cache).
    #[serde(default)]
    pub mode: BuildMode,
    /// Unpinned things the Dockerfile lint found (they never fail a build).
    #[serde(default)]
    pub warnings: Vec<PinningWarning>,
    /// The base images it was built FROM, each as `REF@DIGEST` (the
    /// registry digest when Docker knows one, else the local image id).
    #[serde(default)]
    pub base_images: Vec<String>,
    /// Where the image was pushed, by digest (`REGISTRY/PROJECT@sha256:...`),
    /// when the build farm has a registry: other hosts pull it from there.
    #[serde(default)]
    pub pushed: Option<String>,
}

/// Something in a Dockerfile that lets a rebuild of the same commit change
/// silently (seed: "Notes on Docker image building").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinningWarning {
    pub file: String,
    pub line: usize,
    pub rule: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageReused {
    pub image_id: String,
    pub source_deployment: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebContainerStarted {
    pub container: String,
    pub host_port: u16,
    /// The Docker host (the worker's host name) it runs on: the host agent
    /// that starts the release again when its containers are gone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Every replica's `ADDRESS:PORT`, when the runtime runs them on other
    /// hosts than the router's (the swarm runtime: a node's address and the
    /// port its task publishes there). Empty: `127.0.0.1:<host_port>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    /// What slipway.toml asked that this runtime does not do (the single
    /// engine runs one web container whatever `[web] replicas` says), in
    /// words: shown with the step's outcome, in `events` and in history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCommandResult {
    pub command: String,
    pub exit_code: i64,
    pub duration_ms: u64,
    #[serde(default)]
    pub log_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCommandsRan {
    pub results: Vec<ReleaseCommandResult>,
    /// True when the commands were not run (local mode without `--migrate`).
    #[serde(default)]
    pub skipped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessContainer {
    pub process: String,
    pub replica: u32,
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessesStarted {
    pub containers: Vec<ProcessContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckPassed {
    pub path: String,
    pub status: u16,
    pub attempts: u32,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailed {
    pub step: Step,
    pub reason: String,
    #[serde(default)]
    pub attempt: u32,
    /// Slipway's own evidence (which containers could not be removed, a
    /// task's state); events recorded before `evidence` also held a
    /// container's last log lines here.
    #[serde(default)]
    pub details: Vec<String>,
    /// Where the step's output is kept — a container's last log lines, a
    /// build's or release command's last output, scrubbed — as a log in the
    /// worker's log directory, by reference: the app's output never enters
    /// the permanent log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<LogRef>,
}

/// A log kept outside the event log: its path (as the worker wrote it)
/// and the SHA-256 of its contents, so an auditor can tell it is the one
/// the event names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRef {
    pub path: String,
    pub sha256: String,
}

/// A step that did nothing, and why (a dry run, or local mode without `--migrate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSkipped {
    pub step: Step,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSucceeded {
    pub image_id: String,
    pub commit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFailed {
    pub step: Step,
    pub reason: String,
}

/// Someone asked to stop a deployment that has not finished. The engine
/// fails it at the step it was at (reason "cancelled by ..."), removes its
/// containers and, if its route had moved, moves the route back: the old
/// release keeps serving, exactly as after any other failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    /// Why, in the canceller's words (may be empty).
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainersRemoved {
    pub containers: Vec<String>,
}

/// What the host agent did to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerAction {
    /// Removed: it belongs to a release that should not run (a replaced or
    /// failed release whose retirement never happened — a command lost with
    /// an in-process queue, a worker that died — or one nobody recorded).
    Removed,
    /// Started again: it belongs to the serving release, was stopped or
    /// exited, and Docker was not restarting it.
    Started,
    /// Gone: the serving release's containers are no longer on their host
    /// (removed by hand, a Docker host whose data was lost); a deployment of
    /// the same release (its image, configuration and settings) was
    /// requested to start it again, through the pipeline and an
    /// acknowledged switch. `container` lists the missing ones.
    Redeployed,
}

/// The host agent corrected a container (on the environment's stream), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReconciled {
    pub action: ContainerAction,
    pub deployment_id: Uuid,
    pub container: String,
    /// Why, in words.
    pub reason: String,
    /// The Docker host (worker host name) it runs on.
    #[serde(default)]
    pub host: String,
}

/// The serving release answers at other upstreams than recorded (on the
/// environment's stream), as observed by the host agent: its web container
/// came back on a new ephemeral host port (a Docker daemon restart). The
/// environment's active release takes these upstreams, and the engine
/// moves the route to them (`RouteReason::Reconcile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseUpstreamsObserved {
    pub deployment_id: Uuid,
    /// The upstreams the release answers at now (`127.0.0.1:PORT`).
    pub upstreams: Vec<String>,
    /// What was recorded before.
    #[serde(default)]
    pub previous: Vec<String>,
    #[serde(default)]
    pub host: String,
}

/// The engine moved the serving release's route to where it answers now
/// (after `ReleaseUpstreamsObserved`) at `route_version`, and waits for
/// `routers` to acknowledge it until `deadline` (on the environment's
/// stream): the same acknowledged switch as a cutover's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRerouted {
    pub deployment_id: Uuid,
    pub upstreams: Vec<String>,
    pub route_version: u64,
    pub routers: Vec<String>,
    pub deadline: chrono::DateTime<chrono::Utc>,
}

/// A reroute's end (on the environment's stream): every router that was
/// still registered acknowledged its route version, or the deadline passed
/// with `missing` not having done so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerouteSettled {
    pub route_version: u64,
    pub acknowledged: Vec<String>,
    #[serde(default)]
    pub missing: Vec<String>,
}

/// What a serving container is doing, as the host agent last recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveState {
    Running,
    /// Failing its Docker health check.
    Unhealthy,
    /// Exited, and Docker is starting it again.
    Restarting,
    /// Exiting again and again (several exits within a minute).
    CrashLooping,
    /// Exited, and nothing restarts it.
    Down,
}

impl LiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveState::Running => "running",
            LiveState::Unhealthy => "unhealthy",
            LiveState::Restarting => "restarting",
            LiveState::CrashLooping => "crash-looping",
            LiveState::Down => "down",
        }
    }
}

/// What a container of the serving release did, as the host agent saw it
/// through Docker's events (on the environment's stream). Rate-limited: one
/// record summarises every exit since the one before, so a crash loop is a
/// few records, not one per crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSupervised {
    pub deployment_id: Uuid,
    pub container: String,
    pub state: LiveState,
    /// Exits since the previous record of this container.
    #[serde(default)]
    pub exits: u32,
    /// Restarts seen since the agent began watching it.
    #[serde(default)]
    pub restarts: u32,
    /// The last exit code seen.
    #[serde(default)]
    pub last_exit: Option<i64>,
    /// The kernel killed it for memory (an OOM kill) since the previous record.
    #[serde(default)]
    pub oom: bool,
    #[serde(default)]
    pub host: String,
}

/// What happened to one replica of a serving release on the swarm runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaChange {
    /// A replica (a new Swarm task) runs, on the node it ran on before or a first time.
    Started,
    /// A replica's task failed (its container exited, or a node rejected it).
    Failed,
    /// A replica runs on another node than before (Swarm placed it again).
    Rescheduled,
    /// The node a replica ran on is down (Swarm places it elsewhere).
    NodeDown,
    /// Swarm wants the replica running but no node can take it (its
    /// placement, a drained or lost node): it stays pending, with Swarm's
    /// reason in `error`.
    Unplaceable,
    /// A replica recorded as unplaceable runs again, on `node`.
    Placed,
}

impl ReplicaChange {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaChange::Started => "started",
            ReplicaChange::Failed => "failed",
            ReplicaChange::Rescheduled => "rescheduled",
            ReplicaChange::NodeDown => "node down",
            ReplicaChange::Unplaceable => "cannot be placed",
            ReplicaChange::Placed => "placed again",
        }
    }
}

/// One replica's change: its slot (`[web] replicas` numbers them from 1),
/// the node it happened on (its address), and Swarm's words when it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChanged {
    pub slot: u64,
    pub change: ReplicaChange,
    pub node: String,
    /// The node it ran on before (a reschedule).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// What the serving release's Swarm tasks did, as the swarm watcher saw it
/// (on the environment's stream). Rate-limited like `ContainerSupervised`:
/// one record summarises every change since the one before. `Default`
/// (a nil deployment, nothing observed) is for tests that set a few fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicasObserved {
    pub deployment_id: Uuid,
    /// The Swarm service (the release's web or process type).
    pub service: String,
    pub changes: Vec<ReplicaChanged>,
    /// Changes left out of `changes` (a long crash loop).
    #[serde(default)]
    pub more: u32,
    /// Replicas running when recorded, and how many the service asks for.
    pub running: u32,
    pub wanted: u32,
    /// Replicas Swarm wants but no node can take when recorded (pending
    /// past the watcher's grace), and Swarm's reason; 0 and empty when
    /// every replica is placed (and in records written before this was).
    #[serde(default)]
    pub unplaced: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// `web`, or the process type's name (empty in records written before).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The service's replica failures within the watcher's loop window
    /// while they make a crash loop (as many as `ContainerSupervised` calls
    /// one on the single engine), on every record of the loop; 0 otherwise,
    /// so the record that ends a loop says 0 (and so do records written
    /// before this was).
    #[serde(default)]
    pub crash_loop: u32,
    /// This record tells people of the crash loop: the first record of the
    /// loop, then at most one a minute while it goes on (records come every
    /// few seconds while replicas fail). The `release.crash_looping`
    /// notification is sent for these.
    #[serde(default)]
    pub crash_loop_said: bool,
}

/// An operator changed a swarm node's availability (on the installation
/// stream): `drain` moves its replicas elsewhere, `active` lets Swarm place
/// replicas there again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAvailabilityChanged {
    /// The node's host name.
    pub node: String,
    pub node_id: String,
    /// `drain`, `active` or `pause`.
    pub availability: String,
    /// What it was.
    pub previous: String,
    /// Replicas that ran there and were placed elsewhere (a drain waited for).
    #[serde(default)]
    pub moved: Vec<String>,
}

/// The one stream that holds every environment's route. An event's
/// version in it is the *route version* routers acknowledge: one number
/// says how far a router has applied the routes of every environment.
pub const ROUTES_STREAM: &str = "routes";
/// The registry of routers (`RouterStarted`, `RouterStopped`, `RouterExpired`).
pub const ROUTERS_STREAM: &str = "routers";
/// One router's acknowledgements (also its heartbeat: the route version it
/// serves, acknowledged again when it wrote nothing else for a while).
pub fn router_stream(router_id: &str) -> String {
    StreamId::router(router_id).to_string()
}

/// Why a route changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteReason {
    /// A healthy deployment takes the traffic.
    Cutover,
    /// A switch that did not complete goes back to the release that served.
    Revert,
    /// A release that failed while watched after its switch: the traffic
    /// goes back to the release that served before it.
    Rollback,
    /// The watch passed: the same upstreams, without the standby (the
    /// previous release is about to be retired).
    Settled,
    /// The serving release answers at new upstreams (its container came back
    /// on another port): the route follows it.
    Reconcile,
}

/// An environment's host name is served no more (on the routes stream):
/// the environment was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRemoved {
    pub project: String,
    pub environment: String,
}

/// The stream of installation-wide records (key rotations).
pub const INSTALLATION_STREAM: &str = "installation";

/// Every stored setting value was sealed again with a new key (on the
/// installation stream): key ids only, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsKeyRotated {
    /// The key ids values may have been sealed with before.
    pub from: Vec<String>,
    /// The key id every value is sealed with now.
    pub to: String,
    /// How many values were sealed again.
    pub values: u64,
}

/// A custom domain now routes to an environment (on the routes stream, so
/// routers apply it in route order, and one stream decides who holds a
/// name). `domain` is lowercase, without a trailing dot; `*.example.com`
/// is a one-level wildcard (`a.example.com`, not `a.b.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainAdded {
    pub project: String,
    pub environment: String,
    pub domain: String,
}

/// A custom domain routes to its environment no more (on the routes stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRemoved {
    pub project: String,
    pub environment: String,
    pub domain: String,
}

/// The stream of TLS certificates and ACME challenges: which certificate
/// serves each domain (by fingerprint; the chain and key are in the value
/// table, never here), renewals that failed, and the ACME challenges
/// routers give. Apart from the routes stream, so that certificate work
/// never contends with cutovers for the route version.
pub const CERTIFICATES_STREAM: &str = "certificates";

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// Obtained over ACME by the engine.
    Acme,
    /// Uploaded by hand (`slipway cert add`).
    Uploaded,
}

/// A certificate now serves `domain` (on the certificates stream). Its
/// PEM chain and private key are in the value table under `fingerprint`
/// (`cert-sha256:` and the hex SHA-256 of the leaf's DER); only the
/// public facts are here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStored {
    pub domain: String,
    pub fingerprint: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub source: CertificateSource,
    /// The DNS names the certificate covers.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Obtaining or renewing `domain`'s certificate over ACME failed (on the
/// certificates stream); a certificate it already had keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRenewalFailed {
    pub domain: String,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Routers answer an ACME challenge for `domain` from `key_authorization`
/// (public by design: RFC 8555 §8.1), on the certificates stream, until
/// the matching `AcmeChallengeFinished`: over HTTP-01, `GET
/// /.well-known/acme-challenge/{token}` answers the key authorization;
/// over TLS-ALPN-01, a handshake for `domain` offering only `acme-tls/1`
/// gets a self-signed certificate carrying its SHA-256 (RFC 8737), which
/// each router makes for itself (no private key is ever recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallengeReady {
    pub domain: String,
    pub token: String,
    pub key_authorization: String,
    /// Events recorded before TLS-ALPN-01 was offered carry none: HTTP-01.
    #[serde(default)]
    pub method: ChallengeMethod,
}

/// How the CA is shown that the routers serve a domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeMethod {
    /// HTTP-01: a request to the routers' HTTP port (80).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01: a TLS handshake with the routers' HTTPS port (443).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl std::fmt::Display for ChallengeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeMethod::Http01 => "http-01",
            ChallengeMethod::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// An ACME challenge needs no answer any more (on the certificates stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeChallengeFinished {
    pub domain: String,
    pub token: String,
}

/// `domain`'s certificate serves no more (`slipway cert remove`, on the
/// certificates stream): routers stop serving it from their next
/// handshake. Its chain and key stay in the (insert-only) value table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRemoved {
    pub domain: String,
    /// The certificate that served until now.
    pub fingerprint: String,
}

/// Whether plain-HTTP requests for `domain` are redirected (308) to HTTPS
/// while it has a certificate (on the certificates stream). A domain with
/// no such event is redirected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsRedirectSet {
    pub domain: String,
    pub redirect: bool,
}

/// The engine registered an ACME account at `directory` (on the
/// certificates stream) and keeps using it, across restarts and renewals.
/// Its credentials (with the account's private key) are in the value
/// table under `fingerprint` (`acme-account-sha256:` and the hex SHA-256
/// of the stored text), sealed like every value; only public facts here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeAccountRegistered {
    pub directory: String,
    /// The account's URL at the CA.
    pub account: String,
    pub fingerprint: String,
}

/// An environment's host name now routes to these upstreams (on the
/// routes stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChanged {
    pub project: String,
    pub environment: String,
    /// The release that serves; `None` when nothing does (a first
    /// deployment's switch reverted).
    pub deployment_id: Option<Uuid>,
    /// Loopback `HOST:PORT` of the release's web containers.
    pub upstreams: Vec<String>,
    pub reason: RouteReason,
    /// While a new release is watched: the previous release's upstreams,
    /// still running. A router sends a request there when the new upstream
    /// refuses the connection (nothing was sent, so the retry is safe), so
    /// a release that crashes fails no request it had not taken yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby: Vec<String>,
}

/// A router came up (on the routers stream): from now on every traffic
/// switch waits for its acknowledgement, as long as it keeps its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStarted {
    pub router_id: String,
    pub listen: String,
    pub domain: String,
    /// How long, in milliseconds, the router may write nothing on its own
    /// stream before the engine takes it for gone (`RouterExpired`). It
    /// writes at least every third of it. `None` (routers from before
    /// leases): the default lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// A router shut down cleanly; switches no longer wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStopped {
    pub router_id: String,
}

/// The engine heard nothing from a registered router for its lease (on the
/// routers stream, once per registration): switches no longer wait for it
/// until it registers again (`RouterStarted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterExpired {
    pub router_id: String,
    /// The time of its last event (its registration or a write on its stream).
    pub last_seen: chrono::DateTime<chrono::Utc>,
    pub lease_ms: u64,
}

/// A router applied every route up to `route_version` (on its own stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAcknowledged {
    pub router_id: String,
    pub route_version: u64,
}

/// The engine moved a healthy deployment's traffic: the route version it
/// wrote, the routers that must acknowledge it, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSwitchRequested {
    pub route_version: u64,
    pub upstreams: Vec<String>,
    pub routers: Vec<String>,
    pub deadline: chrono::DateTime<chrono::Utc>,
}

/// Every router acknowledged the deployment's route version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSwitched {
    pub route_version: u64,
    pub routers: Vec<String>,
}

/// The new release took the traffic; it is watched until `until` while the
/// previous release keeps running, ready to take the traffic back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseWatchStarted {
    pub until: chrono::DateTime<chrono::Utc>,
    /// The `[web] watch` window, in milliseconds.
    pub window_ms: u64,
}

/// The watch window passed with the release healthy (the watch step's
/// outcome): no container exited, restarted or was OOM-killed, and the
/// health path kept answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseWatched {
    /// How long this worker watched (a redelivery watches what is left).
    pub watched_ms: u64,
    /// Health probes made, and how many of them failed (never enough in a row to fail).
    pub probes: u32,
    #[serde(default)]
    pub failed_probes: u32,
    pub containers: Vec<String>,
}

/// The release failed while watched after its switch, and the engine routed
/// the traffic back to the release that served before (`to`; `None` when
/// there was none). The evidence: what the watch saw, when the switch
/// happened, and the route version every router must acknowledge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRolledBack {
    pub to: Option<Uuid>,
    /// The watch's (or the canceller's) reason, e.g. "web container ... exited with code 3".
    pub reason: String,
    /// The failed step's evidence (a container's last log lines, scrubbed).
    #[serde(default)]
    pub details: Vec<String>,
    pub route_version: u64,
    pub routers: Vec<String>,
    pub deadline: chrono::DateTime<chrono::Utc>,
    /// What each router had counted of the release's requests by then
    /// (its last `RouterErrorsObserved`; none when no router saw errors).
    #[serde(default)]
    pub router_errors: Vec<RouterErrorsObserved>,
}

/// A router's counts of the requests it sent to a release being watched
/// (on the deployment's stream): written only while the route has a
/// standby (the watch), only when errors were counted, at most once a
/// second per route. The counts are cumulative for the route version, from
/// when this router applied it, so a lost or repeated record loses nothing:
/// the latest of each router says it all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterErrorsObserved {
    pub router_id: String,
    /// The route version the counts are for: the deployment's cutover.
    pub route_version: u64,
    /// Requests sent to the release.
    pub requests: u64,
    /// Answers with a status of 500 or more from the release.
    pub errors_5xx: u64,
    /// Requests that failed with the router's 502: the release refused,
    /// reset or dropped them and no standby answered instead.
    pub upstream_errors: u64,
    /// When this router began counting (it applied the route version).
    pub since: chrono::DateTime<chrono::Utc>,
    /// The first error it counted.
    pub first_error_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it read the counts.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl RouterErrorsObserved {
    /// 5xx answers and upstream errors.
    pub fn errors(&self) -> u64 {
        self.errors_5xx.saturating_add(self.upstream_errors)
    }
}

/// The stream of API tokens: who issued which, with what scope, and which
/// were revoked. Auditors read it like any other stream.
pub const TOKENS_STREAM: &str = "tokens";

/// What an API token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Every read, and verifying the log.
    Read,
    /// Read, plus requesting, cancelling, replaying, rolling back, promoting and migrating deployments.
    Deploy,
    /// Deploy, plus projects, settings and tokens.
    Admin,
}

impl TokenScope {
    pub const ALL: [TokenScope; 3] = [TokenScope::Read, TokenScope::Deploy, TokenScope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Deploy => "deploy",
            TokenScope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TokenScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TokenScope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("scope `{s}` is not one of read, deploy, admin"))
    }
}

/// An API token was issued (on the tokens stream). Only the SHA-256 of its
/// value is recorded; the value is shown once, to whoever issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    /// Events recorded with the token name their actor `token:<name>`.
    pub name: String,
    pub scope: TokenScope,
    /// SHA-256 of the token value, lowercase hex.
    pub sha256: String,
    /// The actor who issued it.
    pub issued_by: String,
    /// When it stops working, if it was issued to expire (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An API token was revoked: it is refused from now on, and its name is
/// never issued again (so `token:<name>` in the log names one token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub name: String,
}

/// An environment's protection changed (on the project's stream): a
/// deployment to it waits for this many approvals (0: none) by someone
/// with deploy scope other than its requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentProtected {
    pub environment: String,
    pub approvals: u32,
}

/// A deployment to a protected environment waits for approvals before its
/// first step (on the deployment's stream, with its request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequired {
    pub approvals: u32,
}

/// Someone approved a deployment waiting for approval (on its stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentApproved {
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

/// Someone rejected a deployment waiting for approval (on its stream, with
/// the `CancelRequested` that stops it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRejected {
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

/// A freeze window on an environment (on the project's stream): from each
/// time the cron expression `schedule` matches (UTC), for `duration_seconds`,
/// deployments to it are refused unless an admin overrides. Setting the
/// same schedule again replaces its duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeWindowSet {
    pub environment: String,
    pub schedule: String,
    pub duration_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeWindowRemoved {
    pub environment: String,
    pub schedule: String,
}

/// An admin deployed inside a freeze window (on the deployment's stream,
/// with its request): which window, until when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeOverridden {
    pub schedule: String,
    pub until: chrono::DateTime<chrono::Utc>,
    pub by: String,
    pub reason: String,
}

/// The stream of notification subscriptions (`NotificationSubscribed`,
/// `NotificationUnsubscribed`).
pub const NOTIFICATIONS_STREAM: &str = "notifications";

/// One subscription's deliveries: every attempt, and the redeliveries and
/// replays asked of it.
pub fn notification_stream(subscription: Uuid) -> String {
    StreamId::notification(subscription).to_string()
}

/// What a notification is about. A subscription names the kinds it wants
/// (none: every kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A deployment was requested.
    DeploymentStarted,
    DeploymentSucceeded,
    DeploymentFailed,
    /// A release failed while watched and the traffic went back.
    DeploymentRolledBack,
    /// A serving release's container exits again and again.
    ReleaseCrashLooping,
    /// Obtaining or renewing a certificate over ACME failed.
    CertificateRenewalFailed,
    /// A deployment to a protected environment waits for an approval.
    DeploymentAwaitingApproval,
    DeploymentApproved,
    DeploymentRejected,
    /// An admin deployed inside a freeze window.
    FreezeOverridden,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 10] = [
        NotificationKind::DeploymentStarted,
        NotificationKind::DeploymentSucceeded,
        NotificationKind::DeploymentFailed,
        NotificationKind::DeploymentRolledBack,
        NotificationKind::ReleaseCrashLooping,
        NotificationKind::CertificateRenewalFailed,
        NotificationKind::DeploymentAwaitingApproval,
        NotificationKind::DeploymentApproved,
        NotificationKind::DeploymentRejected,
        NotificationKind::FreezeOverridden,
    ];

    /// The kind as receivers see it (`deployment.failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::DeploymentStarted => "deployment.started",
            NotificationKind::DeploymentSucceeded => "deployment.succeeded",
            NotificationKind::DeploymentFailed => "deployment.failed",
            NotificationKind::DeploymentRolledBack => "deployment.rolled_back",
            NotificationKind::ReleaseCrashLooping => "release.crash_looping",
            NotificationKind::CertificateRenewalFailed => "certificate.renewal_failed",
            NotificationKind::DeploymentAwaitingApproval => "deployment.awaiting_approval",
            NotificationKind::DeploymentApproved => "deployment.approved",
            NotificationKind::DeploymentRejected => "deployment.rejected",
            NotificationKind::FreezeOverridden => "freeze.overridden",
        }
    }
}

impl std::fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NotificationKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        NotificationKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = NotificationKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("notification kind `{s}` is not one of {}", known.join(", "))
        })
    }
}

/// Where notifications go, and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationTarget {
    /// Slipway's JSON, signed: HMAC-SHA256 over `<timestamp>.<body>` in
    /// `X-Slipway-Signature`, the timestamp in `X-Slipway-Timestamp`.
    Webhook,
    /// A Slack incoming webhook (`{"text": ...}`).
    Slack,
    /// A Discord webhook (`{"content": ...}`).
    Discord,
}

impl NotificationTarget {
    pub const ALL: [NotificationTarget; 3] = [NotificationTarget::Webhook, NotificationTarget::Slack, NotificationTarget::Discord];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationTarget::Webhook => "webhook",
            NotificationTarget::Slack => "slack",
            NotificationTarget::Discord => "discord",
        }
    }
}

impl std::fmt::Display for NotificationTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NotificationTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        NotificationTarget::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("notification target `{s}` is not one of webhook, slack, discord"))
    }
}

/// A notification subscription was added (on the notifications stream).
/// The target's URL (whose path is the credential of a Slack or Discord
/// webhook) and the signing secret are in the value table by fingerprint;
/// only the URL's scheme, host and port are shown here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSubscribed {
    pub id: Uuid,
    /// Only this project's events; `None`: every project's, and the
    /// installation's own (certificates).
    #[serde(default)]
    pub project: Option<String>,
    /// Only these kinds; empty: every kind.
    #[serde(default)]
    pub kinds: Vec<NotificationKind>,
    pub target: NotificationTarget,
    /// `scheme://host[:port]` of the URL.
    pub url_shown: String,
    /// Fingerprint of the URL in the value table.
    pub url: String,
    /// Fingerprint of the signing secret in the value table (webhooks).
    #[serde(default)]
    pub secret: Option<String>,
}

/// A notification subscription was removed: nothing more is sent to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationUnsubscribed {
    pub id: Uuid,
}

/// A place in the log's global order (the store's `Position`), as the
/// notifier's records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct LogPosition {
    pub tx: u64,
    pub seq: i64,
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.tx, self.seq)
    }
}

impl std::str::FromStr for LogPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a log position: expected TX:SEQ, as `slipway notifications deliveries` shows them");
        let (tx, seq) = s.split_once(':').ok_or_else(bad)?;
        Ok(LogPosition { tx: tx.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

/// The event a notification is about: where it is in the log, and how to
/// read it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedEvent {
    pub event_id: Uuid,
    pub stream: String,
    pub version: u64,
    pub position: LogPosition,
    pub kind: NotificationKind,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DeliveryOutcome {
    /// The target answered 2xx.
    Delivered,
    /// It did not; the next attempt is due at `next_at`.
    Retry { next_at: chrono::DateTime<chrono::Utc> },
    /// It did not, and no attempt follows (past the retry period, or a
    /// redelivery, which is tried once).
    GaveUp,
}

/// One attempt to deliver a notification (on the subscription's stream).
/// Attempts of one subscription are made in log order: a later event waits
/// while an earlier one is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAttempted {
    pub event: NotifiedEvent,
    /// 1 for the first attempt of this event.
    pub attempt: u32,
    /// The HTTP status the target answered, if it answered.
    #[serde(default)]
    pub status: Option<u16>,
    /// Why it failed, when it did (never the URL's path nor the secret).
    #[serde(default)]
    pub error: Option<String>,
    pub latency_ms: u64,
    #[serde(flatten)]
    pub outcome: DeliveryOutcome,
    /// Sent because someone asked (`redeliver`), out of the log's order.
    #[serde(default)]
    pub redelivery: bool,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Someone asked for one notification to be sent again (on the
/// subscription's stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRedeliveryRequested {
    pub event: NotifiedEvent,
}

/// Someone asked for a subscription's notifications to be sent again from
/// a position in the log on (on the subscription's stream): every matching
/// event after `from` is delivered again, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationReplayRequested {
    pub from: LogPosition,
}

/// A notifier took (or renewed) the right to send a subscription's
/// notifications until `until` (on the subscription's stream, appended at
/// the version it had read, so two notifiers cannot both take it): while
/// it holds, no other notifier posts for that subscription, so a
/// notification is not sent twice because two engines run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationLeaseTaken {
    /// The notifier process: `notifier:<host>:<process id>`.
    pub holder: String,
    pub until: chrono::DateTime<chrono::Utc>,
}

crate::message_family! {
    /// Every event type, with its current schema version.
    Event, "event" {
        ProjectCreated(ProjectCreated) = 1,
        SettingsChanged(SettingsChanged) = 1,
        DeploymentRequested(DeploymentRequested) = 2,
        StepDispatched(StepDispatched) = 1,
        ServicesChecked(ServicesChecked) = 1,
        CheckedOut(CheckedOut) = 1,
        ImageBuilt(ImageBuilt) = 1,
        ImageReused(ImageReused) = 1,
        WebContainerStarted(WebContainerStarted) = 1,
        ReleaseCommandsRan(ReleaseCommandsRan) = 1,
        ProcessesStarted(ProcessesStarted) = 1,
        HealthCheckPassed(HealthCheckPassed) = 1,
        StepFailed(StepFailed) = 1,
        StepSkipped(StepSkipped) = 1,
        DeploymentSucceeded(DeploymentSucceeded) = 1,
        DeploymentFailed(DeploymentFailed) = 1,
        ContainersRemoved(ContainersRemoved) = 1,
        DeploymentEnqueued(DeploymentEnqueued) = 1,
        DeploymentFinished(DeploymentFinished) = 1,
        RouteChanged(RouteChanged) = 1,
        RouterStarted(RouterStarted) = 1,
        RouterStopped(RouterStopped) = 1,
        RouteAcknowledged(RouteAcknowledged) = 1,
        TrafficSwitchRequested(TrafficSwitchRequested) = 1,
        TrafficSwitched(TrafficSwitched) = 1,
        DeploymentReplayed(DeploymentReplayed) = 1,
        MirrorAdded(MirrorAdded) = 1,
        CancelRequested(CancelRequested) = 1,
        TokenIssued(TokenIssued) = 1,
        TokenRevoked(TokenRevoked) = 1,
        WebhookSecretRotated(WebhookSecretRotated) = 1,
        AutoDeploySet(AutoDeploySet) = 1,
        AutoDeployRemoved(AutoDeployRemoved) = 1,
        PushReceived(PushReceived) = 1,
        PushSkipped(PushSkipped) = 1,
        ReleaseWatchStarted(ReleaseWatchStarted) = 1,
        ReleaseWatched(ReleaseWatched) = 1,
        ReleaseRolledBack(ReleaseRolledBack) = 1,
        RouterErrorsObserved(RouterErrorsObserved) = 1,
        ContainerReconciled(ContainerReconciled) = 1,
        ReleaseUpstreamsObserved(ReleaseUpstreamsObserved) = 1,
        ContainerSupervised(ContainerSupervised) = 1,
        ReplicasObserved(ReplicasObserved) = 1,
        HostAvailabilityChanged(HostAvailabilityChanged) = 1,
        SourceAccessChanged(SourceAccessChanged) = 1,
        SourceHostKeyPinned(SourceHostKeyPinned) = 1,
        NameClaimed(NameClaimed) = 1,
        EnvironmentAdded(EnvironmentAdded) = 1,
        EnvironmentRemoved(EnvironmentRemoved) = 1,
        ProjectRemoved(ProjectRemoved) = 1,
        RouteRemoved(RouteRemoved) = 1,
        PreviewRuleSet(PreviewRuleSet) = 1,
        PreviewRuleRemoved(PreviewRuleRemoved) = 1,
        PullRequestReceived(PullRequestReceived) = 1,
        PreviewApproved(PreviewApproved) = 1,
        DomainAdded(DomainAdded) = 1,
        DomainRemoved(DomainRemoved) = 1,
        RouterExpired(RouterExpired) = 1,
        SecretsKeyRotated(SecretsKeyRotated) = 1,
        ReleaseRerouted(ReleaseRerouted) = 1,
        RerouteSettled(RerouteSettled) = 1,
        CertificateStored(CertificateStored) = 1,
        CertificateRenewalFailed(CertificateRenewalFailed) = 1,
        AcmeChallengeReady(AcmeChallengeReady) = 1,
        AcmeChallengeFinished(AcmeChallengeFinished) = 1,
        CertificateRemoved(CertificateRemoved) = 1,
        HttpsRedirectSet(HttpsRedirectSet) = 1,
        AcmeAccountRegistered(AcmeAccountRegistered) = 1,
        NotificationSubscribed(NotificationSubscribed) = 1,
        NotificationUnsubscribed(NotificationUnsubscribed) = 1,
        NotificationAttempted(NotificationAttempted) = 1,
        NotificationRedeliveryRequested(NotificationRedeliveryRequested) = 1,
        NotificationReplayRequested(NotificationReplayRequested) = 1,
        NotificationLeaseTaken(NotificationLeaseTaken) = 1,
        EnvironmentProtected(EnvironmentProtected) = 1,
        ApprovalRequired(ApprovalRequired) = 1,
        DeploymentApproved(DeploymentApproved) = 1,
        DeploymentRejected(DeploymentRejected) = 1,
        FreezeWindowSet(FreezeWindowSet) = 1,
        FreezeWindowRemoved(FreezeWindowRemoved) = 1,
        FreezeOverridden(FreezeOverridden) = 1,
    }
}

impl Event {
    /// The pipeline step whose successful outcome this event records, if any.
    pub fn completes_step(&self) -> Option<Step> {
        match self {
            Event::ServicesChecked(_) => Some(Step::CheckServices),
            Event::CheckedOut(_) => Some(Step::Checkout),
            Event::ImageBuilt(_) | Event::ImageReused(_) => Some(Step::Build),
            Event::WebContainerStarted(_) => Some(Step::Deploy),
            Event::ReleaseCommandsRan(_) => Some(Step::Release),
            Event::ProcessesStarted(_) => Some(Step::Processes),
            Event::HealthCheckPassed(_) => Some(Step::HealthCheck),
            Event::StepSkipped(s) => Some(s.step),
            _ => None,
        }
    }
}

#[cfg(test)]
mod source_access_tests {
    use super::*;

    const ED: &str = "[h]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const RSA: &str = "[h]:2222 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ";

    fn pin(line: &str) -> Event {
        Event::SourceHostKeyPinned(SourceHostKeyPinned { known_host: line.into(), deployment_id: Uuid::nil() })
    }

    #[test]
    fn a_first_use_pins_once_and_a_change_replaces_the_keys() {
        let mut access = SourceAccess::default();
        access.apply(&pin(ED));
        access.apply(&pin(RSA));
        assert_eq!(access.known_hosts, [ED], "the second first use of the same host pins nothing");
        let given = SourceAccessChanged { known_hosts: Some(vec![RSA.into(), ED.into()]), ..Default::default() };
        access.apply(&Event::SourceAccessChanged(given));
        let trusted: Vec<&String> = trusted_for(&access.known_hosts, "[h]:2222").collect();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.iter().any(|line| same_host_key(line, &format!("{} {}", "[h]:2222", &ED[9..]))));
        assert_eq!(trusted_for(&access.known_hosts, "h").count(), 0, "another port is another host");
        assert!(!same_host_key(ED, RSA));
    }

    #[test]
    fn a_made_deploy_key_s_public_half_is_kept_with_its_key_and_goes_with_it() {
        let mut access = SourceAccess::default();
        let key = |public: Option<&str>| SourceAccessChanged {
            set: BTreeMap::from([("ssh_key".to_string(), "hmac-sha256:01".to_string())]),
            deploy_key: public.map(Into::into),
            ..Default::default()
        };
        access.apply(&Event::SourceAccessChanged(key(Some("ssh-ed25519 AAAA slipway:shop"))));
        assert_eq!(access.deploy_key.as_deref(), Some("ssh-ed25519 AAAA slipway:shop"));
        // Another change leaves it; a key given by hand has no public half here; removing the key drops it.
        access.apply(&Event::SourceAccessChanged(SourceAccessChanged { submodules: Some(true), ..Default::default() }));
        assert!(access.deploy_key.is_some());
        access.apply(&Event::SourceAccessChanged(key(None)));
        assert_eq!(access.deploy_key, None);
        access.apply(&Event::SourceAccessChanged(key(Some("ssh-ed25519 BBBB slipway:shop"))));
        let removed = SourceAccessChanged { removed: vec!["ssh_key".into()], ..Default::default() };
        access.apply(&Event::SourceAccessChanged(removed));
        assert_eq!(access.deploy_key, None);
    }
}
