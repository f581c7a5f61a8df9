//! PostgreSQL appends at a remembered stream head: two stores on one schema
//! (so each one's remembered heads go stale behind the other's appends),
//! and appends inside callers' transactions. A stale head must give a true
//! conflict for an exact expected version, never one for `Any`, never a
//! broken chain, and never a partial write.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use common::*;
use slipway_store::chain;
use slipway_store::event_store::StreamAppend;
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, ExpectedVersion, PgStore};

async fn second_store(schema: &str) -> PgStore {
    let options = PgOptions { schema: Some(schema.to_owned()), max_connections: 4, migrate: false, ..Default::default() };
    PgStore::connect(&pg_url(), options).await.unwrap()
}

#[tokio::test]
async fn stale_heads_give_true_conflicts_and_never_break_the_chain() {
    let (a, schema) = pg_store().await;
    let b = second_store(&schema).await;
    let s = "deployment-stale";
    assert_eq!(a.append(s, ExpectedVersion::NoStream, &events(s, 0..3), &[]).await.unwrap().unwrap().version, 3);
    // `b` appends behind `a`'s back: `a` still remembers version 3.
    assert_eq!(b.append(s, ExpectedVersion::Exactly(3), &events(s, 3..5), &[]).await.unwrap().unwrap().version, 5);

    let conflict = a.append(s, ExpectedVersion::Exactly(3), &events(s, 5..6), &[]).await.unwrap().unwrap_err();
    assert_eq!((conflict.expected, conflict.actual), (ExpectedVersion::Exactly(3), 5));
    let conflict = a.append(s, ExpectedVersion::NoStream, &events(s, 5..6), &[]).await.unwrap().unwrap_err();
    assert_eq!(conflict.actual, 5);
    // Now it knows better, and appends where the stream really is.
    assert_eq!(a.append(s, ExpectedVersion::Exactly(5), &events(s, 5..6), &[]).await.unwrap().unwrap().version, 6);

    // `Any` behind a stale head is retried, never a conflict.
    b.append(s, ExpectedVersion::Any, &events(s, 6..7), &[]).await.unwrap().unwrap();
    assert_eq!(a.append(s, ExpectedVersion::Any, &events(s, 7..8), &[]).await.unwrap().unwrap().version, 8);

    // A multi-stream append with one stale head writes nothing at all.
    let t = "deployment-other";
    a.append(t, ExpectedVersion::NoStream, &events(t, 0..1), &[]).await.unwrap().unwrap();
    b.append(s, ExpectedVersion::Exactly(8), &events(s, 8..9), &[]).await.unwrap().unwrap();
    let (one, two) = (events(t, 1..2), events(s, 9..10));
    let both = [
        StreamAppend { stream: t, expected: ExpectedVersion::Exactly(1), events: &one },
        StreamAppend { stream: s, expected: ExpectedVersion::Exactly(8), events: &two },
    ];
    let conflict = a.append_streams(&both, &[]).await.unwrap().unwrap_err();
    assert_eq!((conflict.stream.as_str(), conflict.actual), (s, 9));
    assert_eq!(a.stream_version(t).await.unwrap(), 1, "nothing of a conflicting append is written");

    let read = a.read_stream(s, 1).await.unwrap();
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=9).collect::<Vec<_>>());
    let report = chain::verify(&a.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_stores_with_remembered_heads_stay_contiguous() {
    let (a, schema) = pg_store().await;
    let b = second_store(&schema).await;
    let s = "deployment-race";
    let tasks: Vec<_> = [a.clone(), b.clone(), a.clone(), b]
        .into_iter()
        .enumerate()
        .map(|(n, store)| {
            tokio::spawn(async move {
                let mut conflicts = 0;
                for i in 0..20u64 {
                    let batch = events(s, n as u64 * 100 + i * 2..n as u64 * 100 + i * 2 + 2);
                    // Alternate: `Any` must always land; an exact version may lose a race.
                    if i % 2 == 0 {
                        store.append(s, ExpectedVersion::Any, &batch, &[]).await.unwrap().unwrap();
                    } else {
                        let v = store.stream_version(s).await.unwrap();
                        let expected = if v == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(v) };
                        conflicts += u32::from(store.append(s, expected, &batch, &[]).await.unwrap().is_err());
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let read = a.read_stream(s, 1).await.unwrap();
    let expected_events = (4 * 20 - conflicts as usize) * 2;
    assert_eq!(read.len(), expected_events);
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=expected_events as u64).collect::<Vec<_>>());
    let report = chain::verify(&a.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn appends_in_a_callers_transaction_do_not_move_remembered_heads() {
    let (a, schema) = pg_store().await;
    let s = "deployment-in";
    a.append(s, ExpectedVersion::NoStream, &events(s, 0..1), &[]).await.unwrap().unwrap();
    // Rolled back: the store must not believe version 2 exists.
    let mut tx = a.pool().begin().await.unwrap();
    PgStore::append_in(&mut tx, s, ExpectedVersion::Exactly(1), &events(s, 1..2), &[]).await.unwrap().unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(a.append(s, ExpectedVersion::Exactly(1), &events(s, 1..2), &[]).await.unwrap().unwrap().version, 2);
    // Committed: the remembered head (2) is stale, and caught.
    let mut tx = a.pool().begin().await.unwrap();
    PgStore::append_in(&mut tx, s, ExpectedVersion::Any, &events(s, 2..3), &[]).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    assert_eq!(a.append(s, ExpectedVersion::Exactly(2), &events(s, 3..4), &[]).await.unwrap().unwrap_err().actual, 3);
    assert_eq!(a.append(s, ExpectedVersion::Any, &events(s, 3..4), &[]).await.unwrap().unwrap().version, 4);
    let report = chain::verify(&a.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
    drop_schema(&schema).await;
}

/// The engine's usual append (one stream at a remembered head, with its
/// commands) is one statement: a stale head must write neither the events
/// nor the commands; a fresh one writes both, once.
#[tokio::test]
async fn one_statement_appends_write_events_and_commands_together_or_not_at_all() {
    let (a, schema) = pg_store().await;
    let b = second_store(&schema).await;
    let s = "deployment-outbox";
    let command = |n: u64| vec![slipway_store::event_store::Outgoing { queue: "build".into(), envelope: event(s, 100 + n) }];
    let first = command(0);
    a.append(s, ExpectedVersion::NoStream, &events(s, 0..1), &first).await.unwrap().unwrap();
    b.append(s, ExpectedVersion::Exactly(1), &events(s, 1..2), &[]).await.unwrap().unwrap();

    let conflict = a.append(s, ExpectedVersion::Exactly(1), &events(s, 2..3), &command(1)).await.unwrap().unwrap_err();
    assert_eq!(conflict.actual, 2);
    let outbox = outbox_at_least(&a, slipway_store::Position::START, 1).await;
    assert_eq!(outbox.iter().map(|o| o.message_id).collect::<Vec<_>>(), vec![first[0].envelope.id], "the conflict wrote no command");

    let sent = command(2);
    assert_eq!(a.append(s, ExpectedVersion::Exactly(2), &events(s, 2..3), &sent).await.unwrap().unwrap().version, 3);
    assert_eq!(a.append(s, ExpectedVersion::Exactly(3), &events(s, 3..4), &sent).await.unwrap().unwrap().version, 4);
    let outbox = outbox_at_least(&a, slipway_store::Position::START, 2).await;
    let ids: Vec<_> = outbox.iter().map(|o| o.message_id).collect();
    assert_eq!(ids, vec![first[0].envelope.id, sent[0].envelope.id], "a command sent again while waiting is one row");

    // Several streams at their heads (the engine's batch): all of them and
    // the commands, in one statement.
    let t = "deployment-outbox-2";
    a.append(t, ExpectedVersion::NoStream, &events(t, 0..1), &[]).await.unwrap().unwrap();
    let (one, two, more) = (events(s, 4..6), events(t, 1..2), command(3));
    let both = [
        StreamAppend { stream: t, expected: ExpectedVersion::Exactly(1), events: &two },
        StreamAppend { stream: s, expected: ExpectedVersion::Exactly(4), events: &one },
    ];
    let done = a.append_streams(&both, &more).await.unwrap().unwrap();
    assert_eq!(done.iter().map(|d| (d.version, d.positions.len())).collect::<Vec<_>>(), vec![(2, 1), (6, 2)]);
    let outbox = outbox_at_least(&a, slipway_store::Position::START, 3).await;
    assert_eq!(outbox.last().unwrap().message_id, more[0].envelope.id);
    let read = a.read_stream(s, 5).await.unwrap();
    assert_eq!(read.iter().map(|r| r.envelope.id).collect::<Vec<_>>(), one.iter().map(|e| e.id).collect::<Vec<_>>());
    let report = chain::verify(&a.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
    drop_schema(&schema).await;
}
