//! Fault trials with real processes: `slipway server`, two `slipway worker`
//! processes and a `slipway router` on PostgreSQL + RabbitMQ + Docker. Each
//! trial deploys the example app (alternating v1 and v2) while a fault is
//! injected mid-deployment, then checks that nothing was lost:
//! - the deployment reached a final state (and succeeded: every fault here
//!   is transient);
//! - its stream's versions are gapless and no command has two outcomes;
//! - exactly one web container runs, the active release's, and no container
//!   belongs to anything else;
//! - a load client going through the router the whole time saw 0 failed
//!   requests, every answer v1 or v2.
//!
//! Faults: `kill -9` of every worker process right after a step was
//! dispatched (each of the seven steps), `kill -9` of the engine, RabbitMQ
//! `stop_app`/`start_app`, and a PostgreSQL restart. `TRIALS=N` repeats the
//! list N times (`scripts/trials N` prints the table).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use slipway_engine::Status;
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::{Event, Step};
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, PgStore};
use slipway_tests::load::Load;
use slipway_tests::*;
use uuid::Uuid;

mod common;
use common::Cluster;

const APP: &str = "[web]\nport = 80\nhealth_timeout = \"30s\"\n\n[release]\ncommands = [\"sleep 0.3\"]\n\n[processes.worker]\ncommand = [\"sh\", \"-c\", \"while true; do sleep 5; done\"]\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorkers(Step),
    KillEngine,
    RestartRabbitMq,
    RestartPostgres,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KillWorkers(step) => write!(f, "kill -9 workers during {step}"),
            Fault::KillEngine => f.write_str("kill -9 engine (and relay)"),
            Fault::RestartRabbitMq => f.write_str("RabbitMQ stop_app/start_app"),
            Fault::RestartPostgres => f.write_str("PostgreSQL restart"),
        }
    }
}

