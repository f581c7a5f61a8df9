//! The reconciler, given/when/then without Docker: a recorded environment
//! (named canned histories) and what a host runs, to the corrections.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use chrono::{DateTime, Duration, Utc};
use slipway_engine::environment::fold;
use slipway_engine::reconcile::{
    reconcile, reroute_settled, route_correction, ContainerState, Correction, Desired, Observed, StartBackoff,
};
use slipway_engine::routes::Route;
use slipway_engine::routes::Traffic;
use slipway_proto::event::*;
use slipway_proto::Event;
use uuid::Uuid;

const OLD: Uuid = Uuid::from_u128(1);
const SERVING: Uuid = Uuid::from_u128(2);
const RUNNING: Uuid = Uuid::from_u128(3);
const FOREIGN: Uuid = Uuid::from_u128(9);

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

fn enqueued(d: Uuid) -> Event {
    Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: d })
}

fn succeeded(d: Uuid, port: u16) -> Event {
    Event::DeploymentFinished(DeploymentFinished {
        deployment_id: d,
        succeeded: true,
        containers: vec![name(d, "web"), name(d, "worker-1")],
        upstreams: vec![format!("127.0.0.1:{port}")],
        dry_run: false,
        host: "h".into(),
    })
}

fn name(d: Uuid, role: &str) -> String {
    format!("slipway-shop-live-{}-{role}", d.simple())
}

/// Release OLD was replaced by SERVING (on port 4000); RUNNING is in progress.
fn replaced_and_deploying() -> Vec<Event> {
    vec![enqueued(OLD), succeeded(OLD, 3000), enqueued(SERVING), succeeded(SERVING, 4000), enqueued(RUNNING)]
}

/// The environment settled at t(0).
fn desired(history: &[Event]) -> Vec<Desired> {
    vec![Desired { project: "shop".into(), environment: "live".into(), state: fold(history), settled_at: Some(t(0)) }]
}

fn container(d: Uuid, role: &str, state: ContainerState, port: Option<u16>) -> Observed {
    Observed {
        id: format!("{}-{role}", d.simple()),
        name: name(d, role),
        project: "shop".into(),
        environment: "live".into(),
        deployment: d,
        role: role.into(),
        state,
        host_port: port,
    }
}

/// Each correction in short: `remove NAME`, `start NAME`, `reroute UPSTREAMS`.
#[track_caller]
fn check(given: &[Desired], host: &[Observed], now: DateTime<Utc>, expect: &[String]) {
    let got: Vec<String> = reconcile(given, host, now, Duration::seconds(60), "h")
        .into_iter()
        .map(|c| match c {
            Correction::Remove { container, reason, .. } => {
                assert!(!reason.is_empty());
                format!("remove {container}")
            }
            Correction::Start { container, reason, .. } => {
                assert!(!reason.is_empty());
                format!("start {container}")
            }
            Correction::Reroute { upstreams, .. } => format!("reroute {}", upstreams.join(",")),
            Correction::Restore { missing, reason, .. } => {
                assert!(reason.contains("missing"), "{reason}");
                format!("restore {}", missing.join(","))
            }
        })
        .collect();
    assert_eq!(got, expect);
}

#[test]
fn a_host_running_what_is_recorded_needs_nothing() {
    let host =
        [container(SERVING, "web", ContainerState::Running, Some(4000)), container(SERVING, "worker-1", ContainerState::Running, None)];
    check(&desired(&replaced_and_deploying()), &host, t(3600), &[]);
}

#[test]
fn a_replaced_release_still_running_is_removed_once_the_environment_settled() {
    let host = [container(OLD, "web", ContainerState::Running, Some(3000)), container(OLD, "worker-1", ContainerState::Running, None)];
    // Within the grace its retirement may still be draining: left alone.
    check(&desired(&replaced_and_deploying()), &host, t(30), &[]);
    check(
        &desired(&replaced_and_deploying()),
        &host,
        t(60),
        &[format!("remove {}", name(OLD, "web")), format!("remove {}", name(OLD, "worker-1"))],
    );
}

#[test]
fn containers_of_a_deployment_in_progress_are_never_touched() {
    let host =
        [container(RUNNING, "web", ContainerState::Exited(1), None), container(RUNNING, "release-0", ContainerState::Exited(0), None)];
    check(&desired(&replaced_and_deploying()), &host, t(3600), &[]);
}

