//! The client verbs that read or change projects, settings and
//! deployments directly in the store.

use anyhow::{bail, Context};
use futures::TryStreamExt;
use slipway_engine::load;
use slipway_engine::requests::{self, NewProject, SettingValue};
use slipway_proto::event::deployment_stream;
use slipway_proto::Event;
use slipway_store::{EventStore, Position};
use uuid::Uuid;

use crate::render;

/// Who the events name as their actor.
pub fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

fn granted<T>(outcome: Result<Result<T, requests::Rejection>, slipway_store::StoreError>) -> anyhow::Result<T> {
    match outcome? {
        Ok(v) => Ok(v),
        Err(rejection) => bail!("{rejection}"),
    }
}

pub async fn project_create(store: &dyn EventStore, new: NewProject) -> anyhow::Result<()> {
    let name = new.name.clone();
    let envs = new.environments.join(", ");
    granted(requests::create_project(store, &actor(), new).await)?;
    println!("project {name} created with environments {envs}");
    Ok(())
}

pub async fn project_list(store: &dyn EventStore) -> anyhow::Result<()> {
    for name in requests::project_names(store).await? {
        if let Some(p) = requests::load_project(store, &name).await? {
            println!("{:<24} {}  ({})", p.name, p.repository, p.environments.keys().cloned().collect::<Vec<_>>().join(", "));
        }
    }
    Ok(())
}

pub async fn project_show(store: &dyn EventStore, name: &str) -> anyhow::Result<()> {
    let Some(p) = requests::load_project(store, name).await? else { bail!("no project `{name}`") };
    println!("project     {}\nrepository  {}\nbranch      {}", p.name, p.repository, p.default_branch);
    for (env, settings) in &p.environments {
        println!("environment {env}: {} setting(s)", settings.len());
    }
    Ok(())
}

/// Parses `KEY=VALUE` arguments.
pub fn parse_assignments(pairs: &[String], secret: bool) -> anyhow::Result<Vec<SettingValue>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair.split_once('=').with_context(|| format!("`{pair}`: expected KEY=VALUE"))?;
            Ok(SettingValue { key: key.into(), value: value.into(), secret })
        })
        .collect()
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

pub async fn env_list(store: &dyn EventStore, project: &str, env: &str) -> anyhow::Result<()> {
    let Some(p) = requests::load_project(store, project).await? else { bail!("no project `{project}`") };
    let Some(settings) = p.environments.get(env) else { bail!("project `{project}` has no environment `{env}`") };
    let fingerprints: Vec<String> = settings.values().map(|s| s.fingerprint.clone()).collect();
    let values = store.values(&fingerprints).await?;
    for (key, s) in settings {
        let shown = if s.secret { "(secret)".to_string() } else { values.get(&s.fingerprint).cloned().unwrap_or_default() };
        println!("{key}={shown}    [{}]", s.fingerprint);
    }
    Ok(())
}

pub async fn status(store: &dyn EventStore, project: &str, env: &str) -> anyhow::Result<()> {
    let state = load::environment(store, project, env).await?;
    match state.last_succeeded() {
        None => println!("{project} {env}: nothing deployed yet"),
        Some(id) => {
            let d = deployment(store, id).await?;
            println!(
                "{project} {env}: serving deployment {id}\n  commit {}\n  image  {}\n  web    {}",
                d.context.commit.unwrap_or_default(),
                d.context.image_id.unwrap_or_default(),
                d.context.web_port.map(|p| format!("http://127.0.0.1:{p}/")).unwrap_or_else(|| "-".into())
            );
        }
    }
    for (n, id) in state.queue.iter().enumerate() {
        println!("  {} {id}", if n == 0 { "running" } else { "queued " });
    }
    Ok(())
}

async fn deployment(store: &dyn EventStore, id: Uuid) -> anyhow::Result<slipway_engine::Deployment> {
    load::deployment(store, id).await?.with_context(|| format!("no deployment {id}"))
}

pub async fn deployments(store: &dyn EventStore, project: &str) -> anyhow::Result<()> {
    let mut all = store.stream_all(Position::START);
    let mut ids = Vec::new();
    while let Some(r) = all.try_next().await? {
        if let Ok(Event::DeploymentRequested(req)) = r.envelope.decode::<Event>() {
            if req.project == project {
                ids.push(req.deployment_id);
            }
        }
    }
    for id in ids {
        let d = deployment(store, id).await?;
        let status = match &d.status {
            slipway_engine::Status::Running => "running".to_string(),
            slipway_engine::Status::Succeeded => "succeeded".to_string(),
            slipway_engine::Status::Failed { step, reason } => format!("failed at {step}: {reason}"),
        };
        println!(
            "{id}  {:<6} {:<12} {:<10} {status}",
            d.context.environment,
            d.context.git_ref,
            d.context.commit.as_deref().map(|c| &c[..c.len().min(10)]).unwrap_or("-")
        );
    }
    Ok(())
}

