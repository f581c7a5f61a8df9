//! The project verbs: `project` (create, list, show, source, webhook,
//! auto-deploy and preview rules), `env` (an environment's settings,
//! approvals and freeze windows) and `preview` (approve, remove).
//!
//! Each verb runs against a [`Projects`] backend: the store itself
//! ([`local::Local`]) or a server's API with `--server` ([`remote::Remote`]).
//! Reading arguments and printing are here, once, so a verb answers the
//! same text and the same JSON either way; only where the change is made
//! differs. Refusals keep their kind (`exit::rejected`, or the API's code).

mod local;
mod remote;

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use slipway_engine::project::{AutoDeployRule, PreviewRule};
use slipway_engine::queries::{PreviewView, ProjectSummary, SourceView};
use slipway_engine::requests::{NewProject, SettingValue};
use slipway_engine::source::SourceChange;
use slipway_engine::{preview, push};
use slipway_proto::event::{PreviewTrigger, WebhookProvider};
use uuid::Uuid;

use crate::args::{AutoDeployCmd, EnvCmd, PreviewCmd, PreviewsCmd, ProjectCmd, WebhookCmd};
use crate::exit;
use crate::source_args;
use crate::verbs::print_json;

pub use local::Local;
pub use remote::Remote;
pub use slipway_engine::lifecycle::Removable;

