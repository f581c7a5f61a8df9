//! The client verbs that read or change projects, settings and
//! deployments directly in the store. Each read verb prints text for
//! people or, with `--json`, one JSON document whose fields follow the HTTP
//! API's answers where the API has the same view.

use futures::TryStreamExt;
use serde_json::{json, Value};
use slipway_engine::limits::release_limits;
use slipway_engine::load;
use slipway_engine::projector;
use slipway_engine::requests::{self, NewProject, SettingValue};
use slipway_engine::source::SourceChange;
use slipway_engine::{auto_deploy, lifecycle, preview};
use slipway_proto::event::PreviewTrigger;
use slipway_proto::event::{deployment_stream, WebhookProvider};
use slipway_proto::Event;
use slipway_store::read_model::{parse_since, Before, DeploymentQuery, STATUSES};
use slipway_store::{EventStore, Position};
use uuid::Uuid;

use crate::exit::{self, not_found};
use crate::render;

/// Prints one JSON document.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Who the events name as their actor.
pub fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

fn granted<T>(outcome: Result<Result<T, requests::Rejection>, slipway_store::StoreError>) -> anyhow::Result<T> {
    match outcome? {
        Ok(v) => Ok(v),
        Err(rejection) => Err(exit::rejected(rejection)),
    }
}

pub async fn project_create(
    store: &dyn EventStore,
    new: NewProject,
    source: SourceChange,
    public_key: Option<String>,
) -> anyhow::Result<()> {
    let name = new.name.clone();
    let envs = new.environments.join(", ");
    granted(requests::create_project_with_source(store, &actor(), new, source).await)?;
    println!("project {name} created with environments {envs}");
    print_deploy_key(public_key.as_deref());
    Ok(())
}

