//! 1,000 malformed or unknown messages on every step queue: each ends in
//! its dead-letter queue with the reason, the workers keep serving real
//! commands, and a deployment goes through meanwhile. A well-formed step
//! command the engine never sent (someone who can publish to the broker,
//! naming a real deployment with another image) is refused too, and runs
//! nothing.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use slipway_engine::Status;
use slipway_proto::command::{Command, RunStep};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::deployment_stream;
use slipway_proto::{Envelope, Step};
use slipway_store::queue::QueueMessage;
use slipway_tests::*;
use uuid::Uuid;

const PER_QUEUE: usize = 1000;

/// Half garbage bytes, half well-formed envelopes of a command type nobody knows.
fn poison(queue: &str, n: usize) -> QueueMessage {
    let id = Uuid::now_v7();
    let body = if n.is_multiple_of(2) {
        format!("\u{1}not json {n} \u{7f}").into_bytes()
    } else {
        serde_json::json!({
            "id": id, "type": "LaunchMissiles", "schema_version": 1, "stream": "deployment-x",
            "correlation_id": id, "actor": "mallory", "timestamp": "2026-01-01T00:00:00Z", "payload": {"n": n}
        })
        .to_string()
        .into_bytes()
    };
    QueueMessage { id, queue: queue.to_string(), body, traceparent: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_go_to_dead_letters_and_deployments_go_on() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n\n[release]\ncommands = [\"true\"]\n", ""), "v1");
    h.create_project(&repo.path()).await;
    for step in Step::ALL {
        let q = step.queue();
        h.queue.declare(&q).await.unwrap();
        let batch: Vec<QueueMessage> = (0..PER_QUEUE).map(|n| poison(&q, n)).collect();
        for chunk in batch.chunks(250) {
            h.queue.publish(chunk).await.unwrap();
        }
    }
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v1\n".to_string()));

    for step in Step::ALL {
        let q = step.queue();
        let mut dead = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while dead.len() < PER_QUEUE {
            dead.extend(h.queue.take_dead_letters(&q, PER_QUEUE).await.unwrap());
            assert!(tokio::time::Instant::now() < deadline, "{q}: only {} of {PER_QUEUE} dead-lettered", dead.len());
            if dead.len() < PER_QUEUE {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert_eq!(dead.len(), PER_QUEUE, "{q}");
        let undecodable = dead.iter().filter(|d| d.reason.contains("undecodable envelope")).count();
        let unknown = dead.iter().filter(|d| d.reason.contains("LaunchMissiles")).count();
        assert_eq!((undecodable, unknown), (PER_QUEUE / 2, PER_QUEUE / 2), "{q}: {:?}", dead.first().map(|d| &d.reason));
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_command_the_engine_did_not_send_is_refused_and_runs_nothing() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n", ""), "v1");
    h.create_project(&repo.path()).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    let before = h.events(d.id).await.len();
    // A forged deploy step of the real deployment: same context, another image.
    let mut context = d.context.clone();
    context.image_id = Some("sha256:".to_string() + &"e".repeat(64));
    let command = Command::RunStep(RunStep { step: Step::Deploy, attempt: 1, context });
    let id = Uuid::now_v7();
    let meta = Metadata { correlation_id: id, causation_id: None, actor: "mallory".into(), trace: None };
    let envelope = Envelope::new(id, chrono::Utc::now(), deployment_stream(d.id), &command, meta).unwrap();
    let queue = Step::Deploy.queue();
    let message = QueueMessage { id, queue: queue.clone(), body: envelope.to_json().into_bytes(), traceparent: None };
    h.queue.publish(&[message]).await.unwrap();
    let dead = eventually("the forged command to be dead-lettered", Duration::from_secs(30), || async {
        h.queue.take_dead_letters(&queue, 10).await.unwrap().into_iter().find(|m| m.message.id == id)
    })
    .await;
    assert!(dead.reason.contains("records no dispatch"), "{}", dead.reason);
    // Nothing ran: no outcome recorded, no container of another image.
    assert_eq!(h.events(d.id).await.len(), before);
    h.shutdown().await;
}
