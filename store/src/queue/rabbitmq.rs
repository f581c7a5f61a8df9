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

impl Core {
    fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn unavailable(&self, reason: String) -> QueueError {
        QueueError::Unavailable { url: self.display_url.clone(), reason }
    }

    fn is_declared(&self, queue: &str) -> bool {
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).contains(queue)
    }

    fn set_declared(&self, queue: &str, declared: bool) {
        let mut set = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        if declared {
            set.insert(queue.to_owned());
        } else {
            set.remove(queue);
        }
    }

    async fn open_session(&self) -> Result<Arc<Session>, String> {
        let properties = ConnectionProperties::default().with_connection_name(self.options.connection_name.as_str().into());
        let connection = match timeout(self.options.connect_timeout, Connection::connect(&self.url, properties)).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no connection within {:?}", self.options.connect_timeout)),
        };
        let publisher = async {
            let channel = connection.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(channel)
        }
        .await;
        match publisher {
            Ok(publisher) => Ok(Arc::new(Session { generation: self.next_generation(), connection, publisher })),
            Err(e) => {
                let _ = timeout(Duration::from_secs(1), connection.close(200, "setup failed".into())).await;
                Err(e.to_string())
            }
        }
    }

    /// The current session once it is healthy; waits through reconnection
    /// until `deadline` (forever with `None`).
    async fn wait_session(&self, deadline: Option<Instant>) -> Result<Arc<Session>, QueueError> {
        let mut link = self.link.subscribe();
        loop {
            let last_error = match &*link.borrow_and_update() {
                Link::Up(session) if session.healthy() => return Ok(session.clone()),
                Link::Up(_) => {
                    self.kick.notify_one();
                    "connection lost, reconnecting".to_owned()
                }
                Link::Down { error } => error.clone(),
                Link::Closed => return Err(QueueError::Closed),
            };
            if self.stopped() {
                return Err(QueueError::Closed);
            }
            let changed = match deadline {
                Some(deadline) => match timeout_at(deadline, link.changed()).await {
                    Ok(changed) => changed,
                    Err(_) => {
                        return Err(self.unavailable(format!("not reconnected within {:?}: {last_error}", self.options.operation_timeout)))
                    }
                },
                None => link.changed().await,
            };
            if changed.is_err() {
                return Err(QueueError::Closed);
            }
        }
    }

    /// Waits `delay`, or fails with `Unavailable` if that would pass `deadline`.
    async fn pause(&self, delay: Duration, deadline: Instant, last_error: &str) -> Result<(), QueueError> {
        if Instant::now() + delay >= deadline {
            return Err(self.unavailable(format!("gave up after {:?}: {last_error}", self.options.operation_timeout)));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Runs `op` on a fresh channel of a live session (so a channel error such
    /// as `PRECONDITION_FAILED` cannot take the publisher channel down), and
    /// retries it on a new session after connection-level failures.
    async fn run_op<T, F, Fut>(&self, queue: &str, deadline: Instant, op: F) -> Result<T, QueueError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        let mut backoff = Backoff::new(&self.options);
        loop {
            let session = self.wait_session(Some(deadline)).await?;
            let result = match session.connection.create_channel().await {
                Ok(channel) => {
                    let result = op(channel.clone()).await;
                    if channel.status().connected() {
                        let _ = timeout(Duration::from_secs(5), channel.close(200, "OK".into())).await;
                    }
                    result
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(e) if e.is_amqp_soft_error() => return Err(QueueError::Operation { queue: queue.to_owned(), reason: e.to_string() }),
                Err(e) => {
                    self.kick.notify_one();
                    self.pause(backoff.next(), deadline, &e.to_string()).await?;
                }
            }
        }
    }

    fn queue_arguments(&self, queue: &str) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(self.max_attempts) - 1));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(dead_letter_queue(queue).into()));
        args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        if let Some(consumer_timeout) = self.options.consumer_timeout {
            let millis = i64::try_from(consumer_timeout.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(millis));
        }
        args
    }

    /// Declares `queue`'s dead-letter queue, then `queue` (whose arguments
    /// name it); `names` is `names(queue)`.
    async fn declare_on(&self, channel: &Channel, queue: &str, names: &(ShortString, ShortString)) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel.queue_declare(names.1.clone(), durable, dead_args).await?;
        channel.queue_declare(names.0.clone(), durable, self.queue_arguments(queue)).await?;
        Ok(())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.options.operation_timeout
    }

    async fn declare(&self, queue: &str, deadline: Instant) -> Result<(), QueueError> {
        let names = &names(queue)?;
        self.run_op(queue, deadline, |channel| async move { self.declare_on(&channel, queue, names).await }).await?;
        self.set_declared(queue, true);
        Ok(())
    }

    /// Publishes every item and waits for all confirms: the whole batch is
    /// pipelined, then the confirms are awaited. Items that the broker did not
    /// confirm because the channel or connection died are published again on
    /// the next session, until `deadline`.
    async fn publish_all(&self, items: &[Outgoing<'_>], deadline: Instant) -> Result<(), QueueError> {
        let mut backoff = Backoff::new(&self.options);
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut redeclared: HashSet<&str> = HashSet::new();
        let too_slow = |error: &str| self.unavailable(format!("not confirmed within {:?}: {error}", self.options.operation_timeout));
        loop {
            let session = self.wait_session(Some(deadline)).await?;
            let mut last_error = String::new();
            let mut confirms = Vec::with_capacity(pending.len());
            let mut retry = Vec::new();
            for (n, &i) in pending.iter().enumerate() {
                let item = &items[i];
                let sent = session.publisher.basic_publish(
                    "".into(),
                    item.routing_key.clone(),
                    // Mandatory: a message to a queue that does not exist comes
                    // back instead of vanishing (see the `returned` handling).
                    BasicPublishOptions { mandatory: true, immediate: false },
                    item.body,
                    item.properties.clone(),
                );
                match timeout_at(deadline, sent).await {
                    Ok(Ok(confirm)) => confirms.push((i, confirm)),
                    Ok(Err(e)) => {
                        last_error = e.to_string();
                        retry.extend_from_slice(&pending[n..]);
                        break;
                    }
                    Err(_) => return Err(too_slow("publish did not go out")),
                }
            }
            let mut returned = Vec::new();
            for (i, confirm) in confirms {
                let item = &items[i];
                match timeout_at(deadline, confirm).await {
                    Ok(Ok(Confirmation::Ack(None))) => {}
                    Ok(Ok(Confirmation::Ack(Some(_)))) => returned.push(i),
                    Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
                        return Err(QueueError::NotConfirmed { id: item.id, queue: item.queue.to_owned() })
                    }
                    Ok(Err(e)) => {
                        last_error = e.to_string();
                        retry.push(i);
                    }
                    Err(_) => return Err(too_slow("waiting for the broker's confirms")),
                }
            }
            for i in returned {
                // Unroutable: the queue was deleted (or the broker's data
                // wiped) since this process declared it. Declare it again once.
                let item = &items[i];
                if !redeclared.insert(item.queue) {
                    return Err(QueueError::Operation {
                        queue: item.queue.to_owned(),
                        reason: format!("message {} was returned as unroutable twice", item.id),
                    });
                }
                self.set_declared(item.queue, false);
                self.declare(item.queue, deadline).await?;
                retry.push(i);
            }
            if retry.is_empty() {
                return Ok(());
            }
            retry.sort_unstable();
            pending = retry;
            if !last_error.is_empty() {
                tracing::debug!(generation = session.generation, error = %last_error, "publish interrupted; retrying");
                self.kick.notify_one();
                self.pause(backoff.next(), deadline, &last_error).await?;
            }
        }
    }

    /// Puts a copy of a message in `queue`'s dead-letter queue with `reason`.
    async fn publish_dead_letter(
        &self,
        queue: &str,
        id: Uuid,
        message_id: Option<ShortString>,
        body: &[u8],
        mut headers: FieldTable,
        reason: &str,
    ) -> Result<(), QueueError> {
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let mut properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        if let Some(message_id) = message_id {
            properties = properties.with_message_id(message_id);
        }
        let (_, dead) = names(queue)?;
        let item = Outgoing { id, queue, routing_key: dead, body, properties };
        self.publish_all(std::slice::from_ref(&item), self.deadline()).await
    }
}

