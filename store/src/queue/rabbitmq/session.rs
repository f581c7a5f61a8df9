//! The connection's life: `Core`'s operations on a live session (declare,
//! publish with confirms, delete, dead letters), the supervisor that
//! reconnects with backoff whenever the broker drops the connection, and
//! the naming and tracing details of what is published.

use super::*;

impl Core {
    pub(super) fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    pub(super) fn unavailable(&self, reason: String) -> QueueError {
        QueueError::Unavailable { url: self.display_url.clone(), reason }
    }

    pub(super) fn is_declared(&self, queue: &str) -> bool {
        self.declared.lock().unwrap_or_else(|p| p.into_inner()).contains(queue)
    }

    pub(super) fn set_declared(&self, queue: &str, declared: bool) {
        let mut set = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        if declared {
            set.insert(queue.to_owned());
        } else {
            set.remove(queue);
        }
    }

    pub(super) async fn open_session(&self) -> Result<Arc<Session>, String> {
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
    pub(super) async fn wait_session(&self, deadline: Option<Instant>) -> Result<Arc<Session>, QueueError> {
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
    pub(super) async fn pause(&self, delay: Duration, deadline: Instant, last_error: &str) -> Result<(), QueueError> {
        if Instant::now() + delay >= deadline {
            return Err(self.unavailable(format!("gave up after {:?}: {last_error}", self.options.operation_timeout)));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Runs `op` on a fresh channel of a live session (so a channel error such
    /// as `PRECONDITION_FAILED` cannot take the publisher channel down), and
    /// retries it on a new session after connection-level failures.
    pub(super) async fn run_op<T, F, Fut>(&self, queue: &str, deadline: Instant, op: F) -> Result<T, QueueError>
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

    pub(super) fn queue_arguments(&self, queue: &str) -> FieldTable {
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
    pub(super) async fn declare_on(&self, channel: &Channel, queue: &str, names: &(ShortString, ShortString)) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel.queue_declare(names.1.clone(), durable, dead_args).await?;
        channel.queue_declare(names.0.clone(), durable, self.queue_arguments(queue)).await?;
        Ok(())
    }

    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.options.operation_timeout
    }

    pub(super) async fn declare(&self, queue: &str, deadline: Instant) -> Result<(), QueueError> {
        let names = &names(queue)?;
        self.run_op(queue, deadline, |channel| async move { self.declare_on(&channel, queue, names).await }).await?;
        self.set_declared(queue, true);
        Ok(())
    }

    /// Publishes every item and waits for all confirms: the whole batch is
    /// pipelined, then the confirms are awaited. Items that the broker did not
    /// confirm because the channel or connection died are published again on
    /// the next session, until `deadline`.
    pub(super) async fn publish_all(&self, items: &[Outgoing<'_>], deadline: Instant) -> Result<(), QueueError> {
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
    pub(super) async fn publish_dead_letter(
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
pub(super) struct Outgoing<'a> {
    id: Uuid,
    /// The work queue it belongs to (for errors and re-declaration).
    queue: &'a str,
    routing_key: ShortString,
    body: &'a [u8],
    properties: BasicProperties,
}

impl<'a> Outgoing<'a> {
    pub(super) fn new(message: &'a QueueMessage) -> Result<Self, QueueError> {
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
pub(super) fn tracestate(traceparent: &str, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Traced {
        trace: Option<slipway_proto::TraceContext>,
    }
    let trace = serde_json::from_slice::<Traced>(body).ok()?.trace?;
    (trace.traceparent == traceparent).then_some(trace.tracestate?).filter(|s| !s.is_empty())
}

/// The AMQP names of `queue` and its dead-letter queue, which are limited to
/// 255 bytes (lapin panics on longer ones, so check first).
pub(super) fn names(queue: &str) -> Result<(ShortString, ShortString), QueueError> {
    let invalid =
        |e: lapin::types::ShortStringError| QueueError::Operation { queue: queue.to_owned(), reason: format!("invalid queue name: {e}") };
    if queue.is_empty() {
        return Err(QueueError::Operation { queue: String::new(), reason: "empty queue name".to_owned() });
    }
    Ok((ShortString::try_new(queue).map_err(invalid)?, ShortString::try_new(dead_letter_queue(queue)).map_err(invalid)?))
}

pub(super) struct Backoff {
    pub(super) delay: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(options: &RabbitOptions) -> Self {
        let min = options.reconnect_min_backoff;
        Backoff { delay: min, min, max: options.reconnect_max_backoff.max(min) }
    }
    pub(super) fn next(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        delay
    }
    pub(super) fn reset(&mut self) {
        self.delay = self.min;
    }
}

/// Keeps a session up: publishes it, watches it, and replaces it when it dies.
pub(super) async fn supervise(core: Arc<Core>, first: Arc<Session>) {
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

pub(super) enum Ending {
    Stop,
    Lost(String),
}

pub(super) async fn watch_session(core: &Core, session: &Session, stop: &mut watch::Receiver<bool>) -> Ending {
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

#[cfg(test)]
mod tests {
    use super::*;

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
