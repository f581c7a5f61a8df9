//! The Docker edge the container steps share: connecting (with the API
//! version negotiated down to the engine's), the deterministic names and
//! labels that make every step idempotent, the container look-ups the steps
//! have in common (find by name, published port, last log lines, removal),
//! how every container is configured (limits, restart policy, log rotation),
//! how a crash is told (`Crash`), and the `Failure` every step reports as
//! `StepFailed`.
//!
//! Names derive from the deployment id and the container's role, so a
//! redelivered command finds what its first delivery created instead of
//! creating a second one; labels let cleanup find what a crashed worker
//! created but never reported.
//!
//! A `Docker` handle is created per step, not shared process-wide: bollard
//! keeps no idle connections on a unix socket (each request opens its own),
//! so sharing would save only the one `/version` round trip of negotiation
//! (about a millisecond), and a per-step handle needs no global state and
//! notices a restarted engine with no special casing.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::Limits;
use slipway_proto::event::StepFailed;
use slipway_proto::{Event, Step};
use uuid::Uuid;

use super::Settings;

pub const LABEL_PROJECT: &str = "slipway.project";
pub const LABEL_ENVIRONMENT: &str = "slipway.environment";
pub const LABEL_DEPLOYMENT: &str = "slipway.deployment";
pub const LABEL_ROLE: &str = "slipway.role";

/// How many log lines a failure carries as evidence.
pub const LOG_TAIL: usize = 20;

/// Log rotation of every container a step creates (Docker's `json-file`
/// driver): at most `LOG_FILES` files of `LOG_MAX_SIZE`, so a chatty app
/// keeps about 30 MB of recent output and never fills the disk. Docker's
/// default is unbounded. `docker logs` (and the failure evidence read from
/// it) still sees the newest lines.
pub const LOG_DRIVER: &str = "json-file";
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_FILES: &str = "3";

/// The engine's socket when `DOCKER_HOST` names no unix socket (bollard's default too).
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// bollard's own default request timeout; it bounds the response headers,
/// not a streamed body (a build log, a container's logs).
const REQUEST_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    #[error("Docker engine not reachable at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("Docker could not {action}: {reason}")]
    Api { action: String, reason: String },
}

impl DockerError {
    fn api(action: impl Into<String>, e: BollardError) -> DockerError {
        DockerError::Api { action: action.into(), reason: e.to_string() }
    }
}

/// The unix socket `connect` uses: `DOCKER_HOST` when it is a `unix://`
/// address (as bollard reads it), else `/var/run/docker.sock`.
pub fn socket_path() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host.trim_start_matches("unix://").to_string(),
        _ => DEFAULT_SOCKET.to_string(),
    }
}

/// Connects to the local engine and negotiates the API version down to the
/// engine's (bollard 0.21 speaks 1.53 by default; Debian's Docker 20.10 speaks 1.41).
pub async fn connect() -> Result<Docker, DockerError> {
    let socket = socket_path();
    let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(&socket, e))?;
    negotiate(docker, &socket).await
}

/// `connect`, to the engine at an explicit unix socket path.
pub async fn connect_at(socket: &str) -> Result<Docker, DockerError> {
    let docker =
        Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION).map_err(|e| unreachable(socket, e))?;
    negotiate(docker, socket).await
}

async fn negotiate(docker: Docker, socket: &str) -> Result<Docker, DockerError> {
    docker.negotiate_version().await.map_err(|e| unreachable(socket, e))
}

fn unreachable(socket: &str, e: BollardError) -> DockerError {
    DockerError::Unreachable { socket: socket.to_string(), reason: e.to_string() }
}

/// What a container does for its deployment; part of its name and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Web,
    /// The one-off container of `release.commands[i]` (0-based, as in the config).
    Release(usize),
    /// Replica `replica` (1-based, as `docker compose` counts) of a process type.
    Process {
        name: String,
        replica: u32,
    },
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Web => f.write_str("web"),
            Role::Release(i) => write!(f, "release-{i}"),
            Role::Process { name, replica } => write!(f, "{name}-{replica}"),
        }
    }
}

/// `slipway-<project>-<environment>-<deployment id, 32 hex>-<role>`.
pub fn container_name(ctx: &DeploymentContext, role: &Role) -> String {
    format!("slipway-{}-{}-{}-{role}", ctx.project, ctx.environment, ctx.deployment_id.simple())
}