/// A message ready to go out.
struct Outgoing<'a> {
    id: Uuid,
    /// The work queue it belongs to (for errors and re-declaration).
    queue: &'a str,
    routing_key: ShortString,
    body: &'a [u8],
    properties: BasicProperties,
}

impl<'a> Outgoing<'a> {
    fn new(message: &'a QueueMessage) -> Result<Self, QueueError> {
        let (routing_key, _) = names(&message.queue)?;
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &message.traceparent {
            headers.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(traceparent.as_str().into()));
            if let Some(tracestate) = tracestate(traceparent, &message.body) {
                headers.insert(TRACESTATE_HEADER.into(), AMQPValue::LongString(tracestate.into()));
            }
        }
        let properties =
            BasicProperties::default().with_delivery_mode(2).with_message_id(message.id.to_string().into()).with_headers(headers);
        Ok(Outgoing { id: message.id, queue: &message.queue, routing_key, body: &message.body, properties })
    }
}

/// The W3C `tracestate` that goes with `traceparent`, from the envelope in
/// `body` (the outbox keeps only the `traceparent`; the envelope has both).
/// `None` when the body is not an envelope, has no `tracestate`, or names
/// another `traceparent`.
fn tracestate(traceparent: &str, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Traced {
        trace: Option<slipway_proto::TraceContext>,
    }
    let trace = serde_json::from_slice::<Traced>(body).ok()?.trace?;
    (trace.traceparent == traceparent).then_some(trace.tracestate?).filter(|s| !s.is_empty())
}

