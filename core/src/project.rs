//! The project projection: a project's repository, environments and
//! settings (keys with fingerprints and which are secret, never values),
//! how workers reach its repository (credential names and fingerprints,
//! trusted host keys), its webhook secret's fingerprint, auto-deploy rules
//! and the pushes it accepted, its preview rules and the environments that
//! come and go (previews: each with its parent, its origin, its last push
//! and the fork commits approved), folded from its `project-<name>` stream.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use slipway_proto::event::{PreviewOrigin, PreviewTrigger, SourceAccess};
use slipway_proto::Event;
use uuid::Uuid;

/// One setting as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub fingerprint: String,
    pub secret: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    pub repository: String,
    pub default_branch: String,
    pub mirror_of: Option<String>,
    /// Projects that mirror this one.
    pub mirrors: Vec<String>,
    /// Environment name -> its settings.
    pub environments: BTreeMap<String, BTreeMap<String, Setting>>,
    /// How workers reach the repository (a mirror uses its original's).
    pub source: SourceAccess,
    /// The fingerprint of the webhook secret (its value is in the value
    /// table); `None` until one is generated: webhooks are refused until then.
    pub webhook_secret: Option<String>,
    /// Auto-deploy rules, in the order their globs were first set.
    pub auto_deploy: Vec<AutoDeployRule>,
    /// Every push delivery accepted, as `provider:delivery-id` and, for a
    /// signed body, `provider:sha256:digest` (`delivered`).
    pub deliveries: BTreeSet<String>,
    /// The deployments pushes requested that no later push superseded
    /// (what a newer push may supersede).
    pub push_deployments: BTreeSet<Uuid>,
    /// Preview rules, in the order their triggers were first set.
    pub preview_rules: Vec<PreviewRule>,
    /// Environments added after the project was created (previews), by name.
    pub previews: BTreeMap<String, Preview>,
    /// Environment -> the approvals a deployment to it waits for (`slipway env protect`).
    pub protections: BTreeMap<String, u32>,
    /// Environment -> its freeze windows: cron schedule -> duration in seconds.
    pub freezes: BTreeMap<String, BTreeMap<String, u64>>,
    /// `ProjectRemoved`: gone from every list and request; its name is
    /// not created again.
    pub removed: bool,
    pub version: u64,
}

/// Each pull request (or each branch a glob matches) gets an environment
/// inheriting `inherit`'s settings, removed after `ttl_seconds` without a push.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PreviewRule {
    /// `pull requests` or `branches <glob>`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub trigger: PreviewTrigger,
    pub inherit: String,
    pub ttl_seconds: u64,
}

/// An environment added after the project was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// The environment whose settings it takes (its own override them).
    pub inherits: Option<String>,
    pub origin: Option<PreviewOrigin>,
    pub ttl_seconds: Option<u64>,
    /// When it was added, or last pushed to: what its time to live counts from.
    pub last_push: DateTime<Utc>,
    /// The head commit the last webhook named.
    pub head: Option<String>,
    /// Head commits someone approved (a fork's commits deploy only then).
    pub approved: BTreeSet<String>,
}

/// Pushes to a branch matching `branch` deploy to `environment`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoDeployRule {
    pub branch: String,
    pub environment: String,
    /// Poll the repository's matching branches this often (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<u64>,
}

/// The key a delivery is remembered by.
pub fn delivery_key(provider: slipway_proto::event::WebhookProvider, delivery: &str) -> String {
    format!("{provider}:{delivery}")
}

/// The key a delivery's signed body is remembered by.
pub fn body_key(provider: slipway_proto::event::WebhookProvider, body_sha256: &str) -> String {
    format!("{provider}:sha256:{body_sha256}")
}

impl Project {
    /// The settings of `environment` as key -> fingerprint.
    pub fn fingerprints(&self, environment: &str) -> BTreeMap<String, String> {
        self.settings(environment).into_iter().map(|(k, v)| (k, v.fingerprint)).collect()
    }

    /// The settings `environment` deploys with: a preview's parent's,
    /// overlaid with the preview's own.
    pub fn settings(&self, environment: &str) -> BTreeMap<String, Setting> {
        let parent = self.previews.get(environment).and_then(|p| p.inherits.as_deref());
        let mut settings = parent.and_then(|p| self.environments.get(p)).cloned().unwrap_or_default();
        settings.extend(self.environments.get(environment).cloned().unwrap_or_default());
        settings
    }

    /// Whether a delivery with this id, or with this signed body under any
    /// id, was accepted already.
    pub fn delivered(&self, provider: slipway_proto::event::WebhookProvider, delivery: &str, body_sha256: Option<&str>) -> bool {
        self.deliveries.contains(&delivery_key(provider, delivery))
            || body_sha256.is_some_and(|b| self.deliveries.contains(&body_key(provider, b)))
    }

    fn remember(&mut self, provider: slipway_proto::event::WebhookProvider, delivery: &str, body_sha256: Option<&str>) {
        self.deliveries.insert(delivery_key(provider, delivery));
        if let Some(body) = body_sha256 {
            self.deliveries.insert(body_key(provider, body));
        }
    }

