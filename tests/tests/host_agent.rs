//! The host agent on real Docker: a serving container that stopped is
//! started again and the route follows its new port; a container of a
//! release that should not run is removed (one another installation runs
//! is not); a crash-looping process of the serving release is reported as
//! crash-looping with its restart count, in a few records. A serving
//! release whose containers were removed is deployed again by itself.
//! Two agents on one host record a correction once. Every
//! correction is an event with its reason on the environment's stream.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::process::Command;
use std::time::Duration;

use slipway_engine::driver::DriverOptions;
use slipway_engine::Status;
use slipway_proto::event::{environment_stream, ContainerAction, LiveState, RouteReason, ROUTES_STREAM};
use slipway_proto::Event;
use slipway_tests::*;
use slipway_workers::host::AgentOptions;

const WEB: &str = r#"
[web]
port = 80
health_timeout = "20s"
"#;

/// A process that runs past the processes step's start window, then exits with code 3.
const CRASHING: &str = r#"
[web]
port = 80
health_timeout = "20s"

[processes.crash]
command = ["sh", "-c", "sleep 4; exit 3"]
"#;

/// A web process and a worker process.
const WITH_WORKER: &str = r#"
[web]
port = 80
health_timeout = "20s"

[processes.worker]
command = ["sleep", "3600"]
"#;

/// A harness whose agent reconciles every second and removes strays at once.
async fn harness() -> Harness {
    let engine = DriverOptions { drain_seconds: 0, switch_timeout: Duration::from_secs(10), ..Default::default() };
    let agent = AgentOptions { every: Duration::from_secs(1), grace: Duration::ZERO };
    Harness::start_with_agent(Backends::PostgresRabbit, |q| q, engine, Some(agent)).await
}

async fn stream_events(h: &Harness, stream: &str) -> Vec<Event> {
    let recorded = h.store.read_stream(stream, 1).await.unwrap();
    recorded.iter().map(|r| r.envelope.decode().unwrap()).collect()
}

