//! Telemetry across real processes: a deployment run by `slipway server`
//! (engine, relay) and two `slipway worker` processes that split the steps
//! between them, on PostgreSQL and RabbitMQ, with stand-in executors (no
//! Docker). Every process writes its finished spans to one
//! `SLIPWAY_TRACE_FILE`; the test reads them back and checks the trace, and
//! reads each process's `--metrics-listen` endpoint.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use slipway_engine::Status;
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, PgStore};
use slipway_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

mod common;
use common::Cluster;

const WORKER_A_STEPS: &str = "check_services,checkout,build,deploy";
const WORKER_B_STEPS: &str = "release,processes,health_check,watch,retire,cleanup";

fn free_addr() -> String {
    format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// `GET /metrics` from a `--metrics-listen` address; `None` until it answers.
async fn metrics(addr: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    text.starts_with("HTTP/1.1 200").then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The value of the series `name` (with its labels), if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
}

/// The spans written so far, as JSON objects.
fn spans(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn text<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"][key].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_across_three_processes_is_one_trace_and_moves_the_counters() {
    let tag = Uuid::now_v7().simple().to_string();
    let (schema, namespace, project) = (format!("tel_{tag}"), format!("tel{}", &tag[20..]), format!("tel-{}", &tag[24..]));
    let store: Arc<dyn EventStore> =
        Arc::new(PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), ..Default::default() }).await.unwrap());
    let mut c = Cluster::empty(&schema, &namespace);
    let trace_file = c.data.path().join("spans.jsonl");
    c.env.push(("SLIPWAY_TRACE_FILE", trace_file.display().to_string()));
    let (server_metrics, a_metrics, b_metrics) = (free_addr(), free_addr(), free_addr());
    let server_args = ["server", "--listen", "127.0.0.1:0", "--drain", "0", "--metrics-listen", &server_metrics];
    c.server = Some(c.spawn("server", &server_args));
    for (name, steps, listen) in [("worker-a", WORKER_A_STEPS, &a_metrics), ("worker-b", WORKER_B_STEPS, &b_metrics)] {
        let args = ["worker", "--stand-in-ms", "20", "--steps", steps, "--metrics-listen", listen];
        // Each worker names its own service.
        c.env.push(("OTEL_SERVICE_NAME", format!("slipway-{name}")));
        let worker = c.spawn(name, &args);
        c.env.pop();
        c.workers.push(worker);
    }

    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n", ""), "v1");
    create_project(&*store, &project, &repo.path().display().to_string(), &["live"]).await;
    let id = request_deployment(&*store, &project, "live", "", BuildMode::Local, true).await;
    let state = eventually(&format!("deployment {id} to finish"), Duration::from_secs(90), || async {
        slipway_engine::load::deployment(&*store, id).await.ok().flatten().filter(|d| d.is_finished())
    })
    .await;
    assert_eq!(state.status, Status::Succeeded, "{:?}\n{}", state.status, c.logs());

    // The root: the request's context, recorded in this (untraced) process.
    let recorded = store.read_stream(&deployment_stream(id), 1).await.unwrap();
    let root = recorded[0].envelope.trace.clone().expect("the request carries a trace context");
    let trace_id = root.trace_id().to_string();
    assert_eq!(trace_id, id.simple().to_string(), "the trace id is the deployment id");
    let root_span = root.traceparent[36..52].to_string();

    // Every dispatched command's publish span has its process span (a
    // worker writes it after the ack, so wait for the last ones).
    let mine = |s: &Value| attribute(s, "slipway.deployment.id") == id.to_string();
    let all = eventually("a process span for every publish span", Duration::from_secs(30), || async {
        let all: Vec<Value> = spans(&trace_file).into_iter().filter(mine).collect();
        let published: BTreeSet<&str> = all.iter().filter(|s| text(s, "kind") == "producer").map(|s| text(s, "span_id")).collect();
        let processed: BTreeSet<&str> = all.iter().filter(|s| text(s, "kind") == "consumer").map(|s| text(s, "parent_span_id")).collect();
        (published.len() >= 7 && published == processed).then_some(all.clone())
    })
    .await;

    // One trace.
    let traces: BTreeSet<&str> = all.iter().map(|s| text(s, "trace_id")).collect();
    assert_eq!(traces, BTreeSet::from([trace_id.as_str()]), "{all:#?}");

    // Each step span's parent is the span that dispatched it: the publish
    // span of the same message, in the server.
    let publish: BTreeMap<&str, &Value> = all.iter().filter(|s| text(s, "kind") == "producer").map(|s| (text(s, "span_id"), s)).collect();
    let process: Vec<&Value> = all.iter().filter(|s| text(s, "kind") == "consumer").collect();
    for step in &process {
        let parent = publish.get(text(step, "parent_span_id")).unwrap_or_else(|| panic!("no publish span for {step:#}"));
        assert_eq!(attribute(step, "messaging.message.id"), attribute(parent, "messaging.message.id"));
        assert_eq!(attribute(step, "slipway.step"), attribute(parent, "slipway.step"));
        let queue = attribute(step, "messaging.destination.name");
        assert_eq!(text(step, "name"), format!("{queue} process"));
        assert_eq!(text(parent, "name"), format!("{queue} publish"));
        assert_eq!(attribute(step, "messaging.system"), "rabbitmq");
        assert_eq!(attribute(parent, "messaging.system"), "rabbitmq");
    }
    // ...and each dispatch follows the request or the step before it.
    let process_ids: BTreeSet<&str> = process.iter().map(|s| text(s, "span_id")).collect();
    for p in publish.values() {
        let parent = text(p, "parent_span_id");
        assert!(parent == root_span || process_ids.contains(parent), "publish span with an unknown parent: {p:#}");
    }
    assert_eq!(publish.values().filter(|p| text(p, "parent_span_id") == root_span).count(), 1, "one first dispatch");

    // Three processes, three services, each worker with its own steps.
    let services: BTreeSet<&str> = all.iter().map(|s| text(s, "service")).collect();
    assert_eq!(services, BTreeSet::from(["slipway-server", "slipway-worker-a", "slipway-worker-b"]));
    assert!(publish.values().all(|p| text(p, "service") == "slipway-server"));
    for step in &process {
        let steps = if text(step, "service") == "slipway-worker-a" { WORKER_A_STEPS } else { WORKER_B_STEPS };
        assert!(steps.split(',').any(|s| s == attribute(step, "slipway.step")), "{step:#}");
    }

    // The counters moved: the engine counted the deployment and sampled the
    // gauges; each worker timed its steps. The engine counts a deployment
    // after its verdict's append returns, in its own process, so the count
    // may come a moment after this test saw the verdict stored.
    let server = eventually("the server's gauges and its deployment count", Duration::from_secs(20), || async {
        metrics(&server_metrics).await.filter(|m| {
            m.contains("slipway_subscription_lag{") && m.contains("slipway_queue_depth{") && m.contains("slipway_deployments_total{")
        })
    })
    .await;
    assert_eq!(series(&server, "slipway_deployments_total{outcome=\"succeeded\"}"), Some(1.0), "{server}");
    assert!(series(&server, "slipway_outbox_lag").is_some(), "{server}");
    let a = metrics(&a_metrics).await.expect("worker a's metrics");
    assert_eq!(series(&a, "slipway_step_duration_seconds_count{step=\"build\",outcome=\"succeeded\"}"), Some(1.0), "{a}");
    assert_eq!(series(&a, "slipway_step_duration_seconds_count{step=\"release\",outcome=\"succeeded\"}"), None, "{a}");
    let b = metrics(&b_metrics).await.expect("worker b's metrics");
    assert_eq!(series(&b, "slipway_step_duration_seconds_count{step=\"health_check\",outcome=\"succeeded\"}"), Some(1.0), "{b}");
    assert!(b.contains("slipway_queue_depth{queue=\"slipway.step.release\"}"), "{b}");

    c.remove(&project).await;
}