/// `slipway/<project>:<first 12 of the commit>-<deployment id, 32 hex>`, or
/// why not (no commit recorded yet).
pub fn image_tag(ctx: &DeploymentContext) -> Result<String, String> {
    let commit = ctx.commit.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        format!("deployment {} has no checked-out commit; the checkout step must run before the build", ctx.deployment_id)
    })?;
    let short: String = commit.chars().take(12).collect();
    Ok(format!("slipway/{}:{short}-{}", ctx.project, ctx.deployment_id.simple()))
}

/// The labels every container and image of a deployment carries.
pub fn labels(ctx: &DeploymentContext, role: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_PROJECT.to_string(), ctx.project.clone()),
        (LABEL_ENVIRONMENT.to_string(), ctx.environment.clone()),
        (LABEL_DEPLOYMENT.to_string(), ctx.deployment_id.to_string()),
        (LABEL_ROLE.to_string(), role.to_string()),
    ])
}

/// Why a step failed, with evidence; becomes `StepFailed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub details: Vec<String>,
}

impl Failure {
    pub fn new(reason: impl Into<String>) -> Failure {
        Failure { reason: reason.into(), details: Vec::new() }
    }

    pub fn with_details(mut self, details: Vec<String>) -> Failure {
        self.details = details;
        self
    }

    pub fn into_event(self, step: Step, attempt: u32) -> Event {
        Event::StepFailed(StepFailed { step, reason: self.reason, attempt, details: self.details, evidence: None })
    }

    /// The `StepFailed` of a `RunStep`.
    pub fn for_command(self, command: &RunStep) -> Event {
        self.into_event(command.step, command.attempt)
    }
}

impl From<DockerError> for Failure {
    fn from(e: DockerError) -> Failure {
        Failure::new(e.to_string())
    }
}

/// What a container is doing, reduced to what the steps decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Exited(i64),
    /// Paused, restarting, being removed: the engine's word for it.
    Other(String),
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunState::Created => f.write_str("created"),
            RunState::Running => f.write_str("running"),
            RunState::Exited(code) => write!(f, "exited with code {code}"),
            RunState::Other(status) => f.write_str(status),
        }
    }
}

pub fn run_state(info: &ContainerInspectResponse) -> RunState {
    let Some(state) = &info.state else { return RunState::Other("unknown".into()) };
    match state.status {
        Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => RunState::Exited(state.exit_code.unwrap_or(-1)),
        Some(other) => RunState::Other(other.to_string()),
        None => RunState::Other("unknown".into()),
    }
}

/// What went wrong with a container that should keep running: it exited,
/// or Docker restarted it (with `unless-stopped` a crash shows as a restart,
/// and a restarted container's state no longer says how it ended).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crash {
    /// The last exit code, when known (from the state, or Docker's `die` event).
    pub exit_code: Option<i64>,
    /// The kernel's OOM killer struck inside the container.
    pub oom: bool,
    /// How often Docker restarted it.
    pub restarts: i64,
}

impl Crash {
    /// "was OOM-killed (it went over its memory limit), exited with code 137
    /// (SIGKILL), was restarted 2 times by Docker": what a user checks first
    /// (memory, then the code and signal), then how often it happened.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.oom {
            parts.push("was OOM-killed (it went over its memory limit)".to_string());
        }
        match self.exit_code {
            Some(code) => {
                let signal = signal_of(code).map(|s| format!(" ({s})")).unwrap_or_default();
                parts.push(format!("exited with code {code}{signal}"));
            }
            None if !self.oom => parts.push("exited".to_string()),
            None => {}
        }
        match self.restarts {
            0 => {}
            1 => parts.push("was restarted by Docker".to_string()),
            n => parts.push(format!("was restarted {n} times by Docker")),
        }
        parts.join(", ")
    }
}

/// The signal that ended a process, from its exit code: a shell (and Docker)
/// reports death by signal N as 128 + N.
pub fn signal_of(exit_code: i64) -> Option<&'static str> {
    let name = match exit_code.checked_sub(128)? {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    };
    Some(name)
}

