//! `slipway-bench-reads`: what the list and status reads cost on a long log
//! next to the same reads on a short one, measured in the same run.
//!
//! It fills two fresh PostgreSQL schemas through the store API (batched
//! appends, 4 writers) with the same mix — projects created, each with 50
//! deployments over `test` and `live` that record their steps, the switch,
//! the watch and a verdict (1 in 8 fails its build), and their environment
//! queues — one log of `--events` events, one of `--small-events`. The read
//! models catch up (timed), then each read is timed `--samples` times per
//! log, alternating the logs:
//! - `project list`: `projector::projects(.., 50)`, what the verb calls;
//! - `deployments P --limit 50`: the project check and
//!   `projector::deployments`, what the verb calls;
//! - `status P E`: the reads the verb makes (project, environment stream,
//!   routers, the serving deployment's stream);
//! - the API's project list through `app_with` and `oneshot`, token
//!   checked: a page of 50, and the dashboard's first call (`GET
//!   /api/projects`, the default page of up to 500: on logs with different
//!   numbers of projects its pages differ, so only its latency is judged).
//!
//! Every read first checks that the read models caught up with the log (one
//! empty read), as it does in the CLI and the API.
//! Goal: each p99 under 50 ms and within 2x of the short log's.
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-reads -- --events 1000000`

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use slipway_engine::api::{self, ApiConfig};
use slipway_engine::{load, projector, requests};
use slipway_proto::event::TokenScope;
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::read_model::DeploymentQuery;
use slipway_store::{EventStore, PgStore};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

#[path = "../canned.rs"]
mod canned;

const P99_GOAL_MS: f64 = 50.0;
const RATIO_GOAL: f64 = 2.0;

#[derive(Parser)]
#[command(about = "project list, deployments, status and the API's project list on a long log vs a short one")]
struct Args {
    /// Events in the long log (about; whole projects of 50 deployments).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events in the short log.
    #[arg(long, default_value_t = 60_000)]
    small_events: usize,
    /// Timed reads of each kind per log.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", hide_env_values = true, default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
}

/// One filled log and what reads it.
struct Log {
    store: Arc<dyn EventStore>,
    pg: PgStore,
    app: axum::Router,
    token: String,
    events: usize,
    projects: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut schemas = Vec::new();
    let result = tokio::select! {
        result = run(&args, &mut schemas) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Ok(pool) = PgPool::connect(&args.pg_url).await {
        for schema in schemas {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
        }
    }
    println!();
    print!("{}", result?);
    Ok(())
}

async fn run(args: &Args, schemas: &mut Vec<String>) -> anyhow::Result<String> {
    let mut out = String::from("slipway-bench-reads: reads on a long log vs a short one, same run, same mix\n");
    out.push_str(&format!("command:  {}\n", std::env::args().collect::<Vec<_>>().join(" ")));
    let mut logs = Vec::new();
    for events in [args.small_events, args.events] {
        let schema = format!("slipway_bench_reads_{}", Uuid::now_v7().simple());
        schemas.push(schema.clone());
        let log = fill(&args.pg_url, schema, events).await?;
        let started = Instant::now();
        projector::catch_up(&*log.store).await?;
        let took = started.elapsed();
        let line = format!(
            "log:      {} events, {} projects x {} deployments; read models caught up from empty in {:.1} s ({:.0} ev/s)\n",
            log.events,
            log.projects,
            canned::DEPLOYMENTS_PER_PROJECT,
            took.as_secs_f64(),
            log.events as f64 / took.as_secs_f64()
        );
        eprint!("{line}");
        out.push_str(&line);
        sqlx::query("VACUUM (ANALYZE)").execute(log.pg.pool()).await?;
        logs.push(log);
    }
    out.push_str(&format!("samples:  {} of each read per log, logs alternating\n\n", args.samples));
    let names = [
        "project list",
        "deployments P --limit 50",
        "status P E",
        "API GET /api/projects?limit=50",
        "API GET /api/projects (dashboard: default page, up to 500 rows)",
    ];
    // [read][log] -> latencies
    let mut times: Vec<[Vec<f64>; 2]> = names.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for n in 0..args.samples + 10 {
        for (l, log) in logs.iter().enumerate() {
            let project = format!("app-{:05}", n * 7919 % log.projects);
            let env = if n % 2 == 0 { "live" } else { "test" };
            let timed = [
                time(project_list(log)).await?,
                time(deployments(log, &project)).await?,
                time(status(log, &project, env)).await?,
                time(api_projects(log, "/api/projects?limit=50")).await?,
                time(api_projects(log, "/api/projects")).await?,
            ];
            if n >= 10 {
                for (r, ms) in timed.into_iter().enumerate() {
                    times[r][l].push(ms);
                }
            }
        }
    }
    let mut table = vec![[
        "read".to_string(),
        format!("short log p50 / p99 ({} ev)", logs[0].events),
        format!("long log p50 / p99 ({} ev)", logs[1].events),
        "p99 long/short".into(),
        format!("goal: p99 < {P99_GOAL_MS} ms, <= {RATIO_GOAL}x"),
    ]];
    for (name, [short, long]) in names.iter().zip(times.iter_mut()) {
        let (s50, s99, l50, l99) = (pct(short, 0.50), pct(short, 0.99), pct(long, 0.50), pct(long, 0.99));
        let ratio = l99 / s99.max(0.001);
        // The default page holds every project up to 500: the logs' pages
        // differ in size, so only the latency goal applies there.
        let whole_page = name.contains("default page");
        let met = l99 < P99_GOAL_MS && (whole_page || ratio <= RATIO_GOAL);
        let verdict = match (met, whole_page) {
            (true, false) => "met".to_string(),
            (false, false) => "NOT MET".to_string(),
            (met, true) => format!(
                "p99 < {P99_GOAL_MS} ms {} (pages of {} vs {} rows: the ratio is not comparable)",
                if met { "met" } else { "NOT MET" },
                logs[0].projects.min(500),
                logs[1].projects.min(500)
            ),
        };
        table.push([
            name.to_string(),
            format!("{s50:.2} / {s99:.2} ms"),
            format!("{l50:.2} / {l99:.2} ms"),
            format!("{ratio:.2}"),
            verdict,
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

async fn time<F: Future<Output = anyhow::Result<()>>>(read: F) -> anyhow::Result<f64> {
    let started = Instant::now();
    read.await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn pct(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

async fn project_list(log: &Log) -> anyhow::Result<()> {
    let (rows, _) = projector::projects(&*log.store, None, 50).await?;
    ensure!(rows.len() == 50.min(log.projects), "project list gave {} rows", rows.len());
    Ok(())
}

async fn deployments(log: &Log, project: &str) -> anyhow::Result<()> {
    ensure!(requests::load_project(&*log.store, project).await?.is_some(), "no project {project}");
    let query = DeploymentQuery { project: Some(project.into()), limit: 50, ..Default::default() };
    let (rows, _) = projector::deployments(&*log.store, &query).await?;
    ensure!(rows.len() == canned::DEPLOYMENTS_PER_PROJECT, "deployments gave {} rows", rows.len());
    Ok(())
}

async fn status(log: &Log, project: &str, env: &str) -> anyhow::Result<()> {
    let store = &*log.store;
    let p = requests::load_project(store, project).await?.context("no project")?;
    ensure!(p.environments.contains_key(env));
    let state = load::environment(store, project, env).await?;
    load::routers(store).await?;
    let active = state.last_succeeded().context("nothing serves")?;
    load::deployment(store, active).await?.context("no serving deployment")?;
    Ok(())
}

async fn api_projects(log: &Log, uri: &str) -> anyhow::Result<()> {
    let request = Request::get(uri).header("authorization", format!("Bearer {}", log.token)).body(Body::empty())?;
    let response = log.app.clone().oneshot(request).await?;
    ensure!(response.status() == StatusCode::OK, "GET {uri}: {}", response.status());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    ensure!(body.len() > 2, "an empty project list");
    Ok(())
}

/// Fills a fresh schema with whole projects until about `events` events.
async fn fill(url: &str, schema: String, events: usize) -> anyhow::Result<Log> {
    let store = PgStore::connect(url, PgOptions { schema: Some(schema.clone()), ..Default::default() })
        .await
        .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(url)))?;
    let written = canned::fill(&store, events).await?;
    let projects = written / canned::events_per_project();
    let pg = store.clone();
    let store: Arc<dyn EventStore> = Arc::new(store);
    let token = requests::issue_token(&*store, "bench", "bench", TokenScope::Read).await?.map_err(|r| anyhow::anyhow!("{r}"))?;
    let config = ApiConfig { data_dir: std::env::temp_dir(), ..Default::default() };
    let app = api::app_with(store.clone(), config);
    Ok(Log { store, pg, app, token, events: written, projects })
}
