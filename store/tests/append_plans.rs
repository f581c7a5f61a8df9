//! Appends, and the look into streams before them, are planned once per
//! connection, not at every execution: their statements run on connections
//! with `plan_cache_mode = force_generic_plan` (`APPEND_PLANS` in `postgres.rs`). Without it,
//! PostgreSQL plans them for the given values every time (it knows the
//! length of a given array, and assumes ten rows for an unknown one, so the
//! generic plan never looks cheaper), and planning a one-event append took
//! longer than running it.

mod common;

use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, ExpectedVersion, PgStore};

#[tokio::test]
async fn every_kind_of_append_and_the_look_before_it_are_planned_generically() {
    let (store, schema) = common::pg_store().await;
    // Two connections at most (a connection goes back to the pool a moment
    // after its statement, so one at a time may still use both).
    let options = PgOptions { schema: Some(schema.clone()), max_connections: 2, migrate: false, ..Default::default() };
    let store = {
        drop(store);
        PgStore::connect(&common::pg_url(), options).await.unwrap()
    };
    for n in 1..=8u64 {
        // A new stream: the locked path, in a transaction.
        let fresh = format!("fresh-{n}");
        store.append(&fresh, ExpectedVersion::Exactly(0), &common::events(&fresh, 1..2), &[]).await.unwrap().unwrap();
        // At the head this store remembers: one statement.
        store.append("s", ExpectedVersion::Exactly(n - 1), &common::events("s", n..n + 1), &[]).await.unwrap().unwrap();
        // One event at whatever version is next (workers' outcomes).
        store.append("t", ExpectedVersion::Any, &common::events("t", n..n + 1), &[]).await.unwrap().unwrap();
        // What a worker asks before appending an outcome.
        let id = common::event("t", n).id;
        store.stream_holds_each(&[("t", id), ("s", id)], &["SettingsChanged"]).await.unwrap();
    }
    // Each reading is one connection's counts; read a few times to see both.
    let mut readings = Vec::new();
    for _ in 0..6 {
        readings.push(store.append_plans().await.unwrap());
    }
    assert!(readings.iter().all(|p| p.custom == 0), "no append was planned for its values: {readings:?}");
    let most = readings.iter().map(|p| p.generic).max().unwrap_or(0);
    assert!(most >= 16, "one of the two connections ran at least half of the 24 appends and 8 looks, generically: {readings:?}");
    assert_eq!(store.stream_version("s").await.unwrap(), 8);
    common::drop_schema(&schema).await;
}
