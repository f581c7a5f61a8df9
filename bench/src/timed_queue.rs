//! A `Queue` that passes everything through to the real backend and notes,
//! per message id, when the relay called `publish`. It splits the dispatch latency at the relay: commit ->
//! relay publish (outbox visibility, wake-up, outbox read) and relay publish
//! -> delivery (the broker's share, comparable to the direct-publish
//! baseline). The trait is `#[async_trait]`; its methods are written out
//! desugared here so the bench needs no proc-macro crate of its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use slipway_store::queue::{Consumer, DeadLetter, Queue, QueueError, QueueMessage};
use tokio::time::Instant;
use uuid::Uuid;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub struct TimedQueue<Q> {
    inner: Q,
    /// When `publish` was first called with each message.
    published: Mutex<HashMap<Uuid, Instant>>,
}

impl<Q: Queue> TimedQueue<Q> {
    pub fn new(inner: Q) -> Arc<Self> {
        Arc::new(TimedQueue { inner, published: Mutex::new(HashMap::new()) })
    }

    /// When `id` was first handed to `publish`, if it was.
    pub fn published(&self, id: &Uuid) -> Option<Instant> {
        self.published.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    async fn timed_publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError> {
        let called = Instant::now();
        {
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            for message in messages {
                published.entry(message.id).or_insert(called);
            }
        }
        self.inner.publish(messages).await
    }
}

impl<Q: Queue> Queue for TimedQueue<Q> {
    fn declare<'a, 'b, 'f>(&'a self, queue: &'b str) -> BoxFuture<'f, Result<(), QueueError>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.declare(queue)
    }

    fn publish<'a, 'b, 'f>(&'a self, messages: &'b [QueueMessage]) -> BoxFuture<'f, Result<(), QueueError>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(self.timed_publish(messages))
    }

    fn consume<'a, 'b, 'f>(&'a self, queue: &'b str, prefetch: u16) -> BoxFuture<'f, Result<Box<dyn Consumer>, QueueError>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.consume(queue, prefetch)
    }

    fn take_dead_letters<'a, 'b, 'f>(&'a self, queue: &'b str, max: usize) -> BoxFuture<'f, Result<Vec<DeadLetter>, QueueError>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.take_dead_letters(queue, max)
    }

    fn delete<'a, 'b, 'f>(&'a self, queue: &'b str) -> BoxFuture<'f, Result<(), QueueError>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.delete(queue)
    }
}
