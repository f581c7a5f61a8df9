//! Steps that mostly wait run side by side on one worker whatever its
//! `--concurrency`: two retirements handed to a worker at the default
//! concurrency of 1 must be under way at the same time. Each waits for the
//! other at a barrier, so run one after the other they would never meet
//! (the first gives up and fails). An embedded store and queue: no
//! services needed.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use slipway_proto::command::{Command, RemoveContainers, RetireRelease, RunStep};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, ContainersRemoved, StepFailed};
use slipway_proto::{Envelope, Event, Step};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::{Queue, QueueMessage};
use slipway_store::{EventStore, SqliteStore};
use slipway_workers::steps::{Executor, Settings};
use slipway_workers::WorkerOptions;
use tokio::sync::Barrier;
use uuid::Uuid;

/// Retirements that each wait for the other; nothing else is expected.
struct Meeting(Barrier);

#[async_trait]
impl Executor for Meeting {
    async fn run_step(&self, c: &RunStep, _env: &Settings) -> Event {
        failed(c.step, "not expected here")
    }

    async fn remove_containers(&self, _c: &RemoveContainers) -> Event {
        failed(Step::Cleanup, "not expected here")
    }

    async fn retire(&self, c: &RetireRelease) -> Event {
        match tokio::time::timeout(Duration::from_secs(20), self.0.wait()).await {
            Ok(_) => Event::ContainersRemoved(ContainersRemoved { containers: c.containers.clone() }),
            Err(_) => failed(Step::Retire, "the other retirement never started alongside this one"),
        }
    }
}

fn failed(step: Step, reason: &str) -> Event {
    Event::StepFailed(StepFailed { step, reason: reason.into(), attempt: 0, details: vec![], evidence: None })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_retirements_run_at_once_at_the_default_concurrency() {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::in_memory().await.unwrap());
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::default());
    let options = WorkerOptions { steps: vec![Step::Retire], actor: "worker:test".into(), ..Default::default() };
    assert_eq!(options.concurrency, 1, "the default this test is about");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker =
        tokio::spawn(slipway_workers::worker::run(queue.clone(), store.clone(), Arc::new(Meeting(Barrier::new(2))), options, async {
            let _ = stopped.await;
        }));

    let deployments = [Uuid::now_v7(), Uuid::now_v7()];
    let queue_name = Step::Retire.queue();
    queue.declare(&queue_name).await.unwrap();
    for (n, deployment) in deployments.iter().enumerate() {
        let command =
            Command::RetireRelease(RetireRelease { deployment_id: *deployment, containers: vec![format!("old-{n}")], drain_seconds: 0 });
        let meta = Metadata { correlation_id: *deployment, causation_id: None, actor: "engine".into(), trace: None };
        let envelope = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), deployment_stream(*deployment), &command, meta).unwrap();
        let message = QueueMessage { id: envelope.id, queue: queue_name.clone(), body: envelope.to_json().into_bytes(), traceparent: None };
        queue.publish(&[message]).await.unwrap();
    }

    for deployment in deployments {
        let outcome = slipway_support::eventually("each retirement's outcome", Duration::from_secs(60), || async {
            let recorded = store.read_stream(&deployment_stream(deployment), 1).await.unwrap();
            recorded.iter().find_map(|r| match r.envelope.decode::<Event>() {
                Ok(e @ (Event::ContainersRemoved(_) | Event::StepFailed(_))) => Some(e),
                _ => None,
            })
        })
        .await;
        assert!(matches!(outcome, Event::ContainersRemoved(_)), "{deployment}: {outcome:?}");
    }
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}
