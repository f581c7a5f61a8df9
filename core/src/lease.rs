//! Router liveness, pure. A router holds a lease from its registration
//! (`RouterStarted`, which names the lease) as long as it writes on its own
//! stream `router-<id>` — its acknowledgements, re-sent as a heartbeat when
//! it has written nothing else for a while (`heartbeat_every`). A
//! registered router silent past its lease is expired: the engine records
//! `RouterExpired` once per registration (a deterministic event id,
//! appended at the routers stream's version), and switches no longer wait
//! for it. Only a new `RouterStarted` registers it again: an acknowledgement
//! that arrives after the expiry does not.
//!
//! The time of an event is its envelope's timestamp, written by whoever
//! recorded it (the router): the router's and the engine's clocks are taken
//! to agree within a few seconds, well below a lease.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_proto::event::RouterExpired;
use slipway_proto::Event;
use uuid::Uuid;

use crate::routes::{registration, Registration};

/// The lease of a router that names none (registered before leases).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A router writes at least this many times per lease (every 10 s with the
/// default lease), so one late or lost write does not expire it.
const HEARTBEATS_PER_LEASE: u32 = 3;

/// Event ids of expirations: UUID v5 in this namespace.
const EXPIRATIONS: Uuid = Uuid::from_u128(0x5119_a7a6_1ea5_4e0b_9f6e_6578_7069_7265);

/// How often a router with this lease writes on its stream when it has
/// nothing else to write (its heartbeat).
pub fn heartbeat_every(lease: Duration) -> Duration {
    lease / HEARTBEATS_PER_LEASE
}

/// The id of the expiry of the registration recorded at `registered_at`
/// (its version in the routers stream): the same whichever engine records
/// it, and however often it is decided.
pub fn expiry_id(router_id: &str, registered_at: u64) -> Uuid {
    Uuid::new_v5(&EXPIRATIONS, format!("{router_id}@{registered_at}").as_bytes())
}

/// One registered router's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The version of its `RouterStarted` in the routers stream.
    pub registered_at: u64,
    pub lease: chrono::Duration,
    /// Its registration or its latest event on its own stream, whichever is later.
    pub last_seen: DateTime<Utc>,
}

impl Held {
    /// When its lease passes (never, in effect, for a lease past the end of time).
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.last_seen.checked_add_signed(self.lease).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// The leases of the registered routers, folded from the routers stream
/// and the times of the routers' own streams' events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    pub routers: BTreeMap<String, Held>,
}

impl Liveness {
    /// One event of the routers stream, at `version`, written at `at`.
    pub fn registry(&mut self, version: u64, at: DateTime<Utc>, event: &Event) {
        match registration(event) {
            Some(Registration::Started(r)) => {
                let lease = r.lease_ms.map_or(DEFAULT_LEASE, Duration::from_millis);
                let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
                self.routers.insert(r.router_id.clone(), Held { registered_at: version, lease, last_seen: at });
            }
            Some(Registration::Gone(id)) => {
                self.routers.remove(id);
            }
            None => {}
        }
    }

    /// An event on `router_id`'s own stream, written at `at`: it was alive
    /// then. Nothing for a router that is not registered (expired, stopped).
    pub fn heard(&mut self, router_id: &str, at: DateTime<Utc>) {
        if let Some(held) = self.routers.get_mut(router_id) {
            held.last_seen = held.last_seen.max(at);
        }
    }

    /// The routers whose lease has passed at `now`, as the events that
    /// expire them, each with its id (`expiry_id`).
    pub fn expired(&self, now: DateTime<Utc>) -> Vec<(Uuid, RouterExpired)> {
        self.routers
            .iter()
            .filter(|(_, held)| held.expires_at() <= now)
            .map(|(id, held)| {
                let expired = RouterExpired {
                    router_id: id.clone(),
                    last_seen: held.last_seen,
                    lease_ms: held.lease.num_milliseconds().max(0) as u64,
                };
                (expiry_id(id, held.registered_at), expired)
            })
            .collect()
    }

