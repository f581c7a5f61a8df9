//! The client verbs that read deployments, environments, routers, workers
//! and images directly in the store, and what the client verbs share (JSON
//! printing). Each read verb prints text for people
//! or, with `--json`, one JSON document whose fields follow the HTTP API's
//! answers where the API has the same view.

use futures::TryStreamExt;
use serde_json::{json, Value};
use slipway_engine::load::{self, LoadError};
use slipway_engine::queries::{self, DeploymentSummary, EnvironmentStatus};
use slipway_engine::rejection::Rejection;
use slipway_proto::event::deployment_stream;
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

/// A query's answer, or its refusal with the refusal's exit status; an
/// unreadable history is a failure.
pub fn answered<T>(outcome: Result<Result<T, Rejection>, LoadError>) -> anyhow::Result<T> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(rejection)) => Err(exit::rejected(rejection)),
        Err(LoadError::Store(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("{e}; check the log with `slipway audit verify`")),
    }
}

pub async fn status(store: &dyn EventStore, project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    let status = answered(queries::status(store, project, env).await)?;
    if json {
        return print_json(&serde_json::to_value(&status)?);
    }
    print!("{}", status_text(&status, Where::Here));
    Ok(())
}

/// Where a status was read: from the store here, or from a server (whose
/// loopback ports are on its Docker host, not this machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Here,
    Server,
}

/// Whether a release's `upstreams` answer on other hosts than loopback
/// (the swarm runtime's replicas, on their nodes).
pub fn on_other_hosts(upstreams: &[String]) -> bool {
    upstreams.iter().any(|u| !u.starts_with("127.0.0.1:") && !u.starts_with("[::1]:"))
}

/// `status`'s text, the same from the store and from a server.
pub fn status_text(status: &EnvironmentStatus, at: Where) -> String {
    let (project, env) = (&status.project, &status.environment);
    let mut out = String::new();
    match &status.active {
        None => out.push_str(&format!("{project} {env}: nothing deployed yet\n")),
        Some(a) => {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let host = if at == Where::Server { " (on the server's Docker host)" } else { "" };
            // Replicas on other nodes (the swarm runtime) answer on their
            // nodes' addresses, listed below, not on this loopback.
            let elsewhere = on_other_hosts(&a.upstreams);
            let web = match a.web_port {
                Some(_) if elsewhere => "on the replicas' nodes (below); reach it through the routes".to_string(),
                Some(p) => format!("http://127.0.0.1:{p}/{host}"),
                None => "-".into(),
            };
            out.push_str(&format!(
                "{project} {env}: serving deployment {}\n  commit {}\n  image  {}\n  web    {web}\n",
                a.deployment,
                or_dash(&a.commit),
                or_dash(&a.image)
            ));
            // A server from before limits were recorded sends none: no line then.
            if let Some(limits) = &a.limits {
                out.push_str(&format!("  limits {limits}\n"));
            }
            // One replica answers where `web` says; several are listed.
            if a.upstreams.len() > 1 || elsewhere {
                out.push_str(&format!("  replicas {} at {}\n", a.upstreams.len(), a.upstreams.join(", ")));
            }
            if let Some(live) = &a.live {
                out.push_str(&format!("  live   {}\n", live.describe()));
            }
            // Swarm replicas no node can take: the route still lists the
            // last ones, so say it plainly.
            for text in a.replicas.iter().filter_map(|r| r.unplaced_text()) {
                out.push_str(&format!("  pending {text}\n"));
            }
            for text in a.replicas.iter().filter_map(|r| r.crash_loop_text()) {
                out.push_str(&format!("  loop   {text}\n"));
            }
            for r in &status.routes {
                out.push_str(&format!("  route  {} (router {})\n", r.url, r.router));
            }
        }
    }
    for d in &status.domains {
        let until = d.not_after.as_ref().map(|t| format!("certificate until {t}"));
        out.push_str(&format!("  domain {} ({}; {})\n", d.domain, until.unwrap_or_else(|| "no certificate".into()), d.renewal));
    }
    // The head of the queue may be watching its new release, or rolling back.
    let running = status.running_status.as_deref().unwrap_or("running");
    for (n, id) in status.queue.iter().enumerate() {
        out.push_str(&format!("  {:<7} {id}\n", if n == 0 { running } else { "queued" }));
    }
    out
}