/// The AMQP names of `queue` and its dead-letter queue, which are limited to
/// 255 bytes (lapin panics on longer ones, so check first).
fn names(queue: &str) -> Result<(ShortString, ShortString), QueueError> {
    let invalid =
        |e: lapin::types::ShortStringError| QueueError::Operation { queue: queue.to_owned(), reason: format!("invalid queue name: {e}") };
    if queue.is_empty() {
        return Err(QueueError::Operation { queue: String::new(), reason: "empty queue name".to_owned() });
    }
    Ok((ShortString::try_new(queue).map_err(invalid)?, ShortString::try_new(dead_letter_queue(queue)).map_err(invalid)?))
}

struct Backoff {
    delay: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(options: &RabbitOptions) -> Self {
        let min = options.reconnect_min_backoff;
        Backoff { delay: min, min, max: options.reconnect_max_backoff.max(min) }
    }
    fn next(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        delay
    }
    fn reset(&mut self) {
        self.delay = self.min;
    }
}

/// Keeps a session up: publishes it, watches it, and replaces it when it dies.
async fn supervise(core: Arc<Core>, first: Arc<Session>) {
    let mut stop = core.stop.subscribe();
    let mut backoff = Backoff::new(&core.options);
    let mut next = Some(first);
    loop {
        let session = match next.take() {
            Some(session) => session,
            None => {
                let attempt = tokio::select! {
                    attempt = core.open_session() => attempt,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                };
                match attempt {
                    Ok(session) => session,
                    Err(error) => {
                        tracing::warn!(url = %core.display_url, %error, "RabbitMQ reconnection failed");
                        core.link.send_replace(Link::Down { error });
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next()) => continue,
                            _ = stop.wait_for(|stopped| *stopped) => break,
                        }
                    }
                }
            }
        };
        backoff.reset();
        tracing::info!(url = %core.display_url, generation = session.generation, "RabbitMQ connected");
        core.link.send_replace(Link::Up(session.clone()));
        let ending = watch_session(&core, &session, &mut stop).await;
        match ending {
            Ending::Stop => {
                core.link.send_replace(Link::Closed);
                let _ = timeout(Duration::from_secs(2), session.connection.close(200, "shutting down".into())).await;
                return;
            }
            Ending::Lost(error) => {
                tracing::warn!(url = %core.display_url, generation = session.generation, %error, "RabbitMQ connection lost; reconnecting");
                core.link.send_replace(Link::Down { error });
                if session.connection.status().connected() {
                    // Only the publisher channel died: drop the whole
                    // connection so every channel is rebuilt the same way.
                    let _ = timeout(Duration::from_secs(1), session.connection.close(200, "reconnecting".into())).await;
                }
            }
        }
    }
    core.link.send_replace(Link::Closed);
}