    /// When the next lease passes, if any router is registered.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.routers.values().map(Held::expires_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::{RouteAcknowledged, RouterStarted, RouterStopped};

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::Duration::seconds(seconds)
    }

    fn started(id: &str, lease_ms: Option<u64>) -> Event {
        Event::RouterStarted(RouterStarted { router_id: id.into(), listen: String::new(), domain: String::new(), lease_ms })
    }

    /// Given the routers stream (version, time, event) and the routers'
    /// own streams' events (router, time), in the order they were read.
    fn fold(registry: &[(u64, i64, Event)], heard: &[(&str, i64)]) -> Liveness {
        let mut liveness = Liveness::default();
        for (version, at, event) in registry {
            liveness.registry(*version, t(*at), event);
        }
        for (router, at) in heard {
            liveness.heard(router, t(*at));
        }
        liveness
    }

    #[test]
    fn a_router_silent_past_its_lease_is_expired_once_per_registration_and_a_heartbeat_keeps_it() {
        let liveness = fold(&[(1, 0, started("a", Some(2_000))), (2, 0, started("b", Some(30_000)))], &[("b", 25)]);
        assert!(liveness.expired(t(1)).is_empty(), "within a's lease");
        let expired = liveness.expired(t(2));
        assert_eq!(expired.len(), 1, "{expired:?}");
        let (id, event) = &expired[0];
        assert_eq!(event, &RouterExpired { router_id: "a".into(), last_seen: t(0), lease_ms: 2_000 });
        assert_eq!(*id, expiry_id("a", 1));
        assert_eq!(liveness.expired(t(40))[0].0, *id, "decided again later: the same event id");
        assert_eq!(liveness.next_expiry(), Some(t(2)));
        // b's heartbeat at 25 s holds it to 55 s.
        let at_54: Vec<String> = liveness.expired(t(54)).into_iter().map(|(_, e)| e.router_id).collect();
        assert_eq!(at_54, ["a"]);
        assert_eq!(liveness.expired(t(55)).len(), 2);
    }

    #[test]
    fn an_expired_or_stopped_router_is_no_longer_held_and_only_registering_again_brings_it_back() {
        let expired = Event::RouterExpired(RouterExpired { router_id: "a".into(), last_seen: t(0), lease_ms: 2_000 });
        let stopped = Event::RouterStopped(RouterStopped { router_id: "b".into() });
        let registry = [(1, 0, started("a", Some(2_000))), (2, 0, started("b", None)), (3, 3, expired), (4, 5, stopped)];
        // a's late acknowledgement (it was partitioned) does not bring it back.
        let liveness = fold(&registry, &[("a", 4)]);
        assert!(liveness.routers.is_empty(), "{liveness:?}");
        assert!(liveness.expired(t(100)).is_empty());
        assert_eq!(liveness.next_expiry(), None);
        let mut registry = registry.to_vec();
        registry.push((5, 10, started("a", Some(2_000))));
        let liveness = fold(&registry, &[("a", 11)]);
        assert_eq!(liveness.next_expiry(), Some(t(13)));
        let again = liveness.expired(t(13));
        assert_eq!(again[0].0, expiry_id("a", 5), "a new registration expires under a new id");
        assert_ne!(again[0].0, expiry_id("a", 1));
    }

    #[test]
    fn a_router_without_a_lease_gets_the_default_and_an_old_heartbeat_never_moves_the_lease_back() {
        let ack = Event::RouteAcknowledged(RouteAcknowledged { router_id: "old".into(), route_version: 1 });
        let mut liveness = fold(&[(1, 100, started("old", None)), (2, 100, ack)], &[("old", 90)]);
        assert_eq!(liveness.routers["old"].last_seen, t(100), "an event from before the registration");
        assert_eq!(liveness.next_expiry(), Some(t(130)), "the default lease, 30 s");
        liveness.heard("unknown", t(200));
        assert_eq!(liveness.routers.len(), 1);
        // A lease too long for the calendar (or for a duration) never passes.
        for lease_ms in [10_u64.pow(16), u64::MAX] {
            let liveness = fold(&[(1, 0, started("far", Some(lease_ms)))], &[]);
            assert!(liveness.expired(DateTime::<Utc>::MAX_UTC - chrono::Duration::days(1)).is_empty());
        }
    }

    #[test]
    fn a_router_writes_three_times_per_lease() {
        assert_eq!(heartbeat_every(DEFAULT_LEASE), Duration::from_secs(10));
        assert_eq!(heartbeat_every(Duration::from_secs(2)), Duration::from_millis(666) + Duration::from_nanos(666_666));
    }
}