/// The crash an inspection shows, if any: exited, dead, restarting, or
/// restarted since its start (Docker's restart count starts at 0 with each
/// start a step makes, so any restart is a crash).
pub fn crash_in(info: &ContainerInspectResponse) -> Option<Crash> {
    let restarts = info.restart_count.unwrap_or(0);
    let state = info.state.as_ref()?;
    let down =
        state.restarting == Some(true) || matches!(state.status, Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD));
    if !down && restarts == 0 {
        return None;
    }
    // A running container's exit code is reset to 0 by its restart: only a
    // container that is down still tells how it ended.
    let exit_code = if down { state.exit_code } else { None };
    Some(Crash { exit_code, oom: down && state.oom_killed == Some(true), restarts })
}

/// `crash` completed from Docker's record of the container's `die` and
/// `oom` events since it was created (the daemon keeps recent events), for
/// when a restart has already wiped the state. Best effort: without events
/// the inspection's account stands.
pub async fn crash_evidence(docker: &Docker, info: &ContainerInspectResponse, mut crash: Crash) -> Crash {
    let (Some(id), Some(created)) = (info.id.as_deref(), info.created.as_deref()) else { return crash };
    let Ok(created) = chrono::DateTime::parse_from_rfc3339(created) else { return crash };
    let since = created.timestamp().to_string();
    let until = (chrono::Utc::now().timestamp() + 1).to_string();
    let filters = HashMap::from([("container", vec![id]), ("type", vec!["container"]), ("event", vec!["die", "oom"])]);
    let options = EventsOptionsBuilder::new().since(&since).until(&until).filters(&filters).build();
    let mut events = docker.events(Some(options));
    let read = async {
        while let Some(Ok(event)) = events.next().await {
            match event.action.as_deref() {
                Some("oom") => crash.oom = true,
                Some("die") => {
                    let code = event.actor.and_then(|a| a.attributes).and_then(|a| a.get("exitCode")?.parse().ok());
                    crash.exit_code = code.or(crash.exit_code);
                }
                _ => {}
            }
        }
    };
    // `until` ends the stream; the bound only guards against a daemon that never closes it.
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    crash
}

/// How long the container ran, from the engine's own timestamps (so a
/// redelivery that finds an exited container reports the real duration).
pub fn run_duration(info: &ContainerInspectResponse) -> Option<Duration> {
    let state = info.state.as_ref()?;
    let started = chrono::DateTime::parse_from_rfc3339(state.started_at.as_deref()?).ok()?;
    let finished = chrono::DateTime::parse_from_rfc3339(state.finished_at.as_deref()?).ok()?;
    (finished - started).to_std().ok()
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// Inspects the container called `name`; `None` when there is none.
/// The deployment's image, made present on this host: by id if Docker has
/// it, else pulled by its registry digest (a build on another host). `why`
/// names the step for the error.
pub async fn local_image<'a>(docker: &Docker, ctx: &'a DeploymentContext, why: &str) -> Result<&'a str, Failure> {
    let image = ctx
        .image_id
        .as_deref()
        .ok_or_else(|| Failure::new(format!("no image recorded for this deployment; the build step must run before {why}")))?;
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(image),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => return Err(Failure::new(format!("Docker could not inspect image {image}: {e}"))),
    }
    let Some(reference) = &ctx.image_ref else {
        return Err(Failure::new(format!(
            "image {image} is not on this host and was not pushed to a registry; configure --registry on every worker, or run the build and {why} on one Docker engine"
        )));
    };
    let options = bollard::query_parameters::CreateImageOptionsBuilder::new().from_image(reference).build();
    let mut pull = docker.create_image(Some(options), None, None);
    while let Some(item) = futures::StreamExt::next(&mut pull).await {
        let info = item.map_err(|e| Failure::new(format!("pulling {reference}: {e}")))?;
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(Failure::new(format!("pulling {reference}: {error}")));
        }
    }
    Ok(image)
}

pub async fn find_container(docker: &Docker, name: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
    match docker.inspect_container(name, None).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(DockerError::api(format!("inspect container {name}"), e)),
    }
}

/// Inspects a container that must exist.
pub async fn inspect(docker: &Docker, name: &str) -> Result<ContainerInspectResponse, DockerError> {
    find_container(docker, name)
        .await?
        .ok_or_else(|| DockerError::Api { action: format!("find container {name}"), reason: "it does not exist".into() })
}

