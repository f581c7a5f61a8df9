//! The RabbitMQ queue backend (`RabbitQueue`, on lapin 4): durable quorum
//! queues whose delivery limit dead-letters a crash-looping message into
//! `<queue>.dead`, persistent messages with publisher confirms, manual acks,
//! and a supervisor that rebuilds connection, channels, QoS and consumers
//! whenever the broker drops them, because lapin does not recover reliably on
//! its own.
//!
//! # Broker-side semantics (RabbitMQ 3.10)
//!
//! - Work queues are **quorum queues** with `x-delivery-limit = max_attempts - 1`.
//!   A quorum queue counts every return of a message (nack with requeue,
//!   channel or connection closed while holding it) in the `x-delivery-count`
//!   header, and once a return makes that count exceed the limit it
//!   dead-letters the message instead of requeueing it. So a message is
//!   delivered at most `max_attempts` times even if every consumer that gets
//!   it crashes before settling: no crash loop, and no cooperation needed from
//!   the consumer. `attempt` is `x-delivery-count + 1` (the header is absent
//!   on a first delivery; 3.10 sends it as a signed 64-bit integer).
//! - Dead-lettering is `x-dead-letter-exchange: ""` with
//!   `x-dead-letter-routing-key: <queue>.dead` and
//!   `x-dead-letter-strategy: at-least-once` (3.10+; it requires
//!   `x-overflow: reject-publish`, which only matters with a length limit,
//!   and we set none): the default at-most-once strategy can drop a message
//!   that is being dead-lettered if the target is briefly unavailable.
//! - The queue arguments are part of the queue's identity: re-declaring an
//!   existing queue with another `max_attempts` fails with
//!   `PRECONDITION_FAILED` (reported as [`QueueError::Operation`]). Delete
//!   the queue, or keep `max_attempts` per queue stable.
//! - `retry()` is a nack with requeue, so the broker counts it like any other
//!   return. `dead_letter(reason)` publishes a copy (same `message_id`, the
//!   reason in the `x-slipway-reason` header) to `<queue>.dead`, waits for the
//!   confirm, then acks the original.
//! - A prefetched message is "delivered" as far as the broker is concerned:
//!   if a consumer is dropped with messages still buffered, they come back
//!   with their count raised although no handler saw them. The count is thus
//!   an upper bound on handler attempts; consumers must tolerate duplicates
//!   by id anyway.
//!
//! # Reconnection
//!
//! One task supervises the connection: when it dies (broker restart,
//! `rabbitmqctl close_all_connections`, network) it publishes "down", then
//! reconnects with backoff (100 ms doubling to 5 s by default) and publishes
//! the new session. Each consumer has its own task and channel; it waits for
//! a live session, re-declares its queue, sets QoS and subscribes again, so
//! `Consumer::next` simply waits across an outage. Every consumer channel has
//! a generation: deliveries from a channel that has since died are dropped by
//! `next`, and settling one is a silent no-op (the broker has already put the
//! message back; its delivery tag means nothing on any other channel).
//! `publish`, `declare`, `delete` and `take_dead_letters` wait for a session
//! and retry on the new one for up to `operation_timeout` (30 s), then fail
//! with [`QueueError::Unavailable`].

use super::{
    dead_letter_queue, exhausted_reason, Consumer, DeadLetter, Delivery, Queue, QueueError, QueueMessage, Settle, DEFAULT_MAX_ATTEMPTS,
};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{timeout, timeout_at, Instant};

use crate::redact::redact_url;
use uuid::Uuid;

mod consumer;
mod session;

use consumer::*;
use session::*;

/// Header carrying the reason of a dead-letter published by `dead_letter()`.
const REASON_HEADER: &str = "x-slipway-reason";
const TRACEPARENT_HEADER: &str = "traceparent";
const TRACESTATE_HEADER: &str = "tracestate";
/// Set by quorum queues on redelivery: how many times the message was returned.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Set by the broker when it dead-letters a message (`delivery_limit`, `rejected`, ...).
const FIRST_DEATH_REASON_HEADER: &str = "x-first-death-reason";