/// Where the project verbs take effect.
pub trait Projects {
    async fn create(&self, new: NewProject, source: SourceChange) -> anyhow::Result<()>;
    async fn change_source(&self, name: &str, change: SourceChange) -> anyhow::Result<()>;
    async fn list(&self, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<ProjectSummary>>;
    async fn show(&self, name: &str) -> anyhow::Result<ProjectShown>;
    /// A new webhook secret, shown this once.
    async fn rotate_webhook_secret(&self, project: &str) -> anyhow::Result<String>;
    async fn change_rule(&self, project: &str, change: &RuleChange) -> anyhow::Result<()>;
    async fn change_preview_rule(&self, project: &str, change: &PreviewChange) -> anyhow::Result<()>;
    /// The deployment requested, and who approved it.
    async fn approve_preview(&self, project: &str, env: &str) -> anyhow::Result<(Uuid, String)>;
    /// Removes a preview, or with `Removable::Any` a named environment too.
    async fn remove_environment(&self, project: &str, env: &str, removable: Removable) -> anyhow::Result<PreviewRemoved>;
    async fn add_environment(&self, project: &str, env: &str) -> anyhow::Result<()>;
    /// Removes a project for good: each environment's removal.
    async fn remove(&self, name: &str) -> anyhow::Result<Vec<PreviewRemoved>>;
    async fn change_settings(&self, project: &str, env: &str, set: Vec<SettingValue>, unset: Vec<String>) -> anyhow::Result<()>;
    async fn settings(&self, project: &str, env: &str) -> anyhow::Result<Vec<SettingShown>>;
    async fn protect(&self, project: &str, env: &str, approvals: u32) -> anyhow::Result<()>;
    async fn set_freeze(&self, project: &str, env: &str, schedule: &str, seconds: u64) -> anyhow::Result<()>;
    async fn remove_freeze(&self, project: &str, env: &str, schedule: &str) -> anyhow::Result<()>;
}

/// A project as `project show` prints it (`--json`: this document).
#[derive(Debug, Serialize)]
pub struct ProjectShown {
    pub name: String,
    pub repo: String,
    pub branch: String,
    pub mirror_of: Option<String>,
    /// Environment -> how many settings it has.
    pub environments: BTreeMap<String, EnvironmentShown>,
    pub source: SourceView,
    /// Whether a webhook secret is set (never its value).
    pub webhook_secret: bool,
    pub auto_deploy: Vec<AutoDeployRule>,
    pub preview_rules: Vec<PreviewRule>,
    /// The previews there are now, with the head commit last pushed.
    pub previews: Vec<PreviewView>,
}

#[derive(Debug, Serialize)]
pub struct EnvironmentShown {
    pub settings: usize,
}

/// One setting as `env list` prints it: a secret's value is never read.
#[derive(Debug)]
pub struct SettingShown {
    pub key: String,
    pub value: Option<String>,
    pub secret: bool,
    pub fingerprint: String,
}

/// What removing an environment did.
#[derive(Debug, Deserialize)]
pub struct PreviewRemoved {
    pub environment: String,
    pub reason: String,
    pub cancelled: Vec<Uuid>,
    pub retired: Option<Uuid>,
    pub route_removed: bool,
}

/// What `project auto-deploy` does.
#[derive(Debug, Clone)]
pub enum RuleChange {
    Set { branch: String, env: String, poll_seconds: Option<u64> },
    Remove { branch: String },
    List,
}

/// What `project preview` does.
#[derive(Debug, Clone)]
pub enum PreviewChange {
    Set { trigger: PreviewTrigger, inherit: String, ttl_seconds: Option<u64> },
    Remove { trigger: PreviewTrigger },
    List,
}

pub async fn run(backend: &impl Projects, cmd: ProjectCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ProjectCmd::Create { name, repo, mirror_of, branch, environments, source } => {
            let (change, public_key) = source_args::change(&source, None, &name)?;
            let repository = repo.as_deref().map(absolute_repo).unwrap_or_default();
            let envs = environments.join(", ");
            let new = NewProject { name: name.clone(), repository, default_branch: branch, environments, mirror_of };
            let local = new.repository.strip_prefix("file://").unwrap_or(&new.repository).to_string();
            backend.create(new, change).await?;
            println!("project {name} created with environments {envs}");
            // Workers resolve the path on their own hosts, so it may exist
            // only there; here, it is most likely a typo.
            if local.starts_with('/') && !std::path::Path::new(&local).exists() {
                eprintln!("note: {local} does not exist on this host; the first deployment fails unless it does where the workers run");
            }
            print_deploy_key(public_key.as_deref());
        }
        ProjectCmd::Source { name, source, forget } => {
            let (change, public_key) = source_args::change(&source, Some(&forget), &name)?;
            backend.change_source(&name, change).await?;
            println!("source access of {name} changed; deployments requested from now on use it");
            print_deploy_key(public_key.as_deref());
        }
        ProjectCmd::List { limit, after } => print_list(&backend.list(after.as_deref(), limit).await?, json)?,
        ProjectCmd::Show { name } => print_project(&backend.show(&name).await?, json)?,
        ProjectCmd::Remove { name, yes: false } => {
            return Err(exit::usage(format!(
                "removing project {name} takes every environment of it down (deployments cancelled, containers retired, routes \
                 removed) and its name is never used again; pass --yes to remove it"
            )));
        }
        ProjectCmd::Remove { name, yes: true } => {
            let removed = backend.remove(&name).await?;
            if json {
                let environments: Vec<Value> = removed.iter().map(removed_json).collect();
                print_json(&json!({"project": name, "environments": environments}))?;
            } else {
                for r in &removed {
                    print_removed(&name, r, false)?;
                }
                println!("project {name} removed");
            }
        }
        ProjectCmd::Webhook { project, action: WebhookCmd::Rotate } => {
            let secret = backend.rotate_webhook_secret(&project).await?;
            print_webhook_secret(&project, &secret, json)?
        }
        ProjectCmd::AutoDeploy { project, action } => {
            let change = match action {
                AutoDeployCmd::Set { branch, env, poll } => {
                    let poll_seconds = match poll.as_deref().map(slipway_proto::config::Interval::parse) {
                        None => None,
                        Some(Ok(every)) => Some(every.0.as_secs()),
                        Some(Err(why)) => return Err(exit::usage(format!("--poll: {why}"))),
                    };
                    RuleChange::Set { branch, env, poll_seconds }
                }
                AutoDeployCmd::Remove { branch } => RuleChange::Remove { branch },
                AutoDeployCmd::List => RuleChange::List,
            };
            backend.change_rule(&project, &change).await?;
            print_rules(&project, &backend.show(&project).await?.auto_deploy, json)?
        }
        ProjectCmd::Preview { project, action } => {
            let change = match action {
                PreviewCmd::Set { trigger, inherit, ttl } => {
                    let ttl_seconds = ttl.as_deref().map(preview::parse_ttl).transpose().map_err(exit::usage)?;
                    PreviewChange::Set { trigger: trigger.trigger(), inherit, ttl_seconds }
                }
                PreviewCmd::Remove { trigger } => PreviewChange::Remove { trigger: trigger.trigger() },
                PreviewCmd::List => PreviewChange::List,
            };
            backend.change_preview_rule(&project, &change).await?;
            print_preview_rules(&backend.show(&project).await?, json)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn env(backend: &impl Projects, cmd: EnvCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        EnvCmd::Set { project, env, pairs, secret } => {
            let set = parse_assignments(&pairs, secret)?;
            let keys: Vec<String> = set.iter().map(|s| s.key.clone()).collect();
            backend.change_settings(&project, &env, set, vec![]).await?;
            println!("{project} {env}: set {}", keys.join(", "));
        }
        EnvCmd::Unset { project, env, keys } => {
            backend.change_settings(&project, &env, vec![], keys.clone()).await?;
            println!("{project} {env}: removed {}", keys.join(", "));
        }
        EnvCmd::List { project, env } => {
            let settings = backend.settings(&project, &env).await?;
            if settings.is_empty() && !json {
                // On standard error: the output stays KEY=VALUE lines only.
                eprintln!("{project} {env} has no settings; add one with `slipway env set {project} {env} KEY=VALUE`");
            }
            print_settings(&settings, json)?
        }
        EnvCmd::Protect { project, env, approvals } => {
            backend.protect(&project, &env, approvals).await?;
            match approvals {
                0 => println!("{project} {env}: deployments need no approval"),
                n => println!("{project} {env}: a deployment waits for {n} approval(s) by someone other than its requester"),
            }
        }
        EnvCmd::Freeze { project, env, schedule, remove: true, .. } => {
            backend.remove_freeze(&project, &env, &schedule).await?;
            println!("{project} {env}: the freeze window \"{schedule}\" is removed");
        }
        EnvCmd::Add { project, env } => {
            backend.add_environment(&project, &env).await?;
            println!("{project} {env}: added; set its settings with `slipway env set {project} {env} KEY=VALUE`, then deploy");
        }
        EnvCmd::Remove { project, env, yes: false } => {
            return Err(exit::usage(format!(
                "removing {project} {env} cancels its deployments, retires its containers and removes its route; \
                 pass --yes to remove it"
            )));
        }
        EnvCmd::Remove { project, env, yes: true } => {
            let r = backend.remove_environment(&project, &env, Removable::Any).await?;
            print_removed(&project, &r, json)?;
        }
        EnvCmd::Freeze { project, env, schedule, duration, remove: false } => {
            let seconds = slipway_engine::protection::parse_duration(duration.as_deref().unwrap_or_default()).map_err(exit::usage)?;
            backend.set_freeze(&project, &env, &schedule, seconds).await?;
            println!("{project} {env}: frozen from each \"{schedule}\" (UTC) for {}", slipway_engine::protection::duration_text(seconds));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn previews(backend: &impl Projects, cmd: PreviewsCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        PreviewsCmd::Approve { project, env } => {
            let (deployment, who) = backend.approve_preview(&project, &env).await?;
            if json {
                print_json(&json!({"environment": env, "deployment": deployment, "approved_by": who}))?;
            } else {
                println!("{project} {env}: approved by {who}; deployment {deployment} requested");
            }
        }
        PreviewsCmd::Remove { project, env } => {
            let r = backend.remove_environment(&project, &env, Removable::Previews).await?;
            print_removed(&project, &r, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn removed_json(r: &PreviewRemoved) -> Value {
    json!({"environment": r.environment, "reason": r.reason, "cancelled": r.cancelled, "retired": r.retired, "route_removed": r.route_removed})
}

/// What removing an environment did.
fn print_removed(project: &str, r: &PreviewRemoved, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&removed_json(r));
    }
    println!(
        "{project} {} removed: {} deployment(s) cancelled{}{}",
        r.environment,
        r.cancelled.len(),
        r.retired.map(|d| format!(", release {d} retired")).unwrap_or_default(),
        if r.route_removed { ", route removed" } else { "" }
    );
    Ok(())
}

/// A relative repository path is made absolute: workers may run elsewhere.
fn absolute_repo(repo: &str) -> String {
    let path = std::path::Path::new(repo);
    if repo.contains("://") || path.is_absolute() {
        return repo.to_string();
    }
    std::fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or_else(|_| repo.to_string())
}

/// The public half of a deploy key made here, for the git host.
fn print_deploy_key(public_key: Option<&str>) {
    if let Some(public) = public_key {
        println!("deploy key (add it to the repository as a read-only deploy key):\n{public}");
    }
}

fn print_list(projects: &[ProjectSummary], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&serde_json::to_value(projects)?);
    }
    for p in projects {
        println!("{:<24} {}  ({})", p.name, p.repo, p.environments.join(", "));
    }
    Ok(())
}

fn print_project(p: &ProjectShown, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&serde_json::to_value(p)?);
    }
    println!("project     {}\nrepository  {}\nbranch      {}", p.name, p.repo, p.branch);
    if !p.source.credentials.is_empty() {
        println!("credentials {} (secret)", p.source.credentials.join(", "));
    }
    if let Some(public) = &p.source.deploy_key {
        println!("deploy key  {public}");
    }
    for known in &p.source.known_hosts {
        println!("host key    {known}");
    }
    if p.source.submodules {
        println!("submodules  on");
    }
    for (env, shown) in &p.environments {
        println!("environment {env}: {} setting(s)", shown.settings);
    }
    println!("webhook     {}", if p.webhook_secret { "secret set" } else { "no secret (`slipway project webhook NAME rotate`)" });
    for rule in &p.auto_deploy {
        println!("auto-deploy {} -> {}", rule.branch, rule.environment);
    }
    Ok(())
}

/// Prints the new secret alone on standard output (so
/// `SECRET=$(slipway project webhook P rotate)` works); where to send
/// webhooks goes to standard error.
fn print_webhook_secret(project: &str, secret: &str, json: bool) -> anyhow::Result<()> {
    if json {
        let hooks: serde_json::Map<String, Value> =
            WebhookProvider::ALL.iter().map(|p| (p.to_string(), json!(format!("/api/hooks/{p}/{project}")))).collect();
        return print_json(&json!({ "secret": secret, "hooks": hooks }));
    }
    println!("{secret}");
    eprintln!(
        "the new webhook secret of {project}, shown this once (the old one no longer verifies);\n\
         send pushes to http://SERVER/api/hooks/PROVIDER/{project} (PROVIDER: github, gitlab, gitea, generic)"
    );
    Ok(())
}

fn print_rules(project: &str, rules: &[AutoDeployRule], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&json!(rules));
    }
    if rules.is_empty() {
        eprintln!("project {project} has no auto-deploy rules; `slipway project auto-deploy {project} set main test` adds one");
    }
    let width = rules.iter().map(|r| r.branch.len()).max().unwrap_or(0);
    for rule in rules {
        match rule.poll_seconds {
            Some(every) => println!("{:<width$}  -> {} (also polled every {every}s)", rule.branch, rule.environment),
            None => println!("{:<width$}  -> {}", rule.branch, rule.environment),
        }
    }
    Ok(())
}

