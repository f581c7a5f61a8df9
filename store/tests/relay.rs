//! The outbox relay under crashes: killed at random points while
//! publishing, restarted, it loses no command (duplicates carry the same id),
//! and its checkpoint never moves past a batch the broker did not confirm.
//! Run on PostgreSQL + RabbitMQ and on SQLite + the in-process queue.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use rand::Rng;
use slipway_store::event_store::Outgoing;
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::{Consumer, DeadLetter, Queue, QueueError, QueueMessage};
use slipway_store::relay::{Relay, RelayOptions, RELAY_CHECKPOINT};
use slipway_store::{ExpectedVersion, Position};
use uuid::Uuid;

const QUEUE: &str = "commands";

use slipway_support::amqp_url;

async fn rabbit() -> Arc<dyn Queue> {
    let url = amqp_url();
    let queue = RabbitQueue::connect(&url, RabbitOptions::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable ({e}); run `scripts/services` first"));
    Arc::new(Namespaced::new(Arc::new(queue), format!("t{}", Uuid::now_v7().simple())))
}

/// Appends `appends` events, each causing `per_append` commands.
async fn fill_outbox(store: &DynStore, appends: u64, per_append: u64) -> HashSet<Uuid> {
    let mut ids = HashSet::new();
    for n in 0..appends {
        let stream = format!("deployment-r{n}");
        let commands: Vec<Outgoing> =
            (0..per_append).map(|i| Outgoing { queue: QUEUE.into(), envelope: event(&stream, 1000 + i) }).collect();
        ids.extend(commands.iter().map(|c| c.envelope.id));
        store.append(&stream, ExpectedVersion::NoStream, &events(&stream, 0..1), &commands).await.unwrap().unwrap();
    }
    ids
}

async fn relay_killed_at_random_points_loses_nothing(store: DynStore, queue: Arc<dyn Queue>) {
    let expected = fill_outbox(&store, 30, 10).await;
    queue.declare(QUEUE).await.unwrap();
    let mut consumer = queue.consume(QUEUE, 50).await.unwrap();
    let collector = tokio::spawn(async move {
        let mut seen: HashMap<Uuid, u32> = HashMap::new();
        while let Some(d) = consumer.next().await {
            *seen.entry(d.message.id).or_default() += 1;
            let body_ok = slipway_proto::Envelope::from_json(&d.message.body).map(|e| e.id == d.message.id);
            assert_eq!(body_ok, Ok(true), "the message id is the command's id");
            d.ack().await.unwrap();
            if seen.len() == 300 {
                return seen;
            }
        }
        seen
    });

    // Kill the relay at random moments, restarting it each time.
    let options = RelayOptions { batch: 3, poll: Duration::from_millis(20), prune: true };
    let mut kills = 0;
    loop {
        let relay = Relay::new(store.clone(), queue.clone(), options.clone());
        let task = tokio::spawn(relay.run(futures::future::pending::<()>()));
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(1..15))).await;
        task.abort();
        let _ = task.await;
        kills += 1;
        let checkpoint = store.operational().load_checkpoint(RELAY_CHECKPOINT).await.unwrap();
        if store.outbox().read(checkpoint, 1).await.unwrap().is_empty() || kills > 200 {
            break;
        }
    }
    // A last, uninterrupted relay finishes whatever is left.
    let last = tokio::spawn(Relay::new(store.clone(), queue.clone(), options).run(futures::future::pending::<()>()));
    let seen = tokio::time::timeout(Duration::from_secs(30), collector).await.expect("all commands delivered").unwrap();
    // Every published row is pruned: a relay starts by pruning from the
    // outbox's start, so the rows a killed one left between its checkpoint
    // and its prune go too; each later prune starts where the last ended.
    eventually("the outbox pruned", Duration::from_secs(10), || async {
        store.outbox().read(Position::START, 1).await.unwrap().is_empty().then_some(())
    })
    .await;
    last.abort();
    let ids: HashSet<Uuid> = seen.keys().copied().collect();
    assert_eq!(ids, expected, "delivered ids differ from the outbox");
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!("relay killed {kills} times: 300 commands delivered, {duplicates} duplicates (same ids)");
    assert!(kills > 1, "the relay was never killed mid-way");
    queue.delete(QUEUE).await.unwrap();
}

/// A broker that stores nothing and confirms nothing.
struct Refusing;