enum Ending {
    Stop,
    Lost(String),
}

async fn watch_session(core: &Core, session: &Session, stop: &mut watch::Receiver<bool>) -> Ending {
    let mut events = std::pin::pin!(session.connection.events_listener());
    // A safety net: lapin reports connection errors as events, but a state
    // change it does not report must not leave us on a dead session forever.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_error = String::from("connection closed");
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ending::Stop,
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => last_error = e.to_string(),
                Some(_) => {}
                None => return Ending::Lost("connection event stream ended".to_owned()),
            },
            _ = core.kick.notified() => {}
            _ = tick.tick() => {}
        }
        if !session.healthy() {
            return Ending::Lost(last_error);
        }
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
    /// message count without creating or changing it. A missing queue is 0
    /// (it fails the declare on a channel of its own, nothing else).
    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        let (name, _) = names(queue)?;
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

/// What a [`RabbitConsumer`] receives: a delivery and the channel it came on.
type Handed = (Arc<ChannelGeneration>, Delivery);

struct RabbitConsumer {
    rx: mpsc::UnboundedReceiver<Handed>,
    /// Shared with every delivery this consumer handed out.
    dropped: Arc<AtomicBool>,
    _life: Arc<Lifeline>,
}

impl Drop for RabbitConsumer {
    /// From now on the consumer's task closes its channel, which puts back
    /// every delivery still unsettled. Those deliveries must not also nack
    /// themselves: a nack frees a prefetch slot, the broker re-sends the
    /// message on the still-open channel, and the close counts it a second
    /// time, so one crash would cost two attempts.
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    /// Cancel-safe (usable in `select!`).
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let (channel, delivery) = self.rx.recv().await?;
            if channel.alive() {
                return Some(delivery);
            }
            // Buffered from a channel that has died since: the broker has put
            // the message back and will deliver it again on the new channel.
        }
    }
}

/// The task behind one consumer: (re)subscribes on each session and pumps
/// deliveries to the [`RabbitConsumer`] until it is dropped or the backend stops.
struct ConsumerTask {
    core: Arc<Core>,
    life: Arc<Lifeline>,
    queue: String,
    names: (ShortString, ShortString),
    prefetch: u16,
    tx: mpsc::UnboundedSender<Handed>,
    consumer_dropped: Arc<AtomicBool>,
}

enum PumpEnd {
    ConsumerDropped,
    Stopped,
    Lost(String),
}

