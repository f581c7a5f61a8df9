//! What the driver has seen. Deciding needs a deployment's state, its
//! environment's state, before a build its project's (for an image to
//! re-use) and, at the cutover, the traffic view. Reading and
//! folding those streams again for every event was most of the engine's
//! work (36 stream reads per deployment in the farm bench). The driver
//! keeps them here instead, moved forward by the events its subscription
//! delivers and by its own appends. It reads a stream only when it has not
//! seen it from its start, or when an append found it stale (a conflict).
//!
//! Pure bookkeeping, no I/O. An entry takes only the next version of its
//! stream: an event further on means one was missed, so the entry is
//! dropped and read again when needed; an event already applied (the
//! driver's own, delivered later) is skipped. Deciding from a stale entry
//! is safe: every decision is appended at the version it was decided on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use slipway_proto::{Envelope, Event, StreamId};

use crate::deployment::{evolve, Deployment};
use crate::environment::Environment;
use crate::lease::Liveness;
use crate::routes::{registration, Registration, Traffic};

/// Deployments kept before finished ones are let go (they are read again
/// if anything still happens to them).
const DEPLOYMENTS_KEPT: usize = 4096;

/// A deployment as last seen, with the event that was last: the cause of
/// whatever is decided next.
#[derive(Debug, Clone)]
pub struct SeenDeployment {
    pub state: Deployment,
    pub last: Envelope,
}

/// The traffic view and the stream versions it was folded up to.
#[derive(Debug, Clone, Default)]
pub struct SeenTraffic {
    pub traffic: Traffic,
    /// The `routers` stream's version.
    pub registry: u64,
    /// Each router's own stream's version (absent: 0).
    pub acknowledgements: BTreeMap<String, u64>,
    /// The registered routers' leases (who to expire, and when).
    pub liveness: Liveness,
}

#[derive(Debug, Default)]
pub struct Seen {
    deployments: HashMap<String, SeenDeployment>,
    environments: HashMap<String, Environment>,
    /// Project streams' events (few, and folded when asked) and versions.
    projects: HashMap<String, (u64, Vec<Event>)>,
    traffic: Option<SeenTraffic>,
}

impl Seen {
    pub fn deployment(&self, stream: &str) -> Option<SeenDeployment> {
        self.deployments.get(stream).cloned()
    }

    pub fn environment(&self, stream: &str) -> Option<Environment> {
        self.environments.get(stream).cloned()
    }

    pub fn project(&self, stream: &str) -> Option<Vec<Event>> {
        self.projects.get(stream).map(|(_, events)| events.clone())
    }

    /// A project stream read from the store (at `version`), unless newer is kept.
    pub fn put_project(&mut self, stream: &str, version: u64, events: Vec<Event>) {
        match self.projects.get(stream) {
            Some((kept, _)) if *kept >= version => {}
            _ => {
                self.projects.insert(stream.to_owned(), (version, events));
            }
        }
    }

    pub fn traffic(&self) -> Option<Traffic> {
        self.traffic.as_ref().map(|t| t.traffic.clone())
    }

    /// The traffic view with the stream versions and leases it was folded from.
    pub fn traffic_seen(&self) -> Option<SeenTraffic> {
        self.traffic.clone()
    }

    /// A deployment read from the store, unless a newer state is kept.
    pub fn put_deployment(&mut self, stream: &str, seen: SeenDeployment) {
        match self.deployments.get(stream) {
            Some(kept) if kept.state.version >= seen.state.version => {}
            _ => {
                self.deployments.insert(stream.to_owned(), seen);
            }
        }
    }

    /// An environment read from the store, unless a newer state is kept.
    pub fn put_environment(&mut self, stream: &str, env: Environment) {
        match self.environments.get(stream) {
            Some(kept) if kept.version >= env.version => {}
            _ => {
                self.environments.insert(stream.to_owned(), env);
            }
        }
    }

    pub fn put_traffic(&mut self, traffic: SeenTraffic) {
        self.traffic = Some(traffic);
    }

    /// Drops what is kept of `stream` (an append found it stale).
    pub fn forget(&mut self, stream: &str) {
        self.deployments.remove(stream);
        self.environments.remove(stream);
        self.projects.remove(stream);
        if matches!(StreamId::parse(stream), StreamId::Routes | StreamId::Routers | StreamId::Router(_)) {
            self.traffic = None;
        }
    }

