//! The queue contract, written once against `&dyn Queue` and run against both
//! backends (in-process `MemoryQueue`, and `RabbitQueue` on the broker at
//! `SLIPWAY_AMQP_URL`), so the embedded default cannot drift from what runs
//! in production. RabbitMQ-only tests cover what has no in-process
//! equivalent: a connection killed under a consumer, and foreign messages.
//!
//! Every test uses its own queue names and deletes them at the end. The
//! RabbitMQ tests fail (never skip) when the broker is not reachable.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::{Consumer, DeadLetter, Delivery, Queue, QueueError, QueueMessage, DEFAULT_MAX_ATTEMPTS};
use tokio::time::{timeout, Instant};
use uuid::Uuid;

/// How long "nothing more is delivered" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// Upper bound for anything we expect to happen.
const PATIENCE: Duration = Duration::from_secs(15);

use slipway_support::amqp_url;

async fn memory(max_attempts: u32) -> Box<dyn Queue> {
    Box::new(MemoryQueue::new(max_attempts))
}

async fn rabbitmq(max_attempts: u32) -> Box<dyn Queue> {
    Box::new(connect_rabbit(RabbitOptions { max_attempts, ..RabbitOptions::default() }).await)
}

async fn connect_rabbit(options: RabbitOptions) -> RabbitQueue {
    match RabbitQueue::connect(&amqp_url(), options).await {
        Ok(queue) => queue,
        Err(QueueError::Unavailable { url, reason }) => {
            panic!("RabbitMQ is not reachable at {url}; run scripts/services ({reason})")
        }
        Err(e) => panic!("RabbitMQ is not usable; run scripts/services ({e})"),
    }
}

fn queue_name(test: &str) -> String {
    format!("conformance.{test}.{}", Uuid::now_v7().simple())
}

fn message(queue: &str, n: usize) -> QueueMessage {
    QueueMessage {
        id: Uuid::now_v7(),
        queue: queue.to_owned(),
        body: format!("body {n}").into_bytes(),
        traceparent: Some(format!("00-{}-{:016x}-01", Uuid::now_v7().simple(), n + 1)),
    }
}

fn messages(queue: &str, n: usize) -> Vec<QueueMessage> {
    (0..n).map(|i| message(queue, i)).collect()
}

/// Polls `probe` until it yields a value, failing the test after `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    slipway_support::try_eventually(what, PATIENCE, probe).await
}

async fn next(consumer: &mut dyn Consumer) -> Result<Delivery> {
    timeout(PATIENCE, consumer.next()).await.context("no delivery in time")?.context("consumer ended: backend shut down")
}

async fn assert_quiet(consumer: &mut dyn Consumer, why: &str) -> Result<()> {
    if let Ok(delivery) = timeout(QUIET, consumer.next()).await {
        anyhow::bail!("{why}, but got {delivery:?}");
    }
    Ok(())
}

async fn dead_letters(queue: &dyn Queue, name: &str, n: usize) -> Result<Vec<DeadLetter>> {
    let taken = std::sync::Mutex::new(Vec::new());
    eventually(&format!("{n} dead letter(s) in {name}.dead"), || async {
        let more = queue.take_dead_letters(name, n).await?;
        let mut taken = taken.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        taken.extend(more);
        Ok((taken.len() >= n).then(|| std::mem::take(&mut *taken)))
    })
    .await
}

mod suite {
    use super::*;

