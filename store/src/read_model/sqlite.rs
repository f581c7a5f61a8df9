//! The read models on SQLite: a batch is one `BEGIN IMMEDIATE` transaction
//! (the write lock first, so the checkpoint read inside it cannot move
//! before the commit). Times are stored as fixed-width text, which sorts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{
    collapse, push_filters, with_environment, Before, Change, DeploymentQuery, DeploymentRow, EnvironmentRow, ProjectRow, ReadModelStore,
    READ_MODELS, TABLES,
};
use crate::event_store::{Position, StoreError};
use crate::sqlite::SqliteStore;

fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    crate::dialect::db::<Sqlite>(context)
}

/// The one text form of a time in these tables.
fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn parse_id(text: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

const UPSERT_DEPLOYMENT: &str = "INSERT OR REPLACE INTO deployments (id, project, environment, status, git_ref, commit_id, image,
     actor, requested_at, finished_at, failed_step, failed_reason, rollback_of, promoted_from, dry_run, replay_of)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

#[async_trait]
impl ReadModelStore for SqliteStore {
    async fn apply(&self, from: Position, to: Position, changes: &[Change]) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await.map_err(db("writing the read models"))?;
        let at: Option<(i64, i64)> = sqlx::query_as("SELECT tx, position FROM checkpoints WHERE consumer = ?1")
            .bind(READ_MODELS)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading the read models' checkpoint"))?;
        let at = at.map_or(Position::START, |(tx, seq)| Position { tx: tx as u64, seq });
        if at != from {
            return Ok(false);
        }
        let c = collapse(changes);
        for p in c.projects {
            sqlx::query(
                "INSERT OR REPLACE INTO projects (name, repository, mirror_of, default_branch, environments, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&p.name)
            .bind(&p.repository)
            .bind(&p.mirror_of)
            .bind(&p.default_branch)
            .bind(serde_json::to_string(&p.environments).unwrap_or_default())
            .bind(time(p.created_at))
            .execute(&mut *tx)
            .await
            .map_err(db("writing projects"))?;
            for env in &p.environments {
                sqlx::query("INSERT OR IGNORE INTO environments (project, environment) VALUES (?1, ?2)")
                    .bind(&p.name)
                    .bind(env)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("writing environments"))?;
            }
        }
        for (project, environment, added) in c.environments {
            let list: Option<String> = sqlx::query_scalar("SELECT environments FROM projects WHERE name = ?1")
                .bind(project)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading a project's environments"))?;
            let Some(list) = list else { continue };
            sqlx::query("UPDATE projects SET environments = ?2 WHERE name = ?1")
                .bind(project)
                .bind(with_environment(&list, environment, added))
                .execute(&mut *tx)
                .await
                .map_err(db("writing a project's environments"))?;
            let row = if added {
                "INSERT OR IGNORE INTO environments (project, environment) VALUES (?1, ?2)"
            } else {
                "DELETE FROM environments WHERE project = ?1 AND environment = ?2"
            };
            sqlx::query(row).bind(project).bind(environment).execute(&mut *tx).await.map_err(db("writing environments"))?;
        }
        for project in c.removed {
            sqlx::query("DELETE FROM environments WHERE project = ?1")
                .bind(project)
                .execute(&mut *tx)
                .await
                .map_err(db("writing environments"))?;
            sqlx::query("DELETE FROM projects WHERE name = ?1").bind(project).execute(&mut *tx).await.map_err(db("removing a project"))?;
        }
        for d in c.deployments {
            sqlx::query(UPSERT_DEPLOYMENT)
                .bind(d.id.to_string())
                .bind(&d.project)
                .bind(&d.environment)
                .bind(&d.status)
                .bind(&d.git_ref)
                .bind(&d.commit)
                .bind(&d.image)
                .bind(&d.actor)
                .bind(time(d.requested_at))
                .bind(d.finished_at.map(time))
                .bind(&d.failed_step)
                .bind(&d.failed_reason)
                .bind(d.rollback_of.map(|id| id.to_string()))
                .bind(d.promoted_from.map(|id| id.to_string()))
                .bind(d.dry_run)
                .bind(d.replay_of.map(|id| id.to_string()))
                .execute(&mut *tx)
                .await
                .map_err(db("writing deployments"))?;
        }
        for (deployment, since) in c.serving {
            sqlx::query(
                "UPDATE environments SET serving = ?1, serving_since = ?2
                 WHERE (project, environment) = (SELECT project, environment FROM deployments WHERE id = ?1)",
            )
            .bind(deployment.to_string())
            .bind(time(since))
            .execute(&mut *tx)
            .await
            .map_err(db("writing serving releases"))?;
        }
        sqlx::query(
            "INSERT INTO checkpoints (consumer, tx, position) VALUES (?1, ?2, ?3)
             ON CONFLICT (consumer) DO UPDATE SET tx = excluded.tx, position = excluded.position",
        )
        .bind(READ_MODELS)
        .bind(to.tx as i64)
        .bind(to.seq)
        .execute(&mut *tx)
        .await
        .map_err(db("moving the read models' checkpoint"))?;
        tx.commit().await.map_err(db("writing the read models"))?;
        Ok(true)
    }

    async fn reset(&self) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await.map_err(db("emptying the read models"))?;
        sqlx::query(
            "INSERT INTO checkpoints (consumer, tx, position) VALUES (?1, 0, 0)
             ON CONFLICT (consumer) DO UPDATE SET tx = 0, position = 0",
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
             WHERE ?1 IS NULL OR name > ?1 ORDER BY name LIMIT ?2",
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
                    created_at: parse_time(r.try_get("created_at")?)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("decoding projects"))
    }

    async fn environments(&self) -> Result<Vec<EnvironmentRow>, StoreError> {
        let rows = sqlx::query("SELECT project, environment, serving, serving_since FROM environments ORDER BY project, environment")
            .fetch_all(self.pool())
            .await
            .map_err(db("reading environments"))?;
        rows.iter()
            .map(|r| {
                Ok(EnvironmentRow {
                    project: r.try_get("project")?,
                    environment: r.try_get("environment")?,
                    serving: r.try_get::<Option<&str>, _>("serving")?.map(parse_id).transpose()?,
                    serving_since: r.try_get::<Option<&str>, _>("serving_since")?.map(parse_time).transpose()?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db("decoding environments"))
    }

    async fn deployments(&self, q: &DeploymentQuery) -> Result<Vec<DeploymentRow>, StoreError> {
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, project, environment, status, git_ref, commit_id, image, actor, requested_at, finished_at,
             failed_step, failed_reason, rollback_of, promoted_from, dry_run, replay_of FROM deployments WHERE 1",
        );
        push_filters(&mut sql, q);
        if let Some(since) = q.since {
            sql.push(" AND requested_at >= ").push_bind(time(since));
        }
        match q.before {
            None => {}
            Some(Before::Time(t)) => {
                sql.push(" AND requested_at < ").push_bind(time(t));
            }
            Some(Before::Deployment(id)) => {
                sql.push(" AND (requested_at, id) < (SELECT requested_at, id FROM deployments WHERE id = ")
                    .push_bind(id.to_string())
                    .push(")");
            }
        }
        sql.push(" ORDER BY requested_at DESC, id DESC LIMIT ").push_bind(q.limit as i64);
        let rows = sql.build().fetch_all(self.pool()).await.map_err(db("reading deployments"))?;
        rows.iter().map(deployment_row).collect::<Result<_, sqlx::Error>>().map_err(db("decoding deployments"))
    }
}

fn deployment_row(r: &SqliteRow) -> Result<DeploymentRow, sqlx::Error> {
    let id = |name: &str| -> Result<Option<Uuid>, sqlx::Error> { r.try_get::<Option<&str>, _>(name)?.map(parse_id).transpose() };
    Ok(DeploymentRow {
        id: parse_id(r.try_get("id")?)?,
        project: r.try_get("project")?,
        environment: r.try_get("environment")?,
        status: r.try_get("status")?,
        git_ref: r.try_get("git_ref")?,
        commit: r.try_get("commit_id")?,
        image: r.try_get("image")?,
        actor: r.try_get("actor")?,
        requested_at: parse_time(r.try_get("requested_at")?)?,
        finished_at: r.try_get::<Option<&str>, _>("finished_at")?.map(parse_time).transpose()?,
        failed_step: r.try_get("failed_step")?,
        failed_reason: r.try_get("failed_reason")?,
        rollback_of: id("rollback_of")?,
        promoted_from: id("promoted_from")?,
        dry_run: r.try_get("dry_run")?,
        replay_of: id("replay_of")?,
    })
}