/// What a step's container runs. The name is its identity: whatever exists
/// under that name is taken as the container this spec describes.
#[derive(Debug, Clone)]
pub struct ContainerSpec<'a> {
    pub name: String,
    pub image: &'a str,
    /// `None` runs the image's own command.
    pub cmd: Option<Vec<String>>,
    pub env: &'a Settings,
    pub labels: HashMap<String, String>,
    /// A container port to publish on 127.0.0.1 at an ephemeral host port.
    pub publish: Option<u16>,
    /// Memory, CPU and process limits from `slipway.toml`.
    pub limits: Limits,
    /// Whether the container is kept running (`Serving`) or runs once (`OneOff`).
    pub lifetime: Lifetime,
}

/// How long a container is meant to run, which decides its restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// A web or process container: Docker restarts it after a crash and
    /// after the daemon itself restarts (`unless-stopped`), until a step
    /// stops it. Supervision comes from Docker plus Slipway's watchers: the
    /// health check counts restarts, so a crash-looping container never
    /// passes it, and a restart after the switch is reported, not hidden.
    Serving,
    /// A release command: it runs to its exit code once (`no`); running a
    /// migration again because it failed would hide the failure.
    OneOff,
}

/// Creates the container unless one of that name exists, and inspects it.
/// A create that loses a race with a concurrent delivery (409) is fine.
pub async fn ensure_container(docker: &Docker, spec: &ContainerSpec<'_>) -> Result<ContainerInspectResponse, DockerError> {
    if let Some(info) = find_container(docker, &spec.name).await? {
        return Ok(info);
    }
    let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
    match docker.create_container(Some(options), create_body(spec)).await {
        Ok(_) => inspect(docker, &spec.name).await,
        // Another delivery of the same command (several relays, a
        // redelivery) is creating it: the name is taken before the
        // container can be inspected, so wait for it to appear.
        Err(e) if is_status(&e, 409) => {
            for _ in 0..50 {
                if let Some(info) = find_container(docker, &spec.name).await? {
                    return Ok(info);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            inspect(docker, &spec.name).await
        }
        Err(e) => Err(DockerError::api(format!("create container {} from image {}", spec.name, spec.image), e)),
    }
}

fn create_body(spec: &ContainerSpec<'_>) -> ContainerCreateBody {
    let port_key = spec.publish.map(|p| format!("{p}/tcp"));
    let port_bindings = port_key.as_ref().map(|key| {
        // Host port "0": the engine picks a free one; read back by `published_port`.
        let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some("0".into()) };
        HashMap::from([(key.clone(), Some(vec![binding]))])
    });
    ContainerCreateBody {
        image: Some(spec.image.to_string()),
        cmd: spec.cmd.clone(),
        // Source credentials ride in the settings to the source steps;
        // an app never gets them.
        env: Some(spec.env.iter().filter(|(k, _)| !super::git_remote::is_source_key(k)).map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone()),
        exposed_ports: port_key.map(|key| vec![key]),
        host_config: Some(host_config(spec.limits, spec.lifetime, port_bindings)),
        ..Default::default()
    }
}

type PortBindings = HashMap<String, Option<Vec<PortBinding>>>;

/// Limits, restart policy and log rotation, as Docker takes them.
fn host_config(limits: Limits, lifetime: Lifetime, port_bindings: Option<PortBindings>) -> HostConfig {
    let memory = limits.memory.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX));
    let restart = match lifetime {
        Lifetime::Serving => RestartPolicyNameEnum::UNLESS_STOPPED,
        Lifetime::OneOff => RestartPolicyNameEnum::NO,
    };
    HostConfig {
        port_bindings,
        memory,
        // Swap equal to memory: the container cannot swap past its limit, so
        // exceeding it is an OOM kill, not a slow crawl through swap.
        memory_swap: memory,
        nano_cpus: limits.cpus.map(|c| c.nano()),
        pids_limit: limits.pids.map(i64::from),
        restart_policy: Some(RestartPolicy { name: Some(restart), maximum_retry_count: None }),
        log_config: Some(HostConfigLogConfig {
            typ: Some(LOG_DRIVER.into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), LOG_FILES.to_string()),
            ])),
        }),
        ..Default::default()
    }
}

/// Starts a created or stopped container (starting a running one is a no-op).
pub async fn start(docker: &Docker, name: &str) -> Result<(), DockerError> {
    docker.start_container(name, None).await.map_err(|e| DockerError::api(format!("start container {name}"), e))
}