fn print_preview_rules(p: &ProjectShown, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&json!(p.preview_rules));
    }
    if p.preview_rules.is_empty() {
        eprintln!("project {0} has no preview rules; `slipway project preview {0} set --pull-requests --inherit test` adds one", p.name);
    }
    for rule in &p.preview_rules {
        println!(
            "{}  -> previews inheriting {}, removed after {} without a push",
            rule.trigger,
            rule.inherit,
            preview::describe_seconds(rule.ttl_seconds)
        );
    }
    for shown in &p.previews {
        let head = match shown.head.as_deref() {
            Some(h) if shown.awaiting_approval => {
                format!(": head {} awaiting approval (slipway preview approve {} {})", push::short(h), p.name, shown.name)
            }
            Some(h) => format!(" at {}", push::short(h)),
            None => String::new(),
        };
        println!("preview {}{head}", shown.name);
    }
    Ok(())
}

fn print_settings(settings: &[SettingShown], json: bool) -> anyhow::Result<()> {
    let shown = |s: &SettingShown| if s.secret { "(secret)".to_string() } else { s.value.clone().unwrap_or_default() };
    if json {
        let all: serde_json::Map<String, Value> = settings
            .iter()
            .map(|s| (s.key.clone(), json!({ "value": shown(s), "secret": s.secret, "fingerprint": s.fingerprint })))
            .collect();
        return print_json(&Value::Object(all));
    }
    for s in settings {
        println!("{}={}    [{}]", s.key, shown(s), s.fingerprint);
    }
    Ok(())
}

/// Parses `KEY=VALUE` arguments: `KEY=-` takes the value from standard
/// input (one key at most), `KEY=@FILE` from a file, `KEY=@@...` is a
/// value that starts with `@`. A value read whole loses one trailing newline.
fn parse_assignments(pairs: &[String], secret: bool) -> anyhow::Result<Vec<SettingValue>> {
    if pairs.iter().filter(|p| p.split_once('=').is_some_and(|(_, v)| v == "-")).count() > 1 {
        return Err(exit::usage("only one KEY=- can read standard input"));
    }
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| exit::usage(format!("`{pair}`: expected KEY=VALUE")))?;
            let value = if value == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| exit::usage(format!("{key}: reading standard input: {e}")))?;
                without_newline(text)
            } else if let Some(escaped) = value.strip_prefix("@@") {
                format!("@{escaped}")
            } else if let Some(file) = value.strip_prefix('@') {
                let text = std::fs::read_to_string(file).map_err(|e| exit::usage(format!("{key}: reading {file}: {e}")))?;
                without_newline(text)
            } else {
                value.to_string()
            };
            Ok(SettingValue { key: key.into(), value, secret })
        })
        .collect()
}

fn without_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}
