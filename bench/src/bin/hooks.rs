//! `slipway-bench-hooks`: how long a push webhook takes from its arrival
//! to its `DeploymentRequested` being recorded, next to a plain deploy
//! request (bearer token, `POST .../deployments`) through the same server
//! in the same run.
//!
//! A real server (`api::serve` on a loopback port) over PostgreSQL in a
//! fresh schema, one project with a webhook secret and the rule
//! `main -> test`. Each delivery is a signed GitHub push of a new commit to
//! `main` (about 3 KB, shaped like GitHub's); the handler answers 202 only
//! after the push, the deployment and its queue entry committed, so the
//! client's round trip bounds "received -> recorded" from above. Every
//! delivery after the second supersedes the one before (no engine runs, so
//! the first heads the queue and the others wait): the figure includes
//! that cancellation. Sequentially, then `--concurrency` deliveries in
//! flight at once (they race on the project stream and retry).
//! Goal: p99 under 50 ms.
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-hooks`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::json;
use slipway_engine::api;
use slipway_engine::webhook::sign;
use slipway_engine::{auto_deploy, requests};
use slipway_proto::event::TokenScope;
use slipway_proto::Event;
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::{EventStore, PgStore, Position};
use sqlx::PgPool;
use uuid::Uuid;

const P99_GOAL_MS: f64 = 50.0;
const WARMUP: usize = 10;

#[derive(Parser)]
#[command(about = "push webhook received -> deployment requested recorded, p50/p99, vs a plain deploy request")]
struct Args {
    /// Timed deliveries (and as many timed deploy requests).
    #[arg(long, default_value_t = 200)]
    deliveries: usize,
    /// Deliveries in flight at once in the second run.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", hide_env_values = true, default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Server {
    base: String,
    client: HttpClient,
    secret: String,
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = format!("slipway_bench_hooks_{}", Uuid::now_v7().simple());
    let result = tokio::select! {
        result = run(&args, &schema) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Ok(pool) = PgPool::connect(&args.pg_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
    println!();
    print!("{}", result?);
    Ok(())
}

async fn run(args: &Args, schema: &str) -> anyhow::Result<String> {
    let store = PgStore::connect(&args.pg_url, PgOptions { schema: Some(schema.into()), ..Default::default() })
        .await
        .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&args.pg_url)))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let token = requests::issue_token(&*store, "bench", "bench", TokenScope::Deploy).await??;
    let new = requests::NewProject {
        name: "app".into(),
        repository: "file:///srv/app.git".into(),
        default_branch: "main".into(),
        environments: vec!["test".into(), "live".into()],
        mirror_of: None,
    };
    requests::create_project(&*store, "bench", new).await??;
    let secret = auto_deploy::rotate_webhook_secret(&*store, "bench", "app").await??;
    auto_deploy::set_rule(&*store, "bench", "app", "main", "test", None).await??;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, shutdown) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, api::app(store.clone()), async move {
        let _ = shutdown.await;
    }));
    let client: HttpClient = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let s = Server { base: format!("http://{addr}"), client, secret, token };

    let mut out = String::from("slipway-bench-hooks: push webhook received -> DeploymentRequested recorded, vs a plain deploy request\n");
    out.push_str(&format!("command:  {}\n", std::env::args().collect::<Vec<_>>().join(" ")));
    out.push_str(&format!("server:   api::serve on {addr}, PostgreSQL {} (schema {schema})\n", redact_url(&args.pg_url)));

    // Warm up both paths, then alternate them so both see the same machine.
    let mut n = 0usize;
    for _ in 0..WARMUP {
        n += 1;
        deliver(&s, n).await?;
        deploy(&s).await?;
    }
    let (mut hooks, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..args.deliveries {
        n += 1;
        hooks.push(deliver(&s, n).await?);
        plain.push(deploy(&s).await?);
    }
    let mut concurrent = Vec::new();
    let started = Instant::now();
    let mut next = n;
    while concurrent.len() < args.deliveries {
        let batch: Vec<usize> = (0..args.concurrency.min(args.deliveries - concurrent.len())).map(|i| next + 1 + i).collect();
        next += batch.len();
        let times = futures::future::join_all(batch.iter().map(|k| deliver(&s, *k))).await;
        for t in times {
            concurrent.push(t?);
        }
    }
    let concurrent_wall = started.elapsed();

    // What was recorded: one webhook deployment per delivery, each older
    // waiting one cancelled.
    let events = store.read_all(Position::default(), 1_000_000).await?;
    let by_webhook = events
        .iter()
        .filter(|r| r.envelope.actor.starts_with("webhook:github:") && r.envelope.message_type == "DeploymentRequested")
        .count();
    let superseded: usize = events
        .iter()
        .filter_map(|r| match r.envelope.decode::<Event>() {
            Ok(Event::PushReceived(p)) => Some(p.superseded.len()),
            _ => None,
        })
        .sum();
    let deliveries = WARMUP + 2 * args.deliveries;
    ensure!(by_webhook == deliveries, "{by_webhook} webhook deployments for {deliveries} deliveries");
    out.push_str(&format!(
        "recorded: {by_webhook} webhook deployments for {deliveries} deliveries, {superseded} waiting ones superseded; \
         project stream at {} events\n",
        store.stream_version("project-app").await?
    ));
    out.push_str(&format!(
        "concurrent run: {} deliveries, {} in flight, {:.0} deliveries/s\n\n",
        args.deliveries,
        args.concurrency,
        args.deliveries as f64 / concurrent_wall.as_secs_f64()
    ));
    let mut table = vec![["request".to_string(), "p50".into(), "p99".into(), "max".into(), format!("goal: p99 < {P99_GOAL_MS} ms")]];
    let rows: [(&str, &mut Vec<f64>, bool); 3] = [
        ("webhook -> deployment recorded (one at a time)", &mut hooks, true),
        (&format!("webhook -> deployment recorded ({} in flight)", args.concurrency), &mut concurrent, true),
        ("baseline: POST .../deployments with a token", &mut plain, false),
    ];
    for (name, samples, judged) in rows {
        let (p50, p99, max) = (pct(samples, 0.50), pct(samples, 0.99), pct(samples, 1.0));
        let verdict = match (judged, p99 < P99_GOAL_MS) {
            (false, _) => "(baseline)",
            (true, true) => "met",
            (true, false) => "NOT MET",
        };
        table.push([name.to_string(), format!("{p50:.2} ms"), format!("{p99:.2} ms"), format!("{max:.2} ms"), verdict.into()]);
    }
    let widths: Vec<usize> = (0..5).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let _ = stop.send(());
    server.await??;
    Ok(out)
}

/// One signed GitHub push of commit `n` to main; the round trip in ms.
async fn deliver(s: &Server, n: usize) -> anyhow::Result<f64> {
    let commit = format!("{n:040x}");
    let body = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": commit,
        "created": false, "deleted": false, "forced": false, "base_ref": null,
        "compare": "https://github.com/octo-org/app/compare/abc...def",
        "commits": [{"id": commit, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true,
            "message": format!("change {n}"), "timestamp": "2025-03-01T12:00:00+01:00",
            "url": "https://github.com/octo-org/app/commit/x",
            "author": {"name": "Mona Octocat", "email": "mona@example.com", "username": "octocat"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [], "removed": [], "modified": ["README.md", "src/main.rs"]}],
        "head_commit": {"id": commit, "message": format!("change {n}"), "timestamp": "2025-03-01T12:00:00+01:00",
            "author": {"name": "Mona Octocat", "email": "mona@example.com", "username": "octocat"}},
        "repository": {"id": 1296269, "name": "app", "full_name": "octo-org/app", "private": true,
            "owner": {"name": "octo-org", "login": "octo-org", "id": 1}, "default_branch": "main",
            "description": "x".repeat(1500)},
        "pusher": {"name": "octocat", "email": "mona@example.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User", "site_admin": false}
    })
    .to_string();
    let request = hyper::Request::post(format!("{}/api/hooks/github/app", s.base))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", Uuid::now_v7().to_string())
        .header("x-hub-signature-256", format!("sha256={}", sign(&s.secret, body.as_bytes())))
        .body(Full::new(Bytes::from(body)))?;
    timed(s, request, hyper::StatusCode::ACCEPTED).await
}

/// A plain deploy request with a bearer token; the round trip in ms.
async fn deploy(s: &Server) -> anyhow::Result<f64> {
    let request = hyper::Request::post(format!("{}/api/projects/app/environments/live/deployments", s.base))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", s.token))
        .body(Full::new(Bytes::from_static(b"{\"ref\":\"main\"}")))?;
    timed(s, request, hyper::StatusCode::ACCEPTED).await
}

async fn timed(s: &Server, request: hyper::Request<Full<Bytes>>, expected: hyper::StatusCode) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = s.client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let took = started.elapsed().as_secs_f64() * 1e3;
    ensure!(status == expected, "{status}: {}", String::from_utf8_lossy(&body));
    Ok(took)
}

fn pct(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}