pub async fn project_source(store: &dyn EventStore, name: &str, change: SourceChange, public_key: Option<String>) -> anyhow::Result<()> {
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

pub async fn project_list(store: &dyn EventStore, after: Option<&str>, limit: usize, json: bool) -> anyhow::Result<()> {
    let (projects, _) = projector::projects(store, after, limit).await?;
    if json {
        let all: Vec<Value> = projects
            .iter()
            .map(|p| json!({ "name": p.name, "repo": p.repository, "mirror_of": p.mirror_of, "environments": p.environments }))
            .collect();
        return print_json(&Value::Array(all));
    }
    for p in &projects {
        println!("{:<24} {}  ({})", p.name, p.repository, p.environments.join(", "));
    }
    Ok(())
}

pub async fn project_show(store: &dyn EventStore, name: &str, json: bool) -> anyhow::Result<()> {
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
pub async fn webhook_rotate(store: &dyn EventStore, project: &str, json: bool) -> anyhow::Result<()> {
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
pub enum RuleChange {
    Set { branch: String, env: String, poll_seconds: Option<u64> },
    Remove { branch: String },
    List,
}

/// Sets or removes an auto-deploy rule, then prints every rule.
pub async fn auto_deploy(store: &dyn EventStore, project: &str, change: RuleChange, json: bool) -> anyhow::Result<()> {
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
pub enum PreviewChange {
    Set { trigger: PreviewTrigger, inherit: String, ttl: Option<String> },
    Remove { trigger: PreviewTrigger },
    List,
}

/// Sets or removes a preview rule, then prints every rule.
pub async fn preview_rules(store: &dyn EventStore, project: &str, change: PreviewChange, json: bool) -> anyhow::Result<()> {
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

fn load_rejected<T>(outcome: Result<Result<T, requests::Rejection>, slipway_engine::load::LoadError>) -> anyhow::Result<T> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(rejection)) => Err(exit::rejected(rejection)),
        Err(slipway_engine::load::LoadError::Store(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("{e}; check the log with `slipway audit verify`")),
    }
}

/// Approves a fork's head commit on a preview and requests its deployment.
pub async fn preview_approve(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    let who = actor();
    let deployment = load_rejected(lifecycle::approve(store, &who, project, env).await)?;
    if json {
        return print_json(&json!({"environment": env, "deployment": deployment, "approved_by": who}));
    }
    println!("{project} {env}: approved by {who}; deployment {deployment} requested");
    Ok(())
}

/// Removes a preview now.
pub async fn preview_remove(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
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
pub fn parse_assignments(pairs: &[String], secret: bool) -> anyhow::Result<Vec<SettingValue>> {
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

pub async fn env_set(store: &dyn EventStore, project: &str, env: &str, set: Vec<SettingValue>) -> anyhow::Result<()> {
    let keys: Vec<String> = set.iter().map(|s| s.key.clone()).collect();
    granted(requests::change_settings(store, &actor(), project, env, set, vec![]).await)?;
    println!("{project} {env}: set {}", keys.join(", "));
    Ok(())
}

pub async fn env_unset(store: &dyn EventStore, project: &str, env: &str, keys: Vec<String>) -> anyhow::Result<()> {
    granted(requests::change_settings(store, &actor(), project, env, vec![], keys.clone()).await)?;
    println!("{project} {env}: removed {}", keys.join(", "));
    Ok(())
}

pub async fn env_list(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
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

/// Refuses an unknown project or environment (a read of an environment
/// stream that was never written is empty, not an error).
async fn require_environment(store: &dyn EventStore, project: &str, env: &str) -> anyhow::Result<()> {
    let Some(p) = requests::load_project(store, project).await? else { return Err(not_found(format!("no project `{project}`"))) };
    if !p.environments.contains_key(env) {
        let known: Vec<&String> = p.environments.keys().collect();
        let known = known.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
        return Err(not_found(format!("project `{project}` has no environment `{env}` (it has: {known})")));
    }
    Ok(())
}

pub async fn status(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    require_environment(store, project, env).await?;
    let state = load::environment(store, project, env).await?;
    let routes = router_urls(store, project, env).await?;
    let domains = {
        let (recorded, certs) = (load::routes(store).await?, slipway_engine::certificates::load(store).await?);
        let names = slipway_engine::domains::of_environment(&recorded.domains, project, env);
        names
            .into_iter()
            .map(|d| {
                let state = certs.by_domain.get(&d).cloned().unwrap_or_default();
                (d, state)
            })
            .collect::<Vec<_>>()
    };
    let active = match state.last_succeeded() {
        None => None,
        Some(id) => {
            let mut d = deployment(store, id).await?;
            // Where it answers now (the host agent follows a new port).
            d.context.web_port = state.active.as_ref().and_then(|a| a.web_port()).or(d.context.web_port);
            Some((id, d))
        }
    };
    if json {
        let running_status = match state.queue.first() {
            Some(id) => Some(deployment(store, *id).await?.status_word()),
            None => None,
        };
        let active = active.map(|(id, d)| {
            json!({
                "deployment": id,
                "commit": d.context.commit,
                "image": d.context.image_id,
                "web": d.context.web_port.map(|p| format!("http://127.0.0.1:{p}/")),
                "limits": release_limits(&d.context.config),
                "live": state.shown_live(),
            })
        });
        let url = routes.first().map(|r| r.url.clone()).or_else(|| active.as_ref().and_then(|a| a["web"].as_str().map(str::to_string)));
        return print_json(&json!({
            "project": project,
            "environment": env,
            "url": url,
            "active": active,
            "routes": routes.iter().map(|r| json!({ "url": r.url, "router": r.router })).collect::<Vec<_>>(),
            "running": state.queue.first(),
            "running_status": running_status,
            "queue": state.queue,
            "domains": domains.iter().map(|(d, state)| crate::certs::certificate_json(d, state)).collect::<Vec<_>>(),
        }));
    }
    match active {
        None => println!("{project} {env}: nothing deployed yet"),
        Some((id, d)) => {
            println!(
                "{project} {env}: serving deployment {id}\n  commit {}\n  image  {}\n  web    {}\n  limits {}",
                d.context.commit.unwrap_or_default(),
                d.context.image_id.unwrap_or_default(),
                d.context.web_port.map(|p| format!("http://127.0.0.1:{p}/")).unwrap_or_else(|| "-".into()),
                release_limits(&d.context.config)
            );
            if let Some(live) = state.shown_live() {
                println!("  live   {}", live.describe());
            }
            for r in &routes {
                println!("  route  {} (router {})", r.url, r.router);
            }
        }
    }
    for (domain, state) in &domains {
        let until = state.current.as_ref().map(|c| format!("certificate until {}", c.not_after.to_rfc3339()));
        println!("  domain {domain} ({}; {})", until.unwrap_or_else(|| "no certificate".into()), state.renewal(domain));
    }
    for (n, id) in state.queue.iter().enumerate() {
        // The head of the queue may be watching its new release, or rolling back.
        let word = match n {
            0 => deployment(store, *id).await.map(|d| d.status_word()).unwrap_or("running"),
            _ => "queued",
        };
        println!("  {word:<7} {id}");
    }
    Ok(())
}

async fn deployment(store: &dyn EventStore, id: Uuid) -> anyhow::Result<slipway_engine::Deployment> {
    load::deployment(store, id).await?.ok_or_else(|| not_found(format!("no deployment {id}")))
}

/// Which page of a project's deployments `deployments` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct DeploymentPage {
    /// Only this environment's.
    #[arg(long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// Only those with this status: running, watching, rolling back, succeeded or failed.
    #[arg(long)]
    pub status: Option<String>,
    /// Only those this actor requested, exactly as recorded (`cli:ann`, `token:ci`, `webhook:github:ann`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only those requested at or after this RFC 3339 time (with --before: a time range).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only those requested before this deployment (its id) or this RFC 3339
    /// time: pass the oldest of a page to see the one before it.
    #[arg(long, value_name = "ID|TIME")]
    pub before: Option<String>,
}

impl DeploymentPage {
    /// The read-model query for `project`'s page.
    pub fn query(&self, project: &str) -> anyhow::Result<DeploymentQuery> {
        if let Some(status) = self.status.as_deref().filter(|s| !STATUSES.contains(s)) {
            return Err(exit::usage(format!("--status `{status}` is not one of: {}", STATUSES.join(", "))));
        }
        let before = self.before.as_deref().map(str::parse::<Before>).transpose().map_err(|why| exit::usage(format!("--before {why}")))?;
        let since = self.since.as_deref().map(parse_since).transpose().map_err(|why| exit::usage(format!("--since {why}")))?;
        Ok(DeploymentQuery {
            project: Some(project.to_string()),
            environment: self.env.clone(),
            status: self.status.clone(),
            actor: self.actor.clone(),
            since,
            before,
            limit: self.limit,
        })
    }
}

pub async fn deployments(store: &dyn EventStore, project: &str, page: &DeploymentPage, json: bool) -> anyhow::Result<()> {
    match &page.env {
        Some(env) => require_environment(store, project, env).await?,
        None if requests::load_project(store, project).await?.is_none() => return Err(not_found(format!("no project `{project}`"))),
        None => {}
    }
    let (mut rows, _) = projector::deployments(store, &page.query(project)?).await?;
    // The newest page, read top to bottom like a log.
    rows.reverse();
    if json {
        let all: Vec<Value> = rows
            .iter()
            .map(|d| {
                let failure = match (&d.failed_step, &d.failed_reason) {
                    (Some(step), Some(reason)) => json!({ "step": step, "reason": reason }),
                    _ => Value::Null,
                };
                json!({
                    "id": d.id, "project": d.project, "environment": d.environment, "ref": d.git_ref,
                    "commit": d.commit, "image": d.image, "status": d.status, "failure": failure,
                    "rollback_of": d.rollback_of, "promoted_from": d.promoted_from,
                })
            })
            .collect();
        return print_json(&Value::Array(all));
    }
    for d in &rows {
        let status = match (&d.failed_step, &d.failed_reason) {
            (Some(step), Some(reason)) if d.status == "failed" => format!("failed at {step}: {reason}"),
            _ => d.status.clone(),
        };
        println!(
            "{}  {:<6} {:<12} {:<10} {status}",
            d.id,
            d.environment,
            d.git_ref,
            d.commit.as_deref().map(|c| &c[..c.len().min(10)]).unwrap_or("-")
        );
    }
    Ok(())
}

pub async fn logs(store: &dyn EventStore, id: Uuid, data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    if recorded.is_empty() {
        return Err(not_found(format!("no deployment {id}")));
    }
    let (mut events, mut logs) = (Vec::new(), Vec::new());
    for r in &recorded {
        if json {
            events.push(render::event_json(r));
        } else {
            println!("{}", render::line(r));
        }
        let log_refs: Vec<String> = match r.envelope.decode::<Event>() {
            Ok(Event::ImageBuilt(b)) => b.log_ref.into_iter().collect(),
            Ok(Event::ReleaseCommandsRan(rc)) => rc.results.into_iter().filter_map(|c| c.log_ref).collect(),
            Ok(Event::StepFailed(f)) if !json => {
                for d in f.details {
                    println!("     | {d}");
                }
                vec![]
            }
            _ => vec![],
        };
        for log in log_refs {
            let path = std::path::Path::new(&log);
            let path = if path.is_absolute() { path.to_path_buf() } else { data_dir.join(path) };
            let text = std::fs::read_to_string(&path);
            if json {
                let (text, error) = match text {
                    Ok(t) => (Some(t), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                logs.push(json!({ "version": r.version, "path": path, "text": text, "error": error }));
                continue;
            }
            match text {
                Ok(text) => text.lines().for_each(|l| println!("     | {l}")),
                Err(e) => println!("     (log {} unavailable: {e})", path.display()),
            }
        }
    }
    if json {
        print_json(&json!({ "deployment": id, "events": events, "logs": logs }))?;
    }
    Ok(())
}

/// An environment's address at one router.
#[derive(Debug, Clone)]
pub struct RouterUrl {
    /// `http://<project>-<env>.<domain>:<port>/`
    pub url: String,
    pub router: String,
}

/// Where each registered router serves an environment.
pub async fn router_urls(store: &dyn EventStore, project: &str, env: &str) -> anyhow::Result<Vec<RouterUrl>> {
    let routers = load::routers(store).await?;
    Ok(routers
        .values()
        .map(|r| {
            let port = r.listen.rsplit(':').next().unwrap_or("80");
            let url = format!("http://{}:{port}/", slipway_node::host_name(project, env, &r.domain));
            RouterUrl { url, router: r.router_id.clone() }
        })
        .collect())
}

pub async fn routers(store: &dyn EventStore, json: bool) -> anyhow::Result<()> {
    let traffic = load::traffic(store).await?;
    let registry = load::routers(store).await?;
    if json {
        let routers: Vec<Value> = registry
            .iter()
            .map(|(id, r)| {
                let acked = traffic.acknowledged.get(id).copied().unwrap_or(0);
                let lease_ms = r.lease_ms.unwrap_or(slipway_engine::lease::DEFAULT_LEASE.as_millis() as u64);
                json!({ "id": id, "listen": r.listen, "domain": r.domain, "lease_ms": lease_ms, "route_version": acked, "current": acked >= traffic.routes_version })
            })
            .collect();
        return print_json(&json!({ "routes_version": traffic.routes_version, "routers": routers }));
    }
    if registry.is_empty() {
        println!("no router is registered (traffic switches complete without waiting)");
    }
    for (id, r) in &registry {
        let acked = traffic.acknowledged.get(id).copied().unwrap_or(0);
        let state = if acked >= traffic.routes_version { "current" } else { "behind" };
        let lease = r.lease_ms.map_or(slipway_engine::lease::DEFAULT_LEASE, std::time::Duration::from_millis);
        println!(
            "{id}  listen {}  domain {}  lease {:?}  route version {acked}/{} ({state})",
            r.listen, r.domain, lease, traffic.routes_version
        );
    }
    Ok(())
}

/// An environment's releases, newest first: what `rollback --to` can choose.
pub async fn releases(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    require_environment(store, project, env).await?;
    let state = load::environment(store, project, env).await?;
    let mut all = Vec::new();
    if state.releases.is_empty() && !json {
        println!("{project} {env}: no release yet");
    }
    let serving = state.last_succeeded();
    for id in state.releases.iter().rev() {
        let (d, events) = load::deployment_with_events(store, *id).await?.ok_or_else(|| not_found(format!("no deployment {id}")))?;
        let mut migrations = Vec::new();
        let mut origin = "built";
        for recorded in &events {
            match recorded.envelope.decode::<Event>() {
                Ok(Event::ReleaseCommandsRan(r)) if !r.skipped => migrations.extend(r.results.iter().map(|c| c.command.clone())),
                Ok(Event::ImageReused(_)) => origin = "re-used",
                _ => {}
            }
        }
        if json {
            all.push(json!({
                "deployment": id, "serving": Some(*id) == serving, "recorded_at": events.first().map(|e| e.recorded_at),
                "commit": d.context.commit, "image": d.context.image_id, "origin": origin,
                "settings": d.context.settings.len(), "ran": migrations,
                "rollback_of": d.rollback_of, "promoted_from": d.promoted_from,
            }));
            continue;
        }
        let when = events.first().map(|e| e.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
        println!(
            "{} {id}  {when}  commit {}  image {} ({origin})  {} setting(s){}{}",
            if Some(*id) == serving { "*" } else { " " },
            d.context.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]),
            d.context.image_id.as_deref().unwrap_or("-"),
            d.context.settings.len(),
            if migrations.is_empty() { String::new() } else { format!("  ran: {}", migrations.join("; ")) },
            match (d.rollback_of, d.promoted_from) {
                (Some(r), _) => format!("  (rollback to {r})"),
                (_, Some(p)) => format!("  (promoted from {p})"),
                _ => String::new(),
            }
        );
    }
    if json {
        print_json(&Value::Array(all))?;
    }
    Ok(())
}

/// Worker processes from their heartbeats: alive, missing (silent for three
/// heartbeat intervals: killed, or cut off) or stopped, and what each is doing.
/// `slipway hosts`: the swarm's nodes as its manager reports them.
pub async fn hosts(json: bool) -> anyhow::Result<()> {
    let rows =
        slipway_workers::steps::swarm::hosts().await.map_err(|f| anyhow::anyhow!("{} (is this engine a Swarm manager?)", f.reason))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for h in rows {
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{:<16} {:<12} {:<6} {:<7} {:<17} {}", h.address, h.id, h.state, h.availability, h.role, labels.join(","));
        for task in &h.tasks {
            println!("    {task}");
        }
    }
    Ok(())
}

pub async fn workers(store: &dyn EventStore, json: bool) -> anyhow::Result<()> {
    let workers = store.workers().await?;
    let mut all = Vec::new();
    if workers.is_empty() && !json {
        println!("no worker has reported yet");
    }
    let now = chrono::Utc::now();
    let missing_after = chrono::Duration::from_std(slipway_workers::worker::HEARTBEAT * 3).unwrap_or_default();
    for w in workers {
        let silent = now - w.last_seen;
        let state = if w.stopped {
            "stopped".to_string()
        } else if silent > missing_after {
            format!("MISSING for {}s", silent.num_seconds())
        } else {
            "alive".to_string()
        };
        if json {
            let state = if w.stopped {
                "stopped"
            } else if silent > missing_after {
                "missing"
            } else {
                "alive"
            };
            all.push(json!({
                "id": w.id, "host": w.host, "state": state, "silent_seconds": silent.num_seconds(),
                "steps": w.steps, "started_at": w.started_at, "last_seen": w.last_seen, "busy": w.busy,
            }));
            continue;
        }
        let doing = if w.busy.is_empty() { "idle".to_string() } else { w.busy.join("; ") };
        println!("{}  {}  {state}  steps {}  since {}  {doing}", w.id, w.host, w.steps.join(","), w.started_at.format("%Y-%m-%d %H:%M:%S"));
    }
    if json {
        print_json(&Value::Array(all))?;
    }
    Ok(())
}

/// Removes the images Slipway built that no environment's last `keep`
/// releases use (`slipway_engine::retention`); `dry_run` only lists them.
pub async fn images_prune(store: &dyn EventStore, keep: usize, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let mut environments = std::collections::BTreeMap::new();
    for (project, env) in load::environment_names(store).await? {
        let mut images = Vec::new();
        for release in load::environment(store, &project, &env).await?.releases {
            images.extend(load::deployment(store, release).await?.and_then(|d| d.context.image_id));
        }
        environments.insert((project, env), images);
    }
    // Image id -> the tags Slipway's builds gave it (another project's
    // identical build can share the id; removing our tags leaves theirs).
    let mut built: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    let mut all = store.stream_all(Position::START);
    while let Some(r) = all.try_next().await? {
        if let Ok(Event::ImageBuilt(b)) = r.envelope.decode::<Event>() {
            built.entry(b.image_id).or_default().push(b.tag);
        }
    }
    let ids = built.keys().cloned().collect();
    let plan = slipway_engine::retention::plan(&environments, &ids, keep);
    let say = |line: String| {
        if !json {
            println!("{line}")
        }
    };
    say(format!("{} image(s) kept (the last {keep} release(s) of each environment), {} to remove", plan.keep.len(), plan.remove.len()));
    let mut removals = Vec::new();
    if dry_run {
        for image in &plan.remove {
            for tag in built.get(image).into_iter().flatten() {
                say(format!("would remove {tag} ({image})"));
                removals.push(json!({ "image": image, "tag": tag, "result": "would_remove" }));
            }
        }
    } else {
        let docker = slipway_workers::steps::docker::connect()
            .await
            .map_err(|e| exit::coded(exit::Exit::Unavailable, format!("connecting to Docker: {e}")))?;
        for image in &plan.remove {
            for tag in built.get(image).into_iter().flatten() {
                let (result, error) = match slipway_workers::steps::docker::remove_image(&docker, tag).await {
                    Ok(true) => ("removed", None),
                    Ok(false) => ("already_gone", None),
                    Err(e) => ("kept", Some(e.to_string())),
                };
                match &error {
                    Some(e) => say(format!("kept {tag} ({image}): {e}")),
                    None => say(format!("{} {tag} ({image})", result.replace('_', " "))),
                }
                removals.push(json!({ "image": image, "tag": tag, "result": result, "error": error }));
            }
        }
    }
    if json {
        print_json(&json!({ "keep": keep, "dry_run": dry_run, "kept": plan.keep, "removals": removals }))?;
    }
    Ok(())
}
