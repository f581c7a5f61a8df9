//! An append wakes PostgreSQL listeners once, whatever its transaction
//! wrote: events alone, or events and commands (migration 0011 folds them
//! into one notification), on the locked path and at remembered heads (which
//! runs no outbox insert without commands). Before, each of these woke every
//! listener twice, and the relay read an unchanged outbox.
//!
//! Its own test binary, one test: notifications are per database, and no
//! other test of this binary may append meanwhile.

mod common;

use std::time::Duration;

use slipway_store::event_store::Outgoing;
use slipway_store::{EventStore, ExpectedVersion};

/// Notifications received until none has come for a while.
async fn notifications(listener: &mut sqlx::postgres::PgListener) -> usize {
    let mut n = 0;
    while let Ok(received) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        received.expect("receiving a notification");
        n += 1;
    }
    n
}

#[tokio::test]
async fn an_append_wakes_listeners_once() {
    let (store, schema) = common::pg_store().await;
    let mut listener = sqlx::postgres::PgListener::connect(&common::pg_url()).await.expect("PostgreSQL for LISTEN");
    listener.listen("slipway_append").await.expect("LISTEN");
    assert_eq!(notifications(&mut listener).await, 0, "quiet before the appends");
    let command = |n| Outgoing { queue: "build".into(), envelope: common::event("commands", n) };

    // A new stream: the locked path, events and a command in one transaction.
    store.append("s", ExpectedVersion::NoStream, &common::events("s", 1..3), &[command(1)]).await.unwrap().unwrap();
    assert_eq!(notifications(&mut listener).await, 1, "events and outbox rows: one wake-up");

    // At the head this store remembers: one statement, without commands.
    store.append("s", ExpectedVersion::Exactly(2), &common::events("s", 3..5), &[]).await.unwrap().unwrap();
    assert_eq!(notifications(&mut listener).await, 1, "events alone, at a remembered head: one wake-up");

    // At the head again, with a command.
    store.append("s", ExpectedVersion::Exactly(4), &common::events("s", 5..6), &[command(2)]).await.unwrap().unwrap();
    assert_eq!(notifications(&mut listener).await, 1, "events and a command at a remembered head: one wake-up");

    let outbox = store.outbox().read(slipway_store::Position::START, 10).await.unwrap();
    assert_eq!(outbox.len(), 2, "both commands are in the outbox");
    common::drop_schema(&schema).await;
}
