//! The event store contract, written once and run against PostgreSQL and
//! SQLite: optimistic appends, stream and global reads, the outbox written
//! with its events, checkpoints, catch-up subscriptions and the hash chain.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::TryStreamExt;
use slipway_store::chain;
use slipway_store::event_store::{Outgoing, StreamAppend};
use slipway_store::subscription::Subscription;
use slipway_store::{ExpectedVersion, Position, StoreError};

async fn appends_and_reads_a_stream(store: DynStore) {
    let s = "deployment-a";
    let first = store.append(s, ExpectedVersion::NoStream, &events(s, 0..3), &[]).await.unwrap().unwrap();
    assert_eq!(first.version, 3);
    assert_eq!(first.positions.len(), 3);
    assert!(first.positions.windows(2).all(|w| w[0] < w[1]));
    let second = store.append(s, ExpectedVersion::Exactly(3), &events(s, 3..5), &[]).await.unwrap().unwrap();
    assert_eq!(second.version, 5);
    let read = store.read_stream(s, 1).await.unwrap();
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(read[3].envelope.payload_value()["environment"], "env-3");
    assert_eq!(store.read_stream(s, 4).await.unwrap().len(), 2);
    assert_eq!(store.stream_version(s).await.unwrap(), 5);
    assert_eq!(store.stream_version("nothing-here").await.unwrap(), 0);
    assert!(store.read_stream("nothing-here", 1).await.unwrap().is_empty());
}

async fn a_wrong_expected_version_is_a_conflict_and_writes_nothing(store: DynStore) {
    let s = "deployment-b";
    let cmd = Outgoing { queue: "q".into(), envelope: event(s, 99) };
    store.append(s, ExpectedVersion::NoStream, &events(s, 0..2), &[]).await.unwrap().unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exactly(1), ExpectedVersion::Exactly(7)] {
        let conflict = store.append(s, expected, &events(s, 2..4), std::slice::from_ref(&cmd)).await.unwrap().unwrap_err();
        assert_eq!((conflict.stream.as_str(), conflict.actual, conflict.expected), (s, 2, expected));
        assert!(conflict.to_string().contains("is at version 2"), "{conflict}");
    }
    assert_eq!(store.stream_version(s).await.unwrap(), 2);
    assert!(store.outbox().read(Position::START, 10).await.unwrap().is_empty(), "a conflict wrote a command");
}

async fn commands_are_written_with_their_events(store: DynStore) {
    let s = "deployment-c";
    let cmds: Vec<_> = (0..3).map(|n| Outgoing { queue: format!("q{n}"), envelope: event(s, 100 + n) }).collect();
    store.append(s, ExpectedVersion::Any, &events(s, 0..1), &cmds).await.unwrap().unwrap();
    let outbox = outbox_at_least(&*store, Position::START, 3).await;
    assert_eq!(outbox.iter().map(|o| o.message_id).collect::<Vec<_>>(), cmds.iter().map(|c| c.envelope.id).collect::<Vec<_>>());
    assert_eq!(outbox[1].queue, "q1");
    assert_eq!(outbox[2].body, cmds[2].envelope.to_json());
    assert_eq!(outbox_at_least(&*store, outbox[0].position, 2).await.len(), 2);
    // From where an earlier prune ended: the rows at or before it stay.
    assert_eq!(store.outbox().prune(outbox[0].position, outbox[1].position).await.unwrap(), 1);
    assert_eq!(outbox_at_least(&*store, Position::START, 2).await.len(), 2);
    assert_eq!(store.outbox().prune(Position::START, outbox[1].position).await.unwrap(), 1);
    assert_eq!(outbox_at_least(&*store, Position::START, 1).await.len(), 1);
    // Sent again under the same id (a re-dispatch): once more after it was
    // published, not twice while it still waits.
    store.append(s, ExpectedVersion::Any, &events(s, 1..2), &cmds).await.unwrap().unwrap();
    let again = outbox_at_least(&*store, Position::START, 3).await;
    assert_eq!(again.iter().map(|o| o.message_id).collect::<Vec<_>>(), [2, 0, 1].map(|n| cmds[n].envelope.id).to_vec());
}

