//! The project verbs through a server's API (`--server`): the same
//! requests the handlers make locally, recorded with the token's name as
//! the actor. Secret values go in request bodies only, never in a URL.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use slipway_engine::project::{AutoDeployRule, PreviewRule};
use slipway_engine::queries::{PreviewView, ProjectSummary, SourceView};
use slipway_engine::requests::{NewProject, SettingValue};
use slipway_engine::source::SourceChange;
use slipway_proto::event::PreviewTrigger;
use uuid::Uuid;

use super::{EnvironmentShown, PreviewChange, PreviewRemoved, ProjectShown, Projects, Removable, RuleChange, SettingShown};
use crate::client::{segment, Client};
use crate::exit::{self, not_found};

/// A server's API, reached with `--server` and `--token`.
pub struct Remote<'a>(pub &'a Client);

/// `GET /api/projects/{name}` as far as the verbs read it.
#[derive(Deserialize)]
struct Detail {
    name: String,
    repo: String,
    default_branch: String,
    mirror_of: Option<String>,
    environments: std::collections::BTreeMap<String, DetailEnvironment>,
    source: SourceView,
    webhook_secret: bool,
    auto_deploy: Vec<AutoDeployRule>,
    preview_rules: Vec<PreviewRule>,
    previews: Vec<PreviewView>,
}

#[derive(Deserialize)]
struct DetailEnvironment {
    settings: std::collections::BTreeMap<String, DetailSetting>,
}

#[derive(Deserialize)]
struct DetailSetting {
    fingerprint: String,
    secret: bool,
    value: Option<String>,
}

fn project_path(name: &str) -> String {
    format!("/api/projects/{}", segment(name))
}

fn environment_path(project: &str, env: &str) -> String {
    format!("{}/environments/{}", project_path(project), segment(env))
}

fn source_body(change: SourceChange) -> Value {
    json!({ "set": change.set, "remove": change.removed, "known_hosts": change.known_hosts, "submodules": change.submodules,
        "deploy_key": change.deploy_key })
}

/// `?pull_requests=true` or `?branches=GLOB`, as the previews routes take a trigger.
fn trigger_query(trigger: &PreviewTrigger) -> String {
    match trigger {
        PreviewTrigger::PullRequests => "pull_requests=true".into(),
        PreviewTrigger::Branches(glob) => format!("branches={}", segment(glob)),
    }
}

fn parsed<T: serde::de::DeserializeOwned>(answer: Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(answer).map_err(|e| anyhow::anyhow!("the server's answer to {what} is not what this client reads: {e}"))
}

impl Remote<'_> {
    async fn detail(&self, name: &str) -> anyhow::Result<Detail> {
        parsed(self.0.get(&project_path(name)).await?, "a project's details")
    }
}

