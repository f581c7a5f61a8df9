//! The Docker side of the host agent: what this host runs of Slipway's
//! (every slipway-labelled container, with its labels, state and published
//! port), the container events Docker reports for them, and the two
//! corrections the agent carries out (start again, remove). The agent's
//! loop and its decisions live elsewhere (`slipway_node::agent`,
//! `slipway_engine::reconcile`); bollard types stay in here.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerSummaryStateEnum, EventMessage};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::{Stream, StreamExt};
pub use slipway_proto::host::{ContainerState, HostContainer};

/// The Docker client the agent holds between calls.
pub use bollard::Docker;

use crate::steps::docker::{self, DockerError, LABEL_DEPLOYMENT, LABEL_ENVIRONMENT, LABEL_PROJECT, LABEL_ROLE};

/// When and how the agent runs (on every worker that serves the deploy step).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// How often it reconciles besides at start and after Docker came back.
    pub every: Duration,
    /// How long an environment must have been settled (no deployment
    /// finished) before containers of releases that should not run are
    /// removed: longer than a retirement's drain and stop.
    pub grace: Duration,
}

/// Reconcile every 30 s; strays go 2 minutes after the last deployment finished.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
pub const STRAY_GRACE: Duration = Duration::from_secs(120);

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions { every: RECONCILE_EVERY, grace: STRAY_GRACE }
    }
}

/// Every slipway-labelled container (running or not) on the engine behind `docker`.
/// A container whose deployment label is not a deployment id is not Slipway's doing: left out.
pub async fn containers(docker: &Docker) -> Result<Vec<HostContainer>, DockerError> {
    let filters = HashMap::from([("label", vec![LABEL_PROJECT.to_string()])]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| DockerError::Api { action: "list Slipway's containers".into(), reason: e.to_string() })?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
            let name = c.names?.into_iter().next()?.trim_start_matches('/').to_string();
            let host_port =
                c.ports.unwrap_or_default().into_iter().filter(|p| p.ip.as_deref() == Some("127.0.0.1")).find_map(|p| p.public_port);
            let state = match c.state {
                Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
                Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
                Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
                Some(ContainerSummaryStateEnum::EXITED) => ContainerState::Exited(exit_code(c.status.as_deref().unwrap_or(""))),
                other => ContainerState::Other(other.map(|s| s.to_string()).unwrap_or_default()),
            };
            Some(HostContainer {
                id: c.id?,
                name,
                project: label(LABEL_PROJECT),
                environment: label(LABEL_ENVIRONMENT),
                deployment: label(LABEL_DEPLOYMENT).parse().ok()?,
                role: label(LABEL_ROLE),
                state,
                host_port,
            })
        })
        .collect())
}

/// The code in Docker's status text `Exited (137) 5 seconds ago`; -1 if none.
pub fn exit_code(status: &str) -> i64 {
    status.split_once('(').and_then(|(_, rest)| rest.split_once(')')).and_then(|(code, _)| code.trim().parse().ok()).unwrap_or(-1)
}

/// Starts a stopped container again.
pub async fn start(docker: &Docker, name: &str) -> Result<(), DockerError> {
    docker::start(docker, name).await
}

/// Removes a container that should not run (killing it if it runs).
pub async fn remove(docker: &Docker, name: &str) -> Result<(), DockerError> {
    docker::remove_container(docker, name).await.map(|_| ())
}

/// Whether Docker is restarting the container after an exit (its restart
/// policy took it), or has already: asked right after the exit on a busy
/// host, the container may be running again before the question arrives.
/// `false` when it cannot say.
pub async fn restarting(docker: &Docker, name: &str) -> bool {
    match docker::find_container(docker, name).await {
        Ok(Some(info)) => info.state.is_some_and(|s| s.restarting == Some(true) || s.running == Some(true)),
        _ => false,
    }
}

/// What Docker reported about a slipway-labelled container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEvent {
    /// `die`, `oom`, `restart`, `start`, `health_status: unhealthy`, ...
    pub action: String,
    pub name: String,
    pub project: String,
    pub environment: String,
    pub deployment: String,
    pub role: String,
    /// `die`'s exit code.
    pub exit_code: Option<i64>,
    /// Unix time in nanoseconds.
    pub time_nano: i64,
}

/// Container events of slipway-labelled containers, from now on. The
/// stream ends (with an error) when the Docker daemon goes away.
pub fn events(docker: &Docker) -> impl Stream<Item = Result<HostEvent, DockerError>> + Send + 'static {
    let filters = HashMap::from([("type", vec!["container".to_string()]), ("label", vec![LABEL_PROJECT.to_string()])]);
    let options = EventsOptionsBuilder::default().filters(&filters).build();
    docker.events(Some(options)).filter_map(|item| async move {
        match item {
            Ok(message) => host_event(message).map(Ok),
            Err(e) => Some(Err(DockerError::Api { action: "follow container events".into(), reason: e.to_string() })),
        }
    })
}

fn host_event(message: EventMessage) -> Option<HostEvent> {
    let action = message.action?;
    let attributes = message.actor?.attributes.unwrap_or_default();
    let attribute = |key: &str| attributes.get(key).cloned().unwrap_or_default();
    Some(HostEvent {
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        name: attribute("name"),
        project: attribute(LABEL_PROJECT),
        environment: attribute(LABEL_ENVIRONMENT),
        deployment: attribute(LABEL_DEPLOYMENT),
        role: attribute(LABEL_ROLE),
        time_nano: message.time_nano.unwrap_or_else(|| message.time.unwrap_or(0) * 1_000_000_000),
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_the_status_text() {
        assert_eq!(exit_code("Exited (137) 5 seconds ago"), 137);
        assert_eq!(exit_code("Exited (0) About a minute ago"), 0);
        assert_eq!(exit_code("Created"), -1);
    }
}