/// Which page of a project's deployments `deployments` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct DeploymentPage {
    /// Only this environment's.
    #[arg(long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// Only those with this status: awaiting approval, queued, running, watching, rolling back, succeeded or failed.
    #[arg(long)]
    pub status: Option<String>,
    /// Only those this actor requested, exactly as recorded (`cli:ann`, `token:ci`, `webhook:github:ann`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only those requested at or after this RFC 3339 time (with --before: a time range).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many (the newest), 1 to 500 (as the API takes).
    #[arg(long, default_value_t = 50, value_parser = crate::args::page_limit)]
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
        if let (Some(from), Some(Before::Time(until))) = (since, &before) {
            if from >= *until {
                return Err(exit::usage(format!(
                    "--since {} is not before --before {}: no deployment can be in between",
                    self.since.as_deref().unwrap_or_default(),
                    self.before.as_deref().unwrap_or_default()
                )));
            }
        }
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
    let (summaries, _) = queries::deployments(store, &page.query(project)?).await?.map_err(exit::rejected)?;
    print_deployments(summaries, json)
}

/// A page of deployments as `deployments` prints it: the newest page, read
/// top to bottom like a log (the query answers newest first).
pub fn print_deployments(mut summaries: Vec<DeploymentSummary>, json: bool) -> anyhow::Result<()> {
    summaries.reverse();
    if json {
        return print_json(&serde_json::to_value(&summaries)?);
    }
    if summaries.is_empty() {
        // On standard error: the output stays one line per deployment.
        eprintln!("no deployment matches");
    }
    for d in &summaries {
        let commit = d.commit.as_deref().map(|c| &c[..c.len().min(10)]).unwrap_or("-");
        // A rollback or replay names its commit as the ref: shortened as commits are.
        let full_sha = d.git_ref.len() == 40 && d.git_ref.bytes().all(|b| b.is_ascii_hexdigit());
        let git_ref = if full_sha { &d.git_ref[..10] } else { d.git_ref.as_str() };
        let kind = match (d.rollback_of, d.replay_of, d.promoted_from) {
            (Some(of), _, _) => format!(" (rollback to {of})"),
            (_, Some(of), _) => format!(" (replay of {of})"),
            (_, _, Some(from)) => format!(" (promotion of {from})"),
            _ => String::new(),
        };
        let dry = if d.dry_run { " (dry run)" } else { "" };
        println!("{}  {:<6} {:<12} {:<10} {}{dry}{kind}", d.deployment, d.environment, git_ref, commit, d.status);
    }
    Ok(())
}

/// A stream's events, as recorded.
pub async fn events(store: &dyn EventStore, stream: &str, json: bool) -> anyhow::Result<()> {
    let events = store.read_stream(stream, 1).await?;
    if events.is_empty() {
        // A deployment's stream is `deployment-<id>`; its id alone is no stream.
        let hint = match Uuid::parse_str(stream) {
            Ok(id) => format!(" (a deployment's stream is deployment-{id}; or: slipway history {id})"),
            Err(_) => String::new(),
        };
        return Err(not_found(format!("stream `{stream}` has no events{hint}")));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&events.iter().map(render::event_json).collect::<Vec<_>>())?);
    } else {
        events.iter().for_each(|e| println!("{}", render::line(e)));
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
            Ok(Event::StepFailed(f)) => {
                if !json {
                    f.details.iter().for_each(|d| println!("     | {d}"));
                }
                f.evidence.map(|e| e.path).into_iter().collect()
            }
            _ => vec![],
        };
        for log in log_refs {
            let path = crate::follow::log_file(data_dir, &log);
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
    let releases = answered(queries::releases(store, project, env).await)?;
    print_releases(&releases, project, env, json)
}

/// How `releases` prints, from the store or through the API.
pub fn print_releases(releases: &[slipway_engine::history::Release], project: &str, env: &str, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&serde_json::to_value(releases)?);
    }
    if releases.is_empty() {
        println!("{project} {env}: no release yet");
    }
    for r in releases {
        let when = r.requested_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
        println!(
            "{} {}  {when}  commit {}  image {} ({})  {} setting(s){}{}",
            if r.serving { "*" } else { " " },
            r.deployment,
            r.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]),
            r.image.as_deref().unwrap_or("-"),
            r.origin,
            r.settings,
            if r.release_commands.is_empty() { String::new() } else { format!("  ran: {}", r.release_commands.join("; ")) },
            match (r.rollback_of, r.promoted_from) {
                (Some(r), _) => format!("  (rollback to {r})"),
                (_, Some(p)) => format!("  (promoted from {p})"),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// `slipway hosts`: the swarm's nodes as its manager reports them.
pub async fn hosts(json: bool) -> anyhow::Result<()> {
    let rows =
        slipway_workers::steps::swarm::hosts().await.map_err(|f| anyhow::anyhow!("{} (is this engine a Swarm manager?)", f.reason))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<16} {:<12} {:<16} {:<6} {:<7} {:<17} LABELS", "ADDRESS", "ID", "HOSTNAME", "STATE", "AVAIL", "ROLE");
    for h in rows {
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<16} {:<12} {:<16} {:<6} {:<7} {:<17} {}",
            h.address,
            h.id,
            h.hostname,
            h.state,
            h.availability,
            h.role,
            labels.join(",")
        );
        for task in &h.tasks {
            println!("    {task}");
        }
    }
    Ok(())
}