#[test]
fn containers_this_store_does_not_know_are_never_touched() {
    // Another installation on the same Docker host, even with the same names.
    let host = [container(FOREIGN, "web", ContainerState::Running, Some(5000))];
    check(&desired(&replaced_and_deploying()), &host, t(3600), &[]);
    let mut other = container(OLD, "web", ContainerState::Running, Some(3000));
    other.environment = "staging".into();
    check(&desired(&replaced_and_deploying()), &[other], t(3600), &[]);
}

#[test]
fn a_stopped_container_of_the_serving_release_is_started_again_but_not_a_restarting_one() {
    let host = [
        container(SERVING, "web", ContainerState::Exited(137), None),
        container(SERVING, "worker-1", ContainerState::Restarting, None),
        container(SERVING, "release-0", ContainerState::Exited(0), None),
    ];
    check(&desired(&replaced_and_deploying()), &host, t(10), &[format!("start {}", name(SERVING, "web"))]);
}

#[test]
fn a_serving_web_container_on_a_new_port_reroutes_the_environment() {
    let host = [container(SERVING, "web", ContainerState::Running, Some(4711))];
    check(&desired(&replaced_and_deploying()), &host, t(10), &["reroute 127.0.0.1:4711".to_string()]);
}

#[test]
fn once_the_new_upstream_is_recorded_the_reconciler_is_quiet_and_the_route_follows() {
    // Given the agent recorded what it observed,
    let mut history = replaced_and_deploying();
    history.push(Event::ReleaseUpstreamsObserved(ReleaseUpstreamsObserved {
        deployment_id: SERVING,
        upstreams: vec!["127.0.0.1:4711".into()],
        previous: vec!["127.0.0.1:4000".into()],
        host: "h".into(),
    }));
    let env = fold(&history);
    // the release answers there now (what `status` shows),
    assert_eq!(env.active.as_ref().unwrap().web_port(), Some(4711));
    // then a second pass (another worker on the host) corrects nothing,
    let host = [container(SERVING, "web", ContainerState::Running, Some(4711))];
    check(&desired(&history), &host, t(10), &[]);
    // and the engine moves a route that still points at the old port.
    let route = Route { deployment: Some(SERVING), upstreams: vec!["127.0.0.1:4000".into()], standby: vec![], version: 7 };
    let changed = route_correction("shop", "live", &env, Some(&route)).unwrap();
    assert_eq!(
        (changed.upstreams, changed.reason, changed.deployment_id),
        (vec!["127.0.0.1:4711".to_string()], RouteReason::Reconcile, Some(SERVING))
    );
    // Once moved, nothing more.
    let moved = Route { upstreams: vec!["127.0.0.1:4711".into()], ..route };
    assert_eq!(route_correction("shop", "live", &env, Some(&moved)), None);
}

#[test]
fn a_route_that_points_at_another_deployment_is_left_to_it() {
    // A cutover in progress points the route at the new deployment.
    let env = fold(&replaced_and_deploying());
    let route = Route { deployment: Some(RUNNING), upstreams: vec!["127.0.0.1:5000".into()], standby: vec![], version: 8 };
    assert_eq!(route_correction("shop", "live", &env, Some(&route)), None);
    assert_eq!(route_correction("shop", "live", &env, None), None);
}

#[test]
fn with_no_release_serving_every_finished_deployments_container_goes() {
    let failed = Event::DeploymentFinished(DeploymentFinished {
        deployment_id: OLD,
        succeeded: false,
        containers: vec![],
        upstreams: vec![],
        dry_run: false,
        host: String::new(),
    });
    let history = [enqueued(OLD), failed];
    let host = [container(OLD, "web", ContainerState::Running, Some(3000))];
    check(&desired(&history), &host, t(60), &[format!("remove {}", name(OLD, "web"))]);
}

/// Release SERVING replaced OLD, and nothing is under way.
fn settled() -> Vec<Event> {
    vec![enqueued(OLD), succeeded(OLD, 3000), enqueued(SERVING), succeeded(SERVING, 4000)]
}

#[test]
fn a_serving_release_whose_containers_are_gone_is_started_again_as_a_deployment() {
    // Given the serving release's process container was removed, and its web container too,
    let web_only = [container(SERVING, "web", ContainerState::Running, Some(4000))];
    check(&desired(&settled()), &web_only, t(10), &[format!("restore {}", name(SERVING, "worker-1"))]);
    let restore = reconcile(&desired(&settled()), &[], t(10), Duration::seconds(60), "h");
    let [Correction::Restore { deployment, missing, version, .. }] = restore.as_slice() else { panic!("{restore:?}") };
    // then the whole release is started again, decided at this version of the environment.
    assert_eq!((*deployment, missing.len(), *version), (SERVING, 2, 4));
}

