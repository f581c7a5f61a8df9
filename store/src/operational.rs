//! The operational tables: what the running installation keeps beside the
//! event log but is not history. Workers' heartbeats, setting values (sealed
//! at rest), routers' traffic samples, the installation's fingerprint key,
//! and where each consumer of the log has read up to (checkpoints). Rows are
//! replaced in place; none of it is hashed into a chain.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::dialect::{db, parse_tx, Dialect, Tables};
use crate::event_store::{Position, StoreError};
use crate::sealing::Keyring;
use crate::traffic::TrafficSample;

/// A worker process as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBeat {
    pub id: String,
    pub host: String,
    /// The steps it serves.
    pub steps: Vec<String>,
    /// What it is doing: one entry per command in progress.
    pub busy: Vec<String>,
    /// The ids of those commands (the engine's heartbeat timeout reads them).
    pub commands: Vec<uuid::Uuid>,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// It shut down cleanly.
    pub stopped: bool,
}

impl WorkerBeat {
    /// "stopped" (it shut down cleanly), "missing" (silent for longer than
    /// `missing_after`: killed, or cut off) or "alive", at `now`.
    pub fn state(&self, now: DateTime<Utc>, missing_after: chrono::Duration) -> &'static str {
        if self.stopped {
            "stopped"
        } else if now - self.last_seen > missing_after {
            "missing"
        } else {
            "alive"
        }
    }
}

/// A `workers` row as a `WorkerBeat` (both backends store the lists as JSON text).
type WorkerRow = (String, String, String, String, String, DateTime<Utc>, DateTime<Utc>, bool);

/// A `workers` row as a `WorkerBeat`.
fn worker_beat(row: WorkerRow) -> WorkerBeat {
    let (id, host, steps, busy, commands, started_at, last_seen, stopped) = row;
    WorkerBeat {
        id,
        host,
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        busy: serde_json::from_str(&busy).unwrap_or_default(),
        commands: serde_json::from_str(&commands).unwrap_or_default(),
        started_at,
        last_seen,
        stopped,
    }
}

/// The operational tables of one database (`EventStore::operational`).
#[async_trait]
pub trait Operational: Send + Sync {
    /// Records (replaces) a worker's heartbeat.
    async fn heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError>;

    /// Every worker's last heartbeat, most recent first.
    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError>;

