//! Router leases with real processes (`slipway server`, workers and a
//! `slipway router --lease 2`) on PostgreSQL, RabbitMQ and Docker:
//! - a router killed with SIGKILL never deregisters, yet once its lease has
//!   passed the engine records it expired and the next deployment
//!   succeeds (the server's --switch-timeout is 10 s: before leases, the
//!   dead router failed the switch);
//! - started again under the same id, it serves the current release;
//! - a router that lives but goes silent past its lease (SIGSTOP, as a
//!   partition from the database would) is expired, and when it wakes it
//!   reads every route, registers again and is waited for by the next switch.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use slipway_engine::{Deployment, Status};
use slipway_proto::event::{deployment_stream, BuildMode, ROUTERS_STREAM};
use slipway_proto::Event;
use slipway_store::EventStore;
use slipway_tests::*;

const APP: &str = "[web]\nport = 80\nhealth_timeout = \"30s\"\nmin_ready = \"0s\"\nwatch = \"0s\"\n";
const ROUTER: &str = "lease-router";

fn signal(child: &std::process::Child, sig: &str) {
    assert!(Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap().success());
}

async fn decoded(store: &dyn EventStore, stream: &str) -> Vec<Event> {
    store.read_stream(stream, 1).await.unwrap().iter().map(|r| r.envelope.decode().unwrap()).collect()
}

/// The routers stream, as (event type, router id) pairs.
async fn registry(store: &dyn EventStore) -> Vec<(&'static str, String)> {
    decoded(store, ROUTERS_STREAM)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::RouterStarted(r) => Some(("started", r.router_id)),
            Event::RouterStopped(r) => Some(("stopped", r.router_id)),
            Event::RouterExpired(r) => Some(("expired", r.router_id)),
            _ => None,
        })
        .collect()
}

async fn deploy(store: &Arc<dyn EventStore>, c: &Cluster, project: &str, commit: &str) -> Deployment {
    let id = request_deployment(&**store, project, "live", commit, BuildMode::Local, true).await;
    let d = eventually(&format!("deployment {id} to finish"), Duration::from_secs(60), || async {
        slipway_engine::load::deployment(&**store, id).await.ok().flatten().filter(|d| d.is_finished())
    })
    .await;
    assert_eq!(d.status, Status::Succeeded, "{:?}\n{}", decoded(&**store, &deployment_stream(id)).await, c.logs());
    d
}

async fn serves(c: &Cluster, host: &str, body: &str) {
    eventually(&format!("the router to serve {body}"), Duration::from_secs(10), || async {
        get_via(c.router_addr, host, "/", Duration::from_secs(2)).await.ok().filter(|(s, b)| *s == 200 && b.trim() == body)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_stops_blocking_switches_after_its_lease_and_serves_the_current_release_when_back() {
    require_docker();
    let (schema, namespace, project, store) = common::isolated("lease").await;
    let mut c = Cluster::empty(&schema, &namespace);
    c.start_server();
    c.start_workers();
    let router_args = ["router", "--router", &c.router_addr.to_string(), "--router-id", ROUTER, "--lease", "2"];
    c.router = Some(c.spawn("router", &router_args));
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", APP, ""), "v1");
    let v2 = repo.commit(&busybox_app("v2", APP, ""), "v2");
    create_project(&*store, &project, &repo.path().display().to_string(), &["live"]).await;
    let host = slipway_node::host_name(&project, "live", "localhost");
    eventually("the router to register", Duration::from_secs(20), || async {
        registry(&*store).await.contains(&("started", ROUTER.to_string())).then_some(())
    })
    .await;
    deploy(&store, &c, &project, &v1).await;
    serves(&c, &host, "v1").await;

    // SIGKILL: no RouterStopped. After its 2 s lease the engine expires it.
    let mut killed = c.router.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_at = std::time::Instant::now();
    let d2 = deploy(&store, &c, &project, &v2).await;
    assert!(killed_at.elapsed() < Duration::from_secs(30), "took {:?}", killed_at.elapsed());
    let expired = decoded(&*store, ROUTERS_STREAM).await;
    let expiry = expired.iter().find_map(|e| match e {
        Event::RouterExpired(x) if x.router_id == ROUTER => Some(x.clone()),
        _ => None,
    });
    let expiry = expiry.unwrap_or_else(|| panic!("no RouterExpired: {expired:?}"));
    assert_eq!(expiry.lease_ms, 2_000);
    assert_eq!(registry(&*store).await.iter().filter(|(what, _)| *what == "expired").count(), 1, "recorded once");
    let events = decoded(&*store, &deployment_stream(d2.id)).await;
    let switched = events.iter().find_map(|e| match e {
        Event::TrafficSwitched(s) => Some(s.routers.clone()),
        _ => None,
    });
    assert_eq!(switched, Some(vec![]), "the switch did not wait for the dead router: {events:?}");

    // Back under the same id: it read every route before serving.
    c.router = Some(c.spawn("router-again", &router_args));
    serves(&c, &host, "v2").await;

    // Alive but silent past its lease (stopped, as if cut off from the
    // database): expired; awake, it registers again on its own.
    let before = registry(&*store).await.len();
    signal(c.router.as_ref().unwrap(), "STOP");
    eventually("the stopped router to be expired", Duration::from_secs(20), || async {
        registry(&*store).await[before..].contains(&("expired", ROUTER.to_string())).then_some(())
    })
    .await;
    signal(c.router.as_ref().unwrap(), "CONT");
    eventually("the woken router to register again", Duration::from_secs(20), || async {
        let after = registry(&*store).await;
        (after.last() == Some(&("started", ROUTER.to_string())) && after.len() > before + 1).then_some(())
    })
    .await;
    let d3 = deploy(&store, &c, &project, &v1).await;
    let events = decoded(&*store, &deployment_stream(d3.id)).await;
    let switched = events.iter().find_map(|e| match e {
        Event::TrafficSwitched(s) => Some(s.routers.clone()),
        _ => None,
    });
    assert_eq!(switched, Some(vec![ROUTER.to_string()]), "waited for again: {events:?}");
    serves(&c, &host, "v1").await;
    c.remove(&project).await;
}