    /// One event at `version` of `stream`, delivered or appended by the
    /// driver itself. It is decoded only if it is the one an entry takes
    /// next (the driver's own events, delivered again by the subscription,
    /// are skipped undecoded); one that cannot be decoded drops the stream,
    /// and reading it again reports why.
    pub fn observe(&mut self, stream: &str, version: u64, envelope: &Envelope) {
        let decode = || envelope.decode::<Event>().ok();
        let id = StreamId::parse(stream);
        if let StreamId::Deployment(_) = id {
            let kept = self.deployments.remove(stream);
            let next = kept.as_ref().map_or(1, |k| k.state.version + 1);
            if version < next {
                self.deployments.extend(kept.map(|k| (stream.to_owned(), k)));
                return;
            }
            let event = if version == next { decode() } else { None };
            let state = event.and_then(|event| evolve(kept.map(|k| k.state), &event).ok());
            if let Some(state) = state {
                self.deployments.insert(stream.to_owned(), SeenDeployment { state, last: envelope.clone() });
            }
        } else if let StreamId::Environment(_) = id {
            let next = self.environments.get(stream).map_or(1, |e| e.version + 1);
            if version < next {
                return;
            }
            match if version == next { decode() } else { None } {
                Some(event) => self.environments.entry(stream.to_owned()).or_default().apply(&event),
                None => {
                    self.environments.remove(stream);
                }
            }
        } else if let StreamId::Project(_) = id {
            // Kept only once read: the first read says where it starts.
            let Some((kept, events)) = self.projects.get_mut(stream) else { return };
            if version <= *kept {
                return;
            }
            match if version == *kept + 1 { decode() } else { None } {
                Some(event) => {
                    *kept = version;
                    events.push(event);
                }
                None => {
                    self.projects.remove(stream);
                }
            }
        } else if let Some(t) = self.traffic.as_mut() {
            if !observe_traffic(t, &id, version, envelope.timestamp, decode) {
                self.traffic = None;
            }
        }
    }

    /// Lets finished deployments go once many are kept.
    pub fn trim(&mut self) {
        if self.deployments.len() > DEPLOYMENTS_KEPT {
            self.deployments.retain(|_, d| !(d.state.is_finished() && d.state.late_containers.is_empty()));
        }
    }
}

/// Moves the traffic view by one event of the routes, routers or a
/// router's stream, written at `at`; false if a gap means it must be read again.
fn observe_traffic(
    t: &mut SeenTraffic,
    stream: &StreamId<'_>,
    version: u64,
    at: chrono::DateTime<chrono::Utc>,
    decode: impl FnOnce() -> Option<Event>,
) -> bool {
    let (known, router) = match stream {
        StreamId::Routes => {
            // Only the version counts here; a higher one is simply newer.
            t.traffic.routes_version = t.traffic.routes_version.max(version);
            return true;
        }
        StreamId::Routers => (t.registry, None),
        StreamId::Router(router) => (t.acknowledgements.get(router.as_ref()).copied().unwrap_or(0), Some(router.as_ref())),
        _ => return true,
    };
    if version <= known {
        return true;
    }
    let Some(event) = (version == known + 1).then(decode).flatten() else { return false };
    match router {
        None => {
            t.registry = version;
            apply_registry(&mut t.traffic.routers, &event);
            t.liveness.registry(version, at, &event);
        }
        Some(router) => {
            t.acknowledgements.insert(router.to_owned(), version);
            t.liveness.heard(router, at);
            if let Event::RouteAcknowledged(a) = event {
                t.traffic.acknowledged.insert(router.to_owned(), a.route_version);
            }
        }
    }
    true
}