async fn read_all_pages_in_one_global_order(store: DynStore) {
    for n in 0..5 {
        let s = format!("deployment-d{n}");
        store.append(&s, ExpectedVersion::Any, &events(&s, 0..4), &[]).await.unwrap().unwrap();
    }
    let everything = read_at_least(&store, Position::START, 20).await;
    assert_eq!(everything.len(), 20);
    let mut paged = Vec::new();
    let mut cursor = Position::START;
    loop {
        let page = store.read_all(cursor, 3).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.position;
        paged.extend(page);
    }
    assert_eq!(paged, everything);
    let streamed: Vec<_> = store.stream_all(Position::START).try_collect().await.unwrap();
    assert_eq!(streamed, everything);
    let tail: Vec<_> = store.stream_all(everything[16].position).try_collect().await.unwrap();
    assert_eq!(tail, everything[17..]);
    assert!(everything.windows(2).all(|w| w[0].position < w[1].position));
}

async fn checkpoints_are_per_consumer(store: DynStore) {
    assert_eq!(store.operational().load_checkpoint("projector").await.unwrap(), Position::START);
    let p = Position { tx: 7, seq: 42 };
    store.operational().save_checkpoint("projector", p).await.unwrap();
    store.operational().save_checkpoint("relay", Position { tx: 1, seq: 1 }).await.unwrap();
    assert_eq!(store.operational().load_checkpoint("projector").await.unwrap(), p);
    let q = Position { tx: 8, seq: 50 };
    store.operational().save_checkpoint("projector", q).await.unwrap();
    assert_eq!(store.operational().load_checkpoint("projector").await.unwrap(), q);
}

async fn a_subscription_catches_up_then_follows_live(store: DynStore) {
    let s = "deployment-e";
    store.append(s, ExpectedVersion::Any, &events(s, 0..3), &[]).await.unwrap().unwrap();
    let mut sub = Subscription::start(store.clone(), "sub").await.unwrap();
    assert_eq!(sub.next_batch(100).await.unwrap().len(), 3);
    sub.checkpoint().await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            store.append(s, ExpectedVersion::Exactly(3), &events(s, 3..5), &[]).await.unwrap().unwrap();
        })
    };
    let live = tokio::time::timeout(Duration::from_secs(10), sub.next_batch(100)).await.expect("live events");
    writer.await.unwrap();
    let mut versions: Vec<_> = live.unwrap().iter().map(|e| e.version).collect();
    if versions.len() < 2 {
        versions.extend(sub.next_batch(100).await.unwrap().iter().map(|e| e.version));
    }
    assert_eq!(versions, vec![4, 5]);
    sub.checkpoint().await.unwrap();
    // A restarted consumer resumes after its checkpoint.
    let mut again = Subscription::start(store.clone(), "sub").await.unwrap();
    assert!(again.poll_batch(100, Duration::from_millis(200)).await.unwrap().is_empty());
    store.append(s, ExpectedVersion::Any, &events(s, 5..6), &[]).await.unwrap().unwrap();
    assert_eq!(again.next_batch(100).await.unwrap()[0].version, 6);
}

async fn concurrent_appenders_get_contiguous_versions(store: DynStore) {
    let s = "deployment-f";
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    store.append(s, ExpectedVersion::Any, &events(s, n * 10 + i..n * 10 + i + 1), &[]).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let read = store.read_stream(s, 1).await.unwrap();
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    let report = chain::verify(&store.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
}

async fn racing_expected_versions_let_exactly_one_win(store: DynStore) {
    let s = "deployment-g";
    store.append(s, ExpectedVersion::NoStream, &events(s, 0..1), &[]).await.unwrap().unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append(s, ExpectedVersion::Exactly(1), &events(s, n..n + 1), &[]).await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap().is_ok() as u32;
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_version(s).await.unwrap(), 2);
}

async fn the_chain_links_every_event(store: DynStore) {
    for s in ["deployment-h1", "deployment-h2"] {
        store.append(s, ExpectedVersion::Any, &events(s, 0..3), &[]).await.unwrap().unwrap();
        store.append(s, ExpectedVersion::Any, &events(s, 3..4), &[]).await.unwrap().unwrap();
    }
    // One event at any version, on a new stream and after others, with text
    // beyond ASCII: PostgreSQL writes these in one statement and computes
    // the hash itself, which must be the chain's own formula.
    let s = "deployment-h3";
    store.append(s, ExpectedVersion::Any, &[event_in(s, 0, "prod-ü-✓-日本")], &[]).await.unwrap().unwrap();
    store.append(s, ExpectedVersion::Any, &[event_in(s, 1, "\"quoted\"\nline\\")], &[]).await.unwrap().unwrap();
    let read = store.read_stream(s, 1).await.unwrap();
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(read[0].hash, chain::event_hash(chain::GENESIS, s, 1, &read[0].envelope.to_json()));
    let read = store.read_stream("deployment-h1", 1).await.unwrap();
    assert_eq!(read[0].prev_hash, chain::GENESIS);
    assert!(read.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    let report = chain::verify(&store.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
    assert_eq!((report.streams, report.events), (3, 10));
}

async fn bad_appends_are_refused_clearly(store: DynStore) {
    let e = event("deployment-other", 1);
    let err = store.append("deployment-i", ExpectedVersion::Any, std::slice::from_ref(&e), &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidAppend { .. }));
    assert!(err.to_string().contains("deployment-other"), "{err}");
    store.append("deployment-other", ExpectedVersion::Any, std::slice::from_ref(&e), &[]).await.unwrap().unwrap();
    let err = store.append("deployment-other", ExpectedVersion::Any, &[e], &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate { .. }), "{err}");
    assert_eq!(store.stream_version("deployment-other").await.unwrap(), 1);
}

