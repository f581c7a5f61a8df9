//! Passive health of upstreams: an upstream that refused a connection (or
//! had not accepted one after `eject_after`, or closed it at once) is
//! ejected — the requests that would go to it go to the route's other
//! upstreams — for a while that doubles with each failure in a row (1 s,
//! 2 s, 4 s, up to 10 s). Past that, it gets requests again; the first
//! that connects lets it back for good, the next failure ejects it for
//! longer. Trying it with a live request costs nothing: a connect failure
//! is retried on another upstream before anything was sent (`proxy/forward.rs`).
//!
//! A request waiting on an upstream's answer past `eject_after` has the
//! router try a new connection there (`may_probe`: one per `eject_after`
//! per upstream): a lost host refuses it or leaves it unanswered, which
//! ejects it even when every request to it went on connections already
//! open (a client that keeps its connection), so none connected anew.
//!
//! Connections opened to an upstream before it was ejected are not used
//! again after (`ejected_since`): a host that lost power leaves them open
//! and silent, and a request sent on one would wait with nothing to eject
//! the upstream again, where a new connection is refused or times out.
//!
//! One failure is enough (nginx's `max_fails=1`): with several replicas a
//! refused connection almost always means a replica gone (a lost host, a
//! retired task), and every request sent there meanwhile costs a connect
//! attempt. A router's threads share its ejections (a thread that has
//! requests waiting on a lost host must learn it was ejected, whichever
//! thread found out); a request reads one shared flag, and takes the lock
//! only while something is ejected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The first ejection's length, doubled per failure in a row.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest ejection.
pub const MAX: Duration = Duration::from_secs(10);