    /// Applies the stream's next event after `ProjectCreated`.
    pub fn apply(&mut self, event: &Event) {
        let p = self;
        match event {
            Event::MirrorAdded(m) => p.mirrors.push(m.mirror.clone()),
            Event::ProjectRemoved(_) => p.removed = true,
            Event::SettingsChanged(s) => {
                let env = p.environments.entry(s.environment.clone()).or_default();
                for key in &s.removed {
                    env.remove(key);
                }
                for (key, fingerprint) in &s.set {
                    env.insert(key.clone(), Setting { fingerprint: fingerprint.clone(), secret: s.secrets.contains(key) });
                }
            }
            Event::SourceAccessChanged(_) | Event::SourceHostKeyPinned(_) => p.source.apply(event),
            Event::WebhookSecretRotated(r) => p.webhook_secret = Some(r.fingerprint.clone()),
            Event::AutoDeploySet(r) => match p.auto_deploy.iter_mut().find(|x| x.branch == r.branch) {
                Some(rule) => {
                    rule.environment = r.environment.clone();
                    rule.poll_seconds = r.poll_seconds;
                }
                None => p.auto_deploy.push(AutoDeployRule {
                    branch: r.branch.clone(),
                    environment: r.environment.clone(),
                    poll_seconds: r.poll_seconds,
                }),
            },
            Event::AutoDeployRemoved(r) => p.auto_deploy.retain(|x| x.branch != r.branch),
            Event::EnvironmentProtected(e) if e.approvals == 0 => {
                p.protections.remove(&e.environment);
            }
            Event::EnvironmentProtected(e) => {
                p.protections.insert(e.environment.clone(), e.approvals);
            }
            Event::FreezeWindowSet(f) => {
                p.freezes.entry(f.environment.clone()).or_default().insert(f.schedule.clone(), f.duration_seconds);
            }
            Event::FreezeWindowRemoved(f) => {
                if let Some(windows) = p.freezes.get_mut(&f.environment) {
                    windows.remove(&f.schedule);
                }
            }
            Event::PushReceived(r) => {
                p.remember(r.provider, &r.delivery, r.body_sha256.as_deref());
                p.push_deployments.extend(r.deployments.iter().map(|d| d.deployment_id));
                for old in &r.superseded {
                    p.push_deployments.remove(old);
                }
                for d in &r.deployments {
                    if let (Some(preview), Some(at)) = (p.previews.get_mut(&d.environment), r.at) {
                        preview.last_push = at;
                        preview.head = Some(r.commit.clone());
                    }
                }
            }
            Event::PushSkipped(r) => {
                p.remember(r.provider, &r.delivery, r.body_sha256.as_deref());
            }
            // A named environment added after the project was created
            // (`slipway env add`) has no preview origin.
            Event::EnvironmentAdded(a) if a.preview.is_none() && a.inherits.is_none() => {
                p.environments.insert(a.name.clone(), BTreeMap::new());
            }
            Event::EnvironmentAdded(a) => {
                p.environments.insert(a.name.clone(), BTreeMap::new());
                p.previews.insert(
                    a.name.clone(),
                    Preview {
                        inherits: a.inherits.clone(),
                        origin: a.preview.clone(),
                        ttl_seconds: a.ttl_seconds,
                        last_push: a.at,
                        head: None,
                        approved: BTreeSet::new(),
                    },
                );
            }
            // The settings overlay goes with it.
            Event::EnvironmentRemoved(r) => {
                p.environments.remove(&r.name);
                p.previews.remove(&r.name);
            }
            Event::PreviewRuleSet(r) => {
                let rule = PreviewRule { trigger: r.trigger.clone(), inherit: r.inherit.clone(), ttl_seconds: r.ttl_seconds };
                match p.preview_rules.iter_mut().find(|x| x.trigger == r.trigger) {
                    Some(existing) => *existing = rule,
                    None => p.preview_rules.push(rule),
                }
            }
            Event::PreviewRuleRemoved(r) => p.preview_rules.retain(|x| x.trigger != r.trigger),
            Event::PullRequestReceived(r) => {
                p.remember(r.provider, &r.delivery, r.body_sha256.as_deref());
                p.push_deployments.extend(r.deployment);
                for old in &r.superseded {
                    p.push_deployments.remove(old);
                }
                if let Some(preview) = p.previews.get_mut(&r.environment) {
                    preview.last_push = r.at;
                    preview.head = Some(r.head_commit.clone());
                }
            }
            Event::PreviewApproved(a) => {
                p.push_deployments.insert(a.deployment);
                if let Some(preview) = p.previews.get_mut(&a.environment) {
                    preview.approved.insert(a.commit.clone());
                }
            }
            _ => {}
        }
    }
}

/// The project after one more event of its stream: created by its
/// `ProjectCreated` (events before one change nothing), each event after
/// it counted in `version`.
pub fn evolve(project: Option<Project>, event: &Event) -> Option<Project> {
    let mut project = match (event, project) {
        (Event::ProjectCreated(c), None) => Some(Project {
            name: c.name.clone(),
            repository: c.repository.clone(),
            default_branch: c.default_branch.clone(),
            mirror_of: c.mirror_of.clone(),
            mirrors: Vec::new(),
            environments: c.environments.iter().map(|e| (e.clone(), BTreeMap::new())).collect(),
            source: SourceAccess::default(),
            webhook_secret: None,
            auto_deploy: Vec::new(),
            deliveries: BTreeSet::new(),
            push_deployments: BTreeSet::new(),
            preview_rules: Vec::new(),
            previews: BTreeMap::new(),
            protections: BTreeMap::new(),
            freezes: BTreeMap::new(),
            removed: false,
            version: 0,
        }),
        (event, Some(mut p)) => {
            p.apply(event);
            Some(p)
        }
        (_, None) => None,
    };
    if let Some(p) = project.as_mut() {
        p.version += 1;
    }
    project
}

/// Folds a project's stream; `None` when it has no `ProjectCreated`.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Project> {
    let Ok(project) = crate::projection::fold(events);
    project
}
