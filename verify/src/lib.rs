//! What an auditor needs to check the event log without a database: the
//! per-stream hash chains (`chain`), the Merkle frontier and signed
//! checkpoints over the log's global order (`merkle`, `checkpoint`), and the
//! `slipway-export/1` file format with its offline verification (`export`).
//!
//! It depends on nothing that talks to a database, so `slipway audit
//! verify-export` and anyone else checking a file need only this crate; the
//! store re-exports these modules under their old paths and adds what reads
//! a backend.

pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod merkle;

/// A place in the log's global order. Subscribers order events by `(tx,
/// seq)`: on PostgreSQL `tx` is the writing transaction's id, so a
/// transaction that commits late still sorts after everything a reader has
/// already passed; on SQLite (one writer at a time) `tx` is 0 and `seq`
/// alone is commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub tx: u64,
    pub seq: i64,
}

impl Position {
    pub const START: Position = Position { tx: 0, seq: 0 };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.tx, self.seq)
    }
}
