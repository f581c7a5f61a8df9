//! The project projection: a project's repository, environments and
//! settings (keys with fingerprints and which are secret, never values),
//! how workers reach its repository (credential names and fingerprints,
//! trusted host keys), its webhook secret's fingerprint, auto-deploy rules
//! and the pushes it accepted, folded from its `project-<name>` stream.

use std::collections::{BTreeMap, BTreeSet};

use slipway_proto::event::SourceAccess;
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
    /// Every push delivery accepted, as `provider:delivery-id`.
    pub deliveries: BTreeSet<String>,
    /// The deployments pushes requested that no later push superseded
    /// (what a newer push may supersede).
    pub push_deployments: BTreeSet<Uuid>,
    pub version: u64,
}

/// Pushes to a branch matching `branch` deploy to `environment`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AutoDeployRule {
    pub branch: String,
    pub environment: String,
    /// Poll the repository's matching branches this often (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<u64>,
}

/// The key a delivery is remembered by.
pub fn delivery_key(provider: slipway_proto::event::WebhookProvider, delivery: &str) -> String {
    format!("{provider}:{delivery}")
}

impl Project {
    /// The settings of `environment` as key -> fingerprint.
    pub fn fingerprints(&self, environment: &str) -> BTreeMap<String, String> {
        self.environments
            .get(environment)
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.fingerprint.clone())).collect())
            .unwrap_or_default()
    }
}

/// Folds a project's stream; `None` when it has no `ProjectCreated`.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Project> {
    let mut project: Option<Project> = None;
    for event in events {
        match (event, project.as_mut()) {
            (Event::ProjectCreated(c), None) => {
                project = Some(Project {
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
                    version: 0,
                });
            }
            (Event::MirrorAdded(m), Some(p)) => p.mirrors.push(m.mirror.clone()),
            (Event::SettingsChanged(s), Some(p)) => {
                let env = p.environments.entry(s.environment.clone()).or_default();
                for key in &s.removed {
                    env.remove(key);
                }
                for (key, fingerprint) in &s.set {
                    env.insert(key.clone(), Setting { fingerprint: fingerprint.clone(), secret: s.secrets.contains(key) });
                }
            }
            (Event::SourceAccessChanged(c), Some(p)) => {
                for name in &c.removed {
                    p.source.credentials.remove(name);
                }
                p.source.credentials.extend(c.set.clone());
                if let Some(known) = &c.known_hosts {
                    p.source.known_hosts = known.clone();
                }
                if let Some(submodules) = c.submodules {
                    p.source.submodules = submodules;
                }
            }
            // Trust on first use: only while nothing is trusted for that
            // host; two first fetches racing each other pin once.
            (Event::SourceHostKeyPinned(pin), Some(p)) => {
                let host = known_host_name(&pin.known_host);
                if !p.source.known_hosts.iter().any(|k| known_host_name(k) == host) {
                    p.source.known_hosts.push(pin.known_host.clone());
                }
            }
            (Event::WebhookSecretRotated(r), Some(p)) => p.webhook_secret = Some(r.fingerprint.clone()),
            (Event::AutoDeploySet(r), Some(p)) => match p.auto_deploy.iter_mut().find(|x| x.branch == r.branch) {
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
            (Event::AutoDeployRemoved(r), Some(p)) => p.auto_deploy.retain(|x| x.branch != r.branch),
            (Event::PushReceived(r), Some(p)) => {
                p.deliveries.insert(delivery_key(r.provider, &r.delivery));
                p.push_deployments.extend(r.deployments.iter().map(|d| d.deployment_id));
                for old in &r.superseded {
                    p.push_deployments.remove(old);
                }
            }
            (Event::PushSkipped(r), Some(p)) => {
                p.deliveries.insert(delivery_key(r.provider, &r.delivery));
            }
            _ => {}
        }
        if let Some(p) = project.as_mut() {
            p.version += 1;
        }
    }
    project
}

/// The host field of an OpenSSH `known_hosts` line (`[host]:port` or `host`).
pub fn known_host_name(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or_default()
}
