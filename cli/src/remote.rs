//! The verbs that go through a server's HTTP API with `--server`: deploy,
//! status, deployments, releases, history, rollback, replay, cancel,
//! approve and reject (`domain` and `cert` have
//! their own twins in `domains.rs` and `certs.rs`), dispatched by `through_server`. Each sends the API's request (the server's `/openapi.json`
//! describes them), then prints as
//! its local twin does; deploy, rollback and replay follow the deployment's
//! events through the API (`client::ApiSource`) with the same progress
//! display; `--logs` adds the log lines of the API's live stream.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use slipway_engine::history::TimelineJson;
use slipway_engine::queries::{DeploymentSummary, EnvironmentStatus};
use uuid::Uuid;

use crate::args::{Command, FollowArgs};
use crate::client::{segment, ApiSource, Client, LoggedSource};
use crate::exit::{self, coded, Exit};
use crate::projects;
use crate::report::{Reporter, Style};
use crate::verbs::{print_deployments, print_json, status_text, Where};

/// Runs `command` through the server's API when it is one of the verbs the
/// client knows; `None` for the process modes, which ignore --server.
pub async fn through_server(
    server: &str,
    token: Option<String>,
    ca: Option<&std::path::Path>,
    command: &Command,
    json: bool,
) -> anyhow::Result<Option<ExitCode>> {
    let client = || Client::new(server, token.clone(), ca);
    let follow = |f: &FollowArgs| Follow { timeout: Duration::from_secs(f.timeout), quiet: f.quiet, logs: f.logs, json };
    let code = match command {
        Command::Deploy(args) => deploy(&client()?, &args.project, &args.env, deploy_body(args), &follow(&args.follow)).await?,
        Command::Status { project, env, at: None } => status(&client()?, project, env, json).await?,
        Command::Deployments { project, page } => deployments(&client()?, project, page, json).await?,
        Command::History { deployment } => history(&client()?, *deployment, json).await?,
        Command::Logs { deployment } => logs(&client()?, *deployment, json).await?,
        Command::Status { at: Some(_), .. } => {
            return Err(exit::usage(
                "status --at reads the event log from --database and does not go through --server \
                     (through the server, status shows the present); unset --server/SLIPWAY_SERVER to use --database",
            ))
        }
        Command::Rollback { project, env, to, follow: f } => rollback(&client()?, project, env, *to, &follow(f)).await?,
        Command::Replay { deployment, from_step, follow: f } => {
            replay(&client()?, *deployment, from_step.map(|s| s.to_string()), &follow(f)).await?
        }
        Command::Releases { project, env } => releases(&client()?, project, env, json).await?,
        Command::Approve { deployment, reason } => {
            let answer = client()?.post(&format!("/api/deployments/{deployment}/approve"), serde_json::json!({ "reason": reason })).await?;
            let approvals: slipway_engine::protection::Approvals =
                serde_json::from_value(answer["approvals"].clone()).context("the server's answer to an approval has no approval count")?;
            println!("deployment {deployment}: approved; {}", approvals.summary());
            ExitCode::SUCCESS
        }
        Command::Reject { deployment, reason } => {
            client()?.post(&format!("/api/deployments/{deployment}/reject"), serde_json::json!({ "reason": reason })).await?;
            println!("deployment {deployment}: rejected; the engine cancels it");
            ExitCode::SUCCESS
        }
        Command::Cancel { deployment, reason } => {
            client()?.post(&format!("/api/deployments/{deployment}/cancel"), serde_json::json!({ "reason": reason })).await?;
            println!("deployment {deployment}: cancel requested; the engine stops it and removes its containers");
            ExitCode::SUCCESS
        }
        // Processes, and tokens (issued on the server's database).
        Command::Demo { .. }
        | Command::AllInOne { .. }
        | Command::Server(_)
        | Command::Router(_)
        | Command::Worker { .. }
        | Command::Token(_) => return Ok(None),
        Command::Domain(cmd) => crate::domains::remote(&client()?, cmd, json).await?,
        Command::Project(cmd) => projects::run(&projects::Remote(&client()?), cmd.clone(), json).await?,
        Command::Env(cmd) => projects::env(&projects::Remote(&client()?), cmd.clone(), json).await?,
        Command::Preview(cmd) => projects::previews(&projects::Remote(&client()?), cmd.clone(), json).await?,
        Command::Cert(cmd) => crate::certs::remote(&client()?, cmd, json).await?,
        _ => return Err(exit::usage(
            "this verb does not go through --server (only deploy, status, deployments, releases, history, logs, rollback, replay, cancel, \
                 approve, reject, domain, cert, project, env and preview do); \
                 unset --server/SLIPWAY_SERVER to use --database",
        )),
    };
    Ok(Some(code))
}

