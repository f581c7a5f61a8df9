//! Per-environment request and error counts over time, for the dashboard's
//! traffic chart: every `SAMPLE_EVERY` the router reads each environment's
//! route counters (`slipway_router::stats`), adds what they grew by since
//! the last look to the current minute, and writes that minute's figures
//! to the store's `traffic_samples` table (`slipway_store::traffic`).
//!
//! Samples are operational data, not events: a row per router, environment
//! and minute, replaced while the minute lasts (a write repeated after a
//! failure changes nothing) and pruned after two hours. The sampler itself
//! is pure (counts and a clock in, rows out), so it is tested without a
//! router or a store.

use std::collections::BTreeMap;
use std::time::Duration;

use slipway_router::stats::Counts;
use slipway_store::traffic::{minute_of, TrafficSample, RETENTION_MINUTES};

/// How often the counters are sampled and the current minute written.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Where one environment's counters stood at the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The counters' identity: a new route version counts from zero.
    route_version: u64,
    since_ms: u64,
    requests: u64,
    errors: u64,
}

/// The minutes not yet written for good, and the last look at each
/// environment's counters.
#[derive(Debug, Default)]
pub struct Sampler {
    seen: BTreeMap<(String, String), Seen>,
    /// (project, environment, minute) -> (requests, errors).
    minutes: BTreeMap<(String, String, i64), (i64, i64)>,
}

impl Sampler {
    /// Adds what `counts` (the counters of `project`'s `environment` under
    /// `route_version`) grew by since the last look to the minute of
    /// `now_s` (Unix seconds). Counters seen for the first time, or reset
    /// by a new route version, count from zero.
    pub fn observe(&mut self, project: &str, environment: &str, route_version: u64, counts: &Counts, now_s: i64) {
        let now = Seen { route_version, since_ms: counts.since_ms, requests: counts.requests, errors: counts.errors() };
        let key = (project.to_string(), environment.to_string());
        let (requests, errors) = match self.seen.insert(key, now) {
            Some(before) if before.route_version == now.route_version && before.since_ms == now.since_ms => {
                (now.requests.saturating_sub(before.requests), now.errors.saturating_sub(before.errors))
            }
            _ => (now.requests, now.errors),
        };
        let minute = self.minutes.entry((project.to_string(), environment.to_string(), minute_of(now_s))).or_default();
        minute.0 = minute.0.saturating_add(i64::try_from(requests).unwrap_or(i64::MAX));
        minute.1 = minute.1.saturating_add(i64::try_from(errors).unwrap_or(i64::MAX));
    }

    /// Every minute held, as `router`'s rows to write (each replaces its
    /// row: the figures are the whole minute's so far).
    pub fn samples(&self, router: &str) -> Vec<TrafficSample> {
        self.minutes
            .iter()
            .map(|((project, environment, minute), (requests, errors))| TrafficSample {
                router: router.to_string(),
                project: project.clone(),
                environment: environment.clone(),
                minute: *minute,
                requests: *requests,
                errors: *errors,
            })
            .collect()
    }

    /// The samples were written: minutes before the one of `now_s` are
    /// complete and written for good, so they are let go; the current one
    /// keeps growing. Environments no longer routed are forgotten.
    pub fn written(&mut self, now_s: i64, routed: impl Fn(&str, &str) -> bool) {
        let current = minute_of(now_s);
        self.minutes.retain(|(_, _, minute), _| *minute >= current);
        self.seen.retain(|(project, environment), _| routed(project, environment));
    }

    /// The oldest minute the store should keep at `now_s`.
    pub fn prune_before(now_s: i64) -> i64 {
        minute_of(now_s) - RETENTION_MINUTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(since_ms: u64, requests: u64, errors_5xx: u64, upstream_errors: u64) -> Counts {
        Counts { since_ms, requests, errors_5xx, upstream_errors, first_error_ms: None }
    }

    fn rows(s: &Sampler) -> Vec<(String, i64, i64, i64)> {
        s.samples("r1").into_iter().map(|r| (r.environment, r.minute, r.requests, r.errors)).collect()
    }

    #[test]
    fn growth_is_added_to_the_current_minute() {
        let mut s = Sampler::default();
        s.observe("p", "live", 3, &counts(1, 10, 1, 0), 600);
        s.observe("p", "live", 3, &counts(1, 25, 1, 2), 630);
        assert_eq!(rows(&s), [("live".to_string(), 10, 25, 3)]);
        // The next minute gets only what came after.
        s.observe("p", "live", 3, &counts(1, 30, 1, 2), 660);
        assert_eq!(rows(&s), [("live".to_string(), 10, 25, 3), ("live".to_string(), 11, 5, 0)]);
        assert!(s.samples("r1").iter().all(|r| r.router == "r1" && r.project == "p"));
    }

    #[test]
    fn a_new_route_version_counts_from_zero() {
        let mut s = Sampler::default();
        s.observe("p", "live", 3, &counts(1, 100, 0, 0), 600);
        s.observe("p", "live", 4, &counts(2, 7, 1, 0), 610);
        assert_eq!(rows(&s), [("live".to_string(), 10, 107, 1)]);
    }

    #[test]
    fn written_minutes_are_let_go_and_the_current_one_kept() {
        let mut s = Sampler::default();
        s.observe("p", "live", 1, &counts(1, 10, 0, 0), 590);
        s.observe("p", "live", 1, &counts(1, 12, 0, 0), 600);
        s.observe("p", "test", 1, &counts(1, 1, 0, 0), 600);
        s.written(610, |_, env| env == "live");
        assert_eq!(rows(&s), [("live".to_string(), 10, 2, 0), ("test".to_string(), 10, 1, 0)]);
        // `test` is no longer routed: its counters are forgotten, so they
        // would count from zero if it came back.
        s.written(670, |_, _| true);
        assert!(rows(&s).is_empty());
        s.observe("p", "test", 1, &counts(1, 4, 0, 0), 680);
        assert_eq!(rows(&s), [("test".to_string(), 11, 4, 0)]);
    }

    #[test]
    fn two_hours_are_kept() {
        assert_eq!(Sampler::prune_before(7200 * 10), 1200 - 120);
    }
}