/// The 127.0.0.1 host port published for `container_port`, once the
/// container runs (an ephemeral port is assigned at start).
pub fn published_port(info: &ContainerInspectResponse, container_port: u16) -> Option<u16> {
    let ports = info.network_settings.as_ref()?.ports.as_ref()?;
    let bindings = ports.get(&format!("{container_port}/tcp"))?.as_ref()?;
    bindings.iter().filter(|b| b.host_ip.as_deref() == Some("127.0.0.1")).find_map(|b| b.host_port.as_deref()?.parse().ok())
}

/// The container's whole log (stdout and stderr, interleaved as written).
pub async fn logs(docker: &Docker, name: &str, tail: Option<usize>) -> Result<String, DockerError> {
    read_logs(docker, name, tail).await.map_err(|e| DockerError::api(format!("read the logs of container {name}"), e))
}

/// A container's whole log, or `None` when the container is gone or being
/// removed (404, 409): a concurrent delivery of the same command ran it to
/// the end and is taking it away, and that delivery's log is the one kept.
pub async fn logs_if_present(docker: &Docker, name: &str) -> Result<Option<String>, DockerError> {
    match read_logs(docker, name, None).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(None),
        Err(e) => Err(DockerError::api(format!("read the logs of container {name}"), e)),
    }
}

async fn read_logs(docker: &Docker, name: &str, tail: Option<usize>) -> Result<String, BollardError> {
    let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
    let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&tail).build();
    let mut stream = docker.logs(name, Some(options));
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(chunk?.as_ref());
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The last `LOG_TAIL` lines of a container's log, as failure evidence. Never
/// fails: if the log cannot be read, the one line says why.
pub async fn last_log_lines(docker: &Docker, name: &str) -> Vec<String> {
    match logs(docker, name, Some(LOG_TAIL)).await {
        Ok(text) => tail_lines(&text, LOG_TAIL),
        Err(e) => vec![format!("(no log: {e})")],
    }
}

/// The last `n` non-empty lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

/// Stops a container: SIGTERM, then SIGKILL after `grace` (busybox as PID 1
/// ignores SIGTERM, so the grace is what bounds a stop). Stopped or missing
/// containers are fine.
pub async fn stop(docker: &Docker, name: &str, grace: Duration) -> Result<(), DockerError> {
    let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    let options = StopContainerOptionsBuilder::new().t(seconds).build();
    match docker.stop_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(DockerError::api(format!("stop container {name}"), e)),
    }
}

/// Kills a running container at once (SIGKILL). Not running or missing is fine.
pub async fn kill(docker: &Docker, name: &str) -> Result<(), DockerError> {
    let options = KillContainerOptionsBuilder::new().signal("KILL").build();
    match docker.kill_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        // 409: the container is not running (any more).
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(DockerError::api(format!("kill container {name}"), e)),
    }
}

/// Force-removes a container (killing it if it runs) with its anonymous
/// volumes. `false` when there was none.
/// Removes an image no container uses (Docker refuses otherwise); false if
/// it was already gone.
pub async fn remove_image(docker: &Docker, image: &str) -> Result<bool, DockerError> {
    match docker.remove_image(image, None::<bollard::query_parameters::RemoveImageOptions>, None).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(DockerError::api(format!("remove image {image}"), e)),
    }
}

pub async fn remove_container(docker: &Docker, name: &str) -> Result<bool, DockerError> {
    let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        // 409 "removal already in progress": a concurrent delivery is removing it.
        Err(e) if is_status(&e, 409) => Ok(true),
        Err(e) => Err(DockerError::api(format!("remove container {name}"), e)),
    }
}

/// Every container (running or not) labelled with this deployment, by name.
pub async fn deployment_containers(docker: &Docker, deployment_id: Uuid) -> Result<Vec<String>, DockerError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_DEPLOYMENT}={deployment_id}")])]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| DockerError::api(format!("list the containers of deployment {deployment_id}"), e))?;
    let mut names: Vec<String> =
        list.into_iter().filter_map(|c| c.names?.into_iter().next()).map(|n| n.trim_start_matches('/').to_string()).collect();
    names.sort();
    Ok(names)
}

/// Delays for polling: start small so a fast outcome is seen quickly, grow
/// ×1.5 up to `max` so a slow one does not cost a busy loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.mul_f64(1.5).min(self.max);
        delay
    }
}

