//! Step deadlines live in the engine: a command lost on its way to a worker
//! is dispatched again after its deadline, and a step nobody serves fails
//! the deployment after the last attempt (its containers removed).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::decider::Retries;
use slipway_engine::driver::DriverOptions;
use slipway_engine::Status;
use slipway_proto::{Event, Step};
use slipway_tests::*;

fn quick() -> DriverOptions {
    DriverOptions {
        drain_seconds: 0,
        step_timeout: Duration::from_secs(3),
        build_timeout: Duration::from_secs(30),
        retries: Retries { max_attempts: 3, backoff: chrono::Duration::milliseconds(500) },
        ..Default::default()
    }
}

fn attempts(events: &[Event], step: Step) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepDispatched(d) if d.step == step => Some(d.attempt),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_command_is_dispatched_again_after_its_deadline() {
    let lose_one = |q| Arc::new(Losing::new(q, Step::Checkout.queue(), 1)) as _;
    let h = Harness::start_full(Backends::PostgresRabbit, lose_one, quick()).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n", ""), "v1");
    h.create_project(&repo.path()).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    assert_eq!(attempts(&h.events(d.id).await, Step::Checkout), vec![1, 2]);
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v1\n".to_string()));
    // The worker process beats: `slipway workers` sees it alive.
    let workers = h.store.operational().workers().await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(!workers[0].stopped && chrono::Utc::now() - workers[0].last_seen < chrono::Duration::seconds(15));
    assert!(workers[0].steps.contains(&"build".to_string()));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_nobody_serves_fails_after_the_last_attempt_and_the_next_deployment_goes_through() {
    let lose_all = |q| Arc::new(Losing::new(q, Step::HealthCheck.queue(), 3)) as _;
    let h = Harness::start_full(Backends::Embedded, lose_all, quick()).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n", ""), "v1");
    h.create_project(&repo.path()).await;
    // The first deployment's health checks are all lost.
    let d = h.deploy("test", "main").await;
    let (step, reason) = failure(&d);
    assert_eq!(step, Step::HealthCheck);
    assert!(reason.contains("attempt 3 of 3") && reason.contains("slipway.step.health_check"), "{reason}");
    assert_eq!(attempts(&h.events(d.id).await, Step::HealthCheck), vec![1, 2, 3]);
    h.wait_no_containers(d.id).await;
    // The queue delivers again: the next deployment goes through.
    let d2 = h.deploy("test", "main").await;
    assert_eq!(d2.status, Status::Succeeded, "{:?}", h.events(d2.id).await);
    h.shutdown().await;
}
