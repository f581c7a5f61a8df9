//! The project verbs against the store: each change goes through the
//! engine's requests, as the API's handlers do.

use anyhow::Context;
use slipway_engine::queries::{self, ProjectSummary};
use slipway_engine::rejection::Rejection;
use slipway_engine::requests::{self, NewProject, SettingValue};
use slipway_engine::source::SourceChange;
use slipway_engine::{auto_deploy, lifecycle, project::Project, protection};
use slipway_store::EventStore;
use uuid::Uuid;

use super::{EnvironmentShown, PreviewChange, PreviewRemoved, ProjectShown, Projects, Removable, RuleChange, SettingShown};
use crate::actor::actor;
use crate::exit::{self, not_found};

/// The store this process opened (`--database`, or the embedded one).
pub struct Local<'a>(pub &'a dyn EventStore);

fn granted<T>(outcome: Result<Result<T, Rejection>, slipway_store::StoreError>) -> anyhow::Result<T> {
    outcome?.map_err(exit::rejected)
}

fn load_rejected<T>(outcome: Result<Result<T, Rejection>, slipway_engine::load::LoadError>) -> anyhow::Result<T> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(rejection)) => Err(exit::rejected(rejection)),
        Err(slipway_engine::load::LoadError::Store(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("{e}; check the log with `slipway audit verify`")),
    }
}

impl Local<'_> {
    async fn project(&self, name: &str) -> anyhow::Result<Project> {
        requests::load_project(self.0, name)
            .await?
            .ok_or_else(|| not_found(format!("no project `{name}`; create it with `slipway project create`")))
    }
}

impl Projects for Local<'_> {
    async fn create(&self, new: NewProject, source: SourceChange) -> anyhow::Result<()> {
        granted(requests::create_project_with_source(self.0, &actor(), new, source).await)
    }

    async fn change_source(&self, name: &str, change: SourceChange) -> anyhow::Result<()> {
        granted(requests::change_source(self.0, &actor(), name, change).await)
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<ProjectSummary>> {
        Ok(queries::projects(self.0, after, limit).await?.0)
    }

    async fn show(&self, name: &str) -> anyhow::Result<ProjectShown> {
        let p = self.project(name).await?;
        let (source, previews) = (queries::source_view(&p), queries::previews(&p));
        Ok(ProjectShown {
            environments: p.environments.iter().map(|(env, s)| (env.clone(), EnvironmentShown { settings: s.len() })).collect(),
            source,
            webhook_secret: p.webhook_secret.is_some(),
            previews,
            name: p.name,
            repo: p.repository,
            branch: p.default_branch,
            mirror_of: p.mirror_of,
            auto_deploy: p.auto_deploy,
            preview_rules: p.preview_rules,
        })
    }

    async fn rotate_webhook_secret(&self, project: &str) -> anyhow::Result<String> {
        granted(auto_deploy::rotate_webhook_secret(self.0, &actor(), project).await)
    }

    async fn change_rule(&self, project: &str, change: &RuleChange) -> anyhow::Result<()> {
        match change {
            RuleChange::Set { branch, env, poll_seconds } => {
                granted(auto_deploy::set_rule(self.0, &actor(), project, branch, env, *poll_seconds).await)
            }
            RuleChange::Remove { branch } => granted(auto_deploy::remove_rule(self.0, &actor(), project, branch).await),
            RuleChange::List => Ok(()),
        }
    }

    async fn change_preview_rule(&self, project: &str, change: &PreviewChange) -> anyhow::Result<()> {
        match change {
            PreviewChange::Set { trigger, inherit, ttl_seconds } => {
                granted(lifecycle::set_rule(self.0, &actor(), project, trigger.clone(), inherit, *ttl_seconds).await)
            }
            PreviewChange::Remove { trigger } => granted(lifecycle::remove_rule(self.0, &actor(), project, trigger.clone()).await),
            PreviewChange::List => Ok(()),
        }
    }

    async fn approve_preview(&self, project: &str, env: &str) -> anyhow::Result<(Uuid, String)> {
        let who = actor();
        let deployment = load_rejected(lifecycle::approve(self.0, &who, project, env).await)?;
        Ok((deployment, who))
    }

    async fn remove(&self, name: &str) -> anyhow::Result<Vec<PreviewRemoved>> {
        let who = actor();
        let r = load_rejected(lifecycle::remove_project(self.0, &who, name, &format!("removed by {who}")).await)?;
        Ok(r.environments.into_iter().map(removed).collect())
    }

    async fn add_environment(&self, project: &str, env: &str) -> anyhow::Result<()> {
        load_rejected(lifecycle::add_environment(self.0, &actor(), project, env).await)
    }

    async fn remove_environment(&self, project: &str, env: &str, removable: Removable) -> anyhow::Result<PreviewRemoved> {
        let who = actor();
        let r = load_rejected(lifecycle::remove_environment(self.0, &who, project, env, &format!("removed by {who}"), removable).await)?;
        Ok(removed(r))
    }

    async fn change_settings(&self, project: &str, env: &str, set: Vec<SettingValue>, unset: Vec<String>) -> anyhow::Result<()> {
        granted(requests::change_settings(self.0, &actor(), project, env, set, unset).await)
    }

    async fn settings(&self, project: &str, env: &str) -> anyhow::Result<Vec<SettingShown>> {
        let p = self.project(project).await?;
        let Some(settings) = p.environments.get(env) else {
            return Err(not_found(format!("project `{project}` has no environment `{env}`")));
        };
        // Only plain values are read: a secret's never leaves the value table.
        let plain: Vec<String> = settings.values().filter(|s| !s.secret).map(|s| s.fingerprint.clone()).collect();
        let values = self.0.operational().values(&plain).await.context("reading the settings' values")?;
        Ok(settings
            .iter()
            .map(|(key, s)| SettingShown {
                key: key.clone(),
                value: if s.secret { None } else { values.get(&s.fingerprint).cloned() },
                secret: s.secret,
                fingerprint: s.fingerprint.clone(),
            })
            .collect())
    }

    async fn protect(&self, project: &str, env: &str, approvals: u32) -> anyhow::Result<()> {
        granted(protection::protect(self.0, &actor(), project, env, approvals).await)
    }

    async fn set_freeze(&self, project: &str, env: &str, schedule: &str, seconds: u64) -> anyhow::Result<()> {
        granted(protection::set_freeze(self.0, &actor(), project, env, schedule, seconds).await)
    }

    async fn remove_freeze(&self, project: &str, env: &str, schedule: &str) -> anyhow::Result<()> {
        granted(protection::remove_freeze(self.0, &actor(), project, env, schedule).await)
    }
}

fn removed(r: slipway_proto::event::EnvironmentRemoved) -> PreviewRemoved {
    PreviewRemoved { environment: r.name, reason: r.reason, cancelled: r.cancelled, retired: r.retired, route_removed: r.route_removed }
}
