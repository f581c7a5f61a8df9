//! Supervision's rate limit, given/when/then without Docker: Docker's
//! container events in, the few `ContainerSupervised` records out.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use chrono::{DateTime, Duration, Utc};
use slipway_engine::environment::fold;
use slipway_engine::supervise::{Limits, Signal, Supervisor};
use slipway_proto::event::*;
use slipway_proto::Event;
use uuid::Uuid;

const RELEASE: Uuid = Uuid::from_u128(7);

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap() + Duration::milliseconds(ms)
}

/// A process that exits with code 3 every 300 ms and is restarted 50 ms later, `n` times.
fn crash_loop(s: &mut Supervisor, n: i64) -> Vec<ContainerSupervised> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(s.observe("crash-1", RELEASE, Signal::Died { exit_code: Some(3), restarting: true }, t(i * 300)));
        out.extend(s.observe("crash-1", RELEASE, Signal::Started, t(i * 300 + 50)));
        out.extend(s.flush(t(i * 300 + 100)));
    }
    out
}

#[test]
fn a_crash_loop_of_a_thousand_exits_is_a_few_summarising_records() {
    // Given a container crashing 1000 times in 5 minutes,
    let mut s = Supervisor::new(Limits::default());
    // when every Docker event goes through the supervisor,
    let records = crash_loop(&mut s, 1000);
    // then a handful of records says so,
    assert!(records.len() <= 8, "{} records: {records:?}", records.len());
    assert_eq!(records[0].state, LiveState::Restarting);
    let last = records.last().unwrap();
    assert_eq!((last.state, last.last_exit), (LiveState::CrashLooping, Some(3)));
    // and once it stays up past the loop window, one more says it runs;
    // together they count every exit and restart.
    let settled = s.flush(t(300_000 + 61_000));
    assert_eq!(settled.len(), 1);
    assert_eq!((settled[0].state, settled[0].restarts), (LiveState::Running, 1000));
    let counted: u32 = records.iter().chain(&settled).map(|r| r.exits).sum();
    assert_eq!(counted, 1000);
}

#[test]
fn a_held_back_change_is_recorded_by_a_later_flush() {
    let mut s = Supervisor::new(Limits::default());
    // One exit is recorded at once, the restart right after is held back,
    assert_eq!(s.observe("web", RELEASE, Signal::Died { exit_code: Some(137), restarting: false }, t(0)).unwrap().state, LiveState::Down);
    assert_eq!(s.observe("web", RELEASE, Signal::Started, t(100)), None);
    assert_eq!(s.flush(t(1000)), vec![]);
    // and recorded once the minimum interval passed.
    let flushed = s.flush(t(5000));
    assert_eq!(flushed.len(), 1);
    assert_eq!((flushed[0].state, flushed[0].restarts), (LiveState::Running, 1));
    assert_eq!(s.flush(t(600_000)), vec![]);
}

#[test]
fn an_oom_kill_and_health_changes_are_recorded() {
    let mut s = Supervisor::new(Limits::default());
    s.observe("web", RELEASE, Signal::OomKilled, t(0));
    let died = s.observe("web", RELEASE, Signal::Died { exit_code: Some(137), restarting: false }, t(1)).or_else(|| s.flush(t(1)).pop());
    let record = died.unwrap();
    assert!(record.oom);
    s.observe("web", RELEASE, Signal::Started, t(10));
    let unhealthy = s.observe("web", RELEASE, Signal::Health { healthy: false }, t(10_000)).unwrap();
    assert_eq!(unhealthy.state, LiveState::Unhealthy);
}

#[test]
fn the_environment_shows_the_serving_release_live_state() {
    // Given a release serving and the records of a crash loop of its process,
    let mut history = vec![
        Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: RELEASE }),
        Event::DeploymentFinished(DeploymentFinished {
            deployment_id: RELEASE,
            succeeded: true,
            containers: vec!["web".into(), "crash-1".into()],
            upstreams: vec!["127.0.0.1:4000".into()],
            dry_run: false,
            host: String::new(),
        }),
    ];
    let mut s = Supervisor::new(Limits::default());
    history.extend(crash_loop(&mut s, 100).into_iter().map(Event::ContainerSupervised));
    // then the environment says crash-looping, with the restarts and the last exit.
    let live = fold(&history).release_live().unwrap();
    assert_eq!((live.state, live.last_exit), (LiveState::CrashLooping, Some(3)));
    assert!(live.restarts >= 10, "{live:?}");
    // A new release starts with a clean slate.
    history.push(Event::DeploymentFinished(DeploymentFinished {
        deployment_id: Uuid::from_u128(8),
        succeeded: true,
        containers: vec![],
        upstreams: vec![],
        dry_run: false,
        host: String::new(),
    }));
    assert_eq!(fold(&history).release_live(), None);
}

#[test]
fn dockers_event_actions_are_read_as_signals() {
    assert_eq!(Signal::of_docker_action("die", Some(3)), Some(Signal::Died { exit_code: Some(3), restarting: false }));
    assert_eq!(Signal::of_docker_action("oom", None), Some(Signal::OomKilled));
    assert_eq!(Signal::of_docker_action("start", None), Some(Signal::Started));
    assert_eq!(Signal::of_docker_action("health_status: unhealthy", None), Some(Signal::Health { healthy: false }));
    assert_eq!(Signal::of_docker_action("health_status: healthy", None), Some(Signal::Health { healthy: true }));
    assert_eq!(Signal::of_docker_action("exec_start: sh", None), None);
}