fn sh(cmd: &str) {
    let out = Command::new("bash").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until the deployment dispatched `step` and has no outcome of it
/// yet; returns false if the step's outcome was already there (too late).
async fn wait_dispatched(store: &dyn EventStore, id: Uuid, step: Step) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = events(store, id).await;
        if events.iter().any(|e| e.completes_step() == Some(step)) {
            return false;
        }
        if events.iter().any(|e| matches!(e, Event::StepDispatched(d) if d.step == step)) {
            return true;
        }
        assert!(tokio::time::Instant::now() < deadline, "{step} was never dispatched: {events:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn events(store: &dyn EventStore, id: Uuid) -> Vec<Event> {
    match store.read_stream(&deployment_stream(id), 1).await {
        Ok(recorded) => recorded.iter().map(|r| r.envelope.decode().unwrap()).collect(),
        Err(_) => vec![], // PostgreSQL restarting
    }
}

/// Injects `fault` into deployment `id`; true if it struck mid-step.
async fn inject(c: &mut Cluster, store: &dyn EventStore, id: Uuid, fault: Fault) -> bool {
    match fault {
        Fault::KillWorkers(step) => {
            let before_outcome = wait_dispatched(store, id, step).await;
            c.kill_workers();
            let outcome_now = events(store, id).await.iter().any(|e| e.completes_step() == Some(step));
            c.start_workers();
            before_outcome && !outcome_now
        }
        Fault::KillEngine => {
            let mid = wait_dispatched(store, id, Step::Build).await;
            c.kill_server();
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.start_server();
            mid
        }
        Fault::RestartRabbitMq => {
            let mid = wait_dispatched(store, id, Step::Deploy).await;
            sh("rabbitmqctl -q stop_app && sleep 1 && rabbitmqctl -q start_app && rabbitmqctl -q await_startup");
            mid
        }
        Fault::RestartPostgres => {
            let mid = wait_dispatched(store, id, Step::Release).await;
            let version = std::fs::read_dir("/etc/postgresql").unwrap().flatten().map(|e| e.file_name()).max().unwrap();
            sh(&format!("pg_ctlcluster {} main restart", version.to_string_lossy()));
            mid
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    trials: u32,
    completed: u32,
    mid_step: u32,
    lost_events: u32,
    duplicate_effects: u32,
}

/// Lost events: gaps in the stream's versions. Duplicate effects: a command
/// with two outcomes, or more than one web container.
async fn check(store: &dyn EventStore, project: &str, id: Uuid, tally: &mut Tally) {
    let recorded = store.read_stream(&deployment_stream(id), 1).await.unwrap();
    let versions: Vec<u64> = recorded.iter().map(|r| r.version).collect();
    if versions != (1..=versions.len() as u64).collect::<Vec<_>>() {
        tally.lost_events += 1;
    }
    let mut outcomes: BTreeMap<Uuid, u32> = BTreeMap::new();
    for r in &recorded {
        let event: Event = r.envelope.decode().unwrap();
        if event.completes_step().is_some() || matches!(event, Event::StepFailed(_)) {
            if let Some(cause) = r.envelope.causation_id {
                *outcomes.entry(cause).or_default() += 1;
            }
        }
    }
    tally.duplicate_effects += outcomes.values().filter(|n| **n > 1).count() as u32;
    // The previous release drains (1 s) and stops: then only the active
    // release's containers remain.
    let label = format!("slipway.project={project}");
    let active = format!("slipway.deployment={id}");
    eventually("only the active release's containers", Duration::from_secs(60), || async {
        let all = containers_with_label(&label);
        let mine = containers_with_label(&active);
        (all.len() == mine.len()).then_some(())
    })
    .await;
    let webs = containers_with_label("slipway.role=web").into_iter().filter(|c| containers_with_label(&label).contains(c)).count();
    if webs != 1 {
        tally.duplicate_effects += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_lose_nothing_and_the_release_keeps_answering() {
    require_docker();
    let rounds: usize = std::env::var("TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let tag = Uuid::now_v7().simple().to_string();
    let schema = format!("trials_{tag}");
    let namespace = format!("trials{}", &tag[20..]);
    let project = format!("trial-{}", &tag[24..]);
    let store: Arc<dyn EventStore> = Arc::new(
        PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), ..Default::default() })
            .await
            .expect("PostgreSQL (run scripts/services)"),
    );
    let mut c = Cluster::start(&schema, &namespace);
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", APP, ""), "v1");
    let v2 = repo.commit(&busybox_app("v2", APP, ""), "v2");
    create_project(&*store, &project, &repo.path().display().to_string(), &["live"]).await;
    let request = |commit: String| {
        let store = store.clone();
        let project = project.clone();
        async move { request_deployment(&*store, &project, "live", &commit, BuildMode::Local, true).await }
    };
    let wait = |id: Uuid| {
        let store = store.clone();
        async move {
            eventually(&format!("deployment {id} to finish"), Duration::from_secs(180), || async {
                match slipway_engine::load::deployment(&*store, id).await {
                    Ok(Some(d)) if d.is_finished() => Some(d),
                    _ => None,
                }
            })
            .await
        }
    };

    let first = wait(request(v1.clone()).await).await;
    assert_eq!(first.status, Status::Succeeded, "{}", c.logs());
    let host = slipway_node::host_name(&project, "live", "localhost");
    eventually("the router to serve v1", Duration::from_secs(10), || async {
        get_via(c.router_addr, &host, "/", Duration::from_secs(2)).await.ok().filter(|(s, _)| *s == 200)
    })
    .await;
    let load = Load::start(c.router_addr, &host, 2, Duration::from_millis(20));

    let mut faults: Vec<Fault> = Step::PIPELINE.into_iter().map(Fault::KillWorkers).collect();
    faults.extend([Fault::KillEngine, Fault::RestartRabbitMq, Fault::RestartPostgres]);
    let mut tallies: BTreeMap<Fault, Tally> = BTreeMap::new();
    let mut n = 0;
    for _ in 0..rounds {
        for fault in &faults {
            n += 1;
            let commit = if n % 2 == 1 { v2.clone() } else { v1.clone() };
            let id = request(commit).await;
            let mid = inject(&mut c, &*store, id, *fault).await;
            let d = wait(id).await;
            let tally = tallies.entry(*fault).or_default();
            tally.trials += 1;
            tally.mid_step += u32::from(mid);
            assert_eq!(d.status, Status::Succeeded, "{fault}: {:?}\n{}", events(&*store, id).await, c.logs());
            tally.completed += 1;
            check(&*store, &project, id, tally).await;
        }
    }
    let samples = load.stop().await;
    let total: usize = samples.iter().map(Vec::len).sum();
    let failed: Vec<&String> = samples.iter().flatten().filter_map(|s| s.outcome.as_ref().err()).collect();
    let wrong = samples.iter().flatten().filter(|s| s.outcome.as_ref().is_ok_and(|b| b != "v1" && b != "v2")).count();

    println!("\n{:<40} {:>6} {:>9} {:>8} {:>11} {:>17}", "fault", "trials", "completed", "mid-step", "lost events", "duplicate effects");
    for (fault, t) in &tallies {
        println!(
            "{:<40} {:>6} {:>9} {:>8} {:>11} {:>17}",
            fault.to_string(),
            t.trials,
            t.completed,
            t.mid_step,
            t.lost_events,
            t.duplicate_effects
        );
    }
    println!("requests through the router: {total}, failed: {}, wrong answers: {wrong}", failed.len());

    for t in tallies.values() {
        assert_eq!((t.lost_events, t.duplicate_effects), (0, 0), "{tallies:?}");
    }
    assert!(failed.is_empty(), "{} of {total} requests failed, e.g. {:?}", failed.len(), failed.first());
    assert_eq!(wrong, 0);
    assert!(total > 100, "only {total} requests");
    c.remove(&project).await;
}
