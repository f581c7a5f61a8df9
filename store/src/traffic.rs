//! Requests and errors a router saw per environment, minute by minute, for
//! the dashboard's "environments at a glance" chart.
//!
//! Operational samples, not history: a router replaces its row for the
//! current minute as the minute goes on (so writing the same sample twice
//! changes nothing), and every write drops rows older than the retention.
//! They live in their own table beside the workers' heartbeats, never in
//! the append-only event log, which would otherwise gain a row per router
//! and environment every few seconds forever.

use serde::Serialize;

/// How long samples are kept: the dashboard shows the last hour.
pub const RETENTION_MINUTES: i64 = 120;

/// One router's counts for one environment during one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficSample {
    pub router: String,
    pub project: String,
    pub environment: String,
    /// Whole minutes since the Unix epoch (UTC) the counts belong to.
    pub minute: i64,
    pub requests: i64,
    /// 5xx answers and upstream errors (the router's 502s).
    pub errors: i64,
}

/// The statements, the same on both backends (SQLite numbers `$N`
/// parameters as PostgreSQL does).
pub(crate) const UPSERT: &str = "INSERT INTO traffic_samples (router, project, environment, minute, requests, errors) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (router, project, environment, minute) DO UPDATE SET requests = excluded.requests, errors = excluded.errors";
pub(crate) const PRUNE: &str = "DELETE FROM traffic_samples WHERE minute < $1";
pub(crate) const SINCE: &str = "SELECT router, project, environment, minute, requests, errors FROM traffic_samples \
     WHERE minute >= $1 ORDER BY minute, project, environment, router";

/// `UPSERT` with `s` bound, for either backend.
pub(crate) fn upsert<'q, DB: sqlx::Database>(s: &'q TrafficSample) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(UPSERT)
        .bind(s.router.as_str())
        .bind(s.project.as_str())
        .bind(s.environment.as_str())
        .bind(s.minute)
        .bind(s.requests)
        .bind(s.errors)
}

/// A row of `SINCE`.
pub(crate) type Row = (String, String, String, i64, i64, i64);

pub(crate) fn sample((router, project, environment, minute, requests, errors): Row) -> TrafficSample {
    TrafficSample { router, project, environment, minute, requests, errors }
}

/// The minute `unix_seconds` falls in.
pub fn minute_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_holds_sixty_seconds() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(59), 0);
        assert_eq!(minute_of(60), 1);
        assert_eq!(minute_of(-1), -1);
    }
}
