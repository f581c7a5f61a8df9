//! What PostgreSQL and SQLite do alike, written once.
//!
//! The outbox, the operational tables and the audit's chain pages are the
//! same statements on both backends but for a few fragments: PostgreSQL
//! orders the outbox and checkpoints by transaction id (`xid8`, bound as
//! text) and locks rows with `FOR UPDATE`; SQLite has one writer at a time,
//! so its transaction id is always 0 and it needs no row locks. A
//! `Dialect` names those fragments; `Tables` runs everything else, generic
//! over the backend. Both accept `$N` parameters (SQLite numbers them as
//! PostgreSQL does), so one statement text serves both.
//!
//! The event log's appends and global reads stay per backend
//! (`postgres.rs`, `sqlite.rs`): they are where the two really differ
//! (PostgreSQL's head cache, array inserts and snapshot-safe reads).

use sqlx::{Database, Pool, Postgres, Sqlite};

use crate::event_store::StoreError;
use crate::sealing::Sealing;

/// The statements and values that differ between the backends.
pub(crate) trait Dialect: Database {
    /// The backend's name in errors ("postgres", "sqlite").
    const BACKEND: &'static str;
    /// The outbox after `($1 tx as text, $2 position)`, `$3` rows at most,
    /// oldest first, as `(tx as text, position, message_id as text, queue,
    /// body, traceparent)`; on PostgreSQL only transactions that can no
    /// longer be overtaken.
    const READ_OUTBOX: &'static str;
    /// Removes outbox rows up to and including `($1 tx as text, $2 position)`.
    const PRUNE_OUTBOX: &'static str;
    /// A consumer's (`$1`) checkpoint as `(tx as text, position)`.
    const LOAD_CHECKPOINT: &'static str;
    /// Sets a consumer's (`$1`) checkpoint to `($2 tx as text, $3 position)`.
    const SAVE_CHECKPOINT: &'static str;
    /// Every setting value, locked until the transaction ends.
    const LOCK_VALUES: &'static str;
    /// The setting values whose fingerprints are in the list `$1`.
    const VALUES_IN: &'static str;
    /// How a list of fingerprints is bound for `VALUES_IN`.
    type List<'a>: sqlx::Encode<'a, Self> + sqlx::Type<Self> + Send + 'a;
    fn list(fingerprints: &[String]) -> Self::List<'_>;
    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// Every event in global order, raw, as `export::log_row` reads it (the
    /// transaction id as text); on PostgreSQL only below the oldest running
    /// transaction, so the first N events it returns are the first N for good.
    const LOG: &'static str;
    /// `LOG` after `($1 tx as text, $2 position)`, `$3` rows at most.
    const LOG_PAGE: &'static str;
}

/// `SELECT` and the columns the log readers read, in `export::log_row`'s
/// order, for `concat!` into each dialect's queries.
macro_rules! select_log_columns {
    ($tx:literal) => {
        concat!("SELECT ", $tx, ", position, stream, version, body, prev_hash, hash, recorded_at FROM events ")
    };
}

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";
    const READ_OUTBOX: &'static str = "SELECT tx::text, position, message_id::text, queue, body, traceparent FROM outbox
         WHERE (tx, position) > ($1::text::xid8, $2)
           AND tx < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY outbox.tx, outbox.position LIMIT $3";
    // Bounded below too, so the scan starts where the last prune ended:
    // from the index's start it would step over every row deleted since
    // the last vacuum, on every prune (0.6 ms a prune in the farm bench).
    const PRUNE_OUTBOX: &'static str =
        "DELETE FROM outbox WHERE (tx, position) > ($3::text::xid8, $4) AND (tx, position) <= ($1::text::xid8, $2)";
    const LOAD_CHECKPOINT: &'static str = "SELECT tx::text, position FROM checkpoints WHERE consumer = $1";
    const SAVE_CHECKPOINT: &'static str = "INSERT INTO checkpoints (consumer, tx, position) VALUES ($1, $2::text::xid8, $3)
         ON CONFLICT (consumer) DO UPDATE SET tx = EXCLUDED.tx, position = EXCLUDED.position, updated_at = clock_timestamp()";
    const LOCK_VALUES: &'static str = "SELECT fingerprint, value FROM setting_values FOR UPDATE";
    const VALUES_IN: &'static str = "SELECT fingerprint, value FROM setting_values WHERE fingerprint = ANY($1)";
    type List<'a> = &'a [String];
    fn list(fingerprints: &[String]) -> &[String] {
        fingerprints
    }
    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }
    const LOG: &'static str =
        concat!(select_log_columns!("tx::text"), "WHERE tx < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY tx, position");
    // A keyset on the `events_tx_position` index: consecutive pages are
    // consecutive parts of the log.
    const LOG_PAGE: &'static str = concat!(
        select_log_columns!("tx::text"),
        "WHERE (tx, position) > ($1::text::xid8, $2)
           AND tx < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY tx, position LIMIT $3"
    );
}

impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";
    // One writer at a time: positions alone order the outbox; the `tx`
    // parameters (`$1`, and `$3` of a prune) are unused.
    const READ_OUTBOX: &'static str = "SELECT CAST(tx AS TEXT), position, message_id, queue, body, traceparent FROM outbox
         WHERE position > $2 ORDER BY position LIMIT $3";
    const PRUNE_OUTBOX: &'static str = "DELETE FROM outbox WHERE position > $4 AND position <= $2";
    const LOAD_CHECKPOINT: &'static str = "SELECT CAST(tx AS TEXT), position FROM checkpoints WHERE consumer = $1";
    const SAVE_CHECKPOINT: &'static str = "INSERT INTO checkpoints (consumer, tx, position) VALUES ($1, CAST($2 AS INTEGER), $3)
         ON CONFLICT (consumer) DO UPDATE SET tx = excluded.tx, position = excluded.position";
    // No row locks: SQLite's first write takes the whole database's lock.
    const LOCK_VALUES: &'static str = "SELECT fingerprint, value FROM setting_values";
    const VALUES_IN: &'static str = "SELECT fingerprint, value FROM setting_values WHERE fingerprint IN (SELECT value FROM json_each($1))";
    type List<'a> = String;
    fn list(fingerprints: &[String]) -> String {
        serde_json::to_string(fingerprints).unwrap_or_default()
    }
    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }
    // Positions are the global order.
    const LOG: &'static str = concat!(select_log_columns!("CAST(tx AS TEXT)"), "ORDER BY position");
    const LOG_PAGE: &'static str = concat!(select_log_columns!("CAST(tx AS TEXT)"), "WHERE position > $2 ORDER BY position LIMIT $3");
}

/// The outbox and the operational tables of one database.
#[derive(Debug)]
pub(crate) struct Tables<DB: Database> {
    pub(crate) pool: Pool<DB>,
    /// How setting values are sealed at rest.
    pub(crate) sealing: Sealing,
}

impl<DB: Database> Clone for Tables<DB> {
    fn clone(&self) -> Self {
        Tables { pool: self.pool.clone(), sealing: self.sealing.clone() }
    }
}

impl<DB: Database> Tables<DB> {
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Tables { pool, sealing: Sealing::default() }
    }
}

/// A database error on `DB`, saying what was being done.
pub(crate) fn db<DB: Dialect>(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Database { backend: DB::BACKEND, context, source }
}

/// A transaction id as both dialects return it: text (0 when absent or
/// unreadable, which only makes a reader start earlier).
pub(crate) fn parse_tx(text: &str) -> u64 {
    text.parse().unwrap_or(0)
}
