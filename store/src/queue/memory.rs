//! The in-process queue backend (`MemoryQueue`), the embedded default: the
//! same delivery guarantees as the RabbitMQ backend (prefetch, redelivery with
//! a raised attempt, dead-lettering after `max_attempts`), kept in one
//! mutex-guarded map so a single-binary Slipway needs no broker.
//!
//! It mirrors what a RabbitMQ quorum queue does rather than what would be
//! simplest in-process, so that code tested against it behaves the same in
//! production:
//! - a message returned to the queue (retry, dropped delivery, dropped
//!   consumer) goes back to the *front*, as a quorum queue serves returned
//!   messages before the rest;
//! - dropping a [`Consumer`] is like closing its channel: every delivery it
//!   handed out and that is still unsettled goes back with attempt + 1, and
//!   settling one of those afterwards does nothing;
//! - `publish` and `consume` declare their queue implicitly (like the RabbitMQ
//!   backend, so a relay never publishes into the void before the workers
//!   have started).
//!
//! Nothing survives the process: this backend is for the embedded server and
//! tests, where the event store's outbox re-publishes after a restart.

use super::{
    dead_letter_queue, exhausted_reason, Consumer, DeadLetter, Delivery, Queue, QueueError, QueueMessage, Settle, DEFAULT_MAX_ATTEMPTS,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The in-process queue backend. Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue").field("max_attempts", &self.inner.max_attempts).finish_non_exhaustive()
    }
}

struct Inner {
    max_attempts: u32,
    state: Mutex<State>,
    /// Woken on every change a waiting consumer could care about (a message
    /// became ready, a delivery was settled, shutdown). One notifier for all
    /// queues: in-process consumers are few, and a spurious wake-up only costs
    /// a map lookup.
    changed: Notify,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, QueueState>,
    /// Unsettled deliveries by tag. Tags are unique for the backend's lifetime,
    /// so a settle that finds no entry is one whose message already went back
    /// (consumer dropped, queue deleted) and is ignored, like an ack on a
    /// closed RabbitMQ channel.
    unacked: HashMap<u64, Unacked>,
    consumers: HashMap<u64, ConsumerSlot>,
    next_tag: u64,
    next_consumer: u64,
    closed: bool,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Stored>,
    /// Where returned messages go once their attempts are used up; `None` for
    /// a dead-letter queue itself (as on RabbitMQ, where `.dead` has no
    /// delivery limit).
    dead_letter_to: Option<String>,
}

struct Stored {
    message: QueueMessage,
    /// How many times it has been handed to a consumer.
    delivered: u32,
    /// Set once the message sits in a dead-letter queue.
    reason: Option<String>,
}

struct Unacked {
    queue: String,
    consumer: u64,
    stored: Stored,
}

struct ConsumerSlot {
    prefetch: usize,
    in_flight: usize,
}

enum Outcome {
    Ack,
    Retry,
    DeadLetter(String),
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ATTEMPTS)
    }
}

impl MemoryQueue {
    /// A backend that dead-letters a message once it has been delivered
    /// `max_attempts` times without being acked (0 counts as 1).
    pub fn new(max_attempts: u32) -> Self {
        MemoryQueue {
            inner: Arc::new(Inner { max_attempts: max_attempts.max(1), state: Mutex::new(State::default()), changed: Notify::new() }),
        }
    }

    /// Stops the backend: consumers' `next` returns `None`, every other call
    /// fails with [`QueueError::Closed`], and all messages are discarded.
    pub fn shutdown(&self) {
        let mut state = self.inner.lock();
        state.closed = true;
        state.queues.clear();
        state.unacked.clear();
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters more than losing the whole backend would.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(&self) -> Result<MutexGuard<'_, State>, QueueError> {
        let state = self.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        Ok(state)
    }

