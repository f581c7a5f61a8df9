//! One queue interface, two backends: RabbitMQ (`rabbitmq`, for servers and
//! build farms) and in-process (`memory`, the embedded default). Both give the
//! same guarantees, checked by one conformance suite: a message is delivered
//! until it is acked; a delivery that is never acked (worker crash, dropped
//! consumer) comes back with its attempt count raised; a message that fails too
//! many times or cannot be processed at all goes to the queue's dead-letter
//! queue (`<queue>.dead`) instead of crash-looping a consumer.

pub mod memory;
pub mod namespaced;
pub mod rabbitmq;

use async_trait::async_trait;
use uuid::Uuid;

/// How many times a message is delivered before it is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A message as it travels through a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// The command's id; a duplicate publish carries the same id.
    pub id: Uuid,
    pub queue: String,
    pub body: Vec<u8>,
    /// W3C `traceparent`, carried as a message header.
    pub traceparent: Option<String>,
}

/// A message taken from a dead-letter queue, with the reason it was put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message: QueueMessage,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue broker unavailable at {url}: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("queue `{queue}`: {reason}")]
    Operation { queue: String, reason: String },
    #[error("broker did not confirm message {id} on `{queue}`")]
    NotConfirmed { id: Uuid, queue: String },
    #[error("queue backend is shut down")]
    Closed,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Declares `queue` and its dead-letter queue if they do not exist. Idempotent.
    async fn declare(&self, queue: &str) -> Result<(), QueueError>;

    /// Publishes every message and returns once the broker has confirmed all
    /// of them (durably stored). On error, some may have been stored: the
    /// caller publishes them again, and consumers tolerate duplicates by id.
    async fn publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError>;

    /// Starts consuming `queue` with at most `prefetch` unacknowledged
    /// deliveries in flight. The consumer survives broker restarts.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError>;

    /// Takes up to `max` messages from `queue`'s dead-letter queue (removing them).
    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Removes `queue` and its dead-letter queue (tests and teardown).
    async fn delete(&self, queue: &str) -> Result<(), QueueError>;

    /// Messages waiting in `queue` (ready, not yet delivered); 0 for a
    /// queue that does not exist (RabbitMQ declares a queue this process has
    /// not, so the broker never closes a channel over a missing one). For
    /// the `slipway_queue_depth` metric.
    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        Err(QueueError::Operation { queue: queue.to_owned(), reason: "this queue backend cannot tell its depth".into() })
    }

    /// The broker's name for traces (`messaging.system`): `rabbitmq`, `memory`.
    fn system(&self) -> &'static str {
        "unknown"
    }
}

/// One subscription to a queue. Dropping it is like its worker crashing:
/// every delivery it handed out and that is still unsettled goes back to the
/// queue with its attempt raised, and settling one of those afterwards does
/// nothing (keep the consumer alive until in-flight work is settled).
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery. Waits while the queue is empty or the broker is
    /// being reconnected; `None` only once the backend is shut down.
    /// Cancel-safe: nothing is lost if the future is dropped (`select!`).
    async fn next(&mut self) -> Option<Delivery>;
}

/// How a backend settles a delivery.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(&self) -> Result<(), QueueError>;
    /// Back on the queue for another attempt (or to the dead-letter queue
    /// once attempts are used up).
    async fn retry(&self) -> Result<(), QueueError>;
    /// Straight to the dead-letter queue, with a reason.
    async fn dead_letter(&self, reason: &str) -> Result<(), QueueError>;
}

/// One delivery of a message. Settle it exactly once; dropping it unsettled
/// is like a crash: the message comes back.
pub struct Delivery {
    pub message: QueueMessage,
    /// 1 on the first delivery, raised by every redelivery.
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("message", &self.message).field("attempt", &self.attempt).finish()
    }
}

impl Delivery {
    pub fn new(message: QueueMessage, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Delivery { message, attempt, settle }
    }
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle.ack().await
    }
    pub async fn retry(self) -> Result<(), QueueError> {
        self.settle.retry().await
    }
    pub async fn dead_letter(self, reason: &str) -> Result<(), QueueError> {
        self.settle.dead_letter(reason).await
    }
}

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The reason recorded for a message that was delivered `attempts` times
/// without being acked; one wording for both backends so that operators and
/// tests see the same thing whichever runs.
pub(crate) fn exhausted_reason(attempts: u32) -> String {
    format!("failed {attempts} attempts (delivery limit exceeded)")
}