/// How to follow a deployment the server runs.
pub struct Follow {
    pub timeout: Duration,
    pub quiet: bool,
    pub logs: bool,
    pub json: bool,
}

fn id_in(answer: &Value, key: &str, what: &str) -> anyhow::Result<Uuid> {
    answer
        .get(key)
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| coded(Exit::Failed, format!("the server's answer to {what} has no `{key}` id: {answer}")))
}

fn environment_path(project: &str, env: &str) -> String {
    format!("/api/projects/{}/environments/{}", segment(project), segment(env))
}

/// The request body of `POST .../deployments`: what was given of `args`.
pub fn deploy_body(args: &crate::args::DeployArgs) -> Value {
    let mut body = json!({ "no_cache": args.no_cache, "migrate": args.migrate, "dry_run": args.dry_run });
    if let Some(r) = &args.git_ref {
        body["ref"] = json!(r);
    }
    match (args.local, args.cloud) {
        (true, _) => body["mode"] = json!("local"),
        (_, true) => body["mode"] = json!("cloud"),
        _ => {}
    }
    if let Some(reason) = &args.override_freeze {
        body["override_freeze"] = json!(reason);
    }
    body
}

pub async fn deploy(client: &Client, project: &str, env: &str, body: Value, follow: &Follow) -> anyhow::Result<ExitCode> {
    let answer = client.post(&format!("{}/deployments", environment_path(project, env)), body).await?;
    let id = id_in(&answer, "deployment", "the deployment request")?;
    let intro = format!("deployment {id}: {project} {env}");
    watch(client, id, project, env, &intro, &answer, follow).await
}

pub async fn rollback(client: &Client, project: &str, env: &str, to: Option<Uuid>, follow: &Follow) -> anyhow::Result<ExitCode> {
    let body = match to {
        Some(t) => json!({ "to": t }),
        None => json!({}),
    };
    let answer = client.post(&format!("{}/rollback", environment_path(project, env)), body).await?;
    let id = id_in(&answer, "deployment", "the rollback")?;
    for warning in answer.get("warnings").and_then(Value::as_array).into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
    let target = answer.get("target").and_then(Value::as_str).map(|t| format!(" to deployment {t}")).unwrap_or_default();
    let intro = format!("deployment {id}: {project} {env} rolls back{target}");
    watch(client, id, project, env, &intro, &answer, follow).await
}

pub async fn replay(client: &Client, original: Uuid, from_step: Option<String>, follow: &Follow) -> anyhow::Result<ExitCode> {
    let body = match from_step {
        Some(s) => json!({ "from_step": s }),
        None => json!({}),
    };
    let answer = client.post(&format!("/api/deployments/{original}/replay"), body).await?;
    let id = id_in(&answer, "deployment", "the replay")?;
    let state = client.get(&format!("/api/deployments/{id}")).await?;
    let field = |k: &str| state.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let (project, env) = (field("project"), field("environment"));
    let intro = format!("deployment {id}: replays {original}");
    watch(client, id, &project, &env, &intro, &answer, follow).await
}

/// Follows deployment `id` through the API and reports its result.
async fn watch(
    client: &Client,
    id: Uuid,
    project: &str,
    env: &str,
    intro: &str,
    answer: &Value,
    follow: &Follow,
) -> anyhow::Result<ExitCode> {
    let mut reporter = Reporter::new(Style::choose(follow.json, follow.quiet));
    reporter.requested(id, project, env, intro);
    if let Some(ahead) = answer.get("queued_behind").and_then(Value::as_array).filter(|a| !a.is_empty()) {
        let first = ahead[0].as_str().unwrap_or_default();
        reporter.note(&format!("waiting for deployment {first} to finish ({} ahead in {env})", ahead.len()));
    }
    let ending = if follow.logs {
        crate::follow::follow(&mut LoggedSource::new(client, id), &mut reporter, id, None, follow.timeout).await?
    } else {
        crate::follow::follow(&mut ApiSource::new(client, id), &mut reporter, id, None, follow.timeout).await?
    };
    // Every registered router's address, as locally (`router_urls`).
    let routes = read_status(client, project, env).await.map(|status| status.routes).unwrap_or_default();
    Ok(crate::deploying::conclude(&mut reporter, id, project, env, &ending, &routes))
}

