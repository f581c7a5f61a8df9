//! A worker's grouped store calls against real PostgreSQL: many handlers at
//! once, each getting its own answer, including a stream asked for twice in
//! one group and an outcome that is already recorded.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;

use chrono::Utc;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{DeploymentFailed, SettingsChanged};
use slipway_proto::{Envelope, Event, Step};
use slipway_store::postgres::PgOptions;
use slipway_store::{chain, EventStore, PgStore, StoreError};
use slipway_tests::pg_url;
use slipway_workers::group::Group;
use uuid::Uuid;

fn outcome(stream: &str, n: u64) -> Envelope {
    let e = Event::SettingsChanged(SettingsChanged {
        environment: format!("env-{n}"),
        set: Default::default(),
        removed: vec![],
        secrets: vec![],
    });
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "test".into(), trace: None };
    Envelope::new(Uuid::now_v7(), Utc::now(), stream, &e, meta).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_calls_each_get_their_own_answer() {
    let schema = format!("group_{}", Uuid::now_v7().simple());
    let store = PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services`"));
    let store: Arc<dyn EventStore> = Arc::new(store);
    let group = Group::start(store.clone(), &["DeploymentFailed"]);

    // 60 handlers at once: 50 streams, one of them written to 11 times.
    let handlers: Vec<_> = (0..60u64)
        .map(|n| {
            let group = group.clone();
            tokio::spawn(async move {
                let stream = format!("deployment-{}", if n >= 50 { 7 } else { n });
                let event = outcome(&stream, n);
                let id = event.id;
                let appended = group.record(&stream, event).await.unwrap();
                (stream, id, appended.version)
            })
        })
        .collect();
    let mut written = Vec::new();
    for h in handlers {
        written.push(h.await.unwrap());
    }
    let mut sevens: Vec<u64> = written.iter().filter(|(s, _, _)| s == "deployment-7").map(|w| w.2).collect();
    sevens.sort_unstable();
    assert_eq!(sevens, (1..=11).collect::<Vec<_>>(), "one stream asked for in many groups: every version once");
    assert!(written.iter().filter(|(s, _, _)| s != "deployment-7").all(|w| w.2 == 1));

    // Recording an outcome again is `Duplicate`, for that handler alone.
    let again = outcome("deployment-3", 99);
    let (first, second) =
        tokio::join!(group.record("deployment-3", again.clone()), group.record("deployment-4", outcome("deployment-4", 98)));
    assert_eq!(first.unwrap().version, 2);
    assert_eq!(second.unwrap().version, 2);
    assert!(matches!(group.record("deployment-3", again).await, Err(StoreError::Duplicate { .. })));

    // Asking: own outcome found, a stop event found, neither in a new stream.
    let done = Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "test".into() });
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "test".into(), trace: None };
    let stop = Envelope::new(Uuid::now_v7(), Utc::now(), "deployment-5", &done, meta).unwrap();
    group.record("deployment-5", stop).await.unwrap();
    let (w0, w5) = (written[0].clone(), written[5].clone());
    let (a, b, c) = tokio::join!(group.holds(&w0.0, w0.1), group.holds(&w5.0, Uuid::now_v7()), group.holds("deployment-none", w0.1));
    let answers: Vec<(bool, bool)> = [a, b, c].into_iter().map(|h| h.map(|h| (h.id, h.any_of_types)).unwrap()).collect();
    assert_eq!(answers, vec![(true, false), (false, true), (false, false)]);

    let report = chain::verify(&store.chain_rows().await.unwrap());
    assert!(report.is_intact(), "{:?}", report.findings);
    drop(group);
    if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
}
