//! What one route's upstreams answered: requests, 5xx answers and upstream
//! errors, counted with relaxed atomics in the route's entry so that a
//! request pays two uncontended-in-practice additions and nothing else (no
//! lock, no allocation, no clock unless it failed).
//!
//! A route's counts belong to its route version: a new version (a cutover,
//! a rollback) gets fresh counts, while a table rebuilt for another host's
//! change carries the same `Arc` over (`node::routing` does that). So the
//! counts of a release being watched start at zero when the router takes
//! its route and are never mixed with the previous release's. Only the
//! route's own upstreams' answers count, and the failures the client gets
//! (the router's 502s); a request the standby rescued is neither an answer
//! nor an error of the release (the client saw none; a release that dies
//! is the watch's Docker signal, which says why).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A route's counters. Cheap to share: clone the [`Stats`] handle.
#[derive(Debug)]
pub struct RouteStats {
    /// Milliseconds since the Unix epoch when counting began.
    since_ms: u64,
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    upstream_errors: AtomicU64,
    /// Milliseconds since the Unix epoch of the first error; 0 before it.
    first_error_ms: AtomicU64,
}

/// The counters read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Milliseconds since the Unix epoch when counting began (the router
    /// took this route version).
    pub since_ms: u64,
    pub requests: u64,
    pub errors_5xx: u64,
    pub upstream_errors: u64,
    /// Milliseconds since the Unix epoch of the first error counted.
    pub first_error_ms: Option<u64>,
}

impl Counts {
    pub fn errors(&self) -> u64 {
        self.errors_5xx.saturating_add(self.upstream_errors)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis().max(1) as u64)
}

impl Default for RouteStats {
    /// Counters at zero, counting from now.
    fn default() -> Self {
        RouteStats {
            since_ms: now_ms(),
            requests: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            first_error_ms: AtomicU64::new(0),
        }
    }
}

impl RouteStats {
    /// A request was sent to one of the route's upstreams.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream answered with `status`; 500 and above count as errors.
    pub fn answered(&self, status: u16) {
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
            self.first_error();
        }
    }

    /// The request failed with a 502: its upstream refused, reset or
    /// dropped it (and no standby answered it instead).
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error();
    }

    fn first_error(&self) {
        if self.first_error_ms.load(Ordering::Relaxed) == 0 {
            let _ = self.first_error_ms.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> Counts {
        let first = self.first_error_ms.load(Ordering::Relaxed);
        Counts {
            since_ms: self.since_ms,
            requests: self.requests.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
            first_error_ms: (first != 0).then_some(first),
        }
    }
}

/// A shared handle on a route's counters. Two handles are equal when they
/// count into the same counters (a route compares by what it routes and
/// where it counts, not by the figures of the moment).
#[derive(Debug, Clone, Default)]
pub struct Stats(pub Arc<RouteStats>);

impl PartialEq for Stats {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Stats {}

impl std::ops::Deref for Stats {
    type Target = RouteStats;
    fn deref(&self) -> &RouteStats {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_5xx_and_upstream_errors_count_as_errors_and_the_first_is_timed() {
        let s = Stats::default();
        s.request();
        s.answered(200);
        s.answered(404);
        let since_ms = s.counts().since_ms;
        assert!(since_ms > 0);
        assert_eq!(s.counts(), Counts { since_ms, requests: 1, errors_5xx: 0, upstream_errors: 0, first_error_ms: None });
        s.request();
        s.answered(500);
        let first = s.counts().first_error_ms.expect("timed");
        s.request();
        s.upstream_error();
        let c = s.counts();
        assert_eq!((c.requests, c.errors_5xx, c.upstream_errors, c.errors()), (3, 1, 1, 2));
        assert_eq!(c.first_error_ms, Some(first), "the first error's time stays");
    }

    #[test]
    fn handles_are_equal_when_they_share_counters() {
        let a = Stats::default();
        assert_eq!(a, a.clone());
        assert_ne!(a, Stats::default());
    }
}
