//! The operator views over recorded history: `history` (one deployment's
//! timeline, or its JSON), `diff` (what changed between two deployments) and
//! `status --at` (what served an environment at a past moment). The pure
//! parts are `slipway_engine::history`; this module reads and prints.

use chrono::{DateTime, Utc};
use serde_json::json;
use slipway_engine::history::{self, Entry, StepTiming, Summary, Timeline};
use slipway_engine::limits::release_limits;
use slipway_engine::load;
use slipway_proto::event::{deployment_stream, environment_stream};
use slipway_store::EventStore;
use uuid::Uuid;

use crate::exit::not_found;
use crate::render;
use crate::verbs::print_json;

async fn timeline(store: &dyn EventStore, id: Uuid) -> anyhow::Result<Timeline> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await?;
    history::timeline(&recorded)?.ok_or_else(|| not_found(format!("no deployment {id}")))
}

/// `1234 ms` reads worse than `1.23 s`; minutes past a minute.
fn duration(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.2} s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

pub async fn history(store: &dyn EventStore, id: Uuid, json: bool) -> anyhow::Result<()> {
    let t = timeline(store, id).await?;
    if json {
        // Through a `Value`, as the server's answer is printed: the same keys in the same order.
        return print_json(&serde_json::to_value(&t)?);
    }
    print_timeline(&t.summary, &t.steps, &t.entries);
    Ok(())
}

/// A timeline as text, the same from the store and through a server.
pub fn print_timeline(s: &Summary, steps: &[StepTiming], entries: &[Entry]) {
    println!("deployment {}  {} {}  {}", s.deployment, s.project, s.environment, s.status);
    println!(
        "commit {}  image {}  started {}  total {}\n",
        or_dash(s.commit.as_deref()),
        or_dash(s.image.as_deref()),
        s.started_at.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()).unwrap_or_else(|| "-".into()),
        s.total_ms.map(duration).unwrap_or_else(|| "-".into())
    );
    println!("{:>3}  {:<12}  {:<14} {:<24} {:<12} {:<24} detail", "v", "time", "step", "event", "actor", "outcome");
    for e in entries {
        let event = match e.attempt {
            Some(n) => format!("{} #{n}", e.event),
            None => e.event.clone(),
        };
        let outcome = match (&e.outcome, e.duration_ms) {
            (Some(o), Some(ms)) => format!("{o} ({})", duration(ms)),
            (Some(o), None) => o.to_string(),
            _ => String::new(),
        };
        // The warnings get their own lines below.
        let detail = render::describe(&e.payload);
        let detail = detail.lines().next().unwrap_or_default();
        println!(
            "{:>3}  {}  {:<14} {:<24} {:<12} {:<24} {detail}",
            e.version,
            e.at.format("%H:%M:%S%.3f"),
            e.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            event,
            e.actor,
            outcome
        );
        for w in &e.warnings {
            println!("       warning: {}:{}: {} [{}]", w.file, w.line, w.message, w.rule);
        }
        if let slipway_proto::Event::WebContainerStarted(w) = &e.payload {
            for warning in &w.warnings {
                println!("       warning: {warning}");
            }
        }
    }
    println!("\nsteps:");
    for step in steps {
        println!(
            "  {:<14} {:>10}  {}{}",
            step.step.to_string(),
            step.duration_ms.map(duration).unwrap_or_else(|| "-".into()),
            step.outcome.as_ref().map(|o| o.to_string()).unwrap_or_else(|| "no outcome yet".into()),
            if step.attempts > 1 { format!(" ({} attempts)", step.attempts) } else { String::new() }
        );
    }
}

/// Commits from `a` to `b` when the repository is a directory here
/// (`git rev-list --count`); `None` when it is not, or git does not know them.
fn commits_between(repository: &str, a: &str, b: &str) -> Option<String> {
    let path = std::path::Path::new(repository.strip_prefix("file://").unwrap_or(repository));
    if !path.is_dir() {
        return None;
    }
    let count = |range: String| -> Option<u64> {
        let out = std::process::Command::new("git").arg("-C").arg(path).args(["rev-list", "--count", &range]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())?
    };
    let (ahead, behind) = (count(format!("{a}..{b}"))?, count(format!("{b}..{a}"))?);
    Some(match (ahead, behind) {
        (n, 0) => format!("{n} commit(s) ahead"),
        (0, n) => format!("{n} commit(s) behind"),
        (n, m) => format!("{n} commit(s) ahead, {m} behind (diverged)"),
    })
}