async fn ids_are_unique_across_everything_read(store: DynStore) {
    for n in 0..3 {
        let s = format!("deployment-j{n}");
        store.append(&s, ExpectedVersion::Any, &events(&s, 0..10), &[]).await.unwrap().unwrap();
    }
    let all = read_at_least(&store, Position::START, 30).await;
    let ids: HashSet<_> = all.iter().map(|e| e.envelope.id).collect();
    assert_eq!(ids.len(), 30);
}

async fn multi_stream_appends_are_all_or_nothing(store: DynStore) {
    let (a, b) = ("deployment-k", "environment-k");
    store.append(b, ExpectedVersion::NoStream, &events(b, 0..1), &[]).await.unwrap().unwrap();
    let (ea, eb) = (events(a, 0..2), events(b, 1..2));
    let cmd = Outgoing { queue: "q".into(), envelope: event(a, 50) };
    let wrong = [
        StreamAppend { stream: a, expected: ExpectedVersion::NoStream, events: &ea },
        StreamAppend { stream: b, expected: ExpectedVersion::NoStream, events: &eb },
    ];
    let conflict = store.append_streams(&wrong, std::slice::from_ref(&cmd)).await.unwrap().unwrap_err();
    assert_eq!(conflict.stream, b);
    assert_eq!(store.stream_version(a).await.unwrap(), 0, "the first stream was written despite the conflict");
    assert!(store.outbox().read(Position::START, 10).await.unwrap().is_empty());
    let right = [
        StreamAppend { stream: a, expected: ExpectedVersion::NoStream, events: &ea },
        StreamAppend { stream: b, expected: ExpectedVersion::Exactly(1), events: &eb },
    ];
    let done = store.append_streams(&right, &[cmd]).await.unwrap().unwrap();
    assert_eq!(done.iter().map(|d| d.version).collect::<Vec<_>>(), vec![2, 2]);
    assert_eq!(outbox_at_least(&*store, Position::START, 1).await.len(), 1);
}

async fn setting_values_are_kept_by_fingerprint(store: DynStore) {
    let key = store.operational().installation_key().await.unwrap();
    assert_eq!(store.operational().installation_key().await.unwrap(), key, "the key is stable");
    let f = slipway_store::settings::fingerprint(&key, "p", "live", "SECRET", "v1");
    store.operational().put_value(&f, "v1").await.unwrap();
    store.operational().put_value(&f, "v1").await.unwrap();
    let got = store.operational().values(&[f.clone(), "hmac-sha256:unknown".into()]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[&f], "v1");
}

async fn worker_heartbeats_replace_each_other(store: DynStore) {
    let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
    let beat = |id: &str, seen: i64, busy: &[&str], stopped: bool| slipway_store::WorkerBeat {
        id: id.into(),
        host: "h1".into(),
        steps: vec!["build".into(), "deploy".into()],
        busy: busy.iter().map(|b| b.to_string()).collect(),
        commands: busy.iter().map(|b| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b.as_bytes())).collect(),
        started_at: t(0),
        last_seen: t(seen),
        stopped,
    };
    store.operational().heartbeat(&beat("w1", 5, &["build of deployment x"], false)).await.unwrap();
    store.operational().heartbeat(&beat("w2", 6, &[], false)).await.unwrap();
    store.operational().heartbeat(&beat("w1", 10, &[], true)).await.unwrap();
    let workers = store.operational().workers().await.unwrap();
    assert_eq!(workers, vec![beat("w1", 10, &[], true), beat("w2", 6, &[], false)], "one row per worker, newest first");
    store.operational().heartbeat(&beat("w2", 12, &["build of deployment y"], false)).await.unwrap();
    let workers = store.operational().workers().await.unwrap();
    assert_eq!(workers[0].commands, beat("w2", 12, &["build of deployment y"], false).commands, "command ids kept");
    // Those silent since before a time are forgotten; the rest stay.
    assert_eq!(store.operational().forget_workers(t(11)).await.unwrap(), 1);
    assert_eq!(store.operational().workers().await.unwrap().iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["w2"]);
    assert_eq!(store.operational().forget_workers(t(11)).await.unwrap(), 0);
    // One worker by its id (an embedded one that stopped); an unknown id is no error.
    store.operational().forget_worker("w2").await.unwrap();
    store.operational().forget_worker("w2").await.unwrap();
    assert!(store.operational().workers().await.unwrap().is_empty());
}

