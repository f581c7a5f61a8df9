//! Writes (appends, the look into streams before them, the read models'
//! batches) are planned once per connection, not at every execution: their
//! statements run on connections with `plan_cache_mode = force_generic_plan`
//! (`GENERIC_PLANS` in `postgres.rs`). Without it,
//! PostgreSQL plans them for the given values every time (it knows the
//! length of a given array, and assumes ten rows for an unknown one, so the
//! generic plan never looks cheaper), and planning a one-event append took
//! longer than running it.

mod common;

use slipway_store::postgres::PgOptions;
use slipway_store::read_model::{Change, ProjectRow};
use slipway_store::{EventStore, ExpectedVersion, PgStore, Position};

#[tokio::test]
async fn appends_the_look_before_them_and_read_model_batches_are_planned_generically() {
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
        // A read models' batch, from where the last one left them.
        let project = ProjectRow {
            name: format!("p{n}"),
            repository: "https://git.example/app.git".into(),
            mirror_of: None,
            default_branch: "main".into(),
            environments: vec!["live".into(), "test".into()],
            created_at: chrono::Utc::now(),
        };
        let (from, to) = (Position { tx: 0, seq: n as i64 - 1 }, Position { tx: 0, seq: n as i64 });
        assert!(store.read_models().apply(from, to, &[Change::Project(project)]).await.unwrap(), "batch {n} applied");
    }
    let plans = store.write_plans().await.unwrap();
    assert_eq!(plans.custom, 0, "nothing was planned for its values: {plans:?}");
    // 24 appends, 8 looks, and 8 batches of 5 statements (the checkpoint's
    // row made sure of, locked and moved; the projects and environments).
    assert_eq!(plans.generic, 24 + 8 + 8 * 5, "every write ran a generic plan: {plans:?}");
    assert_eq!(store.stream_version("s").await.unwrap(), 8);
    common::drop_schema(&schema).await;
}