    /// Forgets the workers last heard from before `silent_since` (stopped,
    /// or gone with their host), so a farm whose workers come and go does
    /// not list, and the engine read, every one it ever had; returns how
    /// many.
    async fn forget_workers(&self, silent_since: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Forgets one worker: one that lived inside a single CLI command and
    /// stopped cleanly with it has nothing left worth listing.
    async fn forget_worker(&self, id: &str) -> Result<(), StoreError>;

    /// Stores a setting's value under its fingerprint (sealed, if this store
    /// seals). Values live outside the event log (events carry only
    /// fingerprints); the table is content-addressed and insert-only, so
    /// storing the same fingerprint again changes nothing.
    async fn put_value(&self, fingerprint: &str, value: &str) -> Result<(), StoreError>;

    /// The values stored under `fingerprints` (opened), by fingerprint;
    /// those not stored are absent.
    async fn values(&self, fingerprints: &[String]) -> Result<HashMap<String, String>, StoreError>;

    /// Seals every stored value again with `to`'s current key (opening it
    /// with this store's keyring, or as stored in clear), in one
    /// transaction; returns how many. PostgreSQL needs the owner's login for
    /// it (the runtime role may not UPDATE values).
    async fn reseal_values(&self, to: &Keyring) -> Result<usize, StoreError>;

    /// Writes a router's per-minute traffic samples, each replacing the row
    /// of its router, environment and minute (idempotent), and drops every
    /// sample older than `prune_before` (a minute, see `traffic.rs`).
    async fn record_traffic(&self, samples: &[TrafficSample], prune_before: i64) -> Result<(), StoreError>;

    /// The samples of minute `since` and later.
    async fn traffic(&self, since: i64) -> Result<Vec<TrafficSample>, StoreError>;

    /// The installation's key for setting fingerprints, created on first use.
    async fn installation_key(&self) -> Result<Vec<u8>, StoreError>;

    /// Where `consumer` has read the log up to (the start if nowhere yet).
    async fn load_checkpoint(&self, consumer: &str) -> Result<Position, StoreError>;

    /// Records that `consumer` has read the log up to `position`.
    async fn save_checkpoint(&self, consumer: &str, position: Position) -> Result<(), StoreError>;
}

#[async_trait]
impl<DB: Dialect> Operational for Tables<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
{
    async fn heartbeat(&self, beat: &WorkerBeat) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, host, steps, busy, commands, started_at, last_seen, stopped) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET host = $2, steps = $3, busy = $4, commands = $5, started_at = $6, last_seen = $7, stopped = $8",
        )
        .bind(beat.id.as_str())
        .bind(beat.host.as_str())
        .bind(serde_json::to_string(&beat.steps).unwrap_or_default())
        .bind(serde_json::to_string(&beat.busy).unwrap_or_default())
        .bind(serde_json::to_string(&beat.commands).unwrap_or_default())
        .bind(beat.started_at)
        .bind(beat.last_seen)
        .bind(beat.stopped)
        .execute(&self.pool)
        .await
        .map_err(db::<DB>("recording a worker heartbeat"))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerBeat>, StoreError> {
        let rows: Vec<WorkerRow> =
            sqlx::query_as("SELECT id, host, steps, busy, commands, started_at, last_seen, stopped FROM workers ORDER BY last_seen DESC")
                .fetch_all(&self.pool)
                .await
                .map_err(db::<DB>("reading workers"))?;
        Ok(rows.into_iter().map(worker_beat).collect())
    }

    async fn forget_workers(&self, silent_since: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM workers WHERE last_seen < $1")
            .bind(silent_since)
            .execute(&self.pool)
            .await
            .map_err(db::<DB>("forgetting silent workers"))?;
        Ok(DB::rows_affected(&done))
    }

    async fn forget_worker(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = $1").bind(id).execute(&self.pool).await.map_err(db::<DB>("forgetting a worker"))?;
        Ok(())
    }

    async fn put_value(&self, fingerprint: &str, value: &str) -> Result<(), StoreError> {
        let stored = self.sealing.stored(fingerprint, value)?;
        sqlx::query("INSERT INTO setting_values (fingerprint, value) VALUES ($1, $2) ON CONFLICT (fingerprint) DO NOTHING")
            .bind(fingerprint)
            .bind(stored)
            .execute(&self.pool)
            .await
            .map_err(db::<DB>("storing a setting value"))?;
        Ok(())
    }

    async fn values(&self, fingerprints: &[String]) -> Result<HashMap<String, String>, StoreError> {
        // Each value is opened as its row arrives, while the rest are still
        // on their way: sealed values cost little more than clear ones.
        let mut rows = sqlx::query_as::<_, (String, String)>(DB::VALUES_IN).bind(DB::list(fingerprints)).fetch(&self.pool);
        let mut values = HashMap::with_capacity(fingerprints.len());
        while let Some((f, stored)) = futures::TryStreamExt::try_next(&mut rows).await.map_err(db::<DB>("reading setting values"))? {
            let value = self.sealing.opened(&f, &stored)?;
            values.insert(f, value);
        }
        Ok(values)
    }

    async fn reseal_values(&self, to: &Keyring) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db::<DB>("re-sealing setting values"))?;
        let rows: Vec<(String, String)> =
            sqlx::query_as(DB::LOCK_VALUES).fetch_all(&mut *tx).await.map_err(db::<DB>("reading setting values to re-seal"))?;
        for (fingerprint, stored) in &rows {
            let sealed = to.seal(fingerprint, &self.sealing.opened(fingerprint, stored)?);
            sqlx::query("UPDATE setting_values SET value = $2 WHERE fingerprint = $1")
                .bind(fingerprint.as_str())
                .bind(sealed)
                .execute(&mut *tx)
                .await
                .map_err(db::<DB>("re-sealing a setting value (run this with the database owner's login)"))?;
        }
        tx.commit().await.map_err(db::<DB>("re-sealing setting values"))?;
        Ok(rows.len())
    }

    async fn record_traffic(&self, samples: &[TrafficSample], prune_before: i64) -> Result<(), StoreError> {
        use crate::traffic::{upsert, PRUNE};
        let mut tx = self.pool.begin().await.map_err(db::<DB>("recording traffic samples"))?;
        for s in samples {
            upsert(s).execute(&mut *tx).await.map_err(db::<DB>("recording a traffic sample"))?;
        }
        sqlx::query(PRUNE).bind(prune_before).execute(&mut *tx).await.map_err(db::<DB>("pruning old traffic samples"))?;
        tx.commit().await.map_err(db::<DB>("recording traffic samples"))
    }

    async fn traffic(&self, since: i64) -> Result<Vec<TrafficSample>, StoreError> {
        use crate::traffic::{sample, Row, SINCE};
        let rows: Vec<Row> = sqlx::query_as(SINCE).bind(since).fetch_all(&self.pool).await.map_err(db::<DB>("reading traffic samples"))?;
        Ok(rows.into_iter().map(sample).collect())
    }

    async fn installation_key(&self) -> Result<Vec<u8>, StoreError> {
        sqlx::query("INSERT INTO installation (id, fingerprint_key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(crate::settings::new_key())
            .execute(&self.pool)
            .await
            .map_err(db::<DB>("creating the installation key"))?;
        let key: String = sqlx::query_scalar("SELECT fingerprint_key FROM installation WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db::<DB>("reading the installation key"))?;
        Ok(key.into_bytes())
    }

    async fn load_checkpoint(&self, consumer: &str) -> Result<Position, StoreError> {
        let row: Option<(String, i64)> = sqlx::query_as(DB::LOAD_CHECKPOINT)
            .bind(consumer)
            .fetch_optional(&self.pool)
            .await
            .map_err(db::<DB>(format!("loading checkpoint `{consumer}`")))?;
        Ok(row.map_or(Position::START, |(tx, seq)| Position { tx: parse_tx(&tx), seq }))
    }

    async fn save_checkpoint(&self, consumer: &str, position: Position) -> Result<(), StoreError> {
        sqlx::query(DB::SAVE_CHECKPOINT)
            .bind(consumer)
            .bind(position.tx.to_string())
            .bind(position.seq)
            .execute(&self.pool)
            .await
            .map_err(db::<DB>(format!("saving checkpoint `{consumer}`")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_alive_until_silent_too_long_and_stopped_when_it_said_so() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let beat = |ago: i64, stopped| WorkerBeat {
            id: "w".into(),
            host: "h".into(),
            steps: vec![],
            busy: vec![],
            commands: vec![],
            started_at: now,
            last_seen: now - chrono::Duration::seconds(ago),
            stopped,
        };
        let limit = chrono::Duration::seconds(15);
        assert_eq!(beat(15, false).state(now, limit), "alive");
        assert_eq!(beat(16, false).state(now, limit), "missing");
        assert_eq!(beat(600, true).state(now, limit), "stopped");
    }
}