#[async_trait]
impl Queue for Refusing {
    async fn declare(&self, _: &str) -> Result<(), QueueError> {
        Ok(())
    }
    async fn publish(&self, m: &[QueueMessage]) -> Result<(), QueueError> {
        Err(QueueError::NotConfirmed { id: m[0].id, queue: m[0].queue.clone() })
    }
    async fn consume(&self, _: &str, _: u16) -> Result<Box<dyn Consumer>, QueueError> {
        Err(QueueError::Closed)
    }
    async fn take_dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(vec![])
    }
    async fn delete(&self, _: &str) -> Result<(), QueueError> {
        Ok(())
    }
}

async fn an_unconfirmed_batch_does_not_move_the_checkpoint(store: DynStore, queue: Arc<dyn Queue>) {
    let expected = fill_outbox(&store, 2, 3).await;
    outbox_at_least(&*store, Position::START, 6).await;
    let mut refused = Relay::new(store.clone(), Arc::new(Refusing), RelayOptions::default());
    assert!(refused.relay_once().await.is_err());
    assert_eq!(store.operational().load_checkpoint(RELAY_CHECKPOINT).await.unwrap(), Position::START);
    assert_eq!(store.outbox().read(Position::START, 100).await.unwrap().len(), 6, "nothing pruned");
    // A working broker later gets every command.
    outbox_at_least(&*store, Position::START, 6).await;
    let mut relay = Relay::new(store.clone(), queue.clone(), RelayOptions::default());
    assert_eq!(relay.relay_once().await.unwrap(), 6);
    let mut consumer = queue.consume(QUEUE, 10).await.unwrap();
    let mut got = HashSet::new();
    while got.len() < 6 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.unwrap().unwrap();
        got.insert(d.message.id);
        d.ack().await.unwrap();
    }
    assert_eq!(got, expected);
    assert!(store.outbox().read(Position::START, 100).await.unwrap().is_empty(), "published rows are pruned");
    queue.delete(QUEUE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rabbitmq_relay_killed_at_random_points_loses_nothing() {
    let (store, schema) = pg_store().await;
    relay_killed_at_random_points_loses_nothing(Arc::new(store), rabbit().await).await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_relay_killed_at_random_points_loses_nothing() {
    relay_killed_at_random_points_loses_nothing(Arc::new(sqlite_store().await), Arc::new(MemoryQueue::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rabbitmq_unconfirmed_batch_keeps_the_checkpoint() {
    let (store, schema) = pg_store().await;
    an_unconfirmed_batch_does_not_move_the_checkpoint(Arc::new(store), rabbit().await).await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_unconfirmed_batch_keeps_the_checkpoint() {
    an_unconfirmed_batch_does_not_move_the_checkpoint(Arc::new(sqlite_store().await), Arc::new(MemoryQueue::default())).await;
}

/// A relay killed after its checkpoint and before its prune leaves published
/// rows behind; the next relay removes them even when nothing new arrives.
async fn rows_left_by_a_relay_killed_before_its_prune_go(store: DynStore, queue: Arc<dyn Queue>) {
    fill_outbox(&store, 2, 3).await;
    outbox_at_least(&*store, Position::START, 6).await;
    let unpruned = RelayOptions { prune: false, ..RelayOptions::default() };
    let mut killed = Relay::new(store.clone(), queue.clone(), unpruned);
    assert_eq!(killed.relay_once().await.unwrap(), 6);
    let checkpoint = store.operational().load_checkpoint(RELAY_CHECKPOINT).await.unwrap();
    assert!(store.outbox().read(checkpoint, 1).await.unwrap().is_empty(), "everything was published");
    assert_eq!(store.outbox().read(Position::START, 100).await.unwrap().len(), 6, "and nothing pruned");
    let mut next = Relay::new(store.clone(), queue.clone(), RelayOptions::default());
    assert_eq!(next.relay_once().await.unwrap(), 0, "nothing is published twice");
    assert!(store.outbox().read(Position::START, 100).await.unwrap().is_empty(), "the rows left behind are pruned");
    queue.delete(QUEUE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rabbitmq_rows_left_before_a_prune_go() {
    let (store, schema) = pg_store().await;
    rows_left_by_a_relay_killed_before_its_prune_go(Arc::new(store), rabbit().await).await;
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_rows_left_before_a_prune_go() {
    rows_left_by_a_relay_killed_before_its_prune_go(Arc::new(sqlite_store().await), Arc::new(MemoryQueue::default())).await;
}