impl ConsumerTask {
    async fn run(self, ready: oneshot::Sender<Result<(), QueueError>>) {
        let mut ready = Some(ready);
        let mut stop = self.core.stop.subscribe();
        let first_deadline = Instant::now() + self.core.options.operation_timeout;
        let mut backoff = Backoff::new(&self.core.options);
        loop {
            let deadline = ready.is_some().then_some(first_deadline);
            let session = tokio::select! {
                session = self.core.wait_session(deadline) => session,
                _ = self.tx.closed() => return,
            };
            let session = match session {
                Ok(session) => session,
                Err(e) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(e));
                    }
                    return;
                }
            };
            let error = match self.subscribe(&session).await {
                Ok((channel, stream)) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    backoff.reset();
                    let generation = Arc::new(ChannelGeneration { generation: self.core.next_generation(), alive: true.into() });
                    tracing::debug!(queue = %self.queue, generation = generation.generation, "consumer subscribed");
                    let end = self.pump(&generation, stream, &mut stop).await;
                    generation.alive.store(false, Ordering::SeqCst);
                    match end {
                        PumpEnd::ConsumerDropped => {
                            // Closing the channel puts back whatever it still holds.
                            let _ = timeout(Duration::from_secs(5), channel.close(200, "consumer dropped".into())).await;
                            return;
                        }
                        PumpEnd::Stopped => return,
                        PumpEnd::Lost(error) => {
                            if channel.status().connected() {
                                let _ = timeout(Duration::from_secs(1), channel.close(200, "resubscribing".into())).await;
                            }
                            error
                        }
                    }
                }
                Err(e) if e.is_amqp_soft_error() => {
                    let error = QueueError::Operation { queue: self.queue.clone(), reason: e.to_string() };
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(error));
                        return;
                    }
                    error.to_string()
                }
                Err(e) => e.to_string(),
            };
            tracing::warn!(queue = %self.queue, %error, "consumer lost its channel; resubscribing");
            self.core.kick.notify_one();
            if let Some(deadline) = deadline {
                if Instant::now() + backoff.delay >= deadline {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(self.core.unavailable(error)));
                    }
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = self.tx.closed() => return,
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    async fn subscribe(&self, session: &Session) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = session.connection.create_channel().await?;
        let subscribed = async {
            self.core.declare_on(&channel, &self.queue, &self.names).await?;
            channel.basic_qos(self.prefetch, BasicQosOptions { global: false }).await?;
            channel.basic_consume(self.names.0.clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await
        }
        .await;
        match subscribed {
            Ok(stream) => Ok((channel, stream)),
            Err(e) => {
                if channel.status().connected() {
                    let _ = timeout(Duration::from_secs(1), channel.close(200, "subscription failed".into())).await;
                }
                Err(e)
            }
        }
    }

    async fn pump(&self, generation: &Arc<ChannelGeneration>, mut stream: lapin::Consumer, stop: &mut watch::Receiver<bool>) -> PumpEnd {
        loop {
            let delivery = tokio::select! {
                delivery = stream.next() => delivery,
                _ = self.tx.closed() => return PumpEnd::ConsumerDropped,
                _ = stop.wait_for(|stopped| *stopped) => return PumpEnd::Stopped,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return PumpEnd::Lost(e.to_string()),
                None => return PumpEnd::Lost("subscription cancelled by the broker".to_owned()),
            };
            match parse_delivery(&self.queue, &delivery) {
                Ok((message, attempt)) => {
                    let settle = RabbitSettle {
                        core: self.core.clone(),
                        _life: self.life.clone(),
                        generation: generation.clone(),
                        consumer_dropped: self.consumer_dropped.clone(),
                        acker: delivery.acker,
                        message: message.clone(),
                        settled: AtomicBool::new(false),
                    };
                    let handed = (generation.clone(), Delivery::new(message, attempt, Box::new(settle)));
                    if self.tx.send(handed).is_err() {
                        return PumpEnd::ConsumerDropped;
                    }
                }
                Err(problem) => self.reject_malformed(&delivery, &problem).await,
            }
        }
    }

    /// A message no handler could interpret goes straight to the dead-letter
    /// queue rather than to a consumer.
    async fn reject_malformed(&self, delivery: &lapin::message::Delivery, problem: &str) {
        tracing::warn!(queue = %self.queue, %problem, "dead-lettering a malformed message");
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let published = self
            .core
            .publish_dead_letter(&self.queue, Uuid::nil(), delivery.properties.message_id().clone(), &delivery.data, headers, problem)
            .await;
        let settled = match published {
            Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
            // Back to the queue, which counts it: the delivery limit ends this.
            Err(_) => delivery.acker.nack(BasicNackOptions { multiple: false, requeue: true }).await,
        };
        if let Err(e) = settled {
            tracing::debug!(queue = %self.queue, error = %e, "could not settle a malformed message");
        }
    }
}

