//! Removing a deployment's containers: `remove_containers` for a rollback
//! (the failed deployment's containers go at once; the old release is never
//! touched) and `retire` for a release that no longer serves (drain, stop
//! with a short grace, remove).
//!
//! Both remove the containers the command names *and* every container
//! labelled with the deployment: a worker that crashed after creating a
//! container but before its outcome was recorded left one the engine never
//! heard of, and a release step interrupted mid-way leaves one-off
//! containers. Missing containers are fine, so both are idempotent.

use std::collections::BTreeSet;
use std::time::Duration;

use bollard::Docker;
use futures::future::join_all;
use slipway_proto::command::{RemoveContainers, RetireRelease};
use slipway_proto::event::ContainersRemoved;
use slipway_proto::{Event, Step};
use uuid::Uuid;

use super::docker::{self, Failure};

/// How long a retired container gets to exit on SIGTERM before SIGKILL.
/// Short, because requests in flight have had the drain to finish, and
/// because some PID 1s (busybox among them) ignore SIGTERM altogether.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Force-removes the named containers and the deployment's leftovers.
pub async fn remove_containers(command: &RemoveContainers) -> Event {
    match remove(command.deployment_id, &command.containers, None).await {
        Ok(containers) => Event::ContainersRemoved(ContainersRemoved { containers }),
        Err(failure) => failure.into_event(Step::Cleanup, 0),
    }
}

/// Waits `drain_seconds` (for requests in flight on the old upstreams), then
/// stops and removes the release's containers.
pub async fn retire(command: &RetireRelease) -> Event {
    tokio::time::sleep(Duration::from_secs(command.drain_seconds)).await;
    match remove(command.deployment_id, &command.containers, Some(STOP_GRACE)).await {
        Ok(containers) => Event::ContainersRemoved(ContainersRemoved { containers }),
        Err(failure) => failure.into_event(Step::Retire, 0),
    }
}

/// Removes every target, stopping each first with `grace` when given;
/// returns the targets' names (all gone now, whether they existed or not).
pub(crate) async fn remove(deployment_id: Uuid, named: &[String], grace: Option<Duration>) -> Result<Vec<String>, Failure> {
    let docker = docker::connect().await?;
    let targets = targets(&docker, deployment_id, named).await?;
    // Concurrently: N containers that ignore SIGTERM cost one grace, not N.
    let outcomes = join_all(targets.iter().map(|name| stop_and_remove(&docker, name, grace))).await;
    let errors: Vec<String> = outcomes.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(Failure::new(format!("{} of {} containers could not be removed", errors.len(), targets.len())).with_details(errors))
    }
}

/// The deployment's containers: every one labelled with it, and each named
/// one that no longer exists (nothing to do, reported as gone). A named
/// container that exists without the deployment's label is not touched:
/// a command forged on the queue cannot remove another deployment's
/// container, or anything else on the host, by naming it.
async fn targets(docker: &Docker, deployment_id: Uuid, named: &[String]) -> Result<Vec<String>, Failure> {
    let labelled = docker::deployment_containers(docker, deployment_id).await?;
    let mut all: BTreeSet<String> = labelled.iter().cloned().collect();
    for name in named.iter().filter(|n| !labelled.contains(n)) {
        match docker::find_container(docker, name).await? {
            None => {
                all.insert(name.clone());
            }
            Some(_) => {
                tracing::warn!(container = %name, %deployment_id, "not removing a container the deployment does not label as its own")
            }
        }
    }
    Ok(all.into_iter().collect())
}

async fn stop_and_remove(docker: &Docker, name: &str, grace: Option<Duration>) -> Result<(), String> {
    if let Some(grace) = grace {
        // A failed stop is no reason to keep the container: the forced removal kills it.
        if let Err(e) = docker::stop(docker, name, grace).await {
            tracing::warn!(error = %e, "stopping before removal failed");
        }
    }
    docker::remove_container(docker, name).await.map(|_| ()).map_err(|e| e.to_string())
}
