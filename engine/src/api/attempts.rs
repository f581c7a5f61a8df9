//! Failed authentication attempts, per client address: after
//! `MAX_FAILURES` refused tokens within `WINDOW`, a client's requests are
//! answered 429 without looking at their token until the window has
//! passed. Guessing tokens is hopeless anyway (256 random bits); this keeps
//! a client that tries from costing the API its store reads. Pure: the
//! guard passes the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered at most (the oldest windows are forgotten first).
const CLIENTS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Attempts {
    by_client: HashMap<IpAddr, (Instant, u32)>,
}

impl Attempts {
    /// Until when `client` is refused without a look at its token, if it is.
    pub fn blocked(&self, client: IpAddr, now: Instant) -> Option<Instant> {
        let (since, failures) = self.by_client.get(&client)?;
        let until = *since + WINDOW;
        (*failures >= MAX_FAILURES && now < until).then_some(until)
    }

    /// A refused token from `client`.
    pub fn failed(&mut self, client: IpAddr, now: Instant) {
        if self.by_client.len() >= CLIENTS {
            self.by_client.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
        }
        let entry = self.by_client.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_keeps_failing_is_held_off_for_the_window_and_others_are_not() {
        let (a, b): (IpAddr, IpAddr) = ("203.0.113.7".parse().unwrap(), "203.0.113.8".parse().unwrap());
        let t = Instant::now();
        let mut attempts = Attempts::default();
        for n in 0..MAX_FAILURES {
            assert_eq!(attempts.blocked(a, t), None, "after {n} failures");
            attempts.failed(a, t);
        }
        assert_eq!(attempts.blocked(a, t + Duration::from_secs(1)), Some(t + WINDOW));
        assert_eq!(attempts.blocked(b, t), None);
        // Once the window passed, the count starts again.
        assert_eq!(attempts.blocked(a, t + WINDOW), None);
        attempts.failed(a, t + WINDOW);
        assert_eq!(attempts.blocked(a, t + WINDOW), None);
    }
}
