//! The store's hard guarantees, each proved against the real database:
//! no subscriber skips an event that commits late (PostgreSQL), the events
//! table refuses UPDATE, DELETE and TRUNCATE, and tampering with stored rows
//! is found by the chain verification.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::Rng;
use slipway_store::chain::{self, TamperKind};
use slipway_store::export;
use slipway_store::subscription::Subscription;
use slipway_store::{EventStore, ExpectedVersion, PgStore, Position};
use sqlx::{Connection, Executor};
use uuid::Uuid;

const APPENDERS: u64 = 12;
const APPENDS_EACH: u64 = 15;

/// Many writers whose transactions stay open for random times after their
/// insert, so positions commit out of order; several subscribers (one of
/// them restarting from its checkpoint) must each see every event exactly
/// once, in one and the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_subscribers_never_skip_late_commits() {
    let (store, schema) = pg_store().await;
    let store = Arc::new(store);
    let dyn_store: DynStore = store.clone();

    let writers: Vec<_> = (0..APPENDERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("deployment-w{w}");
                let mut ids = Vec::new();
                for i in 0..APPENDS_EACH {
                    let batch = events(&stream, i * 3..i * 3 + 1 + i % 3);
                    ids.extend(batch.iter().map(|e| e.id));
                    let mut tx = store.pool().begin().await.unwrap();
                    PgStore::append_in(&mut tx, &stream, ExpectedVersion::Any, &batch, &[]).await.unwrap().unwrap();
                    let delay = rand::thread_rng().gen_range(0..25);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    tx.commit().await.unwrap();
                    store.wake_readers();
                }
                ids
            })
        })
        .collect();

    // Set once the writers are done: how many events the subscribers must see.
    let expected = Arc::new(AtomicUsize::new(usize::MAX));

    // A naive reader that trusts `position` order, to show what the cursor prevents.
    let naive = {
        let pool = store.pool().clone();
        let expected = expected.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut last = 0i64;
            while expected.load(Ordering::SeqCst) == usize::MAX {
                let rows: Vec<(i64, Uuid)> = sqlx::query_as("SELECT position, id FROM events WHERE position > $1 ORDER BY position")
                    .bind(last)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                for (p, id) in rows {
                    last = p;
                    seen.insert(id);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            seen
        })
    };

    let subscribers: Vec<_> = (0..3)
        .map(|n| {
            let store = dyn_store.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let name = format!("sub-{n}");
                let mut sub = Subscription::start(store.clone(), &name).await.unwrap();
                let mut seen: Vec<(Position, Uuid)> = Vec::new();
                let mut batches = 0;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while seen.len() < expected.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                    let batch = sub.poll_batch(7, Duration::from_millis(200)).await.unwrap();
                    seen.extend(batch.iter().map(|e| (e.position, e.envelope.id)));
                    batches += 1;
                    // Subscriber 0 restarts from its checkpoint now and then.
                    if n == 0 && batches % 5 == 0 {
                        sub.checkpoint().await.unwrap();
                        sub = Subscription::start(store.clone(), &name).await.unwrap();
                    }
                }
                seen
            })
        })
        .collect();

    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let total = written.len();
    expected.store(total, Ordering::SeqCst);
    let mut orders = Vec::new();
    for s in subscribers {
        let seen = s.await.unwrap();
        let ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
        let unique: HashSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "a subscriber saw an event twice");
        assert_eq!(unique, written, "a subscriber missed events ({} of {total} seen)", unique.len());
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "positions went backwards");
        orders.push(ids);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "subscribers disagree on the order");
    let naive_seen = naive.await.unwrap();
    let naive_missed = total - naive_seen.intersection(&written).count();
    assert!(naive_missed > 0, "no transaction committed late: this run proved nothing");
    eprintln!(
        "gap test: {total} events from {APPENDERS} writers; every subscriber saw all {total} in one order; \
         a naive position-order reader saw {} (missed {})",
        naive_seen.len(),
        naive_missed
    );
    drop_schema(&schema).await;
}

async fn expect_refused(conn: &mut sqlx::PgConnection, sql: &str, needle: &str) {
    let err = conn.execute(sql).await.err().unwrap_or_else(|| panic!("`{sql}` was allowed"));
    assert!(err.to_string().contains(needle), "`{sql}` failed for another reason: {err}");
}