async fn env_events(h: &Harness) -> Vec<Event> {
    stream_events(h, &environment_stream(&h.project, "test")).await
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_serving_container_is_started_again_and_the_route_follows_its_port() {
    let h = harness().await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", WEB, ""), "one");
    h.create_project(&repo.path()).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", failure(&d));
    let web = d.context.web_container.clone().unwrap();
    assert_eq!(h.routed_page("test").await.unwrap().1.trim(), "one");
    let started = std::time::Instant::now();
    // Given the serving web container stops (as after a Docker daemon restart),
    docker(&["stop", "-t", "0", &web]);
    // then the agent starts it again and says why,
    eventually("the web container to be started again", Duration::from_secs(30), || async {
        env_events(&h)
            .await
            .iter()
            .any(|e| matches!(e, Event::ContainerReconciled(s) if s.container == web && s.action == ContainerAction::Started))
            .then_some(())
    })
    .await;
    // and the environment answers through the router again, at the port it runs on now.
    let port: u16 = docker(&["inspect", "-f", "{{(index (index .NetworkSettings.Ports \"80/tcp\") 0).HostPort}}", &web]).parse().unwrap();
    eventually("the router to answer again", Duration::from_secs(30), || async {
        matches!(h.routed_page("test").await, Ok((200, body)) if body.trim() == "one").then_some(())
    })
    .await;
    let routes = stream_events(&h, ROUTES_STREAM).await;
    let last = routes.iter().rev().find_map(|e| match e {
        Event::RouteChanged(r) if r.project == h.project => Some(r.clone()),
        _ => None,
    });
    let last = last.unwrap();
    assert_eq!(last.upstreams, vec![format!("127.0.0.1:{port}")]);
    if Some(port) != d.context.web_port {
        assert_eq!(last.reason, RouteReason::Reconcile);
        let env = slipway_engine::load::environment(&*h.store, &h.project, "test").await.unwrap();
        assert_eq!(env.active.unwrap().upstreams, vec![format!("127.0.0.1:{port}")], "a later revert goes to the new port");
        // The move is an acknowledged switch: the router acknowledged it.
        let settled = eventually("the reroute to be acknowledged", Duration::from_secs(30), || async {
            env_events(&h).await.into_iter().find_map(|e| match e {
                Event::RerouteSettled(s) => Some(s),
                _ => None,
            })
        })
        .await;
        assert_eq!((settled.acknowledged, settled.missing), (vec!["test-router".to_string()], vec![]));
    }
    eprintln!("back through the router {:?} after the stop (port {:?} -> {port})", started.elapsed(), d.context.web_port);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_of_a_release_that_does_not_serve_is_removed_with_its_reason() {
    let h = harness().await;
    // A second agent on the same host (a second worker process).
    let (stop_second, shutdown) = slipway_node::manual();
    let agent = AgentOptions { every: Duration::from_secs(1), grace: Duration::ZERO };
    let second_agent = tokio::spawn(slipway_node::agent::run(h.store.clone(), "second".into(), agent, shutdown));
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", WEB, ""), "one");
    h.create_project(&repo.path()).await;
    let first = h.deploy("test", "main").await;
    let second = h.deploy("test", "main").await;
    assert_eq!(second.status, Status::Succeeded, "{:?}", failure(&second));
    h.wait_no_containers(first.id).await;
    // Given a container of the replaced release runs again (a retirement
    // lost in transit), and one of a deployment this store never heard of,
    let image = second.context.image_id.clone().unwrap();
    let label = |k: &str, v: &str| format!("--label=slipway.{k}={v}");
    let stray = format!("slipway-{}-test-{}-web", h.project, first.id.simple());
    let foreign_id = uuid::Uuid::now_v7();
    let foreign = format!("slipway-{}-test-{}-web", h.project, foreign_id.simple());
    // (With no grace, the agents may have removed the replaced release's
    // own web container during its retirement already: that is recorded too.)
    let before = env_events(&h).await.len();
    for (name, id) in [(&stray, first.id), (&foreign, foreign_id)] {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            &label("project", &h.project),
            &label("environment", "test"),
            &label("deployment", &id.to_string()),
            &label("role", "web"),
            &image,
        ]);
    }
    // then the agent removes the stray and records why,
    eventually("the stray container to be removed", Duration::from_secs(30), || async {
        containers_with_label(&format!("slipway.deployment={}", first.id)).is_empty().then_some(())
    })
    .await;
    let removed: Vec<_> = env_events(&h)
        .await
        .into_iter()
        .skip(before)
        .filter_map(|e| match e {
            Event::ContainerReconciled(r) if r.container == stray && r.action == ContainerAction::Removed => Some(r),
            _ => None,
        })
        .collect();
    // once, though two agents saw it,
    assert_eq!(removed.len(), 1, "{removed:?}");
    let removed = &removed[0];
    assert!(removed.reason.contains(&second.id.to_string()), "{}", removed.reason);
    // and leaves the other installation's container and the serving release alone.
    assert_eq!(containers_with_label(&format!("slipway.deployment={foreign_id}")), vec![foreign.clone()]);
    assert_eq!(containers_with_label(&format!("slipway.deployment={}", second.id)).len(), 1);
    let _ = Command::new("docker").args(["rm", "-f", &foreign]).output();
    let _ = stop_second.send(());
    second_agent.await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_process_is_reported_with_its_restarts_in_a_few_records() {
    let h = harness().await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", CRASHING, ""), "one");
    h.create_project(&repo.path()).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", failure(&d));
    let crash = d.containers.iter().find(|c| c.ends_with("-crash-1")).unwrap().clone();
    // Docker restarts it, as the restart policy web and process containers get does.
    docker(&["update", "--restart", "unless-stopped", &crash]);
    let started = std::time::Instant::now();
    let live = eventually("the process to be reported crash-looping", Duration::from_secs(60), || async {
        let env = slipway_engine::load::environment(&*h.store, &h.project, "test").await.unwrap();
        env.release_live().filter(|l| l.state == LiveState::CrashLooping && l.restarts >= 2)
    })
    .await;
    assert_eq!(live.last_exit, Some(3), "{live:?}");
    // What `slipway status` prints for it.
    assert!(live.describe().starts_with("crash-looping, "), "{}", live.describe());
    let reported = started.elapsed();
    // Several restarts later, the record is still small.
    let exits = eventually("Docker to restart it five times", Duration::from_secs(60), || async {
        let count: u32 = docker(&["inspect", "-f", "{{.RestartCount}}", &crash]).parse().unwrap_or(0);
        (count >= 5).then_some(count)
    })
    .await;
    let supervised: Vec<_> = env_events(&h)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ContainerSupervised(s) => Some(s.state),
            _ => None,
        })
        .collect();
    let records = supervised.len();
    // Docker restarts it between the exits: said so, not "down".
    assert!(supervised.contains(&LiveState::Restarting), "{supervised:?}");
    assert!(!supervised.contains(&LiveState::Down), "{supervised:?}");
    assert!(records <= 6, "{records} supervision records for {exits} restarts");
    eprintln!("crash-looping reported after {reported:?}; {records} records ({supervised:?}) for {exits} Docker restarts");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_release_whose_containers_were_removed_is_deployed_again() {
    let h = harness().await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", WITH_WORKER, ""), "one");
    h.create_project(&repo.path()).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", failure(&d));
    assert_eq!(d.containers.len(), 2, "{:?}", d.containers);
    // Given every container of the serving release is removed (by hand, or
    // with a Docker host's data),
    let started = std::time::Instant::now();
    for c in &d.containers {
        docker(&["rm", "-f", c]);
    }
    // then the agent says what is missing and requests the same release again,
    let restore = eventually("the release to be deployed again", Duration::from_secs(30), || async {
        env_events(&h).await.into_iter().find_map(|e| match e {
            Event::ContainerReconciled(r) if r.action == ContainerAction::Redeployed => Some(r),
            _ => None,
        })
    })
    .await;
    assert_eq!(restore.deployment_id, d.id);
    assert!(restore.reason.contains(&d.containers[0]), "{}", restore.reason);
    // which serves through the router with the same image,
    let again = eventually("the new copy to serve", Duration::from_secs(60), || async {
        let env = slipway_engine::load::environment(&*h.store, &h.project, "test").await.unwrap();
        env.last_succeeded().filter(|id| *id != d.id)
    })
    .await;
    let again = h.deployment(again).await;
    assert_eq!((again.rollback_of, again.context.image_id.clone()), (Some(d.id), d.context.image_id.clone()));
    assert_eq!(again.status, Status::Succeeded, "{:?}", failure(&again));
    eventually("the router to answer again", Duration::from_secs(30), || async {
        matches!(h.routed_page("test").await, Ok((200, body)) if body.trim() == "one").then_some(())
    })
    .await;
    // once: the agent's next passes see the new copy running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restores = env_events(&h)
        .await
        .iter()
        .filter(|e| matches!(e, Event::ContainerReconciled(r) if r.action == ContainerAction::Redeployed))
        .count();
    assert_eq!(restores, 1);
    eprintln!("serving again {:?} after its containers were removed", started.elapsed());
    h.shutdown().await;
}
