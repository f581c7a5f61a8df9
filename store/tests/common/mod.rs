//! Shared test helpers: connect to the real services (failing loudly, never
//! skipping, when one is missing), make isolated stores, build events, and
//! wait on a condition with a deadline instead of sleeping.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::SettingsChanged;
use slipway_proto::{Envelope, Event};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::{EventStore, PgStore, SqliteStore};
use uuid::Uuid;

pub use slipway_support::pg_url;

pub fn pg_admin_url() -> String {
    std::env::var("SLIPWAY_PG_ADMIN_URL").unwrap_or_else(|_| "postgres://slipway_admin:slipway_admin@127.0.0.1:5432/slipway".into())
}

/// A PostgreSQL store in a schema of its own. Panics with the service's name
/// when PostgreSQL cannot be reached: a missing service fails the test.
pub async fn pg_store() -> (PgStore, String) {
    let schema = format!("t_{}", Uuid::now_v7().simple());
    let url = pg_url();
    let store = PgStore::connect(&url, PgOptions { schema: Some(schema.clone()), max_connections: 8, migrate: true, ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {} ({e}); run `scripts/services` first", redact_url(&url)));
    (store, schema)
}

pub async fn drop_schema(schema: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
}

pub async fn sqlite_store() -> SqliteStore {
    SqliteStore::in_memory().await.expect("in-memory SQLite store")
}

/// A small event for `stream`, numbered so tests can tell events apart.
pub fn event(stream: &str, n: u64) -> Envelope {
    event_in(stream, n, &format!("env-{n}"))
}

/// `event`, naming the environment (a text the chain hashes as stored).
pub fn event_in(stream: &str, n: u64, environment: &str) -> Envelope {
    let e = Event::SettingsChanged(SettingsChanged {
        environment: environment.to_string(),
        set: [("KEY".to_string(), format!("sha256:{n:08}"))].into(),
        removed: vec![],
        secrets: vec![],
    });
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "test".into(), trace: None };
    Envelope::new(Uuid::now_v7(), Utc::now(), stream, &e, meta).expect("encodable")
}

pub fn events(stream: &str, range: std::ops::Range<u64>) -> Vec<Envelope> {
    range.map(|n| event(stream, n)).collect()
}

pub use slipway_support::eventually;

pub type DynStore = Arc<dyn EventStore>;

/// Every event after `after`, once at least `n` are readable. Gap-safe reads
/// stop below the oldest transaction still open anywhere in the cluster
/// (another test's append, say), so a count is awaited, not assumed.
pub async fn read_at_least(store: &DynStore, after: slipway_store::Position, n: usize) -> Vec<slipway_store::RecordedEvent> {
    eventually(&format!("{n} readable events"), Duration::from_secs(20), || async {
        let all = store.read_all(after, 100_000).await.expect("read_all");
        (all.len() >= n).then_some(all)
    })
    .await
}

/// Like `read_at_least`, for the outbox.
pub async fn outbox_at_least(store: &dyn EventStore, after: slipway_store::Position, n: usize) -> Vec<slipway_store::OutboxEntry> {
    eventually(&format!("{n} readable outbox rows"), Duration::from_secs(20), || async {
        let all = store.outbox().read(after, 100_000).await.expect("read_outbox");
        (all.len() >= n).then_some(all)
    })
    .await
}