/// Reads our message and its attempt from a delivery; `Err` says why the
/// message is not one of ours.
fn parse_delivery(queue: &str, delivery: &lapin::message::Delivery) -> Result<(QueueMessage, u32), String> {
    let properties = &delivery.properties;
    let id = match properties.message_id() {
        Some(raw) => Uuid::parse_str(raw.as_str()).map_err(|_| format!("message_id `{raw}` is not a UUID"))?,
        None => return Err("message has no message_id".to_owned()),
    };
    let headers = properties.headers().as_ref();
    let returns = headers.and_then(|h| h.inner().get(DELIVERY_COUNT_HEADER)).and_then(as_u64);
    let attempt = match returns {
        Some(returns) => u32::try_from(returns).unwrap_or(u32::MAX - 1).saturating_add(1),
        // No count: a first delivery, unless the broker says otherwise.
        None if delivery.redelivered => 2,
        None => 1,
    };
    let traceparent = headers.and_then(|h| h.inner().get(TRACEPARENT_HEADER)).and_then(as_string);
    Ok((QueueMessage { id, queue: queue.to_owned(), body: delivery.data.clone(), traceparent }, attempt))
}

fn parse_dead_letter(queue: &str, delivery: &lapin::message::Delivery, max_attempts: u32) -> DeadLetter {
    let properties = &delivery.properties;
    let header = |name: &str| properties.headers().as_ref().and_then(|h| h.inner().get(name)).and_then(as_string);
    let raw_id = properties.message_id().as_ref().map(|id| id.as_str().to_owned());
    let id = raw_id.as_deref().and_then(|raw| Uuid::parse_str(raw).ok());
    let mut reason = match (header(REASON_HEADER), header(FIRST_DEATH_REASON_HEADER)) {
        (Some(reason), _) => reason,
        (None, Some(broker)) if broker == "delivery_limit" => exhausted_reason(max_attempts),
        (None, Some(broker)) => format!("dead-lettered by the broker ({broker})"),
        (None, None) => "no reason recorded".to_owned(),
    };
    if id.is_none() {
        reason = format!("{reason}; message_id {raw_id:?} is not a UUID");
    }
    DeadLetter {
        message: QueueMessage {
            id: id.unwrap_or(Uuid::nil()),
            queue: queue.to_owned(),
            body: delivery.data.clone(),
            traceparent: header(TRACEPARENT_HEADER),
        },
        reason,
    }
}

/// Any non-negative integer header, whatever width the sender chose.
fn as_u64(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::ShortShortUInt(v) => Some(u64::from(v)),
        AMQPValue::ShortUInt(v) => Some(u64::from(v)),
        AMQPValue::LongUInt(v) => Some(u64::from(v)),
        AMQPValue::Timestamp(v) => Some(v),
        AMQPValue::ShortShortInt(v) => u64::try_from(v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(v).ok(),
        _ => None,
    }
}

fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

struct RabbitSettle {
    core: Arc<Core>,
    _life: Arc<Lifeline>,
    generation: Arc<ChannelGeneration>,
    consumer_dropped: Arc<AtomicBool>,
    acker: Acker,
    /// For `dead_letter`, which re-publishes it.
    message: QueueMessage,
    settled: AtomicBool,
}

impl RabbitSettle {
    /// False once the channel this delivery came on has died (its tag means
    /// nothing anymore, and the broker has already put the message back) or
    /// is being closed because its consumer was dropped (which puts it back).
    fn usable(&self) -> bool {
        let usable = self.live();
        if !usable {
            tracing::debug!(
                queue = %self.message.queue,
                id = %self.message.id,
                generation = self.generation.generation,
                "settling a delivery from a closed channel: ignored, the broker redelivers it"
            );
        }
        usable
    }

