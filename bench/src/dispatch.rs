//! Dispatch latency: from an event's commit to its command's delivery to a
//! RabbitMQ consumer, through the outbox (`PgStore::append` with one
//! `Outgoing`), the `Relay` and `RabbitQueue`, at a steady rate. The
//! baseline is the same consumer receiving the same bodies published straight
//! to the same kind of queue with publisher confirms (no store, no relay):
//! the broker's own share of the latency.
//!
//! Producer and consumer live in this process, so both ends are stamped with
//! the same monotonic clock: the producer records each command id with the
//! instant `append` returned (or, for the baseline, the instant before the
//! publish), the consumer records each id with the instant it was delivered,
//! and the two are joined afterwards. The producer is open-loop (one task per
//! tick), so a slow append never lowers the offered rate. The relay publishes
//! through a `TimedQueue`, which splits ours at the relay's `publish` call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};
use slipway_store::event_store::Outgoing;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_store::relay::{Relay, RelayOptions};
use slipway_store::{EventStore, ExpectedVersion, PgStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::fixtures::Factory;
use crate::report::{Figure, Goal, Row};
use crate::timed_queue::TimedQueue;

/// Commands per second offered by the producer.
pub const RATE: u32 = 500;
/// The goal for the 99th percentile.
const P99_GOAL_MS: f64 = 50.0;
/// Sent before measuring and left out of the percentiles: the first
/// messages on a new quorum queue, a new consumer and a new relay pay for
/// their set-up.
const WARMUP: Duration = Duration::from_millis(500);
/// How long to wait for the last deliveries after the producer stops.
const DRAIN: Duration = Duration::from_secs(10);
/// Deployment streams the producer spreads its appends over.
const STREAMS: usize = 100;
const DIRECT: &str = "direct publish";

pub async fn measure(store: &PgStore, factory: &Factory, amqp_url: &str, phase: Duration) -> anyhow::Result<Vec<Row>> {
    let options = RabbitOptions { connection_name: "slipway-bench".into(), ..RabbitOptions::default() };
    let queue = RabbitQueue::connect(amqp_url, options).await.context("connecting the RabbitMQ queue backend")?;
    let run_id = Uuid::now_v7().simple().to_string();
    let (ours_queue, direct_queue) = (format!("slipway.bench.{run_id}.relay"), format!("slipway.bench.{run_id}.direct"));

    eprintln!("dispatch: outbox + relay at {RATE}/s ...");
    let ours = through_relay(store, &queue, factory, &ours_queue, phase).await;
    eprintln!("dispatch: direct publish at {RATE}/s ...");
    let direct = direct_publish(&queue, factory, amqp_url, &direct_queue, phase).await;
    for name in [&ours_queue, &direct_queue] {
        if let Err(e) = queue.delete(name).await {
            eprintln!("dispatch: could not delete queue {name}: {e}");
        }
    }
    queue.close().await;
    let (ours, direct) = (ours?, direct?);

    let ms = Figure::Millis;
    let what = |p: &str| format!("dispatch {p} @{RATE}/s");
    Ok(vec![
        Row::new(what("p50"), ms(ours.total.p50), Some((ms(direct.p50), DIRECT)), Goal::None),
        Row::new(what("p99"), ms(ours.total.p99), Some((ms(direct.p99), DIRECT)), Goal::BelowMillis(P99_GOAL_MS)),
        Row::new("  p99 commit -> relay publish", ms(ours.pickup.p99), None, Goal::None),
        Row::new("  p99 relay publish -> delivered", ms(ours.broker.p99), Some((ms(direct.p99), DIRECT)), Goal::None),
    ])
}

/// Ours, whole and split at the relay's publish call.
#[derive(Debug, Clone, Copy)]
struct RelayLatency {
    total: Latency,
    /// Commit -> the relay calls `publish`.
    pickup: Latency,
    /// The relay calls `publish` -> delivered.
    broker: Latency,
}

/// Ours: append event + outbox command, relay, consume.
async fn through_relay(
    store: &PgStore,
    queue: &RabbitQueue,
    factory: &Factory,
    name: &str,
    phase: Duration,
) -> anyhow::Result<RelayLatency> {
    queue.declare(name).await?;
    let deliveries = consume(queue, name).await?;
    let timed = TimedQueue::new(queue.clone());
    let (stop_relay, stopped) = oneshot::channel::<()>();
    let relay = Relay::new(Arc::new(store.clone()), timed.clone(), RelayOptions::default());
    let relay = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    let committed = paced(phase, |i| {
        let (store, factory, name) = (store.clone(), factory.clone(), name.to_owned());
        async move {
            let stream = format!("deployment-dispatch-{:03}", i % STREAMS);
            let event = factory.event(i, &stream);
            let command = Outgoing { queue: name, envelope: factory.command(&stream) };
            store.append(&stream, ExpectedVersion::Any, &[event], std::slice::from_ref(&command)).await??;
            Ok((command.envelope.id, Instant::now()))
        }
    })
    .await;
    let trips = match committed {
        Ok(committed) => trips(&committed, deliveries).await,
        Err(e) => Err(e),
    };
    let _ = stop_relay.send(());
    relay.await.context("the relay task failed")?;
    let trips = trips?;
    let published = |t: &Trip| timed.published(&t.id).context("a delivered command was never published");
    let mut pickup = Vec::with_capacity(trips.len());
    let mut broker = Vec::with_capacity(trips.len());
    for trip in &trips {
        let called = published(trip)?;
        pickup.push(millis(trip.sent, called));
        broker.push(millis(called, trip.delivered));
    }
    Ok(RelayLatency {
        total: Latency::of(trips.iter().map(|t| millis(t.sent, t.delivered)).collect()),
        pickup: Latency::of(pickup),
        broker: Latency::of(broker),
    })
}

/// The baseline: the same bodies published straight to a queue of the same
/// kind, awaiting each publisher confirm, consumed by the same consumer.
async fn direct_publish(queue: &RabbitQueue, factory: &Factory, amqp_url: &str, name: &str, phase: Duration) -> anyhow::Result<Latency> {
    queue.declare(name).await?;
    let deliveries = consume(queue, name).await?;
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let sent = paced(phase, |_| {
        let (channel, factory, name) = (channel.clone(), factory.clone(), name.to_owned());
        async move {
            let command = factory.command("deployment-direct");
            let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(command.id.to_string().into());
            let sent_at = Instant::now();
            let confirm = channel
                .basic_publish("".into(), name.into(), BasicPublishOptions::default(), command.to_json().as_bytes(), properties)
                .await?
                .await?;
            if !matches!(confirm, Confirmation::Ack(None)) {
                bail!("the broker did not confirm a direct publish: {confirm:?}");
            }
            Ok((command.id, sent_at))
        }
    })
    .await;
    let trips = match sent {
        Ok(sent) => trips(&sent, deliveries).await,
        Err(e) => Err(e),
    };
    connection.close(200, "bench done".into()).await.ok();
    Ok(Latency::of(trips?.iter().map(|t| millis(t.sent, t.delivered)).collect()))
}

/// Starts a consumer on `name` that reports each delivered id with the
/// instant it arrived, then acks it. It ends when the queue backend closes.
async fn consume(queue: &RabbitQueue, name: &str) -> anyhow::Result<mpsc::UnboundedReceiver<(Uuid, Instant)>> {
    let mut consumer = queue.consume(name, 200).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            if tx.send((delivery.message.id, Instant::now())).is_err() {
                break;
            }
            if let Err(e) = delivery.ack().await {
                eprintln!("dispatch: ack failed: {e}");
            }
        }
    });
    Ok(rx)
}

