//! The project verbs against the store: `project` (create, list, show,
//! source, webhook, auto-deploy and preview rules), `env` (an environment's
//! settings) and `preview` (approve, remove). Each change goes through the
//! engine's requests, whose refusals keep their kind (`exit::rejected`);
//! read views print text, or one JSON document with `--json`.

use std::process::ExitCode;

use serde_json::{json, Value};
use slipway_engine::queries;
use slipway_engine::rejection::Rejection;
use slipway_engine::requests::{self, NewProject, SettingValue};
use slipway_engine::source::SourceChange;
use slipway_engine::{auto_deploy, lifecycle, preview};
use slipway_proto::event::{PreviewTrigger, WebhookProvider};
use slipway_store::EventStore;

use crate::actor::actor;
use crate::args::{AutoDeployCmd, EnvCmd, PreviewCmd, PreviewsCmd, ProjectCmd, WebhookCmd};
use crate::exit::{self, not_found};
use crate::source_args;
use crate::verbs::print_json;

pub async fn run(store: &dyn EventStore, cmd: ProjectCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ProjectCmd::Create { name, repo, mirror_of, branch, environments, source } => {
            let (change, public_key) = source_args::change(&source, None, &name)?;
            let repository = repo.as_deref().map(absolute_repo).unwrap_or_default();
            let new = NewProject { name, repository, default_branch: branch, environments, mirror_of };
            project_create(store, new, change, public_key).await?;
        }
        ProjectCmd::Source { name, source, forget } => {
            let (change, public_key) = source_args::change(&source, Some(&forget), &name)?;
            project_source(store, &name, change, public_key).await?;
        }
        ProjectCmd::List { limit, after } => project_list(store, after.as_deref(), limit, json).await?,
        ProjectCmd::Show { name } => project_show(store, &name, json).await?,
        ProjectCmd::Webhook { project, action: WebhookCmd::Rotate } => webhook_rotate(store, &project, json).await?,
        ProjectCmd::AutoDeploy { project, action } => {
            let rule = match action {
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
            auto_deploy(store, &project, rule, json).await?
        }
        ProjectCmd::Preview { project, action } => {
            let change = match action {
                PreviewCmd::Set { trigger, inherit, ttl } => PreviewChange::Set { trigger: trigger.trigger(), inherit, ttl },
                PreviewCmd::Remove { trigger } => PreviewChange::Remove { trigger: trigger.trigger() },
                PreviewCmd::List => PreviewChange::List,
            };
            preview_rules(store, &project, change, json).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn env(store: &dyn EventStore, cmd: EnvCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        EnvCmd::Set { project, env, pairs, secret } => {
            let set = parse_assignments(&pairs, secret)?;
            env_set(store, &project, &env, set).await?
        }
        EnvCmd::Unset { project, env, keys } => env_unset(store, &project, &env, keys).await?,
        EnvCmd::List { project, env } => env_list(store, &project, &env, json).await?,
        EnvCmd::Protect { project, env, approvals } => {
            slipway_engine::protection::protect(store, &crate::actor::actor(), &project, &env, approvals).await?.map_err(exit::rejected)?;
            match approvals {
                0 => println!("{project} {env}: deployments need no approval"),
                n => println!("{project} {env}: a deployment waits for {n} approval(s) by someone other than its requester"),
            }
        }
        EnvCmd::Freeze { project, env, schedule, remove: true, .. } => {
            slipway_engine::protection::remove_freeze(store, &crate::actor::actor(), &project, &env, &schedule)
                .await?
                .map_err(exit::rejected)?;
            println!("{project} {env}: the freeze window \"{schedule}\" is removed");
        }
        EnvCmd::Freeze { project, env, schedule, duration, remove: false } => {
            let seconds = slipway_engine::protection::parse_duration(duration.as_deref().unwrap_or_default()).map_err(exit::usage)?;
            slipway_engine::protection::set_freeze(store, &crate::actor::actor(), &project, &env, &schedule, seconds)
                .await?
                .map_err(exit::rejected)?;
            println!("{project} {env}: frozen from each \"{schedule}\" (UTC) for {seconds}s");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn previews(store: &dyn EventStore, cmd: PreviewsCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        PreviewsCmd::Approve { project, env } => preview_approve(store, &project, &env, json).await?,
        PreviewsCmd::Remove { project, env } => preview_remove(store, &project, &env, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A relative repository path is made absolute: workers may run elsewhere.
fn absolute_repo(repo: &str) -> String {
    let path = std::path::Path::new(repo);
    if repo.contains("://") || path.is_absolute() {
        return repo.to_string();
    }
    std::fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or_else(|_| repo.to_string())
}

fn granted<T>(outcome: Result<Result<T, Rejection>, slipway_store::StoreError>) -> anyhow::Result<T> {
    match outcome? {
        Ok(v) => Ok(v),
        Err(rejection) => Err(exit::rejected(rejection)),
    }
}

async fn project_create(store: &dyn EventStore, new: NewProject, source: SourceChange, public_key: Option<String>) -> anyhow::Result<()> {
    let name = new.name.clone();
    let envs = new.environments.join(", ");
    granted(requests::create_project_with_source(store, &actor(), new, source).await)?;
    println!("project {name} created with environments {envs}");
    print_deploy_key(public_key.as_deref());
    Ok(())
}

async fn project_source(store: &dyn EventStore, name: &str, change: SourceChange, public_key: Option<String>) -> anyhow::Result<()> {
    granted(requests::change_source(store, &actor(), name, change).await)?;
    println!("source access of {name} changed; deployments requested from now on use it");
    print_deploy_key(public_key.as_deref());
    Ok(())
}

/// The public half of a deploy key made here, for the git host.
fn print_deploy_key(public_key: Option<&str>) {
    if let Some(public) = public_key {
        println!("deploy key (add it to the repository as a read-only deploy key):\n{public}");
    }
}

async fn project_list(store: &dyn EventStore, after: Option<&str>, limit: usize, json: bool) -> anyhow::Result<()> {
    let (projects, _) = queries::projects(store, after, limit).await?;
    if json {
        return print_json(&serde_json::to_value(&projects)?);
    }
    for p in &projects {
        println!("{:<24} {}  ({})", p.name, p.repo, p.environments.join(", "));
    }
    Ok(())
}

async fn project_show(store: &dyn EventStore, name: &str, json: bool) -> anyhow::Result<()> {
    let Some(p) = requests::load_project(store, name).await? else { return Err(not_found(format!("no project `{name}`"))) };
    if json {
        let environments: serde_json::Map<String, Value> =
            p.environments.iter().map(|(env, settings)| (env.clone(), json!({ "settings": settings.len() }))).collect();
        return print_json(&json!({
            "name": p.name, "repo": p.repository, "branch": p.default_branch, "mirror_of": p.mirror_of, "environments": environments,
            "source": { "credentials": p.source.credentials.keys().collect::<Vec<_>>(), "known_hosts": p.source.known_hosts, "submodules": p.source.submodules },
            "webhook_secret": p.webhook_secret.is_some(), "auto_deploy": p.auto_deploy,
        }));
    }
    println!("project     {}\nrepository  {}\nbranch      {}", p.name, p.repository, p.default_branch);
    if !p.source.credentials.is_empty() {
        let names: Vec<&str> = p.source.credentials.keys().map(String::as_str).collect();
        println!("credentials {} (secret)", names.join(", "));
    }
    for known in &p.source.known_hosts {
        println!("host key    {known}");
    }
    if p.source.submodules {
        println!("submodules  on");
    }
    for (env, settings) in &p.environments {
        println!("environment {env}: {} setting(s)", settings.len());
    }
    println!("webhook     {}", if p.webhook_secret.is_some() { "secret set" } else { "no secret (`slipway project webhook NAME rotate`)" });
    for rule in &p.auto_deploy {
        println!("auto-deploy {} -> {}", rule.branch, rule.environment);
    }
    Ok(())
}

/// Generates the project's webhook secret anew and prints it, alone on
/// standard output (so `SECRET=$(slipway project webhook P rotate)` works);
/// where to send webhooks goes to standard error.
async fn webhook_rotate(store: &dyn EventStore, project: &str, json: bool) -> anyhow::Result<()> {
    let secret = granted(auto_deploy::rotate_webhook_secret(store, &actor(), project).await)?;
    let hooks: serde_json::Map<String, Value> =
        WebhookProvider::ALL.iter().map(|p| (p.to_string(), json!(format!("/api/hooks/{p}/{project}")))).collect();
    if json {
        return print_json(&json!({ "secret": secret, "hooks": hooks }));
    }
    println!("{secret}");
    eprintln!(
        "the new webhook secret of {project}, shown this once (the old one no longer verifies);\n\
         send pushes to http://SERVER/api/hooks/PROVIDER/{project} (PROVIDER: github, gitlab, gitea, generic)"
    );
    Ok(())
}

/// What `project auto-deploy` does.
#[derive(Debug, Clone)]
enum RuleChange {
    Set { branch: String, env: String, poll_seconds: Option<u64> },
    Remove { branch: String },
    List,
}

/// Sets or removes an auto-deploy rule, then prints every rule.
async fn auto_deploy(store: &dyn EventStore, project: &str, change: RuleChange, json: bool) -> anyhow::Result<()> {
    match &change {
        RuleChange::Set { branch, env, poll_seconds } => {
            granted(auto_deploy::set_rule(store, &actor(), project, branch, env, *poll_seconds).await)?
        }
        RuleChange::Remove { branch } => granted(auto_deploy::remove_rule(store, &actor(), project, branch).await)?,
        RuleChange::List => {}
    }
    let Some(p) = requests::load_project(store, project).await? else {
        return Err(not_found(format!("no project `{project}`; create it with `slipway project create`")));
    };
    if json {
        return print_json(&json!(p.auto_deploy));
    }
    if p.auto_deploy.is_empty() {
        eprintln!("project {project} has no auto-deploy rules; `slipway project auto-deploy {project} set main test` adds one");
    }
    let width = p.auto_deploy.iter().map(|r| r.branch.len()).max().unwrap_or(0);
    for rule in &p.auto_deploy {
        match rule.poll_seconds {
            Some(every) => println!("{:<width$}  -> {} (also polled every {every}s)", rule.branch, rule.environment),
            None => println!("{:<width$}  -> {}", rule.branch, rule.environment),
        }
    }
    Ok(())
}

/// What `project preview` does.
#[derive(Debug, Clone)]
enum PreviewChange {
    Set { trigger: PreviewTrigger, inherit: String, ttl: Option<String> },
    Remove { trigger: PreviewTrigger },
    List,
}

/// Sets or removes a preview rule, then prints every rule.
async fn preview_rules(store: &dyn EventStore, project: &str, change: PreviewChange, json: bool) -> anyhow::Result<()> {
    match change {
        PreviewChange::Set { trigger, inherit, ttl } => {
            let ttl = ttl.as_deref().map(preview::parse_ttl).transpose().map_err(exit::usage)?;
            granted(lifecycle::set_rule(store, &actor(), project, trigger, &inherit, ttl).await)?
        }
        PreviewChange::Remove { trigger } => granted(lifecycle::remove_rule(store, &actor(), project, trigger).await)?,
        PreviewChange::List => {}
    }
    let Some(p) = requests::load_project(store, project).await? else {
        return Err(not_found(format!("no project `{project}`; create it with `slipway project create`")));
    };
    if json {
        return print_json(&json!(p.preview_rules));
    }
    if p.preview_rules.is_empty() {
        eprintln!(
            "project {project} has no preview rules; `slipway project preview {project} set --pull-requests --inherit test` adds one"
        );
    }
    for rule in &p.preview_rules {
        println!(
            "{}  -> previews inheriting {}, removed after {} without a push",
            rule.trigger,
            rule.inherit,
            preview::describe_seconds(rule.ttl_seconds)
        );
    }
    for (name, preview) in &p.previews {
        let head = preview.head.as_deref().map(|h| format!(" at {}", slipway_engine::push::short(h))).unwrap_or_default();
        println!("preview {name}{head}");
    }
    Ok(())
}

fn load_rejected<T>(outcome: Result<Result<T, Rejection>, slipway_engine::load::LoadError>) -> anyhow::Result<T> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(rejection)) => Err(exit::rejected(rejection)),
        Err(slipway_engine::load::LoadError::Store(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("{e}; check the log with `slipway audit verify`")),
    }
}

/// Approves a fork's head commit on a preview and requests its deployment.
async fn preview_approve(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    let who = actor();
    let deployment = load_rejected(lifecycle::approve(store, &who, project, env).await)?;
    if json {
        return print_json(&json!({"environment": env, "deployment": deployment, "approved_by": who}));
    }
    println!("{project} {env}: approved by {who}; deployment {deployment} requested");
    Ok(())
}

/// Removes a preview now.
async fn preview_remove(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    let who = actor();
    let r = load_rejected(lifecycle::remove_environment(store, &who, project, env, &format!("removed by {who}")).await)?;
    if json {
        return print_json(
            &json!({"environment": r.name, "reason": r.reason, "cancelled": r.cancelled, "retired": r.retired, "route_removed": r.route_removed}),
        );
    }
    println!(
        "{project} {env} removed: {} deployment(s) cancelled{}{}",
        r.cancelled.len(),
        r.retired.map(|d| format!(", release {d} retired")).unwrap_or_default(),
        if r.route_removed { ", route removed" } else { "" }
    );
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

async fn env_set(store: &dyn EventStore, project: &str, env: &str, set: Vec<SettingValue>) -> anyhow::Result<()> {
    let keys: Vec<String> = set.iter().map(|s| s.key.clone()).collect();
    granted(requests::change_settings(store, &actor(), project, env, set, vec![]).await)?;
    println!("{project} {env}: set {}", keys.join(", "));
    Ok(())
}

async fn env_unset(store: &dyn EventStore, project: &str, env: &str, keys: Vec<String>) -> anyhow::Result<()> {
    granted(requests::change_settings(store, &actor(), project, env, vec![], keys.clone()).await)?;
    println!("{project} {env}: removed {}", keys.join(", "));
    Ok(())
}

async fn env_list(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    let Some(p) = requests::load_project(store, project).await? else { return Err(not_found(format!("no project `{project}`"))) };
    let Some(settings) = p.environments.get(env) else {
        return Err(not_found(format!("project `{project}` has no environment `{env}`")));
    };
    let fingerprints: Vec<String> = settings.values().map(|s| s.fingerprint.clone()).collect();
    let values = store.values(&fingerprints).await?;
    let mut all = serde_json::Map::new();
    for (key, s) in settings {
        let shown = if s.secret { "(secret)".to_string() } else { values.get(&s.fingerprint).cloned().unwrap_or_default() };
        if !json {
            println!("{key}={shown}    [{}]", s.fingerprint);
        }
        all.insert(key.clone(), json!({ "value": shown, "secret": s.secret, "fingerprint": s.fingerprint }));
    }
    if json {
        print_json(&Value::Object(all))?;
    }
    Ok(())
}
