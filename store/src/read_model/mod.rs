//! Read models: tables of projects, environments (with the release serving
//! each) and deployments, folded from the events so that lists cost the same
//! however long the log grows. This module owns their rows, the changes a
//! fold produces, and the one way they are written: a batch of changes and
//! the `read-models` checkpoint in one transaction, only if the checkpoint
//! is still where the writer read from (several writers — the engine's
//! subscriber, a CLI or API read catching up — may race; the loser reads
//! again). What an event means for a row is decided in `slipway-engine`;
//! the tables are disposable and never a source of truth.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event_store::{Position, StoreError};

/// The checkpoint (consumer) of the read models' subscriber.
pub const READ_MODELS: &str = "read-models";

/// A row of `projects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub name: String,
    pub repository: String,
    pub mirror_of: Option<String>,
    pub default_branch: String,
    /// Sorted.
    pub environments: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A row of `environments`: the release serving it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRow {
    pub project: String,
    pub environment: String,
    pub serving: Option<Uuid>,
    pub serving_since: Option<DateTime<Utc>>,
}

/// A row of `deployments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRow {
    pub id: Uuid,
    pub project: String,
    pub environment: String,
    /// A `STATUSES` word.
    pub status: String,
    pub git_ref: String,
    pub commit: Option<String>,
    pub image: Option<String>,
    /// Who requested it (the first event's actor).
    pub actor: String,
    pub requested_at: DateTime<Utc>,
    /// When its verdict was recorded.
    pub finished_at: Option<DateTime<Utc>>,
    /// Where and why it failed (also while rolling back).
    pub failed_step: Option<String>,
    pub failed_reason: Option<String>,
    pub rollback_of: Option<Uuid>,
    pub promoted_from: Option<Uuid>,
    /// A dry run: nothing was started or routed.
    pub dry_run: bool,
    /// The deployment it replays (`slipway replay`).
    pub replay_of: Option<Uuid>,
}

/// One row change a fold produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace a project, and add its environments.
    Project(ProjectRow),
    /// Insert or replace a deployment.
    Deployment(DeploymentRow),
    /// A deployment now serves its environment.
    Serving { deployment: Uuid, since: DateTime<Utc> },
    /// An environment joined (a preview) or left its project.
    Environment { project: String, environment: String, added: bool },
    /// A project was removed (its environments left it first).
    ProjectRemoved { name: String },
}

/// Where a page of deployments starts: strictly older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Deployment(Uuid),
    Time(DateTime<Utc>),
}

impl std::str::FromStr for Before {
    type Err = String;

    /// A deployment id or an RFC 3339 time.
    fn from_str(raw: &str) -> Result<Self, String> {
        if let Ok(id) = Uuid::parse_str(raw) {
            return Ok(Before::Deployment(id));
        }
        DateTime::parse_from_rfc3339(raw)
            .map(|t| Before::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("`{raw}` is neither a deployment id nor an RFC 3339 time such as 2026-12-01T12:00:00Z"))
    }
}

/// The statuses a deployment row can have.
pub const STATUSES: [&str; 7] = ["awaiting approval", "queued", "running", "watching", "rolling back", "succeeded", "failed"];

/// A page of deployments, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentQuery {
    pub project: Option<String>,
    pub environment: Option<String>,
    pub status: Option<String>,
    /// Who requested it, exactly as recorded (`cli:ann`, `token:ci`, `webhook:github:ann`).
    pub actor: Option<String>,
    /// Requested at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub before: Option<Before>,
    pub limit: usize,
}