/// A duration as people write it in `slipway.toml`: "2s", "1500ms".
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> DeploymentContext {
        serde_json::from_value(serde_json::json!({
            "deployment_id": "0190a3c1-0000-7000-8000-0000000000ab",
            "project": "shop", "environment": "live", "repository": "r", "git_ref": "main",
            "commit": "0123456789abcdef0123456789abcdef01234567",
        }))
        .expect("a valid context")
    }

    #[test]
    fn names_and_tags_derive_from_the_deployment() {
        let c = ctx();
        let id = "0190a3c10000700080000000000000ab";
        assert_eq!(container_name(&c, &Role::Web), format!("slipway-shop-live-{id}-web"));
        assert_eq!(container_name(&c, &Role::Release(2)), format!("slipway-shop-live-{id}-release-2"));
        let worker = Role::Process { name: "worker".into(), replica: 1 };
        assert_eq!(container_name(&c, &worker), format!("slipway-shop-live-{id}-worker-1"));
        assert_eq!(image_tag(&c), Ok(format!("slipway/shop:0123456789ab-{id}")));
        assert!(image_tag(&DeploymentContext { commit: None, ..c }).expect_err("no commit").contains("checkout"));
    }

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail_lines("a\n\nb\nc\n", 2), vec!["b", "c"]);
        assert_eq!(tail_lines("", 5), Vec::<String>::new());
    }

    #[test]
    fn a_crash_names_its_code_signal_oom_and_restarts() {
        assert_eq!(signal_of(137), Some("SIGKILL"));
        assert_eq!(signal_of(143), Some("SIGTERM"));
        assert_eq!(signal_of(3), None);
        assert_eq!(signal_of(128), None);
        let exited = Crash { exit_code: Some(3), ..Crash::default() };
        assert_eq!(exited.describe(), "exited with code 3");
        let oom = Crash { exit_code: Some(137), oom: true, restarts: 2 };
        assert_eq!(
            oom.describe(),
            "was OOM-killed (it went over its memory limit), exited with code 137 (SIGKILL), was restarted 2 times by Docker"
        );
        assert_eq!(Crash { restarts: 1, ..Crash::default() }.describe(), "exited, was restarted by Docker");
    }

    #[test]
    fn an_inspection_shows_a_crash_by_state_or_restart_count() {
        let info = |status: &str, restarting: bool, code: i64, oom: bool, restarts: i64| -> ContainerInspectResponse {
            serde_json::from_value(serde_json::json!({
                "RestartCount": restarts,
                "State": { "Status": status, "Restarting": restarting, "ExitCode": code, "OOMKilled": oom },
            }))
            .expect("an inspection")
        };
        assert_eq!(crash_in(&info("running", false, 0, false, 0)), None);
        let restarting = crash_in(&info("restarting", true, 137, true, 1)).expect("a crash");
        assert_eq!(restarting, Crash { exit_code: Some(137), oom: true, restarts: 1 });
        // Running again after a restart: its state no longer says how it ended.
        let again = crash_in(&info("running", false, 0, false, 3)).expect("a crash");
        assert_eq!(again, Crash { exit_code: None, oom: false, restarts: 3 });
        assert_eq!(crash_in(&info("exited", false, 7, false, 0)).and_then(|c| c.exit_code), Some(7));
    }

    #[test]
    fn serving_containers_restart_and_every_container_has_bounded_logs() {
        let limits = Limits {
            memory: Some(slipway_proto::config::Memory(256 << 20)),
            cpus: Some(slipway_proto::config::Cpus(500)),
            pids: Some(100),
        };
        let web = host_config(limits, Lifetime::Serving, None);
        assert_eq!((web.memory, web.memory_swap), (Some(256 << 20), Some(256 << 20)));
        assert_eq!((web.nano_cpus, web.pids_limit), (Some(500_000_000), Some(100)));
        assert_eq!(web.restart_policy.and_then(|r| r.name), Some(RestartPolicyNameEnum::UNLESS_STOPPED));
        let log = web.log_config.expect("a log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.expect("options")["max-size"], "10m");
        let one_off = host_config(Limits::default(), Lifetime::OneOff, None);
        assert_eq!(one_off.restart_policy.and_then(|r| r.name), Some(RestartPolicyNameEnum::NO));
        assert_eq!((one_off.memory, one_off.nano_cpus, one_off.pids_limit), (None, None, None));
    }

    #[test]
    fn durations_read_as_in_the_config() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(40));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![20, 30, 40, 40]);
    }
}
