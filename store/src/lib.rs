//! Slipway's persistence and messaging edge: the append-only event store
//! (PostgreSQL for servers and build farms, SQLite as the embedded default),
//! the outbox relay that turns stored commands into queue messages, and the
//! queues themselves (RabbitMQ, in-process). Workers and the engine both
//! depend on this crate; it knows nothing of deployments' decisions.

mod dialect;
pub mod event_store;
pub use slipway_verify::{chain, checkpoint, merkle};
pub mod export;
pub mod operational;
pub mod outbox;
pub mod pg_login;
pub mod postgres;
pub mod queue;
pub mod read_model;
pub mod redact;
pub mod relay;
pub mod sealing;
pub mod settings;
pub mod sqlite;
pub mod subscription;
pub mod traffic;

pub use event_store::{Appended, Conflict, EventStore, ExpectedVersion, OutboxEntry, Position, RecordedEvent, StoreError, StreamAppend};
pub use operational::{Operational, WorkerBeat};
pub use outbox::Outbox;
pub use postgres::{PgStore, PlanCounts};
pub use sqlite::SqliteStore;
