//! The read models on PostgreSQL: a batch is a few array statements (one per
//! table) inside the transaction that holds the checkpoint row locked, so
//! racing writers take turns and the loser writes nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{
    collapse, push_filters, with_environment, Before, Change, DeploymentQuery, DeploymentRow, EnvironmentRow, ProjectRow, ReadModelStore,
    READ_MODELS, TABLES,
};
use crate::event_store::{Position, StoreError};
use crate::postgres::PgStore;

fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    crate::dialect::db::<Postgres>(context)
}

const UPSERT_PROJECTS: &str = "INSERT INTO projects (name, repository, mirror_of, default_branch, environments, created_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
     ON CONFLICT (name) DO UPDATE SET repository = EXCLUDED.repository, mirror_of = EXCLUDED.mirror_of,
         default_branch = EXCLUDED.default_branch, environments = EXCLUDED.environments, created_at = EXCLUDED.created_at";

const INSERT_ENVIRONMENTS: &str = "INSERT INTO environments (project, environment)
     SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING";

const UPSERT_DEPLOYMENTS: &str = "INSERT INTO deployments (id, project, environment, status, git_ref, commit_id, image, actor,
         requested_at, finished_at, failed_step, failed_reason, rollback_of, promoted_from, dry_run, replay_of)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
         $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::uuid[], $14::uuid[], $15::boolean[], $16::uuid[])
     ON CONFLICT (id) DO UPDATE SET project = EXCLUDED.project, environment = EXCLUDED.environment, status = EXCLUDED.status,
         git_ref = EXCLUDED.git_ref, commit_id = EXCLUDED.commit_id, image = EXCLUDED.image, actor = EXCLUDED.actor,
         requested_at = EXCLUDED.requested_at, finished_at = EXCLUDED.finished_at, failed_step = EXCLUDED.failed_step,
         failed_reason = EXCLUDED.failed_reason, rollback_of = EXCLUDED.rollback_of, promoted_from = EXCLUDED.promoted_from,
         dry_run = EXCLUDED.dry_run, replay_of = EXCLUDED.replay_of";

const SERVING: &str = "UPDATE environments e SET serving = $1, serving_since = $2
     FROM deployments d WHERE d.id = $1 AND e.project = d.project AND e.environment = d.environment";

const DEPLOYMENT_COLUMNS: &str = "id, project, environment, status, git_ref, commit_id, image, actor, requested_at, finished_at,
     failed_step, failed_reason, rollback_of, promoted_from, dry_run, replay_of";