/// `slipway hosts drain|activate NAME`: changes a swarm node's
/// availability (a drain waits until its replicas run elsewhere and the
/// routes followed) and records it with who asked.
pub async fn hosts_change(store: &std::sync::Arc<dyn EventStore>, cmd: crate::args::HostsCmd, json: bool) -> anyhow::Result<()> {
    let changed = match cmd {
        crate::args::HostsCmd::Drain { name, timeout } => {
            slipway_node::drain::drain(store, &name, &crate::actor::actor(), std::time::Duration::from_secs(timeout)).await
        }
        crate::args::HostsCmd::Activate { name } => slipway_node::drain::activate(store, &name, &crate::actor::actor()).await,
    };
    let changed = changed.map_err(|e| match e {
        slipway_node::drain::DrainError::Refused(rejection) => exit::rejected(rejection),
        slipway_node::drain::DrainError::Failed(why) => anyhow::anyhow!("{why}"),
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "node": changed.node, "node_id": changed.node_id, "availability": changed.availability, "previous": changed.previous, "moved": changed.moved })
        );
    } else {
        let node = format!("{} ({})", changed.node, changed.node_id.chars().take(12).collect::<String>());
        let moved = if changed.moved.is_empty() { String::new() } else { format!("; moved elsewhere: {}", changed.moved.join(", ")) };
        println!("node {node}: availability {} (was {}){moved}", changed.availability, changed.previous);
    }
    Ok(())
}

/// Worker processes from their heartbeats: alive, missing (silent for three
/// heartbeat intervals: killed, or cut off) or stopped, and what each is doing.
pub async fn workers(store: &dyn EventStore, show_all: bool, json: bool) -> anyhow::Result<()> {
    let mut workers = store.operational().workers().await?;
    let mut all = Vec::new();
    if workers.is_empty() && !json {
        println!("no worker has reported yet");
    }
    let now = chrono::Utc::now();
    let before = workers.len();
    if !show_all {
        workers.retain(|w| !(w.stopped && now - w.last_seen > chrono::Duration::days(1)));
    }
    let hidden = before - workers.len();
    let missing_after = chrono::Duration::from_std(slipway_workers::worker::HEARTBEAT * 3).unwrap_or_default();
    for w in workers {
        let silent = now - w.last_seen;
        let state = w.state(now, missing_after);
        if json {
            all.push(json!({
                "id": w.id, "host": w.host, "state": state, "silent_seconds": silent.num_seconds(),
                "steps": w.steps, "started_at": w.started_at, "last_seen": w.last_seen, "busy": w.busy,
            }));
            continue;
        }
        let doing = activity(state, &w.busy, w.last_seen);
        let state = if state == "missing" { format!("MISSING for {}s", silent.num_seconds()) } else { state.to_string() };
        println!("{}  {}  {state}  steps {}  since {}  {doing}", w.id, w.host, w.steps.join(","), w.started_at.format("%Y-%m-%d %H:%M:%S"));
    }
    if hidden > 0 && !json {
        println!("({hidden} worker(s) that stopped over a day ago not shown; --all shows them)");
    }
    if json {
        print_json(&Value::Array(all))?;
    }
    Ok(())
}

/// What `workers` says a worker in `state` is doing: a stopped worker
/// finished what it had, so its last report's commands are not shown as
/// current; a missing one was last seen busy with them, and may still be.
fn activity(state: &str, busy: &[String], last_seen: chrono::DateTime<chrono::Utc>) -> String {
    match (state, busy.is_empty()) {
        ("stopped", _) => format!("stopped at {}", last_seen.format("%Y-%m-%d %H:%M:%S")),
        ("missing", true) => "idle when last seen".into(),
        ("missing", false) => format!("last seen busy with {}", busy.join("; ")),
        (_, true) => "idle".into(),
        (_, false) => busy.join("; "),
    }
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
