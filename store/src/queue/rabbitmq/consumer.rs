//! Consuming: each consumer's task and channel (re-subscribed after every
//! reconnection, deliveries of a dead channel dropped), the parsing of a
//! delivery's attempt count and a dead letter's reason, and settling (ack,
//! retry, dead-letter) on the channel a delivery came from.

use super::*;

/// What a [`RabbitConsumer`] receives: a delivery and the channel it came on.
pub(super) type Handed = (Arc<ChannelGeneration>, Delivery);

pub(super) struct RabbitConsumer {
    pub(super) rx: mpsc::UnboundedReceiver<Handed>,
    /// Shared with every delivery this consumer handed out.
    pub(super) dropped: Arc<AtomicBool>,
    pub(super) _life: Arc<Lifeline>,
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
pub(super) struct ConsumerTask {
    pub(super) core: Arc<Core>,
    pub(super) life: Arc<Lifeline>,
    pub(super) queue: String,
    pub(super) names: (ShortString, ShortString),
    pub(super) prefetch: u16,
    pub(super) tx: mpsc::UnboundedSender<Handed>,
    pub(super) consumer_dropped: Arc<AtomicBool>,
}

pub(super) enum PumpEnd {
    ConsumerDropped,
    Stopped,
    Lost(String),
}

impl ConsumerTask {
    pub(super) async fn run(self, ready: oneshot::Sender<Result<(), QueueError>>) {
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

    pub(super) async fn subscribe(&self, session: &Session) -> Result<(Channel, lapin::Consumer), lapin::Error> {
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

    pub(super) async fn pump(
        &self,
        generation: &Arc<ChannelGeneration>,
        mut stream: lapin::Consumer,
        stop: &mut watch::Receiver<bool>,
    ) -> PumpEnd {
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
    pub(super) async fn reject_malformed(&self, delivery: &lapin::message::Delivery, problem: &str) {
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
pub(super) fn parse_delivery(queue: &str, delivery: &lapin::message::Delivery) -> Result<(QueueMessage, u32), String> {
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

pub(super) fn parse_dead_letter(queue: &str, delivery: &lapin::message::Delivery, max_attempts: u32) -> DeadLetter {
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
pub(super) fn as_u64(value: &AMQPValue) -> Option<u64> {
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

pub(super) fn as_string(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

pub(super) struct RabbitSettle {
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
    pub(super) fn usable(&self) -> bool {
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

    pub(super) fn live(&self) -> bool {
        self.generation.alive() && !self.consumer_dropped.load(Ordering::SeqCst) && self.acker.usable()
    }

    /// Best effort once sent: if the channel dies under it the broker
    /// redelivers, which consumers handle like any duplicate.
    pub(super) async fn send(&self, requeue: bool) {
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
}
