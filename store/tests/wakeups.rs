//! An append wakes PostgreSQL listeners once, whatever its transaction
//! wrote: events alone, or events and commands, on the locked path and at
//! remembered heads. The store sends the hint after the commit (migration
//! 0012 dropped the triggers that sent it from inside the transaction, one
//! per table written until 0011 folded them); appends that commit while a
//! hint is on its way share the next one.
//!
//! Its own test binary, one test: notifications are per database, and no
//! other test of this binary may append meanwhile. Anything else that
//! notifies on the database (a process another test left running) can only
//! add wake-ups, so each kind of append is tried up to three times and must
//! wake listeners exactly once in one of them: twice every time fails. A
//! burst of appends shares hints (one at once, then one per 5 ms at most),
//! and the store's own readers are woken without waiting for one.

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

/// Appends with `append` until one attempt wakes listeners exactly once
/// (three at most); returns the counts seen.
async fn wakeups_of<F, Fut>(listener: &mut sqlx::postgres::PgListener, mut append: F) -> Vec<usize>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut seen = Vec::new();
    for attempt in 0..3 {
        append(attempt).await;
        seen.push(notifications(listener).await);
        if seen.last() == Some(&1) {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn an_append_wakes_listeners_once() {
    let (store, schema) = common::pg_store().await;
    let mut listener = sqlx::postgres::PgListener::connect(&common::pg_url()).await.expect("PostgreSQL for LISTEN");
    listener.listen("slipway_append").await.expect("LISTEN");
    notifications(&mut listener).await;
    let command = |n| Outgoing { queue: "build".into(), envelope: common::event("commands", n) };
    let store = &store;

    // New streams: the locked path, events and a command in one transaction.
    let seen = wakeups_of(&mut listener, |n| async move {
        let stream = format!("new-{n}");
        store.append(&stream, ExpectedVersion::NoStream, &common::events(&stream, 1..3), &[command(n)]).await.unwrap().unwrap();
    })
    .await;
    assert_eq!(seen.last(), Some(&1), "events and outbox rows: one wake-up ({seen:?})");

    // At the head this store remembers: one statement, without commands.
    store.append("s", ExpectedVersion::NoStream, &common::events("s", 1..2), &[]).await.unwrap().unwrap();
    notifications(&mut listener).await;
    let seen = wakeups_of(&mut listener, |n| async move {
        let at = 1 + 2 * n;
        store.append("s", ExpectedVersion::Exactly(at), &common::events("s", at + 1..at + 3), &[]).await.unwrap().unwrap();
    })
    .await;
    assert_eq!(seen.last(), Some(&1), "events alone, at a remembered head: one wake-up ({seen:?})");

    // At the head again, with a command.
    let version = store.stream_version("s").await.unwrap();
    let seen = wakeups_of(&mut listener, |n| async move {
        let at = version + n;
        store.append("s", ExpectedVersion::Exactly(at), &common::events("s", at + 1..at + 2), &[command(10 + n)]).await.unwrap().unwrap();
    })
    .await;
    assert_eq!(seen.last(), Some(&1), "events and a command at a remembered head: one wake-up ({seen:?})");

    // This process's readers are woken as the append returns, not by the
    // hint coming back through the database.
    let mut own = store.wakeups();
    own.borrow_and_update();
    store.append("own", ExpectedVersion::NoStream, &common::events("own", 1..2), &[]).await.unwrap().unwrap();
    assert!(own.has_changed().unwrap(), "the store's own readers woken at once");

    // A burst of appends sends a hint at once and then at most one per
    // spacing (5 ms), not one per append.
    // (Tried up to three times, as above: others may only add wake-ups.)
    let mut bursts = Vec::new();
    for attempt in 0..3 {
        notifications(&mut listener).await;
        let burst = std::time::Instant::now();
        for n in 0..40 {
            let stream = format!("burst-{attempt}-{n}");
            store.append(&stream, ExpectedVersion::NoStream, &common::events(&stream, 1..2), &[]).await.unwrap().unwrap();
        }
        let (took, hints) = (burst.elapsed(), notifications(&mut listener).await);
        bursts.push((hints, took));
        if (1..40).contains(&hints) && hints as u128 <= took.as_millis() / 5 + 2 {
            break;
        }
    }
    let (hints, took) = *bursts.last().unwrap();
    assert!(
        (1..40).contains(&hints) && hints as u128 <= took.as_millis() / 5 + 2,
        "hints for 40 appends, and how long they took: {bursts:?}"
    );

    let outbox = store.outbox().read(slipway_store::Position::START, 100).await.unwrap();
    assert!(outbox.len() >= 2, "the commands are in the outbox: {}", outbox.len());
    common::drop_schema(&schema).await;
}