#[test]
fn a_missing_release_is_left_alone_while_a_deployment_runs_or_when_it_runs_on_another_host() {
    // A deployment under way (a restore itself, or a new release) replaces it anyway.
    check(&desired(&replaced_and_deploying()), &[], t(10), &[]);
    // Another host's agent does not see this host's containers.
    assert_eq!(reconcile(&desired(&settled()), &[], t(10), Duration::seconds(60), "other"), vec![]);
    // A release recorded before hosts were runs on the one host there was.
    let mut legacy = settled();
    legacy[3] = Event::DeploymentFinished(DeploymentFinished {
        host: String::new(),
        ..match &legacy[3] {
            Event::DeploymentFinished(f) => f.clone(),
            _ => unreachable!(),
        }
    });
    assert_eq!(reconcile(&desired(&legacy), &[], t(10), Duration::seconds(60), "other").len(), 1);
}

#[test]
fn a_container_the_agent_keeps_starting_is_started_with_a_doubling_pause() {
    let (every, cap) = (Duration::seconds(30), Duration::seconds(600));
    let mut backoff = StartBackoff::default();
    assert!(backoff.may_start("web", t(0), every, cap));
    backoff.started("web", t(0), cap);
    // Exits at once: not again before 30 s, then 60 s, 120 s ...
    assert!(!backoff.may_start("web", t(29), every, cap));
    assert!(backoff.may_start("web", t(30), every, cap));
    backoff.started("web", t(30), cap);
    assert!(!backoff.may_start("web", t(89), every, cap));
    assert!(backoff.may_start("web", t(90), every, cap));
    for n in 0..10 {
        backoff.started("web", t(1000 + n * 600), cap);
    }
    // ... never more than the cap apart,
    assert!(backoff.may_start("web", t(1000 + 9 * 600 + 600), every, cap));
    // and other containers, or a daemon that came back, start at once.
    assert!(backoff.may_start("worker-1", t(6000), every, cap));
    backoff.clear();
    assert!(backoff.may_start("web", t(6401), every, cap));
}

#[test]
fn a_reroute_settles_once_every_registered_router_acknowledged_or_at_its_deadline() {
    // Given the engine moved SERVING's route at version 7, waiting for a and b until t(15),
    let mut history = settled();
    history.push(Event::ReleaseRerouted(ReleaseRerouted {
        deployment_id: SERVING,
        upstreams: vec!["127.0.0.1:4711".into()],
        route_version: 7,
        routers: vec!["a".into(), "b".into()],
        deadline: t(15),
    }));
    let env = fold(&history);
    let traffic = |acks: &[(&str, u64)], routers: &[&str]| Traffic {
        routes_version: 7,
        routers: routers.iter().map(|r| r.to_string()).collect(),
        acknowledged: acks.iter().map(|(r, v)| (r.to_string(), *v)).collect(),
    };
    // then it waits while b has not acknowledged,
    assert_eq!(reroute_settled(&env, &traffic(&[("a", 7), ("b", 6)], &["a", "b"]), t(5)), None);
    // settles once it has (or once b is gone: stopped or expired),
    let done = reroute_settled(&env, &traffic(&[("a", 7), ("b", 8)], &["a", "b"]), t(5)).unwrap();
    assert_eq!((done.route_version, done.acknowledged.clone(), done.missing.clone()), (7, vec!["a".to_string(), "b".to_string()], vec![]));
    assert_eq!(reroute_settled(&env, &traffic(&[("a", 7)], &["a"]), t(5)).unwrap().missing, Vec::<String>::new());
    // and at the deadline names who did not acknowledge.
    let late = reroute_settled(&env, &traffic(&[("a", 7), ("b", 6)], &["a", "b"]), t(15)).unwrap();
    assert_eq!((late.acknowledged, late.missing), (vec!["a".to_string()], vec!["b".to_string()]));
    // Once settled, nothing is pending.
    history.push(Event::RerouteSettled(done));
    assert_eq!(reroute_settled(&fold(&history), &traffic(&[], &["a", "b"]), t(99)), None);
}
