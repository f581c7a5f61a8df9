//! PostgreSQL readers order by the transaction id as a number. Rows written
//! by transactions 99 and 100 (stored here directly) must come back 99
//! first, also one at a time: sorted as text, "100" < "99", and a reader
//! that takes one row and moves its cursor past it skips the other.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use common::*;
use futures::TryStreamExt;
use slipway_store::{EventStore, Position};

#[tokio::test]
async fn events_and_commands_come_in_numeric_transaction_order() {
    let (store, schema) = pg_store().await;
    for (tx, n) in [(99, 1), (100, 2)] {
        let stream = format!("order-{n}");
        let e = event(&stream, n);
        sqlx::query(
            "INSERT INTO events (tx, stream, version, id, type, correlation_id, body, prev_hash, hash)
             VALUES ($1::text::xid8, $2, 1, $3, $4, $5, $6, '', '')",
        )
        .bind(tx.to_string())
        .bind(&stream)
        .bind(e.id)
        .bind(&e.message_type)
        .bind(e.correlation_id)
        .bind(e.to_json())
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query("INSERT INTO outbox (tx, message_id, queue, body) VALUES ($1::text::xid8, $2, 'q', '{}')")
            .bind(tx.to_string())
            .bind(e.id)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let first = store.read_all(Position::START, 1).await.unwrap();
    assert_eq!(first.iter().map(|r| r.position.tx).collect::<Vec<_>>(), [99]);
    let next = store.read_all(first[0].position, 1).await.unwrap();
    assert_eq!(next.iter().map(|r| r.position.tx).collect::<Vec<_>>(), [100]);
    let all: Vec<u64> = store.stream_all(Position::START).map_ok(|r| r.position.tx).try_collect().await.unwrap();
    assert_eq!(all, [99, 100]);
    let command = store.outbox().read(Position::START, 1).await.unwrap();
    assert_eq!(command.iter().map(|c| c.position.tx).collect::<Vec<_>>(), [99]);
    drop_schema(&schema).await;
}