    /// Settles delivery `tag`. Unknown tags (already returned) are ignored.
    fn settle(&self, tag: u64, outcome: Outcome) {
        let mut state = self.lock();
        let Some(unacked) = state.unacked.remove(&tag) else { return };
        if let Some(slot) = state.consumers.get_mut(&unacked.consumer) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
        match outcome {
            Outcome::Ack => {}
            Outcome::Retry => self.return_message(&mut state, unacked.queue, unacked.stored),
            Outcome::DeadLetter(reason) => {
                let Stored { message, delivered, .. } = unacked.stored;
                let dlq = dead_letter_queue(&unacked.queue);
                let dead = state.queues.entry(dlq).or_default();
                dead.ready.push_back(Stored { message, delivered, reason: Some(reason) });
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Puts a message that was delivered but not acked back for another
    /// attempt, or into the dead-letter queue once it has had all of them.
    fn return_message(&self, state: &mut State, queue: String, stored: Stored) {
        let Some(q) = state.queues.get_mut(&queue) else { return };
        match q.dead_letter_to.clone() {
            Some(dlq) if stored.delivered >= self.max_attempts => {
                let reason = exhausted_reason(stored.delivered);
                let Stored { message, delivered, .. } = stored;
                state.queues.entry(dlq).or_default().ready.push_back(Stored { message, delivered, reason: Some(reason) });
            }
            _ => q.ready.push_front(stored),
        }
    }
}

fn declare_in(state: &mut State, queue: &str) {
    let dlq = dead_letter_queue(queue);
    state.queues.entry(dlq.clone()).or_default();
    state.queues.entry(queue.to_owned()).or_default().dead_letter_to = Some(dlq);
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        declare_in(&mut *self.inner.open()?, queue);
        Ok(())
    }

    /// Declares each message's queue if needed, then enqueues all of them at
    /// once: "confirmed" means in the map, which is all this backend promises.
    async fn publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError> {
        let mut state = self.inner.open()?;
        for message in messages {
            if !state.queues.contains_key(&message.queue) {
                declare_in(&mut state, &message.queue);
            }
            if let Some(q) = state.queues.get_mut(&message.queue) {
                q.ready.push_back(Stored { message: message.clone(), delivered: 0, reason: None });
            }
        }
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(())
    }

    /// Declares `queue` if needed. A prefetch of 0 counts as 1: AMQP reads 0 as
    /// "unlimited", which would defeat the flow control callers ask for.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        let mut state = self.inner.open()?;
        declare_in(&mut state, queue);
        let id = state.next_consumer;
        state.next_consumer += 1;
        state.consumers.insert(id, ConsumerSlot { prefetch: usize::from(prefetch.max(1)), in_flight: 0 });
        Ok(Box::new(MemoryConsumer { inner: self.inner.clone(), queue: queue.to_owned(), id }))
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut state = self.inner.open()?;
        let Some(dead) = state.queues.get_mut(&dead_letter_queue(queue)) else { return Ok(Vec::new()) };
        let n = max.min(dead.ready.len());
        Ok(dead
            .ready
            .drain(..n)
            .map(|stored| DeadLetter {
                message: stored.message,
                reason: stored.reason.unwrap_or_else(|| "published to the dead-letter queue directly".to_owned()),
            })
            .collect())
    }

    /// Removes both queues with their messages. Deliveries still out from
    /// `queue` settle as no-ops; consumers of it keep waiting and see the
    /// queue again if something re-declares it.
    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        let mut state = self.inner.open()?;
        let dlq = dead_letter_queue(queue);
        state.queues.remove(queue);
        state.queues.remove(&dlq);
        let gone: Vec<u64> = state.unacked.iter().filter(|(_, u)| u.queue == queue || u.queue == dlq).map(|(tag, _)| *tag).collect();
        for tag in gone {
            if let Some(unacked) = state.unacked.remove(&tag) {
                if let Some(slot) = state.consumers.get_mut(&unacked.consumer) {
                    slot.in_flight = slot.in_flight.saturating_sub(1);
                }
            }
        }
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        let state = self.inner.open()?;
        Ok(state.queues.get(queue).map_or(0, |q| q.ready.len() as u64))
    }

    fn system(&self) -> &'static str {
        "memory"
    }
}

struct MemoryConsumer {
    inner: Arc<Inner>,
    queue: String,
    id: u64,
}

impl MemoryConsumer {
    /// Takes the next ready message if this consumer's prefetch allows it.
    fn try_take(&self, state: &mut State) -> Option<Delivery> {
        let slot = state.consumers.get(&self.id)?;
        if slot.in_flight >= slot.prefetch {
            return None;
        }
        let mut stored = state.queues.get_mut(&self.queue)?.ready.pop_front()?;
        stored.delivered = stored.delivered.saturating_add(1);
        let attempt = stored.delivered;
        let message = stored.message.clone();
        let tag = state.next_tag;
        state.next_tag += 1;
        state.unacked.insert(tag, Unacked { queue: self.queue.clone(), consumer: self.id, stored });
        if let Some(slot) = state.consumers.get_mut(&self.id) {
            slot.in_flight += 1;
        }
        let settle = MemorySettle { inner: self.inner.clone(), tag, settled: false.into() };
        Some(Delivery::new(message, attempt, Box::new(settle)))
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // Registered before looking, so a change between the look and the
            // wait still wakes us.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.inner.lock();
                if state.closed {
                    return None;
                }
                if let Some(delivery) = self.try_take(&mut state) {
                    return Some(delivery);
                }
            }
            changed.await;
        }
    }
}

impl Drop for MemoryConsumer {
    /// Like a RabbitMQ channel closing: what this consumer still holds goes back.
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.consumers.remove(&self.id);
        let mut held: Vec<u64> = state.unacked.iter().filter(|(_, u)| u.consumer == self.id).map(|(tag, _)| *tag).collect();
        // Oldest last, so after the push_fronts the oldest is served first.
        held.sort_unstable_by(|a, b| b.cmp(a));
        for tag in held {
            if let Some(unacked) = state.unacked.remove(&tag) {
                self.inner.return_message(&mut state, unacked.queue, unacked.stored);
            }
        }
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

struct MemorySettle {
    inner: Arc<Inner>,
    tag: u64,
    settled: std::sync::atomic::AtomicBool,
}

impl MemorySettle {
    fn finish(&self, outcome: Outcome) -> Result<(), QueueError> {
        self.settled.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.settle(self.tag, outcome);
        Ok(())
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self) -> Result<(), QueueError> {
        self.finish(Outcome::Ack)
    }
    async fn retry(&self) -> Result<(), QueueError> {
        self.finish(Outcome::Retry)
    }
    async fn dead_letter(&self, reason: &str) -> Result<(), QueueError> {
        self.finish(Outcome::DeadLetter(reason.to_owned()))
    }
}

impl Drop for MemorySettle {
    /// An unsettled delivery dropped is a crashed handler: the message comes back.
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            self.inner.settle(self.tag, Outcome::Retry);
        }
    }
}
