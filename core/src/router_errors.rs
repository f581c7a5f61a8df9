//! The routers' signal during the watch, pure: whether what the routers
//! counted of a new release's requests (`RouterErrorsObserved`, the newest
//! of each router) fails the release, and how that failure is worded.
//!
//! The rule: the errors (5xx answers and upstream errors) summed over the
//! routers that reported reach `ErrorRate::MIN_ERRORS` and are above
//! `[web] watch_max_error_rate` of the requests those routers sent to the
//! release. Routers report only once they counted an error, so the rate is
//! over the routers that saw trouble: a release that fails one router's
//! requests is judged by that router's traffic, not diluted by the others'.
//!
//! There is no baseline to subtract: a router counts per route version, so
//! the counts start at zero when it takes the cutover's version and hold the
//! new release's requests only (the old release's errors, and the requests
//! the standby answered, are not in them).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use slipway_proto::config::ErrorRate;
use slipway_proto::event::RouterErrorsObserved;

/// The routers' counts summed, once they fail the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub requests: u64,
    pub errors_5xx: u64,
    pub upstream_errors: u64,
    /// The routers whose counts are in the sums.
    pub routers: Vec<String>,
    /// The first error any of them counted.
    pub first_error_at: Option<DateTime<Utc>>,
    /// The newest of their counts.
    pub at: DateTime<Utc>,
    /// The limit they passed.
    pub limit: ErrorRate,
}

/// Whether the routers' counts fail the release; `None` while they do not
/// (or no router reported).
pub fn assess(observed: &BTreeMap<String, RouterErrorsObserved>, limit: ErrorRate) -> Option<Exceeded> {
    let latest = observed.values().map(|o| o.at).max()?;
    let sum = |f: fn(&RouterErrorsObserved) -> u64| observed.values().map(f).fold(0u64, u64::saturating_add);
    let (requests, errors_5xx, upstream_errors) = (sum(|o| o.requests), sum(|o| o.errors_5xx), sum(|o| o.upstream_errors));
    let errors = errors_5xx.saturating_add(upstream_errors);
    // A request the release refused and the standby answered is one
    // request and one error; never let errors outnumber requests.
    let requests = requests.max(errors);
    if errors < ErrorRate::MIN_ERRORS || !limit.exceeded_by(errors, requests) {
        return None;
    }
    Some(Exceeded {
        requests,
        errors_5xx,
        upstream_errors,
        routers: observed.keys().cloned().collect(),
        first_error_at: observed.values().filter_map(|o| o.first_error_at).min(),
        at: latest,
        limit,
    })
}

impl Exceeded {
    pub fn errors(&self) -> u64 {
        self.errors_5xx.saturating_add(self.upstream_errors)
    }

    /// The failure reason: the signal, the figures, the routers and when,
    /// counted from the traffic switch when it is known.
    pub fn reason(&self, switched_at: Option<DateTime<Utc>>) -> String {
        let percent = |n: u64| match self.requests {
            0 => "100".to_string(),
            total => format!("{:.0}", n as f64 * 100.0 / total as f64),
        };
        let clock = |at: DateTime<Utc>| at.format("%H:%M:%S%.3f UTC").to_string();
        let first = match (self.first_error_at, switched_at) {
            (Some(first), Some(switched)) => {
                let after = (first - switched).num_milliseconds().max(0);
                format!("; first error at {} ({}.{:03}s after the traffic switch)", clock(first), after / 1000, after % 1000)
            }
            (Some(first), None) => format!("; first error at {}", clock(first)),
            (None, _) => String::new(),
        };
        format!(
            "router errors: {} of {} requests to the release failed ({}%: {} answered 5xx, {} upstream errors), above web.watch_max_error_rate {}, on router{} {} by {}{first}",
            self.errors(),
            self.requests,
            percent(self.errors()),
            self.errors_5xx,
            self.upstream_errors,
            self.limit,
            if self.routers.len() == 1 { "" } else { "s" },
            self.routers.join(", "),
            clock(self.at),
        )
    }
}

/// One line per router: its own figures and times, for the failure's details.
pub fn details(observed: &BTreeMap<String, RouterErrorsObserved>) -> Vec<String> {
    let clock = |at: DateTime<Utc>| at.format("%H:%M:%S%.3f UTC").to_string();
    observed
        .values()
        .map(|o| {
            format!(
                "router {}: {} requests, {} answered 5xx, {} upstream errors, counted from {} to {}{}",
                o.router_id,
                o.requests,
                o.errors_5xx,
                o.upstream_errors,
                clock(o.since),
                clock(o.at),
                o.first_error_at.map(|f| format!(", first error at {}", clock(f))).unwrap_or_default(),
            )
        })
        .collect()
}
