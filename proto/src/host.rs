//! What a Docker host runs of Slipway's, as data: the host agent's
//! observation (workers list it from Docker) and the reconciler's input
//! (the engine compares it with what is recorded). One type for both, so
//! the two sides cannot drift apart.

use uuid::Uuid;

/// What Docker says a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    Restarting,
    /// Created and never started.
    Created,
    Exited(i64),
    /// Paused, being removed, dead: left alone.
    Other(String),
}

/// A slipway-labelled container on a Docker host, from its labels and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostContainer {
    /// Docker's id of this container instance (a container removed and
    /// created again under the same name has another).
    pub id: String,
    pub name: String,
    pub project: String,
    pub environment: String,
    pub deployment: Uuid,
    /// `web`, `release-N`, or `<process>-<replica>`.
    pub role: String,
    pub state: ContainerState,
    /// The 127.0.0.1 host port it publishes, while it runs.
    pub host_port: Option<u16>,
}
