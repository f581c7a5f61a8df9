//! A deployment waiting on a step no live worker serves: `slipway deploy`
//! says so while it follows, naming the step and how to serve it (the
//! README tour's server recipe once started workers for build and deploy
//! only, and the deployment sat at check_services with nothing said).
//! Real processes on PostgreSQL and RabbitMQ; a stand-in worker (no Docker).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::process::Command;

use common::Cluster;
use slipway_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_no_live_worker_serves_is_named_while_following() {
    let (schema, namespace, project, store) = common::isolated("uns").await;
    let mut c = Cluster::empty(&schema, &namespace);
    c.start_server();
    // Workers for build and deploy only, as the recipe had it.
    c.workers.push(c.spawn("builder", &["worker", "--steps", "build,deploy", "--stand-in-ms", "10"]));
    create_project(&*store, &project, "/nonexistent/stand-in", &["live"]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["deploy", &project, "live", "--timeout", "14", "--json"])
        .envs(c.env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let notes: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "note" && v["text"].as_str().is_some_and(|t| t.contains("no live worker")))
        .collect();
    let logs = c.logs();
    c.remove(&project).await;
    assert_eq!(out.status.code(), Some(6), "{stdout}\n{}\n{logs}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(notes.len(), 1, "{stdout}\n{logs}");
    let text = notes[0]["text"].as_str().unwrap();
    assert!(text.contains("`check_services`") && text.contains("slipway worker"), "{text}");
}