/// How a [`RabbitQueue`] connects and declares its queues.
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// Deliveries before a message is dead-lettered (0 counts as 1). Fixed
    /// per queue at its first declaration (`x-delivery-limit`).
    pub max_attempts: u32,
    /// Shown in the management UI and `rabbitmqctl list_connections`.
    pub connection_name: String,
    /// Bound on one connection attempt (TCP + AMQP handshake).
    pub connect_timeout: Duration,
    /// How long `publish`, `declare`, `consume`, `delete` and
    /// `take_dead_letters` wait for the broker during an outage before
    /// failing with [`QueueError::Unavailable`].
    pub operation_timeout: Duration,
    /// First delay between reconnection attempts; doubled after each failure...
    pub reconnect_min_backoff: Duration,
    /// ...up to this.
    pub reconnect_max_backoff: Duration,
    /// Sent as the `x-consumer-timeout` queue argument when set. RabbitMQ 3.10
    /// accepts the argument but ignores it (per-queue consumer timeouts came
    /// with 3.12), so on this site the broker-wide `consumer_timeout` (24 h,
    /// set by `scripts/services`) is what keeps a long build's unacked
    /// delivery from closing its channel. Left unset by default: like every
    /// queue argument it is fixed when the queue is first declared.
    pub consumer_timeout: Option<Duration>,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        RabbitOptions {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            connection_name: "slipway".to_owned(),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            reconnect_min_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            consumer_timeout: None,
        }
    }
}

/// The RabbitMQ backend. Cheap to clone; clones share one connection. The
/// connection closes when [`RabbitQueue::close`] is called, or once this
/// handle, its clones, and every consumer and delivery made from them are
/// dropped.
#[derive(Clone)]
pub struct RabbitQueue {
    core: Arc<Core>,
    life: Arc<Lifeline>,
}

impl std::fmt::Debug for RabbitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitQueue").field("url", &self.core.display_url).finish_non_exhaustive()
    }
}

/// Shuts the backend down when the last user-facing handle goes. Kept apart
/// from `Core`, which the background tasks hold and so never drops first.
struct Lifeline(Arc<Core>);

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

struct Core {
    url: String,
    /// `url` without its password, for errors and logs.
    display_url: String,
    options: RabbitOptions,
    max_attempts: u32,
    link: watch::Sender<Link>,
    stop: watch::Sender<bool>,
    /// Asks the supervisor to check the connection now (someone saw an error).
    kick: Notify,
    /// Queues this process has declared, so `publish` declares each once.
    declared: Mutex<HashSet<String>>,
    /// Generations of sessions and consumer channels.
    next_generation: AtomicU64,
    /// For `Drop` impls, which may run outside the runtime's context.
    runtime: tokio::runtime::Handle,
}

#[derive(Clone)]
enum Link {
    Down { error: String },
    Up(Arc<Session>),
    Closed,
}

/// One connection with its publisher-confirm channel.
struct Session {
    generation: u64,
    connection: Connection,
    publisher: Channel,
}

impl Session {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// One consumer channel's life; a delivery is only settled while it lives.
struct ChannelGeneration {
    generation: u64,
    alive: AtomicBool,
}

impl ChannelGeneration {
    fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

impl RabbitQueue {
    /// Connects to `url` (e.g. `amqp://user:pass@host:5672/%2f`). An
    /// unreachable broker fails at once with [`QueueError::Unavailable`]
    /// naming the URL without its password; once connected, later outages are
    /// ridden out by reconnecting. Must be called inside a tokio runtime.
    pub async fn connect(url: &str, options: RabbitOptions) -> Result<Self, QueueError> {
        let (link, _) = watch::channel(Link::Down { error: "not connected yet".to_owned() });
        let (stop, _) = watch::channel(false);
        let core = Arc::new(Core {
            url: url.to_owned(),
            display_url: redact_url(url),
            max_attempts: options.max_attempts.max(1),
            options,
            link,
            stop,
            kick: Notify::new(),
            declared: Mutex::new(HashSet::new()),
            next_generation: AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
        });
        let first = core.open_session().await.map_err(|reason| core.unavailable(reason))?;
        tokio::spawn(supervise(core.clone(), first));
        Ok(RabbitQueue { life: Arc::new(Lifeline(core.clone())), core })
    }

    /// Closes the connection; consumers' `next` then returns `None` and every
    /// other call fails with [`QueueError::Closed`]. Unacked deliveries go
    /// back to their queues (broker side).
    pub async fn close(&self) {
        self.core.stop.send_replace(true);
        let mut link = self.core.link.subscribe();
        let _ = timeout(Duration::from_secs(5), link.wait_for(|l| matches!(l, Link::Closed))).await;
    }
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        self.core.declare(queue, self.core.deadline()).await
    }