/// How long an upstream stays out after `failures` failures in a row (pure).
pub fn ejected_for(failures: u32) -> Duration {
    let doubled = FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(8));
    doubled.min(MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ejected {
    failures: u32,
    until: Instant,
}

#[derive(Debug, Default)]
pub struct Ejections {
    out: Mutex<HashMap<SocketAddr, Ejected>>,
    /// Whether anything is ejected: the common case reads this alone.
    any: AtomicBool,
    /// Told each time an upstream goes out (`until_out`).
    went_out: tokio::sync::Notify,
    /// Counts the times an upstream went out, so that a connection can
    /// tell whether its upstream went out since it was opened.
    epoch: AtomicU64,
    /// The `epoch` of each upstream's last time out (kept once it is back).
    last_out: Mutex<HashMap<SocketAddr, u64>>,
    /// When each upstream was last probed (`may_probe`).
    probed: Mutex<HashMap<SocketAddr, Instant>>,
}

/// How many upstreams' last ejections are remembered: past it the record
/// starts afresh, and a connection opened before a forgotten ejection may
/// be used again (as without the record). Probe times past it are pruned
/// to the recent ones.
const REMEMBERED: usize = 4096;

impl Ejections {
    /// Whether `addr` is ejected at `now`.
    pub fn is_out(&self, addr: SocketAddr, now: Instant) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        self.out.lock().unwrap_or_else(PoisonError::into_inner).get(&addr).is_some_and(|e| e.until > now)
    }

    /// Whether anything is ejected (cheap).
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// `addr` failed a connection at `now`: out, for longer than last time.
    pub fn failed(&self, addr: SocketAddr, now: Instant) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let (failures, was_out) = out.get(&addr).map_or((0, false), |e| (e.failures, e.until > now));
        let failures = failures + 1;
        out.insert(addr, Ejected { failures, until: now + ejected_for(failures) });
        self.any.store(true, Ordering::Relaxed);
        drop(out);
        if !was_out {
            let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last_out = self.last_out.lock().unwrap_or_else(PoisonError::into_inner);
            if last_out.len() >= REMEMBERED {
                last_out.clear();
            }
            last_out.insert(addr, epoch);
            drop(last_out);
            slipway_telemetry::metrics::global().router_upstream_ejected();
            self.went_out.notify_waiters();
        }
    }

    /// Whether a request waiting on `addr` may probe it now (try a new
    /// connection there): one probe per `every` per upstream, whichever
    /// request and thread asks, so slow answers cost few connections.
    pub fn may_probe(&self, addr: SocketAddr, now: Instant, every: Duration) -> bool {
        let mut probed = self.probed.lock().unwrap_or_else(PoisonError::into_inner);
        if probed.get(&addr).is_some_and(|&at| now.saturating_duration_since(at) < every) {
            return false;
        }
        if probed.len() >= REMEMBERED {
            probed.retain(|_, at| now.saturating_duration_since(*at) < every);
        }
        probed.insert(addr, now);
        true
    }

    /// The count of ejections so far: what a connection opened now is
    /// stamped with.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Whether `addr` went out after a connection stamped `opened` was
    /// opened to it. Without an ejection since, one atomic read.
    pub fn ejected_since(&self, addr: SocketAddr, opened: u64) -> bool {
        if self.epoch.load(Ordering::Relaxed) == opened {
            return false;
        }
        self.last_out.lock().unwrap_or_else(PoisonError::into_inner).get(&addr).is_some_and(|&out| out > opened)
    }

    /// Resolves once `addr` is out: a request waiting on an answer from it
    /// learns that another found it unreachable (its host lost, say).
    pub async fn until_out(&self, addr: SocketAddr) {
        loop {
            let went_out = self.went_out.notified();
            tokio::pin!(went_out);
            // Registered before looking, so an ejection in between is not missed.
            went_out.as_mut().enable();
            if self.is_out(addr, Instant::now()) {
                return;
            }
            went_out.await;
        }
    }

    /// `addr` accepted a connection: back in.
    pub fn connected(&self, addr: SocketAddr) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if out.remove(&addr).is_some() {
            self.any.store(!out.is_empty(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_double_up_to_a_cap() {
        let secs: Vec<u64> = (1..=6).map(|n| ejected_for(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(ejected_for(u32::MAX), MAX);
    }

    #[test]
    fn an_upstream_is_out_after_a_failure_and_back_once_it_connects() {
        let e = Ejections::default();
        let (a, now) = (SocketAddr::from(([10, 0, 0, 2], 80)), Instant::now());
        assert!(!e.is_out(a, now));
        e.failed(a, now);
        assert!(e.is_out(a, now) && e.any());
        // Past its time it gets requests again (a trial)...
        assert!(!e.is_out(a, now + FIRST));
        // ...a second failure in a row keeps it out longer...
        e.failed(a, now + FIRST);
        assert!(e.is_out(a, now + FIRST * 2));
        // ...and one connection lets it back.
        e.connected(a);
        assert!(!e.is_out(a, now + FIRST) && !e.any());
    }

    #[test]
    fn connections_opened_before_an_ejection_are_known_by_their_stamp() {
        let e = Ejections::default();
        let (a, b, now) = (SocketAddr::from(([10, 0, 0, 2], 80)), SocketAddr::from(([10, 0, 0, 3], 80)), Instant::now());
        let before = e.epoch();
        assert!(!e.ejected_since(a, before));
        e.failed(a, now);
        assert!(e.ejected_since(a, before) && !e.ejected_since(b, before), "only the ejected upstream's connections");
        // Still out, failing again: not a new ejection.
        e.failed(a, now);
        let after = e.epoch();
        assert!(!e.ejected_since(a, after));
        // Back in, its old connections stay suspect, its new ones do not.
        e.connected(a);
        assert!(e.ejected_since(a, before) && !e.ejected_since(a, after));
    }

    #[tokio::test]
    async fn a_wait_for_an_upstream_to_go_out_ends_when_it_does_and_not_for_another() {
        let e = std::sync::Arc::new(Ejections::default());
        let (a, b) = (SocketAddr::from(([10, 0, 0, 2], 80)), SocketAddr::from(([10, 0, 0, 3], 80)));
        let waiting = tokio::spawn({
            let e = e.clone();
            async move { e.until_out(a).await }
        });
        tokio::task::yield_now().await;
        e.failed(b, Instant::now());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "another upstream going out does not end the wait");
        e.failed(a, Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        // Already out: at once.
        tokio::time::timeout(Duration::from_secs(5), e.until_out(a)).await.unwrap();
    }
}