impl Projects for Remote<'_> {
    async fn create(&self, new: NewProject, source: SourceChange) -> anyhow::Result<()> {
        let mut body = json!({
            "name": new.name, "repo": new.repository, "default_branch": new.default_branch,
            "environments": new.environments, "mirror_of": new.mirror_of,
        });
        if !source.is_empty() {
            body["source"] = source_body(source);
        }
        self.0.post("/api/projects", body).await.map(drop)
    }

    async fn change_source(&self, name: &str, change: SourceChange) -> anyhow::Result<()> {
        self.0.put_json(&format!("{}/source", project_path(name)), source_body(change)).await.map(drop)
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<ProjectSummary>> {
        let after = after.map(|a| format!("&after={}", segment(a))).unwrap_or_default();
        parsed(self.0.get(&format!("/api/projects?limit={limit}{after}")).await?, "the project list")
    }

    async fn show(&self, name: &str) -> anyhow::Result<ProjectShown> {
        let d = self.detail(name).await?;
        Ok(ProjectShown {
            environments: d.environments.into_iter().map(|(env, e)| (env, EnvironmentShown { settings: e.settings.len() })).collect(),
            name: d.name,
            repo: d.repo,
            branch: d.default_branch,
            mirror_of: d.mirror_of,
            source: d.source,
            webhook_secret: d.webhook_secret,
            auto_deploy: d.auto_deploy,
            preview_rules: d.preview_rules,
            previews: d.previews,
        })
    }

    async fn rotate_webhook_secret(&self, project: &str) -> anyhow::Result<String> {
        let answer = self.0.post(&format!("{}/webhook-secret", project_path(project)), json!({})).await?;
        answer["secret"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("the server's answer holds no `secret`"))
    }

    async fn change_rule(&self, project: &str, change: &RuleChange) -> anyhow::Result<()> {
        let path = format!("{}/auto-deploy", project_path(project));
        match change {
            RuleChange::Set { branch, env, poll_seconds } => {
                self.0.put_json(&path, json!({ "branch": branch, "environment": env, "poll_seconds": poll_seconds })).await.map(drop)
            }
            RuleChange::Remove { branch } => self.0.delete(&format!("{path}?branch={}", segment(branch))).await.map(drop),
            RuleChange::List => Ok(()),
        }
    }

    async fn change_preview_rule(&self, project: &str, change: &PreviewChange) -> anyhow::Result<()> {
        let path = format!("{}/previews", project_path(project));
        match change {
            PreviewChange::Set { trigger, inherit, ttl_seconds } => {
                let mut body = json!({ "inherit": inherit, "ttl": ttl_seconds.map(|s| format!("{s}s")) });
                match trigger {
                    PreviewTrigger::PullRequests => body["pull_requests"] = json!(true),
                    PreviewTrigger::Branches(glob) => body["branches"] = json!(glob),
                }
                self.0.put_json(&path, body).await.map(drop)
            }
            PreviewChange::Remove { trigger } => self.0.delete(&format!("{path}?{}", trigger_query(trigger))).await.map(drop),
            PreviewChange::List => Ok(()),
        }
    }

    async fn approve_preview(&self, project: &str, env: &str) -> anyhow::Result<(Uuid, String)> {
        #[derive(Deserialize)]
        struct Approved {
            deployment: Uuid,
            approved_by: String,
        }
        let answer: Approved =
            parsed(self.0.post(&format!("{}/approve", environment_path(project, env)), json!({})).await?, "an approval")?;
        Ok((answer.deployment, answer.approved_by))
    }

    async fn remove(&self, name: &str) -> anyhow::Result<Vec<PreviewRemoved>> {
        #[derive(Deserialize)]
        struct Removed {
            environments: Vec<PreviewRemoved>,
        }
        let r: Removed = parsed(self.0.delete(&project_path(name)).await?, "a project's removal")?;
        Ok(r.environments)
    }

    async fn add_environment(&self, project: &str, env: &str) -> anyhow::Result<()> {
        self.0.post(&format!("{}/environments", project_path(project)), json!({ "name": env })).await.map(drop)
    }

    async fn remove_environment(&self, project: &str, env: &str, removable: Removable) -> anyhow::Result<PreviewRemoved> {
        // The server removes whatever environment the token's scope allows:
        // `preview remove` asks first that it is a preview.
        if removable == Removable::Previews {
            let d = self.detail(project).await?;
            if !d.previews.iter().any(|p| p.name == env) {
                let named = d.environments.contains_key(env);
                let message = format!("environment `{env}` of `{project}` is not a preview");
                return Err(if named {
                    exit::usage(format!("{message}; `slipway env remove {project} {env} --yes` removes it"))
                } else {
                    not_found(message)
                });
            }
        }
        parsed(self.0.delete(&environment_path(project, env)).await?, "an environment's removal")
    }

    async fn change_settings(&self, project: &str, env: &str, set: Vec<SettingValue>, unset: Vec<String>) -> anyhow::Result<()> {
        let set: Map<String, Value> = set.into_iter().map(|s| (s.key, json!({ "value": s.value, "secret": s.secret }))).collect();
        let body = json!({ "set": set, "unset": unset });
        self.0.put_json(&format!("{}/settings", environment_path(project, env)), body).await.map(drop)
    }

    async fn settings(&self, project: &str, env: &str) -> anyhow::Result<Vec<SettingShown>> {
        let mut d = self.detail(project).await?;
        let Some(e) = d.environments.remove(env) else {
            return Err(not_found(format!("project `{project}` has no environment `{env}`")));
        };
        Ok(e.settings
            .into_iter()
            .map(|(key, s)| SettingShown { key, value: s.value, secret: s.secret, fingerprint: s.fingerprint })
            .collect())
    }

    async fn protect(&self, project: &str, env: &str, approvals: u32) -> anyhow::Result<()> {
        self.0.put_json(&format!("{}/protection", environment_path(project, env)), json!({ "approvals": approvals })).await.map(drop)
    }

    async fn set_freeze(&self, project: &str, env: &str, schedule: &str, seconds: u64) -> anyhow::Result<()> {
        let body = json!({ "schedule": schedule, "duration": format!("{seconds}s") });
        self.0.put_json(&format!("{}/freezes", environment_path(project, env)), body).await.map(drop)
    }

    async fn remove_freeze(&self, project: &str, env: &str, schedule: &str) -> anyhow::Result<()> {
        self.0.delete(&format!("{}/freezes?schedule={}", environment_path(project, env), segment(schedule))).await.map(drop)
    }
}
