//! A build whose worker hangs (SIGSTOP: its connection stays open, so the
//! queue never redelivers) is noticed by the engine's heartbeat timeout,
//! long before the build's own deadline, and dispatched again under the
//! same command id; when the hung worker wakes up, its outcome of the same
//! command is not recorded a second time. Real processes on PostgreSQL and
//! RabbitMQ, with stand-in step executors (no Docker needed).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::process::Command;
use std::time::Duration;

use common::Cluster;
use slipway_engine::Status;
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::{Event, Step};
use slipway_store::EventStore;
use slipway_tests::*;
use uuid::Uuid;

fn signal(child: &std::process::Child, sig: &str) {
    assert!(Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap().success());
}

async fn events(store: &dyn EventStore, id: Uuid) -> Vec<Event> {
    let recorded = store.read_stream(&deployment_stream(id), 1).await.unwrap();
    recorded.iter().map(|r| r.envelope.decode().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_builder_is_replaced_after_the_heartbeat_timeout_under_the_same_command_id() {
    let (schema, namespace, project, store) = common::isolated("beat").await;
    let mut c = Cluster::empty(&schema, &namespace);
    let server = ["server", "--listen", "127.0.0.1:0", "--drain", "0", "--heartbeat-timeout", "12", "--build-timeout", "600"];
    c.server = Some(c.spawn("server", &server));
    // The slow builder, and a quick worker for every other step. The
    // builder takes one build at a time (--prefetch 1): a hung process with
    // credit left would be handed the re-dispatch too.
    let hung = c.spawn("builder-a", &["worker", "--steps", "build", "--prefetch", "1", "--stand-in-ms", "8000"]);
    let others = "check_services,checkout,deploy,release,processes,health_check,watch,retire,cleanup";
    c.workers.push(c.spawn("others", &["worker", "--steps", others, "--stand-in-ms", "10"]));
    create_project(&*store, &project, "/nonexistent/stand-in", &["live"]).await;
    let id = request_deployment(&*store, &project, "live", "", BuildMode::Local, true).await;

    // Builder A heartbeats the build command, then hangs.
    let command = eventually("builder A to report the build in progress", Duration::from_secs(60), || async {
        let workers = store.operational().workers().await.unwrap();
        workers.iter().find(|w| w.steps == ["build"] && !w.commands.is_empty()).map(|w| w.commands[0])
    })
    .await;
    signal(&hung, "STOP");
    let stopped_at = std::time::Instant::now();
    c.extra.push(hung);
    c.workers.push(c.spawn("builder-b", &["worker", "--steps", "build", "--stand-in-ms", "10"]));

    let mut finished = None;
    for _ in 0..180 {
        finished = slipway_engine::load::deployment(&*store, id).await.unwrap().filter(|d| d.is_finished());
        if finished.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(d) = finished else {
        panic!("the deployment did not finish in 90 s: {:?}\n{}", events(&*store, id).await, c.logs());
    };
    let took = stopped_at.elapsed();
    assert_eq!(d.status, Status::Succeeded, "{:?}\n{}", events(&*store, id).await, c.logs());
    let builds: Vec<(u32, Uuid)> = events(&*store, id)
        .await
        .iter()
        .filter_map(|e| match e {
            Event::StepDispatched(s) if s.step == Step::Build => Some((s.attempt, s.command_id)),
            _ => None,
        })
        .collect();
    assert_eq!(builds, vec![(1, command), (2, command)], "dispatched again under the same id");
    assert!(took < Duration::from_secs(60), "noticed after {took:?}, long before the 600 s build timeout");

    // Builder A wakes up and reports the same command: not recorded twice.
    signal(&c.extra[0], "CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let built = events(&*store, id).await.iter().filter(|e| matches!(e, Event::ImageBuilt(_))).count();
    assert_eq!(built, 1, "one outcome per command id");
    assert!(slipway_engine::load::deployment(&*store, id).await.unwrap().unwrap().is_finished());
    c.remove(&project).await;
}
