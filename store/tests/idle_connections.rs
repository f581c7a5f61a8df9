//! The store's pools check a connection before use only when it sat idle
//! past a few seconds (sqlx's default checks every one, a round trip more
//! for every statement): a connection the server dropped while idle, as a
//! restarted server or a firewall does, is found out and replaced, and the
//! next read and write go through.

mod common;

use std::time::Duration;

use slipway_store::{EventStore, ExpectedVersion};

#[tokio::test]
async fn a_connection_dropped_while_idle_is_replaced_before_use() {
    let (store, schema) = common::pg_store().await;
    store.append("s", ExpectedVersion::NoStream, &common::events("s", 1..3), &[]).await.unwrap().unwrap();
    // Every connection the read pool holds, at once, so each is named.
    let pool = store.pool();
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        held.push(pool.acquire().await.expect("a pooled connection"));
    }
    let mut pids = Vec::new();
    for conn in &mut held {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut **conn).await.unwrap();
        pids.push(pid);
    }
    drop(held);
    let admin = sqlx::PgPool::connect(&common::pg_admin_url()).await.expect("PostgreSQL as its owner");
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid").bind(&pids).fetch_all(&admin).await.unwrap();
    assert!(!killed.is_empty() && killed.iter().all(|k| *k), "terminated {pids:?}: {killed:?}");
    // Idle past the check's threshold: the dead connections are found out.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let read = store.read_stream("s", 1).await.expect("a read after the server dropped the idle connections");
    assert_eq!(read.len(), 2);
    common::drop_schema(&schema).await;
}