#[tokio::test]
async fn postgres_events_refuse_update_delete_and_truncate() {
    let (store, schema) = pg_store().await;
    let s = "deployment-x";
    store.append(s, ExpectedVersion::Any, &events(s, 0..3), &[]).await.unwrap().unwrap();

    // The store's own connections act as slipway_writer: the database
    // refuses them any change to stored events.
    let mut own = store.pool().acquire().await.unwrap();
    let acting: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut *own).await.unwrap();
    assert_eq!(acting, "slipway_writer");
    expect_refused(&mut own, "UPDATE events SET body = '{}' WHERE version = 2", "permission denied").await;
    expect_refused(&mut own, "DELETE FROM events WHERE version = 2", "permission denied").await;
    drop(own);

    // The owner (the login role, once it drops the writer role) is stopped
    // by the triggers.
    let mut owner = store.pool().acquire().await.unwrap();
    owner.execute("SET ROLE NONE").await.unwrap();
    expect_refused(&mut owner, "UPDATE events SET body = '{}' WHERE version = 2", "append-only").await;
    expect_refused(&mut owner, "DELETE FROM events WHERE version = 2", "append-only").await;
    expect_refused(&mut owner, "TRUNCATE events", "append-only").await;
    owner.execute("SET ROLE slipway_writer").await.unwrap();
    drop(owner);

    // A superuser that turns off replication-mode triggers is still stopped:
    // the triggers fire always.
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.expect("PostgreSQL superuser (scripts/services)");
    admin.execute(format!("SET search_path = \"{schema}\"").as_str()).await.unwrap();
    admin.execute("SET session_replication_role = replica").await.unwrap();
    expect_refused(&mut admin, "UPDATE events SET body = '{}'", "append-only").await;
    expect_refused(&mut admin, "DELETE FROM events", "append-only").await;

    // The application's role may only insert and read.
    let role = format!("slipway_app_{}", Uuid::now_v7().simple());
    admin.execute(format!("CREATE ROLE {role} LOGIN PASSWORD 'pw' IN ROLE slipway_writer").as_str()).await.unwrap();
    let url = pg_url();
    let app_url = format!("postgres://{role}:pw@{}", url.split('@').nth(1).unwrap());
    let mut app = sqlx::PgConnection::connect(&app_url).await.unwrap();
    app.execute(format!("SET search_path = \"{schema}\"").as_str()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut app).await.unwrap();
    assert_eq!(n, 3);
    expect_refused(&mut app, "UPDATE events SET body = '{}'", "permission denied").await;
    expect_refused(&mut app, "DELETE FROM events", "permission denied").await;
    expect_refused(&mut app, "TRUNCATE events", "permission denied").await;
    app.close().await.unwrap();
    admin.execute(format!("DROP ROLE {role}").as_str()).await.unwrap();

    assert_eq!(store.stream_version(s).await.unwrap(), 3);
    assert!(chain::verify(&store.chain_rows().await.unwrap()).is_intact());
    drop_schema(&schema).await;
}

#[tokio::test]
async fn sqlite_events_refuse_update_and_delete() {
    let store = sqlite_store().await;
    let s = "deployment-x";
    store.append(s, ExpectedVersion::Any, &events(s, 0..3), &[]).await.unwrap().unwrap();
    for sql in ["UPDATE events SET body = '{}' WHERE version = 2", "DELETE FROM events WHERE version = 2", "DELETE FROM events"] {
        let err = sqlx::query(sql).execute(store.pool()).await.err().unwrap_or_else(|| panic!("`{sql}` was allowed"));
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(store.stream_version(s).await.unwrap(), 3);
}

/// Writes three streams, tampers one way with each, and expects verification
/// to name each stream, version and kind of tampering.
async fn tamper_and_verify(store: &dyn EventStore, tamper: impl AsyncFnOnce(&[&str])) {
    let streams = ["deployment-changed", "deployment-removed", "deployment-reordered", "deployment-clean"];
    for s in streams {
        store.append(s, ExpectedVersion::Any, &events(s, 0..4), &[]).await.unwrap().unwrap();
    }
    assert!(chain::verify(&store.chain_rows().await.unwrap()).is_intact());
    tamper(&streams).await;
    let report = chain::verify(&store.chain_rows().await.unwrap());
    let found: Vec<_> = report.findings.iter().map(|f| (f.stream.as_str(), f.version, f.kind)).collect();
    assert_eq!(
        found,
        vec![
            ("deployment-changed", 2, TamperKind::Changed),
            ("deployment-removed", 3, TamperKind::Removed),
            ("deployment-reordered", 2, TamperKind::Reordered),
        ],
        "{report:?}"
    );
    // The API's verification reads a page at a time: with pages that split
    // the streams anywhere, its report is the same, finding for finding.
    for page in [1, 3, 5, 7] {
        let paged = export::verify_chains(export::paged_chains(store, page)).await.unwrap();
        assert_eq!(paged, report, "pages of {page} events");
    }
}

const TAMPER_SQL: [&str; 5] = [
    // Changed: a payload edited in place.
    "UPDATE events SET body = replace(body, 'env-1', 'env-9') WHERE stream = 'deployment-changed' AND version = 2",
    // Removed: a middle event deleted.
    "DELETE FROM events WHERE stream = 'deployment-removed' AND version = 2",
    // Reordered: events 2 and 3 swap places.
    "UPDATE events SET version = 1000 WHERE stream = 'deployment-reordered' AND version = 2",
    "UPDATE events SET version = 2 WHERE stream = 'deployment-reordered' AND version = 3",
    "UPDATE events SET version = 3 WHERE stream = 'deployment-reordered' AND version = 1000",
];

#[tokio::test]
async fn postgres_tampering_by_a_superuser_is_detected() {
    let (store, schema) = pg_store().await;
    tamper_and_verify(&store, async |_streams| {
        let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.expect("PostgreSQL superuser (scripts/services)");
        admin.execute(format!("SET search_path = \"{schema}\"").as_str()).await.unwrap();
        admin.execute("ALTER TABLE events DISABLE TRIGGER USER").await.unwrap();
        for sql in TAMPER_SQL {
            admin.execute(sql).await.unwrap();
        }
        admin.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_update_delete").await.unwrap();
        admin.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_truncate").await.unwrap();
        admin.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_tokens_need_an_issuer").await.unwrap();
    })
    .await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn sqlite_tampering_is_detected() {
    let store = sqlite_store().await;
    tamper_and_verify(&store, async |_streams| {
        sqlx::query("DROP TRIGGER events_no_update").execute(store.pool()).await.unwrap();
        sqlx::query("DROP TRIGGER events_no_delete").execute(store.pool()).await.unwrap();
        for sql in TAMPER_SQL {
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
    })
    .await;
}
