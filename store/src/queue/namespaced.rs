//! A queue decorator that prefixes every queue name, so several Slipway
//! installations (or concurrent test runs) can share one broker without
//! competing for each other's step queues.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Consumer, DeadLetter, Queue, QueueError, QueueMessage};

pub struct Namespaced {
    inner: Arc<dyn Queue>,
    prefix: String,
}

impl Namespaced {
    /// Queue `q` becomes `<prefix>.q` on the broker.
    pub fn new(inner: Arc<dyn Queue>, prefix: impl Into<String>) -> Self {
        Namespaced { inner, prefix: prefix.into() }
    }

    fn name(&self, queue: &str) -> String {
        format!("{}.{queue}", self.prefix)
    }
}

#[async_trait]
impl Queue for Namespaced {
    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        self.inner.declare(&self.name(queue)).await
    }

    async fn publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError> {
        let renamed: Vec<QueueMessage> = messages.iter().map(|m| QueueMessage { queue: self.name(&m.queue), ..m.clone() }).collect();
        self.inner.publish(&renamed).await
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        self.inner.consume(&self.name(queue), prefetch).await
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.take_dead_letters(&self.name(queue), max).await
    }

    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        self.inner.delete(&self.name(queue)).await
    }

    async fn depth(&self, queue: &str) -> Result<u64, QueueError> {
        self.inner.depth(&self.name(queue)).await
    }

    fn system(&self) -> &'static str {
        self.inner.system()
    }
}