/// A `since` of a deployment list: an RFC 3339 time.
pub fn parse_since(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{raw}` is not an RFC 3339 time (2026-12-01T09:00:00Z): {e}"))
}

/// The read models' side of a store.
#[async_trait]
pub trait ReadModelStore: Send + Sync {
    /// Writes `changes` and moves the checkpoint from `from` to `to`, in one
    /// transaction; false (nothing written) when the checkpoint is no
    /// longer at `from` (another writer got there first).
    async fn apply(&self, from: Position, to: Position, changes: &[Change]) -> Result<bool, StoreError>;

    /// Empties every read model and moves the checkpoint to the start.
    async fn reset(&self) -> Result<(), StoreError>;

    /// How far into the log the read models are.
    async fn position(&self) -> Result<Position, StoreError>;

    /// Projects by name, after `after`, at most `limit`.
    async fn projects(&self, after: Option<&str>, limit: usize) -> Result<Vec<ProjectRow>, StoreError>;

    /// Every environment, by project then name.
    async fn environments(&self) -> Result<Vec<EnvironmentRow>, StoreError>;

    /// A page of deployments, newest first (by request time, then id).
    async fn deployments(&self, query: &DeploymentQuery) -> Result<Vec<DeploymentRow>, StoreError>;
}

/// Every read-model table: what a reset empties.
pub(crate) const TABLES: [&str; 3] = ["projects", "environments", "deployments"];

/// The equality filters of a deployment page (project, environment,
/// status), as both dialects write them after a `WHERE` clause.
pub(crate) fn push_filters<'a, DB: sqlx::Database>(sql: &mut sqlx::QueryBuilder<'a, DB>, q: &DeploymentQuery)
where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    for (column, value) in [("project", &q.project), ("environment", &q.environment), ("status", &q.status), ("actor", &q.actor)] {
        if let Some(value) = value {
            sql.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
}

/// The changes of one batch as they are written: the last state of each
/// project and deployment (a batch may change one many times), then the
/// serving releases in order (they find their environment through the
/// deployment's row, so deployments go first).
pub(crate) struct Collapsed<'a> {
    pub projects: Vec<&'a ProjectRow>,
    pub deployments: Vec<&'a DeploymentRow>,
    pub serving: Vec<(Uuid, DateTime<Utc>)>,
    /// Environments added (`true`) or removed, in order, after the projects.
    pub environments: Vec<(&'a str, &'a str, bool)>,
    /// Projects removed, after the environments.
    pub removed: Vec<&'a str>,
}

/// A project row's environment list (JSON, sorted) with `environment`
/// added or removed.
pub(crate) fn with_environment(list: &str, environment: &str, added: bool) -> String {
    let mut environments: Vec<String> = serde_json::from_str(list).unwrap_or_default();
    environments.retain(|e| e != environment);
    if added {
        environments.push(environment.to_string());
        environments.sort();
    }
    serde_json::to_string(&environments).unwrap_or_default()
}

pub(crate) fn collapse(changes: &[Change]) -> Collapsed<'_> {
    use std::collections::HashMap;
    let (mut projects, mut deployments) = (HashMap::new(), HashMap::new());
    let mut serving = Vec::new();
    let mut environments = Vec::new();
    let mut removed = Vec::new();
    for (n, change) in changes.iter().enumerate() {
        match change {
            Change::Project(p) => {
                projects.insert(p.name.as_str(), (n, p));
            }
            Change::Deployment(d) => {
                deployments.insert(d.id, (n, d));
            }
            Change::Serving { deployment, since } => serving.push((*deployment, *since)),
            Change::Environment { project, environment, added } => environments.push((project.as_str(), environment.as_str(), *added)),
            Change::ProjectRemoved { name } => removed.push(name.as_str()),
        }
    }
    let mut projects: Vec<_> = projects.into_values().collect();
    projects.sort_unstable_by_key(|(n, _)| *n);
    let mut deployments: Vec<_> = deployments.into_values().collect();
    deployments.sort_unstable_by_key(|(n, _)| *n);
    Collapsed {
        projects: projects.into_iter().map(|(_, p)| p).collect(),
        deployments: deployments.into_iter().map(|(_, d)| d).collect(),
        serving,
        environments,
        removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: Uuid, status: &str) -> DeploymentRow {
        DeploymentRow {
            id,
            project: "p".into(),
            environment: "test".into(),
            status: status.into(),
            git_ref: "main".into(),
            commit: None,
            image: None,
            actor: "cli:me".into(),
            requested_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            finished_at: None,
            failed_step: None,
            failed_reason: None,
            rollback_of: None,
            promoted_from: None,
            dry_run: false,
            replay_of: None,
        }
    }

    #[test]
    fn a_batch_writes_each_row_once_in_its_last_state() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let since = DateTime::from_timestamp(1_800_000_100, 0).unwrap_or_default();
        let changes = vec![
            Change::Deployment(deployment(a, "running")),
            Change::Deployment(deployment(b, "running")),
            Change::Deployment(deployment(a, "succeeded")),
            Change::Serving { deployment: a, since },
        ];
        let c = collapse(&changes);
        let ids: Vec<(Uuid, &str)> = c.deployments.iter().map(|d| (d.id, d.status.as_str())).collect();
        assert_eq!(ids, vec![(b, "running"), (a, "succeeded")]);
        assert_eq!(c.serving, vec![(a, since)]);
    }
}
