//! What a worker run inside a CLI command (embedded mode) leaves in the
//! workers table when it stops: nothing when it stopped idle (`slipway
//! workers` would list one per command run), its row with the command it
//! was cut short in when it stopped in the middle of one (the engine's
//! heartbeat timeout dispatches that command again soon). An embedded
//! store and queue: no services needed.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use slipway_proto::command::{Command, RemoveContainers, RetireRelease, RunStep};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{deployment_stream, StepFailed};
use slipway_proto::{Envelope, Event, Step};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::{Queue, QueueMessage};
use slipway_store::{EventStore, SqliteStore};
use slipway_workers::steps::{Executor, Settings};
use slipway_workers::WorkerOptions;
use tokio::sync::Notify;
use uuid::Uuid;

/// A retirement that starts (and says so) and never ends.
struct Endless(Arc<Notify>);

#[async_trait]
impl Executor for Endless {
    async fn run_step(&self, c: &RunStep, _env: &Settings) -> Event {
        Event::StepFailed(StepFailed { step: c.step, reason: "not expected here".into(), attempt: 0, details: vec![], evidence: None })
    }

    async fn remove_containers(&self, _c: &RemoveContainers) -> Event {
        Event::StepFailed(StepFailed {
            step: Step::Cleanup,
            reason: "not expected here".into(),
            attempt: 0,
            details: vec![],
            evidence: None,
        })
    }

    async fn retire(&self, _c: &RetireRelease) -> Event {
        self.0.notify_one();
        std::future::pending().await
    }
}

/// Runs an embedded worker until `until` resolves, then stops it.
async fn run_embedded(
    store: &Arc<dyn EventStore>,
    queue: &Arc<dyn Queue>,
    started: Arc<Notify>,
    until: impl std::future::Future<Output = ()>,
) {
    let options = WorkerOptions { steps: vec![Step::Retire], actor: "worker:test".into(), forget_when_stopped: true, ..Default::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(slipway_workers::worker::run(queue.clone(), store.clone(), Arc::new(Endless(started)), options, async {
        let _ = stopped.await;
    }));
    until.await;
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_worker_leaves_no_row_when_it_stops_idle_and_keeps_it_when_cut_short() {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::in_memory().await.unwrap());
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::default());

    // Idle: gone once stopped.
    run_embedded(&store, &queue, Arc::default(), tokio::time::sleep(Duration::from_millis(200))).await;
    assert!(store.operational().workers().await.unwrap().is_empty(), "an idle embedded worker leaves no row");

    // Stopped in the middle of a command: its row stays, naming it.
    let deployment = Uuid::now_v7();
    let command = Command::RetireRelease(RetireRelease { deployment_id: deployment, containers: vec!["old".into()], drain_seconds: 0 });
    let meta = Metadata { correlation_id: deployment, causation_id: None, actor: "engine".into(), trace: None };
    let envelope = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), deployment_stream(deployment), &command, meta).unwrap();
    let queue_name = Step::Retire.queue();
    queue.declare(&queue_name).await.unwrap();
    let message = QueueMessage { id: envelope.id, queue: queue_name, body: envelope.to_json().into_bytes(), traceparent: None };
    queue.publish(&[message]).await.unwrap();
    let started = Arc::new(Notify::new());
    let waiting = started.clone();
    run_embedded(&store, &queue, started, async move {
        tokio::time::timeout(Duration::from_secs(30), waiting.notified()).await.expect("the retirement starts");
    })
    .await;
    let workers = store.operational().workers().await.unwrap();
    let [worker] = workers.as_slice() else { panic!("one row: {workers:?}") };
    assert!(worker.stopped, "{worker:?}");
    assert_eq!(worker.commands, vec![envelope.id], "the command it was cut short in");
}