pub async fn logs(store: &dyn EventStore, id: Uuid, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    if recorded.is_empty() {
        bail!("no deployment {id}");
    }
    for r in &recorded {
        println!("{}", render::line(r));
        let log_refs: Vec<String> = match r.envelope.decode::<Event>() {
            Ok(Event::ImageBuilt(b)) => b.log_ref.into_iter().collect(),
            Ok(Event::ReleaseCommandsRan(rc)) => rc.results.into_iter().filter_map(|c| c.log_ref).collect(),
            Ok(Event::StepFailed(f)) => {
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
            match std::fs::read_to_string(&path) {
                Ok(text) => text.lines().for_each(|l| println!("     | {l}")),
                Err(e) => println!("     (log {} unavailable: {e})", path.display()),
            }
        }
    }
    Ok(())
}

/// Where each registered router serves an environment.
pub async fn router_urls(store: &dyn EventStore, project: &str, env: &str) -> anyhow::Result<Vec<String>> {
    let routers = load::routers(store).await?;
    Ok(routers
        .values()
        .map(|r| {
            let port = r.listen.rsplit(':').next().unwrap_or("80");
            format!("http://{}:{port}/ (router {})", slipway_node::host_name(project, env, &r.domain), r.router_id)
        })
        .collect())
}

pub async fn routers(store: &dyn EventStore) -> anyhow::Result<()> {
    let traffic = load::traffic(store).await?;
    let registry = load::routers(store).await?;
    if registry.is_empty() {
        println!("no router is registered (traffic switches complete without waiting)");
    }
    for (id, r) in &registry {
        let acked = traffic.acknowledged.get(id).copied().unwrap_or(0);
        let state = if acked >= traffic.routes_version { "current" } else { "behind" };
        println!("{id}  listen {}  domain {}  route version {acked}/{} ({state})", r.listen, r.domain, traffic.routes_version);
    }
    Ok(())
}

/// An environment's releases, newest first: what `rollback --to` can choose.
pub async fn releases(store: &dyn EventStore, project: &str, env: &str) -> anyhow::Result<()> {
    let state = load::environment(store, project, env).await?;
    if state.releases.is_empty() {
        println!("{project} {env}: no release yet");
    }
    let serving = state.last_succeeded();
    for id in state.releases.iter().rev() {
        let (d, events) = load::deployment_with_events(store, *id).await?.with_context(|| format!("no deployment {id}"))?;
        let mut migrations = Vec::new();
        let mut origin = "built";
        for recorded in &events {
            match recorded.envelope.decode::<Event>() {
                Ok(Event::ReleaseCommandsRan(r)) if !r.skipped => migrations.extend(r.results.iter().map(|c| c.command.clone())),
                Ok(Event::ImageReused(_)) => origin = "re-used",
                _ => {}
            }
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
    Ok(())
}

/// Worker processes from their heartbeats: alive, missing (silent for three
/// heartbeat intervals: killed, or cut off) or stopped, and what each is doing.
pub async fn workers(store: &dyn EventStore) -> anyhow::Result<()> {
    let workers = store.workers().await?;
    if workers.is_empty() {
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
        let doing = if w.busy.is_empty() { "idle".to_string() } else { w.busy.join("; ") };
        println!("{}  {}  {state}  steps {}  since {}  {doing}", w.id, w.host, w.steps.join(","), w.started_at.format("%Y-%m-%d %H:%M:%S"));
    }
    Ok(())
}

/// Removes the images Slipway built that no environment's last `keep`
/// releases use (`slipway_engine::retention`); `dry_run` only lists them.
pub async fn images_prune(store: &dyn EventStore, keep: usize, dry_run: bool) -> anyhow::Result<()> {
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
    println!("{} image(s) kept (the last {keep} release(s) of each environment), {} to remove", plan.keep.len(), plan.remove.len());
    if dry_run {
        for image in &plan.remove {
            built.get(image).into_iter().flatten().for_each(|tag| println!("would remove {tag} ({image})"));
        }
        return Ok(());
    }
    let docker = slipway_workers::steps::docker::connect().await?;
    for image in &plan.remove {
        for tag in built.get(image).into_iter().flatten() {
            match slipway_workers::steps::docker::remove_image(&docker, tag).await {
                Ok(true) => println!("removed {tag} ({image})"),
                Ok(false) => println!("already gone {tag} ({image})"),
                Err(e) => println!("kept {tag} ({image}): {e}"),
            }
        }
    }
    Ok(())
}