    pub async fn depth_counts_ready_messages(q: &dyn Queue) -> Result<()> {
        let name = queue_name("depth");
        assert_eq!(q.depth(&name).await?, 0, "a queue that does not exist is empty");
        q.publish(&messages(&name, 3)).await?;
        eventually("3 ready", || async { Ok((q.depth(&name).await? == 3).then_some(())) }).await?;
        let mut consumer = q.consume(&name, 1).await?;
        let held = next(&mut *consumer).await?;
        eventually("2 ready while 1 is delivered", || async { Ok((q.depth(&name).await? == 2).then_some(())) }).await?;
        held.ack().await?;
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    pub async fn round_trip_preserves_id_body_and_traceparent(q: &dyn Queue) -> Result<()> {
        let name = queue_name("round-trip");
        let mut sent = messages(&name, 2);
        sent[1].traceparent = None;
        // Published before anyone declared the queue: declared implicitly.
        q.publish(&sent).await?;
        let mut consumer = q.consume(&name, 10).await?;
        for expected in &sent {
            let delivery = next(&mut *consumer).await?;
            assert_eq!(&delivery.message, expected);
            assert_eq!(delivery.attempt, 1);
            delivery.ack().await?;
        }
        assert_quiet(&mut *consumer, "acked messages must not come back").await?;
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    pub async fn dropped_delivery_comes_back_with_attempt_2(q: &dyn Queue) -> Result<()> {
        let name = queue_name("dropped");
        q.declare(&name).await?;
        let sent = message(&name, 0);
        q.publish(std::slice::from_ref(&sent)).await?;
        let mut consumer = q.consume(&name, 1).await?;
        let first = next(&mut *consumer).await?;
        assert_eq!((first.message.id, first.attempt), (sent.id, 1));
        drop(first);
        let again = next(&mut *consumer).await?;
        assert_eq!(again.message, sent);
        assert_eq!(again.attempt, 2);
        again.ack().await?;
        assert_quiet(&mut *consumer, "an acked redelivery must not come back").await?;
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    /// Built with `max_attempts` = 3.
    pub async fn retry_until_max_attempts_dead_letters(q: &dyn Queue) -> Result<()> {
        let name = queue_name("retry");
        let sent = message(&name, 0);
        q.publish(std::slice::from_ref(&sent)).await?;
        let mut consumer = q.consume(&name, 1).await?;
        for attempt in 1..=3 {
            let delivery = next(&mut *consumer).await?;
            assert_eq!((delivery.message.id, delivery.attempt), (sent.id, attempt));
            delivery.retry().await?;
        }
        assert_quiet(&mut *consumer, "a message past max_attempts must not be delivered again").await?;
        let dead = dead_letters(q, &name, 1).await?;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message, sent);
        assert!(dead[0].reason.contains("failed 3 attempts"), "reason: {}", dead[0].reason);
        assert!(q.take_dead_letters(&name, 10).await?.is_empty(), "taking removes dead letters");
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    pub async fn dead_letter_goes_straight_there_with_its_reason(q: &dyn Queue) -> Result<()> {
        let name = queue_name("dead-letter");
        let sent = messages(&name, 2);
        q.publish(&sent).await?;
        let mut consumer = q.consume(&name, 1).await?;
        let first = next(&mut *consumer).await?;
        assert_eq!(first.message, sent[0]);
        first.dead_letter("payload does not parse").await?;
        let second = next(&mut *consumer).await?;
        assert_eq!(second.message, sent[1], "dead-lettering settles the delivery");
        second.ack().await?;
        let dead = dead_letters(q, &name, 1).await?;
        assert_eq!(dead[0].message, sent[0]);
        assert_eq!(dead[0].reason, "payload does not parse");
        assert_quiet(&mut *consumer, "a dead-lettered message is not redelivered").await?;
        assert!(q.take_dead_letters(&name, 10).await?.is_empty());
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    pub async fn prefetch_limits_in_flight_deliveries(q: &dyn Queue) -> Result<()> {
        let name = queue_name("prefetch");
        let sent = messages(&name, 5);
        q.publish(&sent).await?;
        let mut consumer = q.consume(&name, 2).await?;
        let a = next(&mut *consumer).await?;
        let b = next(&mut *consumer).await?;
        assert_quiet(&mut *consumer, "prefetch 2 with 2 unacked allows no third delivery").await?;
        let mut ids = vec![a.message.id];
        a.ack().await?;
        let c = next(&mut *consumer).await?;
        assert_quiet(&mut *consumer, "still 2 unacked after one ack and one more delivery").await?;
        ids.extend([b.message.id, c.message.id]);
        b.ack().await?;
        c.ack().await?;
        for _ in 0..2 {
            let d = next(&mut *consumer).await?;
            ids.push(d.message.id);
            d.ack().await?;
        }
        let expected: HashSet<Uuid> = sent.iter().map(|m| m.id).collect();
        assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), expected);
        assert_eq!(ids.len(), 5);
        assert_quiet(&mut *consumer, "all five acked").await?;
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    pub async fn competing_consumers_share_the_messages(q: &dyn Queue) -> Result<()> {
        let name = queue_name("competing");
        let sent = messages(&name, 20);
        q.publish(&sent).await?;
        let mut a = q.consume(&name, 1).await?;
        let mut b = q.consume(&name, 1).await?;
        // Each holds one unacked delivery, so the other must get a different one.
        let first_a = next(&mut *a).await?;
        let first_b = next(&mut *b).await?;
        assert_ne!(first_a.message.id, first_b.message.id);
        let mut got_a = vec![first_a.message.id];
        let mut got_b = vec![first_b.message.id];
        first_a.ack().await?;
        first_b.ack().await?;
        let deadline = Instant::now() + PATIENCE;
        while got_a.len() + got_b.len() < sent.len() {
            ensure!(Instant::now() < deadline, "only {} of 20 delivered", got_a.len() + got_b.len());
            let (delivery, from_a) = tokio::select! {
                Some(d) = a.next() => (d, true),
                Some(d) = b.next() => (d, false),
                _ = tokio::time::sleep_until(deadline) => continue,
            };
            if from_a { &mut got_a } else { &mut got_b }.push(delivery.message.id);
            delivery.ack().await?;
        }
        let set_a: HashSet<Uuid> = got_a.iter().copied().collect();
        let set_b: HashSet<Uuid> = got_b.iter().copied().collect();
        assert_eq!(set_a.len(), got_a.len(), "no message twice to one consumer");
        assert!(set_a.is_disjoint(&set_b), "no message to both consumers");
        let all: HashSet<Uuid> = set_a.union(&set_b).copied().collect();
        assert_eq!(all, sent.iter().map(|m| m.id).collect::<HashSet<_>>());
        assert_quiet(&mut *a, "all delivered").await?;
        assert_quiet(&mut *b, "all delivered").await?;
        drop((a, b));
        q.delete(&name).await?;
        Ok(())
    }

    pub async fn a_batch_of_1000_arrives_exactly_once(q: &dyn Queue) -> Result<()> {
        let name = queue_name("batch");
        let sent = messages(&name, 1000);
        q.publish(&sent).await?;
        let mut consumer = q.consume(&name, 100).await?;
        let mut seen: HashMap<Uuid, u32> = HashMap::new();
        while seen.len() < sent.len() {
            let d = next(&mut *consumer).await.with_context(|| format!("after {} deliveries", seen.len()))?;
            assert!(seen.insert(d.message.id, d.attempt).is_none(), "{} delivered twice", d.message.id);
            d.ack().await?;
        }
        assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), sent.iter().map(|m| m.id).collect());
        assert!(seen.values().all(|&attempt| attempt == 1));
        assert_quiet(&mut *consumer, "exactly once").await?;
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    /// A consumer that crashes on a message every time (here: is dropped
    /// while holding it) gets it `max_attempts` (3) times, then never again.
    pub async fn a_poison_message_is_dead_lettered_not_looped(q: &dyn Queue) -> Result<()> {
        let name = queue_name("poison");
        let poison = message(&name, 0);
        q.publish(std::slice::from_ref(&poison)).await?;
        for attempt in 1..=3 {
            let mut consumer = q.consume(&name, 1).await?;
            let delivery = next(&mut *consumer).await?;
            assert_eq!((delivery.message.id, delivery.attempt), (poison.id, attempt));
            drop(consumer);
            // Settling after its consumer is gone changes nothing.
            drop(delivery);
        }
        let dead = dead_letters(q, &name, 1).await?;
        assert_eq!(dead[0].message, poison);
        assert!(dead[0].reason.contains("failed 3 attempts"), "reason: {}", dead[0].reason);
        let mut consumer = q.consume(&name, 1).await?;
        assert_quiet(&mut *consumer, "the poison message must not come back").await?;
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn round_trip_preserves_id_body_and_traceparent() -> Result<()> {
                suite::round_trip_preserves_id_body_and_traceparent(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn depth_counts_ready_messages() -> Result<()> {
                suite::depth_counts_ready_messages(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropped_delivery_comes_back_with_attempt_2() -> Result<()> {
                suite::dropped_delivery_comes_back_with_attempt_2(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retry_until_max_attempts_dead_letters() -> Result<()> {
                suite::retry_until_max_attempts_dead_letters(&*super::$backend(3).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letter_goes_straight_there_with_its_reason() -> Result<()> {
                suite::dead_letter_goes_straight_there_with_its_reason(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prefetch_limits_in_flight_deliveries() -> Result<()> {
                suite::prefetch_limits_in_flight_deliveries(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn competing_consumers_share_the_messages() -> Result<()> {
                suite::competing_consumers_share_the_messages(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_batch_of_1000_arrives_exactly_once() -> Result<()> {
                suite::a_batch_of_1000_arrives_exactly_once(&*super::$backend(DEFAULT_MAX_ATTEMPTS).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_poison_message_is_dead_lettered_not_looped() -> Result<()> {
                suite::a_poison_message_is_dead_lettered_not_looped(&*super::$backend(3).await).await
            }
        }
    };
}

conformance!(memory);
conformance!(rabbitmq);

/// What only a real broker can do to us.
mod rabbitmq_only {
    use super::*;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    /// Closes our connection broker-side, as `rabbitmqctl
    /// close_all_connections` or a broker restart would, but only ours:
    /// closing all of them would also hit the tests running alongside (and
    /// anyone else's on this broker), making their attempt counts racy.
    async fn kill_connection(connection_name: &str) -> Result<()> {
        let connection_name = connection_name.to_owned();
        tokio::task::spawn_blocking(move || {
            let listed = std::process::Command::new("rabbitmqctl")
                .args(["-q", "list_connections", "pid", "client_properties"])
                .output()
                .context("running rabbitmqctl (the tests run as root next to the broker)")?;
            ensure!(listed.status.success(), "rabbitmqctl list_connections: {}", String::from_utf8_lossy(&listed.stderr));
            let listing = String::from_utf8_lossy(&listed.stdout);
            let pid = listing
                .lines()
                .find(|line| line.contains(&connection_name))
                .and_then(|line| line.split_whitespace().next())
                .with_context(|| format!("connection {connection_name} not listed by rabbitmqctl"))?;
            let closed = std::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "test"])
                .output()
                .context("running rabbitmqctl close_connection")?;
            ensure!(closed.status.success(), "rabbitmqctl close_connection: {}", String::from_utf8_lossy(&closed.stderr));
            Ok(())
        })
        .await?
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_and_publisher_ride_out_a_killed_connection() -> Result<()> {
        let connection_name = format!("slipway-conformance-{}", Uuid::now_v7().simple());
        let q = connect_rabbit(RabbitOptions { connection_name: connection_name.clone(), ..RabbitOptions::default() }).await;
        let name = queue_name("reconnect");
        let before = messages(&name, 3);
        q.publish(&before).await?;
        let mut consumer = q.consume(&name, 10).await?;
        let acked = next(&mut *consumer).await?;
        let held = next(&mut *consumer).await?;
        let dropped = next(&mut *consumer).await?;
        acked.ack().await?;

        kill_connection(&connection_name).await?;
        let after: Vec<QueueMessage> = (3..6).map(|i| message(&name, i)).collect();
        q.publish(&after).await.context("publish across the reconnection")?;

        // The two unacked deliveries come back on the new channel, counted;
        // the new messages arrive once. Wait until the first redelivery has
        // been seen (so the old channel is certainly dead), then settle the
        // pre-outage deliveries: that must neither fail nor disturb the new
        // channel (an old tag sent there would ack the wrong message, or get
        // the channel closed and everything redelivered).
        let mut stale = Some((held, dropped));
        let mut seen: HashMap<Uuid, u32> = HashMap::new();
        while seen.len() < 5 {
            let d = next(&mut *consumer).await.with_context(|| format!("seen so far: {seen:?}"))?;
            assert!(seen.insert(d.message.id, d.attempt).is_none(), "{} delivered twice after the outage", d.message.id);
            let redelivered = d.attempt > 1;
            d.ack().await?;
            if redelivered {
                if let Some((held, dropped)) = stale.take() {
                    held.ack().await.context("acking a delivery from the dead channel")?;
                    drop(dropped);
                }
            }
        }
        ensure!(stale.is_none(), "no pre-outage delivery was redelivered: was the connection really closed?");
        let mut expected: HashMap<Uuid, u32> = before[1..].iter().map(|m| (m.id, 2)).collect();
        expected.extend(after.iter().map(|m| (m.id, 1)));
        assert_eq!(seen, expected, "ids with their attempts");
        assert_quiet(&mut *consumer, "everything after the outage was acked on the new channel").await?;

        // And the new connection serves everything else too.
        let dead = message(&name, 9);
        q.publish(std::slice::from_ref(&dead)).await?;
        next(&mut *consumer).await?.dead_letter("after the outage").await?;
        assert_eq!(dead_letters(&q, &name, 1).await?[0].message, dead);
        drop(consumer);
        q.delete(&name).await?;
        q.close().await;
        Ok(())
    }

    /// Messages not published by Slipway (no or bad `message_id`, headers of
    /// unexpected types) must not panic anything: the unusable one is
    /// dead-lettered with a reason, the usable one delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_messages_are_handled_without_panicking() -> Result<()> {
        let q = connect_rabbit(RabbitOptions::default()).await;
        let name = queue_name("foreign");
        q.declare(&name).await?;

        let raw = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = raw.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut odd_headers = FieldTable::default();
        odd_headers.insert("x-delivery-count".into(), AMQPValue::LongString("three".into()));
        odd_headers.insert("traceparent".into(), AMQPValue::Boolean(true));
        let usable_id = Uuid::now_v7();
        let publish = [
            (BasicProperties::default(), b"no id".to_vec()),
            (BasicProperties::default().with_message_id("not-a-uuid".into()), b"bad id".to_vec()),
            (BasicProperties::default().with_message_id(usable_id.to_string().into()).with_headers(odd_headers), b"odd headers".to_vec()),
        ];
        for (properties, body) in publish {
            let confirm =
                channel.basic_publish("".into(), name.as_str().into(), BasicPublishOptions::default(), &body, properties).await?.await?;
            ensure!(confirm.is_ack(), "raw publish not confirmed");
        }
        raw.close(200, "OK".into()).await?;

        let mut consumer = q.consume(&name, 10).await?;
        let d = next(&mut *consumer).await?;
        assert_eq!((d.message.id, d.message.body.as_slice(), d.attempt), (usable_id, &b"odd headers"[..], 1));
        assert_eq!(d.message.traceparent, None);
        d.ack().await?;
        assert_quiet(&mut *consumer, "malformed messages are not handed to consumers").await?;
        let mut dead = dead_letters(&q, &name, 2).await?;
        dead.sort_by(|a, b| a.message.body.cmp(&b.message.body));
        assert_eq!(dead[0].message.body, b"bad id");
        assert!(dead[0].reason.contains("not-a-uuid"), "reason: {}", dead[0].reason);
        assert_eq!(dead[1].message.body, b"no id");
        assert!(dead[1].reason.contains("no message_id"), "reason: {}", dead[1].reason);
        assert!(dead.iter().all(|d| d.message.id.is_nil()));
        drop(consumer);
        q.delete(&name).await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_broker_is_unavailable_without_the_password() -> Result<()> {
        let url = "amqp://guest:hunter2@127.0.0.1:1/%2f";
        match RabbitQueue::connect(url, RabbitOptions::default()).await {
            Err(e @ QueueError::Unavailable { .. }) => {
                let QueueError::Unavailable { url: shown, .. } = &e else { unreachable!() };
                assert_eq!(shown, "amqp://guest:***@127.0.0.1:1/%2f");
                assert!(!e.to_string().contains("hunter2"), "{e}");
                Ok(())
            }
            Err(e) => anyhow::bail!("expected Unavailable, got {e}"),
            Ok(_) => anyhow::bail!("connected to port 1?"),
        }
    }
}