/// The registered routers after one event of the `routers` stream (as
/// `routes::fold_routers` folds it).
fn apply_registry(routers: &mut BTreeSet<String>, event: &Event) {
    match registration(event) {
        Some(Registration::Started(r)) => {
            routers.insert(r.router_id.clone());
        }
        Some(Registration::Gone(id)) => {
            routers.remove(id);
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use slipway_proto::envelope::Metadata;
    use slipway_proto::event::{
        deployment_stream, DeploymentEnqueued, RouteAcknowledged, RouterExpired, RouterStarted, StepDispatched, ROUTERS_STREAM,
        ROUTES_STREAM,
    };
    use slipway_proto::Step;
    use uuid::Uuid;

    const D: &str = "deployment-00000000-0000-0000-0000-000000000000";
    const E: &str = "environment-shop-live";

    fn envelope(stream: &str, event: &Event) -> Envelope {
        let meta = Metadata { correlation_id: Uuid::nil(), causation_id: None, actor: "test".into(), trace: None };
        Envelope::new(Uuid::now_v7(), Utc::now(), stream, event, meta).expect("encodable")
    }

    /// Through JSON, so fields added later with a default need no change here.
    fn requested() -> Event {
        Event::DeploymentRequested(
            serde_json::from_value(serde_json::json!({
                "deployment_id": Uuid::nil(), "project": "shop", "environment": "live",
                "repository": "/srv/git/shop", "git_ref": "main", "mode": "cloud", "settings": {},
            }))
            .expect("a request"),
        )
    }

    fn dispatched(step: Step) -> Event {
        Event::StepDispatched(StepDispatched { step, command_id: Uuid::now_v7(), attempt: 1, deadline: None, dispatched_at: None })
    }

    fn see(seen: &mut Seen, stream: &str, version: u64, event: &Event) {
        seen.observe(stream, version, &envelope(stream, event));
    }

    #[test]
    fn a_deployment_moves_one_version_at_a_time_and_a_gap_drops_it() {
        let mut seen = Seen::default();
        see(&mut seen, D, 2, &dispatched(Step::CheckServices));
        assert!(seen.deployment(D).is_none(), "not seen from its start: read it when needed");
        see(&mut seen, D, 1, &requested());
        see(&mut seen, D, 2, &dispatched(Step::CheckServices));
        let kept = seen.deployment(D).expect("kept");
        assert_eq!(kept.state.version, 2);
        assert_eq!(kept.last.message_type, "StepDispatched", "the last event is the next decision's cause");
        // The driver's own append, delivered again by the subscription: skipped.
        see(&mut seen, D, 2, &dispatched(Step::Checkout));
        assert_eq!(seen.deployment(D).expect("kept").state.dispatched.map(|d| d.0), Some(Step::CheckServices));
        see(&mut seen, D, 4, &dispatched(Step::Checkout));
        assert!(seen.deployment(D).is_none(), "version 3 was missed");
    }

    #[test]
    fn an_event_that_cannot_follow_or_be_read_drops_the_deployment() {
        let mut seen = Seen::default();
        see(&mut seen, D, 1, &requested());
        see(&mut seen, D, 2, &requested());
        assert!(seen.deployment(D).is_none(), "an illegal transition is left for the store read to report");
        see(&mut seen, D, 1, &requested());
        let mut unreadable = envelope(D, &dispatched(Step::CheckServices));
        unreadable.message_type = "NoSuchEvent".into();
        assert!(unreadable.decode::<Event>().is_err());
        seen.observe(D, 2, &unreadable);
        assert!(seen.deployment(D).is_none(), "an undecodable event too");
    }

    #[test]
    fn environments_follow_their_queue_and_a_stale_read_never_replaces_a_newer_state() {
        let mut seen = Seen::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        see(&mut seen, E, 1, &Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: a }));
        see(&mut seen, E, 2, &Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: b }));
        let env = seen.environment(E).expect("kept");
        assert_eq!((env.queue.clone(), env.version), (vec![a, b], 2));
        seen.put_environment(E, Environment { version: 1, ..Default::default() });
        assert_eq!(seen.environment(E).expect("kept").version, 2);
        seen.forget(E);
        assert!(seen.environment(E).is_none());
    }

    #[test]
    fn traffic_follows_routes_registrations_and_acknowledgements_and_a_gap_drops_it() {
        let mut seen = Seen::default();
        see(&mut seen, ROUTES_STREAM, 1, &requested());
        assert!(seen.traffic().is_none(), "nothing kept until read once");
        seen.put_traffic(SeenTraffic::default());
        see(&mut seen, ROUTES_STREAM, 3, &requested());
        let started = Event::RouterStarted(RouterStarted {
            router_id: "r1".into(),
            listen: String::new(),
            domain: String::new(),
            lease_ms: Some(2_000),
        });
        see(&mut seen, ROUTERS_STREAM, 1, &started);
        see(&mut seen, "router-r1", 1, &Event::RouteAcknowledged(RouteAcknowledged { router_id: "r1".into(), route_version: 3 }));
        let traffic = seen.traffic().expect("kept");
        assert_eq!(traffic.routes_version, 3);
        assert!(traffic.routers.contains("r1"));
        assert!(traffic.waiting_for(&["r1".to_string()], 3).is_empty());
        assert_eq!(traffic.waiting_for(&["r1".to_string()], 4), vec!["r1".to_string()]);
        let held = seen.traffic_seen().expect("kept").liveness.routers["r1"].clone();
        assert_eq!((held.registered_at, held.lease), (1, chrono::Duration::seconds(2)), "its lease, from its registration");
        see(&mut seen, "router-r1", 3, &Event::RouteAcknowledged(RouteAcknowledged { router_id: "r1".into(), route_version: 4 }));
        assert!(seen.traffic().is_none(), "an acknowledgement was missed: read it all again");
    }

    #[test]
    fn an_expired_router_is_no_longer_registered_nor_held() {
        let mut seen = Seen::default();
        seen.put_traffic(SeenTraffic::default());
        let started = Event::RouterStarted(RouterStarted {
            router_id: "r1".into(),
            listen: String::new(),
            domain: String::new(),
            lease_ms: Some(2_000),
        });
        see(&mut seen, ROUTERS_STREAM, 1, &started);
        let expired = RouterExpired { router_id: "r1".into(), last_seen: Utc::now(), lease_ms: 2_000 };
        see(&mut seen, ROUTERS_STREAM, 2, &Event::RouterExpired(expired));
        // Its acknowledgement, written before it learnt of the expiry.
        see(&mut seen, "router-r1", 1, &Event::RouteAcknowledged(RouteAcknowledged { router_id: "r1".into(), route_version: 0 }));
        let traffic = seen.traffic_seen().expect("kept");
        assert!(traffic.traffic.routers.is_empty() && traffic.liveness.routers.is_empty(), "{traffic:?}");
        assert_eq!(traffic.registry, 2);
    }

    #[test]
    fn projects_keep_their_events_in_order_from_the_version_read() {
        let mut seen = Seen::default();
        let p = "project-shop";
        see(&mut seen, p, 1, &requested());
        assert!(seen.project(p).is_none(), "a project is kept once read");
        seen.put_project(p, 0, vec![]);
        see(&mut seen, p, 1, &requested());
        see(&mut seen, p, 1, &requested());
        assert_eq!(seen.project(p).map(|e| e.len()), Some(1), "an event already kept is skipped");
        seen.put_project(p, 0, vec![]);
        assert_eq!(seen.project(p).map(|e| e.len()), Some(1), "an older read does not replace it");
        see(&mut seen, p, 3, &requested());
        assert!(seen.project(p).is_none(), "version 2 was missed");
    }

    #[test]
    fn finished_deployments_are_let_go_only_when_many_are_kept() {
        let mut seen = Seen::default();
        let failed = Event::DeploymentFailed(slipway_proto::event::DeploymentFailed { step: Step::Build, reason: "x".into() });
        let stepfailed = Event::StepFailed(slipway_proto::event::StepFailed {
            step: Step::Build,
            reason: "x".into(),
            attempt: 1,
            details: vec![],
            evidence: None,
        });
        for n in 0..=DEPLOYMENTS_KEPT {
            let stream = deployment_stream(Uuid::from_u128(n as u128));
            see(&mut seen, &stream, 1, &requested());
            if n % 2 == 0 {
                see(&mut seen, &stream, 2, &stepfailed);
                see(&mut seen, &stream, 3, &failed);
            }
        }
        let stream = |n: u128| deployment_stream(Uuid::from_u128(n));
        assert!(seen.deployment(&stream(0)).expect("kept").state.is_finished());
        seen.trim();
        assert!(seen.deployment(&stream(0)).is_none());
        assert!(seen.deployment(&stream(1)).is_some(), "running ones stay");
    }
}