    fn live(&self) -> bool {
        self.generation.alive() && !self.consumer_dropped.load(Ordering::SeqCst) && self.acker.usable()
    }

    /// Best effort once sent: if the channel dies under it the broker
    /// redelivers, which consumers handle like any duplicate.
    async fn send(&self, requeue: bool) {
        if !self.usable() {
            return;
        }
        let sent = if requeue {
            self.acker.nack(BasicNackOptions { multiple: false, requeue: true }).await
        } else {
            self.acker.ack(BasicAckOptions::default()).await
        };
        if let Err(e) = sent {
            tracing::debug!(queue = %self.message.queue, id = %self.message.id, error = %e, "settle lost with its channel");
            self.core.kick.notify_one();
        }
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(&self) -> Result<(), QueueError> {
        self.settled.store(true, Ordering::SeqCst);
        self.send(false).await;
        Ok(())
    }

    async fn retry(&self) -> Result<(), QueueError> {
        self.settled.store(true, Ordering::SeqCst);
        self.send(true).await;
        Ok(())
    }

    /// Publishes the copy first, so a failure leaves the original unsettled
    /// (it comes back, and is counted). If the ack is lost after the copy was
    /// confirmed, the redelivery is dead-lettered again: `.dead` may then hold
    /// two copies with the same id. On a delivery whose channel has died this
    /// does nothing, like the other settles: the message is redelivered and
    /// its handler decides again.
    async fn dead_letter(&self, reason: &str) -> Result<(), QueueError> {
        self.settled.store(true, Ordering::SeqCst);
        if !self.usable() {
            return Ok(());
        }
        let m = &self.message;
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &m.traceparent {
            headers.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(traceparent.as_str().into()));
        }
        let published = self.core.publish_dead_letter(&m.queue, m.id, Some(m.id.to_string().into()), &m.body, headers, reason).await;
        if let Err(e) = published {
            // Unsettled again, so dropping it puts the message back.
            self.settled.store(false, Ordering::SeqCst);
            return Err(e);
        }
        self.send(false).await;
        Ok(())
    }
}

impl Drop for RabbitSettle {
    /// An unsettled delivery dropped is a crashed handler: nack it so the
    /// message comes back now (counted), not only when the channel closes.
    fn drop(&mut self) {
        if *self.settled.get_mut() || !self.live() {
            return;
        }
        let acker = self.acker.clone();
        let generation = self.generation.clone();
        let consumer_dropped = self.consumer_dropped.clone();
        self.core.runtime.spawn(async move {
            if generation.alive() && !consumer_dropped.load(Ordering::SeqCst) {
                let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_headers_of_any_width() {
        assert_eq!(as_u64(&AMQPValue::LongLongInt(3)), Some(3));
        assert_eq!(as_u64(&AMQPValue::ShortInt(2)), Some(2));
        assert_eq!(as_u64(&AMQPValue::LongLongInt(-1)), None);
        assert_eq!(as_u64(&AMQPValue::LongString("3".into())), None);
    }

    #[test]
    fn tracestate_comes_from_the_envelope_of_the_same_traceparent() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let body = format!(r#"{{"id":"x","payload":{{"trace":"no"}},"trace":{{"traceparent":"{tp}","tracestate":"a=1"}}}}"#);
        assert_eq!(tracestate(tp, body.as_bytes()).as_deref(), Some("a=1"));
        let other = "00-0af7651916cd43dd8448eb211c80319c-0000000000000001-01";
        assert_eq!(tracestate(other, body.as_bytes()), None);
        assert_eq!(tracestate(tp, format!(r#"{{"trace":{{"traceparent":"{tp}"}}}}"#).as_bytes()), None);
        assert_eq!(tracestate(tp, b"not json"), None);
    }

    #[test]
    fn overlong_names_are_errors_not_panics() {
        assert!(names(&"q".repeat(300)).is_err());
        assert!(names("").is_err());
        assert!(names("ok").is_ok());
    }
}
