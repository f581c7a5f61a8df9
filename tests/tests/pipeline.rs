//! The deployment pipeline end to end on real Docker: v1 then v2 on
//! PostgreSQL + RabbitMQ and on the embedded default; one failure per step,
//! each leaving the previous release answering and no container of the
//! failed deployment; and every command delivered twice creating each
//! container once.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;

use slipway_engine::Status;
use slipway_proto::event::BuildMode;
use slipway_proto::{Event, Step};
use slipway_tests::*;

const APP: &str = r#"
[web]
port = 80
health_timeout = "20s"

[release]
commands = ["test -n \"$GREETING\""]

[processes.worker]
command = ["sh", "-c", "while true; do sleep 5; done"]
"#;

async fn v1_then_v2(backends: Backends) {
    let h = Harness::start(backends).await;
    let repo = AppRepo::new();
    let v1_commit = repo.commit(&busybox_app("hello v1", APP, ""), "v1");
    h.create_project(&repo.path()).await;
    h.set("test", "GREETING", "hi", false).await;

    let d1 = h.deploy("test", "main").await;
    assert_eq!(d1.status, Status::Succeeded, "{:?}", h.events(d1.id).await);
    assert_eq!(d1.context.commit.as_deref(), Some(v1_commit.as_str()));
    let port1 = d1.context.web_port.expect("web port");
    assert_eq!(page(port1).await.unwrap(), (200, "hello v1\n".to_string()));
    assert_eq!(containers_with_label(&format!("slipway.deployment={}", d1.id)).len(), 2, "web + worker");

    repo.commit(&busybox_app("hello v2", APP, ""), "v2");
    let d2 = h.deploy("test", "main").await;
    assert_eq!(d2.status, Status::Succeeded, "{:?}", h.events(d2.id).await);
    let port2 = d2.context.web_port.expect("web port");
    assert_eq!(page(port2).await.unwrap(), (200, "hello v2\n".to_string()));
    h.wait_no_containers(d1.id).await;
    assert!(page(port1).await.is_err(), "v1 still answers after it was retired");

    let events = h.events(d2.id).await;
    let ran = events.iter().find_map(|e| match e {
        Event::ReleaseCommandsRan(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(ran.expect("release ran").results[0].exit_code, 0);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rabbitmq_deploys_v1_then_v2() {
    v1_then_v2(Backends::PostgresRabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_deploys_v1_then_v2() {
    v1_then_v2(Backends::Embedded).await;
}

/// Deploys a healthy v1, then a v2 broken by `break_it`, and checks v2
/// failed at `step` with a reason containing `needle`, that nothing of v2 is
/// left, and that v1 still answers.
async fn fails_at(step: Step, needle: &str, break_it: impl FnOnce(&AppRepo) -> String, settings: &[(&str, &str)]) {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("hello v1", APP, ""), "v1");
    h.create_project(&repo.path()).await;
    h.set("test", "GREETING", "hi", false).await;
    let d1 = h.deploy("test", "main").await;
    assert_eq!(d1.status, Status::Succeeded, "{:?}", h.events(d1.id).await);
    let port1 = d1.context.web_port.expect("web port");

    for (k, v) in settings {
        h.set("test", k, v, false).await;
    }
    let git_ref = break_it(&repo);
    let d2 = h.deploy("test", &git_ref).await;
    let (failed_step, reason) = failure(&d2);
    assert_eq!(failed_step, step, "failed for: {reason}");
    assert!(reason.contains(needle), "reason `{reason}` does not mention `{needle}`");
    h.wait_no_containers(d2.id).await;
    assert_eq!(page(port1).await.unwrap(), (200, "hello v1\n".to_string()), "the previous release stopped answering");
    assert_eq!(containers_with_label(&format!("slipway.deployment={}", d1.id)).len(), 2, "v1's containers were touched");
    h.shutdown().await;
}

fn commit_v2(repo: &AppRepo, toml: &str, extra_dockerfile: &str) -> String {
    repo.commit(&busybox_app("hello v2", toml, extra_dockerfile), "v2");
    "main".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_service_fails_before_anything_is_built() {
    let toml = format!("{APP}\n[services]\ndb = {{ type = \"tcp\", env = \"DB_ADDR\", timeout = \"1s\" }}\n");
    fails_at(Step::CheckServices, "db", |r| commit_v2(r, &toml, ""), &[("DB_ADDR", "127.0.0.1:1")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_ref_fails_with_the_ref_named() {
    fails_at(Step::CheckServices, "no-such-branch", |_| "no-such-branch".into(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_dockerfile_fails_the_build() {
    fails_at(Step::Build, "3", |r| commit_v2(r, APP, "RUN [\"/bin/sh\", \"-c\", \"exit 3\"]"), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_release_command_fails_the_release() {
    let toml = APP.replace(r#"commands = ["test -n \"$GREETING\""]"#, r#"commands = ["echo migrating", "exit 7"]"#);
    fails_at(Step::Release, "exit 7", |r| commit_v2(r, &toml, ""), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_container_that_exits_fails_the_processes_step() {
    let toml = APP.replace(r#"command = ["sh", "-c", "while true; do sleep 5; done"]"#, r#"command = ["sh", "-c", "exit 2"]"#);
    fails_at(Step::Processes, "worker", |r| commit_v2(r, &toml, ""), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_that_never_gets_healthy_fails_the_health_check() {
    let toml = APP.replace("health_timeout = \"20s\"", "health_timeout = \"2s\"\nhealth_path = \"/missing\"");
    fails_at(Step::HealthCheck, "404", |r| commit_v2(r, &toml, ""), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_delivered_twice_creates_each_container_once() {
    let h = Harness::start_with(Backends::PostgresRabbit, |q| Arc::new(Duplicating(q))).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("hello twice", APP, ""), "v1");
    h.create_project(&repo.path()).await;
    h.set("test", "GREETING", "hi", false).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    let containers = containers_with_label(&format!("slipway.deployment={}", d.id));
    assert_eq!(containers.len(), 2, "expected one web and one worker container: {containers:?}");
    let events = h.events(d.id).await;
    for kind in [
        "ServicesChecked",
        "CheckedOut",
        "ImageBuilt",
        "WebContainerStarted",
        "ReleaseCommandsRan",
        "ProcessesStarted",
        "HealthCheckPassed",
    ] {
        let n = events.iter().filter(|e| slipway_proto::envelope::Message::message_type(*e) == kind).count();
        assert_eq!(n, 1, "{kind} recorded {n} times");
    }
    assert_eq!(page(d.context.web_port.expect("port")).await.unwrap().1, "hello twice\n");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_deployment_of_an_environment_waits_for_the_first() {
    let h = Harness::start(Backends::Embedded).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("hello queue", APP, ""), "v1");
    h.create_project(&repo.path()).await;
    h.set("test", "GREETING", "hi", false).await;
    let first = h.request("test", "main", BuildMode::Local, true).await;
    let second = h.request("test", "main", BuildMode::Local, true).await;
    for id in [first, second] {
        let d = h.wait_finished(id, std::time::Duration::from_secs(120)).await;
        assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(id).await);
    }
    let position = |id, kind: &'static str| {
        let store = h.store.clone();
        async move {
            let recorded = store.read_stream(&slipway_proto::event::deployment_stream(id), 1).await.unwrap();
            recorded.iter().find(|r| r.envelope.message_type == kind).map(|r| r.position).expect(kind)
        }
    };
    let first_done = position(first, "DeploymentSucceeded").await;
    let second_started = position(second, "StepDispatched").await;
    assert!(second_started > first_done, "the second deployment started before the first finished");
    h.wait_no_containers(first).await;
    h.shutdown().await;
}