pub async fn diff(store: &dyn EventStore, a: Uuid, b: Uuid, json: bool) -> anyhow::Result<()> {
    let (ta, tb) = (timeline(store, a).await?, timeline(store, b).await?);
    let d = history::diff(&ta, &tb);
    if json {
        let between = match (&d.commit.a, &d.commit.b) {
            (Some(x), Some(y)) if d.commit.changed() && !d.repository.changed() => commits_between(&d.repository.b, x, y),
            _ => None,
        };
        return print_json(&json!({ "a": ta.summary, "b": tb.summary, "diff": d, "commits_between": between }));
    }
    println!("A  {a}  {} {}  {}", ta.summary.project, ta.summary.environment, ta.summary.status);
    println!("B  {b}  {} {}  {}", tb.summary.project, tb.summary.environment, tb.summary.status);
    let (ca, cb) = (or_dash(d.commit.a.as_deref()), or_dash(d.commit.b.as_deref()));
    if d.commit.changed() {
        let between = match (&d.commit.a, &d.commit.b) {
            (Some(x), Some(y)) if !d.repository.changed() => commits_between(&d.repository.b, x, y),
            _ => None,
        };
        println!("commit    {ca} -> {cb}{}", between.map(|n| format!("  ({n})")).unwrap_or_default());
    } else {
        println!("commit    {ca} (same)");
    }
    let (ia, ib) = (or_dash(d.image.a.as_deref()), or_dash(d.image.b.as_deref()));
    match d.image.changed() {
        true => println!("image     {ia} -> {ib}"),
        false => println!("image     {ia} (same)"),
    }
    if d.settings_added.is_empty() && d.settings_removed.is_empty() && d.settings_changed.is_empty() {
        println!("settings  same keys and fingerprints");
    } else {
        for (label, keys) in [("added", &d.settings_added), ("removed", &d.settings_removed), ("changed", &d.settings_changed)] {
            if !keys.is_empty() {
                println!("settings  {label}: {}", keys.join(", "));
            }
        }
    }
    let commands = |c: &Vec<String>| if c.is_empty() { "(none)".to_string() } else { c.join("; ") };
    match d.release_commands.changed() {
        true => println!("release   A: {}\n          B: {}", commands(&d.release_commands.a), commands(&d.release_commands.b)),
        false => println!("release   {} (same)", commands(&d.release_commands.a)),
    }
    println!("\n{:<16} {:>10} {:>10}", "step", "A", "B");
    for s in &d.steps {
        let show = |ms: Option<i64>| ms.map(duration).unwrap_or_else(|| "-".into());
        println!("{:<16} {:>10} {:>10}", s.step.to_string(), show(s.a_ms), show(s.b_ms));
    }
    Ok(())
}

/// Parses an RFC 3339 time (`2025-03-01T12:00:00Z`, any offset).
pub fn parse_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| crate::exit::usage(format!("--at `{text}`: expected an RFC 3339 time such as 2025-03-01T12:00:00Z")))
}

/// What served `project` `env` at `at`: the environment stream folded up to
/// then, and the serving deployment's commit, image and settings fingerprints.
pub async fn status_at(store: &dyn EventStore, project: &str, env: &str, at: &str, json: bool) -> anyhow::Result<()> {
    let at = parse_time(at)?;
    if slipway_engine::requests::load_project(store, project).await?.is_none() {
        return Err(not_found(format!("no project `{project}`")));
    }
    let recorded = store.read_stream(&environment_stream(project, env), 1).await?;
    let state = history::environment_at(&recorded, at)?;
    let routes = store.read_stream(slipway_proto::event::ROUTES_STREAM, 1).await?;
    let serving = history::routed_at(&routes, project, env, at).unwrap_or_else(|| state.last_succeeded());
    let when = at.to_rfc3339();
    if json {
        let active = match serving {
            Some(id) => {
                let d = load::deployment(store, id).await?.ok_or_else(|| not_found(format!("no deployment {id}")))?;
                let limits = release_limits(&d.context.config);
                json!({ "deployment": id, "commit": d.context.commit, "image": d.context.image_id, "settings": d.context.settings, "limits": limits })
            }
            None => serde_json::Value::Null,
        };
        return print_json(&json!({ "project": project, "environment": env, "at": at, "active": active, "queue": state.queue }));
    }
    match serving {
        None => println!("{project} {env} at {when}: nothing was serving"),
        Some(id) => {
            let d = load::deployment(store, id).await?.ok_or_else(|| not_found(format!("no deployment {id}")))?;
            println!(
                "{project} {env} at {when}: serving deployment {id}\n  commit {}\n  image  {}\n  limits {}\n  settings ({}):",
                or_dash(d.context.commit.as_deref()),
                or_dash(d.context.image_id.as_deref()),
                release_limits(&d.context.config),
                d.context.settings.len()
            );
            let width = d.context.settings.keys().map(String::len).max().unwrap_or(0);
            for (key, fingerprint) in &d.context.settings {
                println!("    {key:<width$}  {fingerprint}");
            }
        }
    }
    for (n, id) in state.queue.iter().enumerate() {
        println!("  {} {id}", if n == 0 { "running" } else { "queued " });
    }
    Ok(())
}
