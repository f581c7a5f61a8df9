//! Where the driver gets the time from. Every decision the decider makes is
//! pure and takes `now` as an argument; the driver is the one place that
//! asks the clock, and it asks this trait, so that a test can hold time
//! still or move it forward (a step's deadline passed, a router's lease
//! ended) without waiting for it, and see the same decisions a real clock
//! would have led to.

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// The time, and waiting for a time.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once `now()` is at or past `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()>;
}

/// The system's clock: what every installation runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Slept in steps of at most a minute: a system clock set forward
            // meanwhile is noticed without a long oversleep.
            loop {
                let left = (at - Utc::now()).to_std().unwrap_or_default();
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(std::time::Duration::from_secs(60))).await;
            }
        })
    }
}

/// A clock that stands still until it is moved: for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock { now: watch::Sender::new(start) }
    }

    /// Moves the clock forward by `by`, waking whoever waits for a time
    /// that has now come.
    pub fn advance(&self, by: chrono::Duration) {
        self.now.send_modify(|now| *now += by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'_, ()> {
        let mut moved = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as `self`, so this ends only when the
            // time has come.
            let _ = moved.wait_for(|now| *now >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_a_sleeper_only_when_moved_past_its_time() {
        let start = Utc::now();
        let clock = std::sync::Arc::new(ManualClock::new(start));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(start + chrono::Duration::minutes(10)).await })
        };
        clock.advance(chrono::Duration::minutes(5));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!sleeper.is_finished(), "woke before its time");
        clock.advance(chrono::Duration::minutes(5));
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper).await.expect("woke once moved").expect("no panic");
        assert_eq!(clock.now(), start + chrono::Duration::minutes(10));
    }
}
