//! The outbox: commands an append caused, written in the append's own
//! transaction and published by the relay (`relay.rs`) after the commit, so
//! a command goes out if and only if the events that caused it were stored.

use async_trait::async_trait;
use sqlx::Row;

use crate::dialect::{db, parse_tx, Dialect, Tables};
use crate::event_store::{OutboxEntry, Position, StoreError};

/// The outbox of one database (`EventStore::outbox`).
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `limit` commands after `after`, oldest first.
    async fn read(&self, after: Position, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Removes the commands after `after`, up to and including `upto`
    /// (published). `Position::START` removes all up to `upto`: what a
    /// relay does first, to remove any left by one that stopped between
    /// publishing and pruning; then each prune starts where the last ended.
    async fn prune(&self, after: Position, upto: Position) -> Result<u64, StoreError>;
}

#[async_trait]
impl<DB: Dialect> Outbox for Tables<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Decode<'q, DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
{
    async fn read(&self, after: Position, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(DB::READ_OUTBOX)
            .bind(after.tx.to_string())
            .bind(after.seq)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db::<DB>(format!("reading the outbox after {after}")))?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(2)?;
                Ok(OutboxEntry {
                    position: Position { tx: parse_tx(&row.try_get::<String, _>(0)?), seq: row.try_get(1)? },
                    message_id: uuid::Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    queue: row.try_get(3)?,
                    body: row.try_get(4)?,
                    traceparent: row.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db::<DB>("decoding an outbox row"))
    }

    async fn prune(&self, after: Position, upto: Position) -> Result<u64, StoreError> {
        let done = sqlx::query(DB::PRUNE_OUTBOX)
            .bind(upto.tx.to_string())
            .bind(upto.seq)
            .bind(after.tx.to_string())
            .bind(after.seq)
            .execute(&self.pool)
            .await
            .map_err(db::<DB>("pruning the outbox"))?;
        Ok(DB::rows_affected(&done))
    }
}
