//! What a router tells the engine about a release being watched, and when:
//! pure, so the rate limit is tested without a store.
//!
//! Why events, and why these: the engine decides from events (a decision
//! replayed from the log must come out the same), and routers already speak
//! to it through the store (`RouteAcknowledged`). A request must not cost an
//! event, so the proxy only adds to atomics (`slipway_router::stats`) and
//! this module turns them into a `RouterErrorsObserved` on the deployment's
//! stream (which the driver already follows, so the decider sees it at once)
//! only:
//! - for a route being watched: one with a standby, which the engine sets
//!   at a watched cutover and lets go at the end of the watch or at the
//!   rollback — so nothing is written outside a watch;
//! - once errors were counted, and only when their number grew since this
//!   router's last report of the route;
//! - at most once per `EVERY` per route (the first report goes out at once).
//!
//! A watch of a healthy release thus writes nothing; a failing one a few
//! records per router before the rollback moves the route and stops them.
//! The figures are cumulative for the route version, so a lost append is
//! made good by the next one. An operational table polled by the driver
//! (like worker heartbeats) was the alternative: it would keep the log
//! smaller still, but the rollback's evidence would then rest on rows that
//! are replaced in place, and the driver would have to poll it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use slipway_proto::event::RouterErrorsObserved;
use slipway_router::Counts;
use uuid::Uuid;

/// The shortest time between two reports of one route by one router.
pub const EVERY: chrono::Duration = chrono::Duration::seconds(1);

/// A route being watched, with what the router counted under its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub deployment: Uuid,
    pub route_version: u64,
    pub counts: Counts,
}

/// The router's last report of each watched route.
#[derive(Debug, Default)]
pub struct Reporter {
    sent: HashMap<(Uuid, u64), Sent>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    at: DateTime<Utc>,
    errors: u64,
}

impl Reporter {
    /// The reports due at `now` for the routes watched now, each with the
    /// deployment whose stream it goes to. Routes no longer watched are
    /// forgotten.
    pub fn due(&mut self, router_id: &str, now: DateTime<Utc>, watched: &[Watched]) -> Vec<(Uuid, RouterErrorsObserved)> {
        self.sent.retain(|key, _| watched.iter().any(|w| (w.deployment, w.route_version) == *key));
        let mut out = vec![];
        for w in watched {
            let errors = w.counts.errors();
            let key = (w.deployment, w.route_version);
            let due = match self.sent.get(&key) {
                _ if errors == 0 => false,
                None => true,
                Some(last) => errors > last.errors && now - last.at >= EVERY,
            };
            if !due {
                continue;
            }
            self.sent.insert(key, Sent { at: now, errors });
            let at_ms = |ms: u64| DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(now);
            out.push((
                w.deployment,
                RouterErrorsObserved {
                    router_id: router_id.to_string(),
                    route_version: w.route_version,
                    requests: w.counts.requests,
                    errors_5xx: w.counts.errors_5xx,
                    upstream_errors: w.counts.upstream_errors,
                    since: at_ms(w.counts.since_ms),
                    first_error_at: w.counts.first_error_ms.map(at_ms),
                    at: now,
                },
            ));
        }
        out
    }

    /// A report that could not be recorded: send it again at the next look.
    pub fn unsent(&mut self, deployment: Uuid, route_version: u64) {
        self.sent.remove(&(deployment, route_version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap_or_default()
    }

    fn watched(requests: u64, errors_5xx: u64, upstream_errors: u64) -> Watched {
        let counts = Counts { since_ms: 1_800_000_000_000, requests, errors_5xx, upstream_errors, first_error_ms: Some(1_800_000_000_100) };
        Watched { deployment: Uuid::from_u128(7), route_version: 5, counts }
    }

    fn figures(due: &[(Uuid, RouterErrorsObserved)]) -> Vec<(u64, u64, u64)> {
        due.iter().map(|(_, o)| (o.requests, o.errors_5xx, o.upstream_errors)).collect()
    }

    #[test]
    fn nothing_is_reported_without_errors() {
        let mut r = Reporter::default();
        assert!(r.due("r1", t(0), &[watched(1000, 0, 0)]).is_empty());
        assert!(r.due("r1", t(5000), &[watched(2000, 0, 0)]).is_empty());
    }

    #[test]
    fn the_first_errors_go_out_at_once_then_at_most_once_a_second_while_they_grow() {
        let mut r = Reporter::default();
        let first = r.due("r1", t(0), &[watched(10, 1, 0)]);
        assert_eq!(figures(&first), [(10, 1, 0)]);
        let (deployment, o) = &first[0];
        assert_eq!((*deployment, o.router_id.as_str(), o.route_version), (Uuid::from_u128(7), "r1", 5));
        assert_eq!((o.since, o.first_error_at, o.at), (t(0), Some(t(100)), t(0)));
        assert!(r.due("r1", t(500), &[watched(20, 5, 1)]).is_empty(), "within a second of the last");
        assert_eq!(figures(&r.due("r1", t(1000), &[watched(30, 9, 1)])), [(30, 9, 1)]);
        assert!(r.due("r1", t(5000), &[watched(90, 9, 1)]).is_empty(), "no new errors, nothing new to say");
    }

    #[test]
    fn a_route_no_longer_watched_is_forgotten_and_a_failed_append_is_retried() {
        let mut r = Reporter::default();
        assert_eq!(r.due("r1", t(0), &[watched(10, 5, 0)]).len(), 1);
        assert!(r.due("r1", t(100), &[]).is_empty());
        assert_eq!(r.due("r1", t(200), &[watched(10, 5, 0)]).len(), 1, "watched again: a new start");
        r.unsent(Uuid::from_u128(7), 5);
        assert_eq!(r.due("r1", t(300), &[watched(10, 5, 0)]).len(), 1);
    }
}