#[async_trait]
impl ReadModelStore for PgStore {
    async fn apply(&self, from: Position, to: Position, changes: &[Change]) -> Result<bool, StoreError> {
        // On the write connections: these statements are planned once.
        let mut tx = self.writes().begin().await.map_err(db("writing the read models"))?;
        sqlx::query("INSERT INTO checkpoints (consumer, tx, position) VALUES ($1, '0', 0) ON CONFLICT DO NOTHING")
            .bind(READ_MODELS)
            .execute(&mut *tx)
            .await
            .map_err(db("writing the read models' checkpoint"))?;
        let (at_tx, at_seq): (String, i64) = sqlx::query_as("SELECT tx::text, position FROM checkpoints WHERE consumer = $1 FOR UPDATE")
            .bind(READ_MODELS)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("locking the read models' checkpoint"))?;
        if (Position { tx: at_tx.parse().unwrap_or(0), seq: at_seq }) != from {
            return Ok(false);
        }
        let c = collapse(changes);
        if !c.projects.is_empty() {
            let p = &c.projects;
            sqlx::query(UPSERT_PROJECTS)
                .bind(p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
                .bind(p.iter().map(|p| p.repository.as_str()).collect::<Vec<_>>())
                .bind(p.iter().map(|p| p.mirror_of.as_deref()).collect::<Vec<_>>())
                .bind(p.iter().map(|p| p.default_branch.as_str()).collect::<Vec<_>>())
                .bind(p.iter().map(|p| serde_json::to_string(&p.environments).unwrap_or_default()).collect::<Vec<_>>())
                .bind(p.iter().map(|p| p.created_at).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(db("writing projects"))?;
            let envs: Vec<(&str, &str)> = p.iter().flat_map(|p| p.environments.iter().map(|e| (p.name.as_str(), e.as_str()))).collect();
            sqlx::query(INSERT_ENVIRONMENTS)
                .bind(envs.iter().map(|e| e.0).collect::<Vec<_>>())
                .bind(envs.iter().map(|e| e.1).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(db("writing environments"))?;
        }
        for (project, environment, added) in c.environments {
            let list: Option<String> = sqlx::query_scalar("SELECT environments FROM projects WHERE name = $1 FOR UPDATE")
                .bind(project)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading a project's environments"))?;
            let Some(list) = list else { continue };
            sqlx::query("UPDATE projects SET environments = $2 WHERE name = $1")
                .bind(project)
                .bind(with_environment(&list, environment, added))
                .execute(&mut *tx)
                .await
                .map_err(db("writing a project's environments"))?;
            let row = if added {
                "INSERT INTO environments (project, environment) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM environments WHERE project = $1 AND environment = $2"
            };
            sqlx::query(row).bind(project).bind(environment).execute(&mut *tx).await.map_err(db("writing environments"))?;
        }
        for project in c.removed {
            sqlx::query("DELETE FROM environments WHERE project = $1")
                .bind(project)
                .execute(&mut *tx)
                .await
                .map_err(db("writing environments"))?;
            sqlx::query("DELETE FROM projects WHERE name = $1").bind(project).execute(&mut *tx).await.map_err(db("removing a project"))?;
        }
        if !c.deployments.is_empty() {
            let d = &c.deployments;
            sqlx::query(UPSERT_DEPLOYMENTS)
                .bind(d.iter().map(|d| d.id).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.project.as_str()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.environment.as_str()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.status.as_str()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.git_ref.as_str()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.commit.as_deref()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.image.as_deref()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.actor.as_str()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.requested_at).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.finished_at).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.failed_step.as_deref()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.failed_reason.as_deref()).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.rollback_of).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.promoted_from).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.dry_run).collect::<Vec<_>>())
                .bind(d.iter().map(|d| d.replay_of).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(db("writing deployments"))?;
        }
        for (deployment, since) in c.serving {
            sqlx::query(SERVING).bind(deployment).bind(since).execute(&mut *tx).await.map_err(db("writing serving releases"))?;
        }
        sqlx::query("UPDATE checkpoints SET tx = $2::text::xid8, position = $3, updated_at = clock_timestamp() WHERE consumer = $1")
            .bind(READ_MODELS)
            .bind(to.tx.to_string())
            .bind(to.seq)
            .execute(&mut *tx)
            .await
            .map_err(db("moving the read models' checkpoint"))?;
        tx.commit().await.map_err(db("writing the read models"))?;
        Ok(true)
    }

    async fn reset(&self) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await.map_err(db("emptying the read models"))?;
        sqlx::query(
            "INSERT INTO checkpoints (consumer, tx, position) VALUES ($1, '0', 0)
             ON CONFLICT (consumer) DO UPDATE SET tx = '0', position = 0, updated_at = clock_timestamp()",
        )
        .bind(READ_MODELS)
        .execute(&mut *tx)
        .await
        .map_err(db("moving the read models' checkpoint"))?;
        for table in TABLES {
            sqlx::query(&format!("DELETE FROM {table}")).execute(&mut *tx).await.map_err(db("emptying the read models"))?;
        }
        tx.commit().await.map_err(db("emptying the read models"))
    }

    async fn position(&self) -> Result<Position, StoreError> {
        crate::EventStore::operational(self).load_checkpoint(READ_MODELS).await
    }

    async fn projects(&self, after: Option<&str>, limit: usize) -> Result<Vec<ProjectRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, repository, mirror_of, default_branch, environments, created_at FROM projects
             WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await
        .map_err(db("reading projects"))?;
        rows.iter()
            .map(|r| {
                Ok(ProjectRow {
                    name: r.try_get("name")?,
                    repository: r.try_get("repository")?,
                    mirror_of: r.try_get("mirror_of")?,
                    default_branch: r.try_get("default_branch")?,
                    environments: serde_json::from_str(r.try_get("environments")?).unwrap_or_default(),
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("decoding projects"))
    }

    async fn environments(&self) -> Result<Vec<EnvironmentRow>, StoreError> {
        let rows: Vec<(String, String, Option<Uuid>, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT project, environment, serving, serving_since FROM environments ORDER BY project, environment")
                .fetch_all(self.pool())
                .await
                .map_err(db("reading environments"))?;
        Ok(rows
            .into_iter()
            .map(|(project, environment, serving, serving_since)| EnvironmentRow { project, environment, serving, serving_since })
            .collect())
    }

    async fn deployments(&self, q: &DeploymentQuery) -> Result<Vec<DeploymentRow>, StoreError> {
        let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE true"));
        push_filters(&mut sql, q);
        if let Some(since) = q.since {
            sql.push(" AND requested_at >= ").push_bind(since);
        }
        match q.before {
            None => {}
            Some(Before::Time(t)) => {
                sql.push(" AND requested_at < ").push_bind(t);
            }
            Some(Before::Deployment(id)) => {
                sql.push(" AND (requested_at, id) < (SELECT requested_at, id FROM deployments WHERE id = ").push_bind(id).push(")");
            }
        }
        sql.push(" ORDER BY requested_at DESC, id DESC LIMIT ").push_bind(q.limit as i64);
        let rows = sql.build().fetch_all(self.pool()).await.map_err(db("reading deployments"))?;
        rows.iter()
            .map(|r| {
                Ok(DeploymentRow {
                    id: r.try_get("id")?,
                    project: r.try_get("project")?,
                    environment: r.try_get("environment")?,
                    status: r.try_get("status")?,
                    git_ref: r.try_get("git_ref")?,
                    commit: r.try_get("commit_id")?,
                    image: r.try_get("image")?,
                    actor: r.try_get("actor")?,
                    requested_at: r.try_get("requested_at")?,
                    finished_at: r.try_get("finished_at")?,
                    failed_step: r.try_get("failed_step")?,
                    failed_reason: r.try_get("failed_reason")?,
                    rollback_of: r.try_get("rollback_of")?,
                    promoted_from: r.try_get("promoted_from")?,
                    dry_run: r.try_get("dry_run")?,
                    replay_of: r.try_get("replay_of")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("decoding deployments"))
    }
}
