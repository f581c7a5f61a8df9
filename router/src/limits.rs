//! Caps on open client connections: in all, and per client address. A
//! connection over either cap is closed as soon as it is accepted, before
//! anything is read from it, so a client opening connections in a loop (or
//! holding many open and idle) costs the router one accept each and cannot
//! take the file descriptors other clients need.
//!
//! A client is its IPv4 address, or its IPv6 /64 (one host is usually given
//! a whole /64, so counting single IPv6 addresses would cap nothing).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The open connections of one `serve`, counted against the caps. Shared by
/// every thread that serves; locked when a connection opens or closes,
/// never per request.
#[derive(Debug)]
pub struct ConnLimits {
    max: usize,
    per_client: usize,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Which cap a refused connection was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Global,
    PerClient,
}

impl Refused {
    /// The `reason` label of `slipway_router_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::PerClient => "per_ip",
        }
    }
}

/// An admitted connection's place under the caps, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnLimits>,
    client: IpAddr,
}

impl ConnLimits {
    /// At most `max` connections in all and `per_client` from one client
    /// (a cap of 0 is taken as 1).
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max: max.max(1),
            per_client: per_client.max(1),
            open: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `peer`, or which cap it is over.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refused> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Global);
        }
        let client = client_of(peer);
        let mut by_client = self.by_client.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_client.entry(client).or_insert(0);
        if *count >= self.per_client {
            drop(by_client);
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::PerClient);
        }
        *count += 1;
        Ok(Slot { limits: self.clone(), client })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_client = self.limits.by_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                by_client.remove(&self.client);
            }
        }
        drop(by_client);
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client a peer address counts as: an IPv4 address (also when mapped
/// into IPv6), or an IPv6 /64.
pub fn client_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_client_has_its_cap_and_slots_come_back() {
        let limits = ConnLimits::new(10, 2);
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.1")).err(), Some(Refused::PerClient));
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        drop(a1);
        let _a3 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.open(), 3, "the refused and dropped slots are not counted");
    }

    #[test]
    fn the_global_cap_holds_across_clients() {
        let limits = ConnLimits::new(2, 5);
        let _a = limits.admit(ip("10.0.0.1"));
        let _b = limits.admit(ip("10.0.0.2"));
        assert_eq!(limits.admit(ip("10.0.0.3")).err(), Some(Refused::Global));
        assert_eq!(limits.open(), 2);
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let limits = ConnLimits::new(10, 1);
        let _a = limits.admit(ip("2001:db8::1"));
        assert_eq!(limits.admit(ip("2001:db8::2")).err(), Some(Refused::PerClient));
        assert!(limits.admit(ip("2001:db8:0:1::2")).is_ok());
    }
}
