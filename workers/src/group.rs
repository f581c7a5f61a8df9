//! Group commit for a worker's store calls. A worker running many commands
//! at once asks the store the same two things for each: does this
//! deployment hold my outcome (or its end) already, and record my outcome.
//! Asked one by one, the database spends more on each round trip than on
//! the work; asked together, a whole group costs about what one costs.
//!
//! A handler sends its call here and waits for its own answer. One task
//! per kind of call takes whatever has gathered (never waiting for more:
//! an idle worker's call goes alone, at once) and makes one store call of
//! it. If that fails, each call is made on its own, so that every handler
//! gets its own answer or its own error.

use std::sync::Arc;

use slipway_proto::Envelope;
use slipway_store::event_store::Holds;
use slipway_store::{Appended, EventStore, StoreError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Calls taken together at most.
const GROUP: usize = 64;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

struct Ask {
    stream: String,
    id: Uuid,
    reply: Reply<Holds>,
}

struct Record {
    stream: String,
    event: Envelope,
    reply: Reply<Appended>,
}

/// The handle handlers call; cheap to clone. The grouping tasks end when
/// every handle is dropped.
#[derive(Clone)]
pub struct Group {
    asks: mpsc::Sender<Ask>,
    records: mpsc::Sender<Record>,
}

impl Group {
    /// Starts the grouping tasks for `store`; `types` are the event types
    /// every `holds` call asks about.
    pub fn start(store: Arc<dyn EventStore>, types: &'static [&'static str]) -> Group {
        let (asks, ask_rx) = mpsc::channel(GROUP * 4);
        let (records, record_rx) = mpsc::channel(GROUP * 4);
        tokio::spawn(ask_together(store.clone(), types, ask_rx));
        tokio::spawn(record_together(store, record_rx));
        Group { asks, records }
    }

    /// `EventStore::stream_holds(stream, id, types)`, grouped.
    pub async fn holds(&self, stream: &str, id: Uuid) -> Result<Holds, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.asks.send(Ask { stream: stream.to_owned(), id, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// `EventStore::append(stream, Any, [event], [])`, grouped.
    pub async fn record(&self, stream: &str, event: Envelope) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.records.send(Record { stream: stream.to_owned(), event, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Only if the grouping task ended (the runtime is shutting down).
fn gone() -> StoreError {
    StoreError::InvalidAppend { stream: String::new(), reason: "the worker's store calls are shutting down".into() }
}

/// Waits for one item, then takes whatever else is waiting, up to `GROUP`.
async fn gather<T>(rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut group = vec![first];
    while group.len() < GROUP {
        match rx.try_recv() {
            Ok(item) => group.push(item),
            Err(_) => break,
        }
    }
    Some(group)
}

async fn ask_together(store: Arc<dyn EventStore>, types: &'static [&'static str], mut rx: mpsc::Receiver<Ask>) {
    while let Some(group) = gather(&mut rx).await {
        let asks: Vec<(&str, Uuid)> = group.iter().map(|a| (a.stream.as_str(), a.id)).collect();
        match store.stream_holds_each(&asks, types).await {
            Ok(answers) if answers.len() == group.len() => {
                for (ask, answer) in group.into_iter().zip(answers) {
                    let _ = ask.reply.send(Ok(answer));
                }
            }
            _ => {
                for ask in group {
                    let answer = store.stream_holds(&ask.stream, ask.id, types).await;
                    let _ = ask.reply.send(answer);
                }
            }
        }
    }
}

async fn record_together(store: Arc<dyn EventStore>, mut rx: mpsc::Receiver<Record>) {
    while let Some(group) = gather(&mut rx).await {
        let items: Vec<(&str, &Envelope)> = group.iter().map(|r| (r.stream.as_str(), &r.event)).collect();
        let results = match store.append_each(&items).await {
            Ok(results) if results.len() == group.len() => results,
            // Each on its own: every handler gets its own error.
            _ => slipway_store::event_store::append_one_by_one(&*store, &items).await,
        };
        for (record, result) in group.into_iter().zip(results) {
            let _ = record.reply.send(result);
        }
    }
}