/// One message the producer sent.
#[derive(Debug, Clone, Copy)]
struct Sent {
    id: Uuid,
    /// When it was committed (ours) or handed to the broker (direct).
    at: Instant,
    warmup: bool,
}

/// Calls `send(i)` `RATE` times a second for `WARMUP` then `phase`, each in
/// its own task; returns what was sent, in completion order.
async fn paced<F, Fut>(phase: Duration, send: F) -> anyhow::Result<Vec<Sent>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Uuid, Instant)>> + Send + 'static,
{
    let count = |d: Duration| (d.as_secs_f64() * f64::from(RATE)) as usize;
    let (warmup, total) = (count(WARMUP), count(WARMUP + phase));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / RATE);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let sending = send(i);
        tasks.spawn(async move { sending.await.map(|(id, at)| Sent { id, at, warmup: i < warmup }) });
    }
    let mut sent = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        sent.push(done.context("a producer task panicked")??);
    }
    Ok(sent)
}

/// A measured message: sent and delivered.
#[derive(Debug, Clone, Copy)]
struct Trip {
    id: Uuid,
    sent: Instant,
    delivered: Instant,
}

/// Waits for every sent id to be delivered (up to `DRAIN`); returns the
/// trips of the messages sent after the warm-up.
async fn trips(sent: &[Sent], mut deliveries: mpsc::UnboundedReceiver<(Uuid, Instant)>) -> anyhow::Result<Vec<Trip>> {
    // Removed on first delivery, so a redelivered duplicate is not counted twice.
    let mut pending: HashMap<Uuid, Sent> = sent.iter().map(|s| (s.id, *s)).collect();
    let mut trips = Vec::with_capacity(sent.len());
    let deadline = Instant::now() + DRAIN;
    while !pending.is_empty() {
        let delivered = sent.len() - pending.len();
        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
            Ok(Some((id, at))) => match pending.remove(&id) {
                Some(s) if !s.warmup => trips.push(Trip { id, sent: s.at, delivered: at }),
                _ => {}
            },
            Ok(None) => bail!("the consumer stopped after {delivered} of {} deliveries", sent.len()),
            Err(_) => bail!("only {delivered} of {} commands were delivered within {DRAIN:?}", sent.len()),
        }
    }
    Ok(trips)
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// Percentiles of one side, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
}

impl Latency {
    fn of(mut millis: Vec<f64>) -> Self {
        millis.sort_by(f64::total_cmp);
        Latency { p50: percentile(&millis, 0.50), p99: percentile(&millis, 0.99) }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