/// `logs` through the API: the build, release and failure output the
/// server's data directory holds (`GET /api/deployments/{id}/logs`), as
/// it sends it; with `--json`, `{"deployment", "text"}`. The events
/// themselves are `history`'s.
async fn logs(client: &Client, id: Uuid, json: bool) -> anyhow::Result<ExitCode> {
    let text = client.get_text(&format!("/api/deployments/{id}/logs")).await?;
    if json {
        print_json(&serde_json::json!({ "deployment": id, "text": text }))?;
    } else if text.is_empty() {
        eprintln!("deployment {id} has no build, release or failure output; its events: slipway history {id}");
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The server's status answer, as the shared type (`queries::EnvironmentStatus`).
async fn read_status(client: &Client, project: &str, env: &str) -> anyhow::Result<EnvironmentStatus> {
    let path = environment_path(project, env);
    let answer = client.get(&path).await?;
    serde_json::from_value(answer).map_err(|e| coded(Exit::Failed, format!("GET {path}: the answer is not an environment's status: {e}")))
}

/// `status` through the API: the same JSON and text as against the store.
pub async fn status(client: &Client, project: &str, env: &str, json: bool) -> anyhow::Result<ExitCode> {
    let status = read_status(client, project, env).await?;
    if json {
        print_json(&serde_json::to_value(&status)?)?;
    } else {
        print!("{}", status_text(&status, Where::Server));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn deployments(client: &Client, project: &str, page: &crate::verbs::DeploymentPage, json: bool) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/deployments?project={}&limit={}", segment(project), page.limit);
    for (key, value) in
        [("environment", &page.env), ("status", &page.status), ("actor", &page.actor), ("since", &page.since), ("before", &page.before)]
    {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={}", segment(value)));
        }
    }
    let answer = client.get(&path).await?;
    let summaries: Vec<DeploymentSummary> = serde_json::from_value(answer)
        .map_err(|e| coded(Exit::Failed, format!("GET {path}: the answer is not a list of deployments: {e}")))?;
    print_deployments(summaries, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `releases` through the API: the same JSON and text as against the store.
pub async fn releases(client: &Client, project: &str, env: &str, json: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/api/projects/{}/environments/{}/releases", segment(project), segment(env));
    let answer = client.get(&path).await?;
    let releases: Vec<slipway_engine::history::Release> = serde_json::from_value(answer)
        .map_err(|e| coded(Exit::Failed, format!("GET {path}: the answer is not a list of releases: {e}")))?;
    crate::verbs::print_releases(&releases, project, env, json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn history(client: &Client, id: Uuid, json: bool) -> anyhow::Result<ExitCode> {
    let timeline = client.get(&format!("/api/deployments/{id}/history")).await?;
    if json {
        print_json(&timeline)?;
        return Ok(ExitCode::SUCCESS);
    }
    let t: TimelineJson = serde_json::from_value(timeline).map_err(|e| {
        coded(Exit::Failed, format!("the server's history of deployment {id} is not one this version reads ({e}); --json shows it as sent"))
    })?;
    crate::history::print_timeline(&t.summary, &t.steps, &t.entries);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn read(answer: Value) -> EnvironmentStatus {
        serde_json::from_value(answer).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn status_reads_the_contracts_shape_and_the_older_one() {
        let (d1, d2, d3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let contract = json!({
            "project": "shop", "environment": "live", "url": "http://shop-live.localhost:7880/",
            "active": { "deployment": d1, "commit": "abc", "image": "sha256:1", "web_port": null },
            "routes": [{ "url": "http://shop-live.localhost:7880/", "router": "r1" }],
            "queue": [d2, d3], "running_status": "watching",
        });
        let text = status_text(&read(contract), Where::Server);
        assert!(text.contains(&format!("serving deployment {d1}\n  commit abc\n  image  sha256:1")), "{text}");
        assert!(text.contains("route  http://shop-live.localhost:7880/ (router r1)"), "{text}");
        assert!(text.contains(&format!("watching {d2}")) && text.contains(&format!("queued  {d3}")), "{text}");
        let older = json!({ "project": "shop", "environment": "live", "url": null,
            "last_succeeded": { "deployment": d1, "commit": null, "image": null, "web_port": 4100 }, "queue": [] });
        assert!(status_text(&read(older), Where::Server).contains("http://127.0.0.1:4100/ (on the server's Docker host)"));
        let empty = json!({ "project": "shop", "environment": "live", "url": null, "active": null, "queue": [] });
        assert_eq!(status_text(&read(empty), Where::Server), "shop live: nothing deployed yet\n");
    }

    #[test]
    fn status_shows_the_limits_the_server_sends() {
        let limits = json!({ "web": { "memory": "256m", "cpus": "0.5", "pids": 100 }, "processes": { "worker": {} } });
        let active = json!({ "deployment": Uuid::now_v7(), "commit": null, "image": null, "web_port": null, "limits": limits });
        let status = json!({ "project": "shop", "environment": "live", "url": null, "active": active, "queue": [] });
        let text = status_text(&read(status), Where::Server);
        assert!(text.contains("\n  limits web memory 256m, cpus 0.5, pids 100; worker no limits\n"), "{text}");
    }

    #[test]
    fn status_says_which_replicas_no_node_can_take_and_why() {
        let reason = "no suitable node (scheduling constraints not satisfied on 3 nodes)";
        let replicas =
            json!([{ "service": "slipway-shop-live-0123-web", "role": "web", "running": 0, "wanted": 3, "unplaced": 3, "reason": reason }]);
        let live = json!({ "state": "down", "restarts": 0, "last_exit": null });
        let active = json!({ "deployment": Uuid::now_v7(), "commit": null, "image": null, "web_port": 30001,
            "upstreams": ["10.0.0.2:30001", "10.0.0.3:30001", "10.0.0.4:30001"], "live": live, "replicas": replicas });
        let status = json!({ "project": "shop", "environment": "live", "url": null, "active": active, "queue": [] });
        let text = status_text(&read(status), Where::Server);
        assert!(text.contains("\n  live   down, 0 restarts\n"), "{text}");
        assert!(text.contains(&format!("\n  pending 3 of 3 web replicas cannot be placed: {reason}\n")), "{text}");
        // Placed again: no such line.
        let placed =
            json!([{ "service": "slipway-shop-live-0123-web", "role": "web", "running": 3, "wanted": 3, "unplaced": 0, "reason": "" }]);
        let active = json!({ "deployment": Uuid::now_v7(), "commit": null, "image": null, "web_port": null, "replicas": placed });
        let status = json!({ "project": "shop", "environment": "live", "url": null, "active": active, "queue": [] });
        assert!(!status_text(&read(status), Where::Server).contains("pending"));
    }

    #[test]
    fn status_says_which_replicas_crash_loop() {
        let replicas = json!([{ "service": "slipway-shop-live-0123-web", "role": "web", "running": 2, "wanted": 3, "crash_loop": 4 }]);
        let live = json!({ "state": "crash_looping", "restarts": 0, "last_exit": null });
        let active =
            json!({ "deployment": Uuid::now_v7(), "commit": null, "image": null, "web_port": 30001, "live": live, "replicas": replicas });
        let status = json!({ "project": "shop", "environment": "live", "url": null, "active": active, "queue": [] });
        let text = status_text(&read(status), Where::Server);
        assert!(text.contains("\n  live   crash-looping, 0 restarts\n"), "{text}");
        assert!(text.contains("\n  loop   web replicas crash-looping: 4 failures within a minute, 2 of 3 running\n"), "{text}");
    }

    #[test]
    fn the_deploy_body_leaves_out_what_was_not_given() {
        use clap::Parser as _;
        let body = |args: &[&str]| {
            let cli = crate::args::Cli::try_parse_from([&["slipway", "deploy", "app", "live"][..], args].concat()).unwrap();
            let crate::args::Command::Deploy(deploy) = cli.command else { panic!("not a deploy") };
            deploy_body(&deploy)
        };
        assert_eq!(body(&["--dry-run"]), json!({ "no_cache": false, "migrate": false, "dry_run": true }));
        let given = body(&["--ref", "v1.2", "--local", "--no-cache", "--migrate", "--override-freeze", "hotfix"]);
        assert_eq!((given["ref"].as_str(), given["mode"].as_str()), (Some("v1.2"), Some("local")));
        assert_eq!(given["override_freeze"], "hotfix", "an admin's override goes to the server too");
    }
}