async fn a_stream_is_asked_what_it_holds(store: DynStore) {
    let s = "deployment-k";
    let written = events(s, 0..3);
    store.append(s, ExpectedVersion::NoStream, &written, &[]).await.unwrap().unwrap();
    let holds = store.stream_holds(s, written[1].id, &["SettingsChanged"]).await.unwrap();
    assert_eq!((holds.id, holds.any_of_types), (true, true));
    let holds = store.stream_holds(s, uuid::Uuid::now_v7(), &["DeploymentFailed", "CancelRequested"]).await.unwrap();
    assert_eq!((holds.id, holds.any_of_types), (false, false));
    let holds = store.stream_holds("deployment-none", written[0].id, &["SettingsChanged"]).await.unwrap();
    assert_eq!((holds.id, holds.any_of_types), (false, false), "another stream's event is not this one's");
}

async fn outcomes_are_appended_and_asked_about_together(store: DynStore) {
    let (a, b, c) = ("deployment-m1", "deployment-m2", "deployment-m3");
    store.append(a, ExpectedVersion::NoStream, &events(a, 0..2), &[]).await.unwrap().unwrap();
    store.append(b, ExpectedVersion::NoStream, &events(b, 0..1), &[]).await.unwrap().unwrap();
    let (ea, eb, ec) = (event_in(a, 2, "ü-✓"), event(b, 1), event(c, 0));
    let done = store.append_each(&[(b, &eb), (c, &ec), (a, &ea)]).await.unwrap();
    let versions: Vec<u64> = done.into_iter().map(|r| r.unwrap().version).collect();
    assert_eq!(versions, vec![2, 1, 3], "each at its stream's next version, in the order asked");

    // A stream twice, and an event already stored: each answered on its own.
    let (a2, a3) = (event(a, 3), event(a, 4));
    let done = store.append_each(&[(a, &a2), (a, &a3), (c, &ec)]).await.unwrap();
    assert_eq!(done[0].as_ref().unwrap().version, 4);
    assert_eq!(done[1].as_ref().unwrap().version, 5);
    assert!(matches!(done[2], Err(StoreError::Duplicate { .. })), "{:?}", done[2]);
    assert_eq!(store.stream_version(c).await.unwrap(), 1, "the duplicate wrote nothing");

    let holds =
        store.stream_holds_each(&[(a, ea.id), (c, eb.id), ("deployment-none", ec.id), (b, eb.id)], &["SettingsChanged"]).await.unwrap();
    let got: Vec<(bool, bool)> = holds.iter().map(|h| (h.id, h.any_of_types)).collect();
    assert_eq!(got, vec![(true, true), (false, true), (false, false), (true, true)]);
    let report = chain::verify(&store.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, schema) = pg_store().await;
                    super::$name(Arc::new(store)).await;
                    drop_schema(&schema).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Arc::new(sqlite_store().await)).await;
                }
            )*
        }
    };
}

conformance!(
    appends_and_reads_a_stream,
    a_wrong_expected_version_is_a_conflict_and_writes_nothing,
    commands_are_written_with_their_events,
    read_all_pages_in_one_global_order,
    checkpoints_are_per_consumer,
    a_subscription_catches_up_then_follows_live,
    concurrent_appenders_get_contiguous_versions,
    racing_expected_versions_let_exactly_one_win,
    the_chain_links_every_event,
    bad_appends_are_refused_clearly,
    ids_are_unique_across_everything_read,
    multi_stream_appends_are_all_or_nothing,
    setting_values_are_kept_by_fingerprint,
    worker_heartbeats_replace_each_other,
    a_stream_is_asked_what_it_holds,
    outcomes_are_appended_and_asked_about_together,
);