    /// Declares each target queue this process has not declared yet (so a
    /// relay can publish before any worker has started), then publishes the
    /// batch as persistent messages and waits for every confirm. A broker
    /// nack is [`QueueError::NotConfirmed`]; messages lost with a channel or
    /// connection are re-published on the next connection, and the call fails
    /// with [`QueueError::Unavailable`] if that takes over `operation_timeout`.
    async fn publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError> {
        if self.core.stopped() {
            return Err(QueueError::Closed);
        }
        if messages.is_empty() {
            return Ok(());
        }
        // One deadline for the declarations and the publishing together.
        let deadline = self.core.deadline();
        let items = messages.iter().map(Outgoing::new).collect::<Result<Vec<_>, _>>()?;
        let mut queues: Vec<&str> = messages.iter().map(|m| m.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            if !self.core.is_declared(queue) {
                self.core.declare(queue, deadline).await?;
            }
        }
        self.core.publish_all(&items, deadline).await
    }

    /// Declares `queue` and subscribes on a channel of its own with
    /// `basic_qos(prefetch)` (0 counts as 1: AMQP reads 0 as "unlimited").
    /// Fails if the first subscription cannot be made within
    /// `operation_timeout`; after that the consumer re-subscribes by itself.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        let names = names(queue)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let task = ConsumerTask {
            core: self.core.clone(),
            life: self.life.clone(),
            queue: queue.to_owned(),
            names,
            prefetch: prefetch.max(1),
            tx,
            consumer_dropped: dropped.clone(),
        };
        tokio::spawn(task.run(ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Box::new(RabbitConsumer { rx, dropped, _life: self.life.clone() })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QueueError::Closed),
        }
    }

    /// `basic_get`s up to `max` messages, then acks them all at once (one
    /// `multiple` ack, made certain by the channel close that follows), so a
    /// failure part-way leaves every message in the dead-letter queue.
    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let (_, dead) = names(queue)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let core = &*self.core;
        let taken = core
            .run_op(queue, core.deadline(), |channel| {
                let dead = dead.clone();
                async move {
                    let mut taken = Vec::new();
                    let mut last: Option<Acker> = None;
                    while taken.len() < max {
                        let got = match channel.basic_get(dead.clone(), BasicGetOptions { no_ack: false }).await {
                            Ok(got) => got,
                            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
                            Err(e) => return Err(e),
                        };
                        let Some(got) = got else { break };
                        taken.push(parse_dead_letter(queue, &got.delivery, core.max_attempts));
                        last = Some(got.delivery.acker.clone());
                    }
                    if let Some(last) = last {
                        last.ack(BasicAckOptions { multiple: true }).await?;
                    }
                    Ok(taken)
                }
            })
            .await?;
        Ok(taken)
    }

    /// Deletes `queue` and `<queue>.dead` with their messages. A consumer
    /// still subscribed (in any process) is cancelled by the broker and, as it
    /// re-subscribes on its own, declares the queue again: drop consumers first.
    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        let (name, dead) = names(queue)?;
        self.core.set_declared(queue, false);
        self.core
            .run_op(queue, self.core.deadline(), |channel| {
                let (name, dead) = (name.clone(), dead.clone());
                async move {
                    channel.queue_delete(name, QueueDeleteOptions::default()).await?;
                    channel.queue_delete(dead, QueueDeleteOptions::default()).await?;
                    Ok(())
                }
            })
            .await
    }

    /// A passive declare: the broker answers with the queue's ready
    /// message count without changing the queue. A queue this process has
    /// not declared yet is declared first, as its first publish or consumer
    /// would (same arguments, so it is idempotent): a passive declare of a
    /// missing queue makes the broker close the channel with NOT_FOUND,
    /// which lapin logs at ERROR level, and the gauges sample every few
    /// seconds — an operator's log would show an error that is none. A
    /// queue deleted meanwhile still reads 0.
    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        let (name, _) = names(queue)?;
        if !self.core.is_declared(queue) {
            self.core.declare(queue, self.core.deadline()).await?;
        }
        self.core
            .run_op(queue, self.core.deadline(), |channel| {
                let name = name.clone();
                async move {
                    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                    match channel.queue_declare(name, passive, FieldTable::default()).await {
                        Ok(q) => Ok(u64::from(q.message_count())),
                        Err(e) if is_not_found(&e) => Ok(0),
                        Err(e) => Err(e),
                    }
                }
            })
            .await
    }

    fn system(&self) -> &'static str {
        "rabbitmq"
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}
