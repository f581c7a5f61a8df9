//! The decider and the deployment projection, given / when / then, over
//! named canned histories. No I/O.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use chrono::{DateTime, Utc};
use slipway_engine::environment::ActiveRelease;
use slipway_engine::lease::Liveness;
use slipway_engine::routes::{fold_routers, Traffic};
use slipway_engine::{decide, deployment::fold, Decision, EnvironmentView, Status};
use slipway_proto::event::*;
use slipway_proto::{Command, Event, Step};
use uuid::Uuid;

const ID: Uuid = Uuid::from_u128(0xd);

fn requested() -> Event {
    Event::DeploymentRequested(DeploymentRequested {
        deployment_id: ID,
        project: "hello".into(),
        environment: "test".into(),
        repository: "file:///srv/hello".into(),
        git_ref: "main".into(),
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        settings: Default::default(),
        dry_run: false,
        rollback_of: None,
        promoted_from: None,
        replay_of: None,
        source: Default::default(),
    })
}

fn dispatched(step: Step) -> Event {
    Event::StepDispatched(StepDispatched {
        step,
        command_id: Uuid::from_u128(step as u128 + 100),
        attempt: 1,
        deadline: None,
        dispatched_at: None,
    })
}

fn outcome(step: Step) -> Event {
    match step {
        Step::CheckServices => Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None }),
        Step::Checkout => Event::CheckedOut(CheckedOut {
            commit: "c0ffee".into(),
            workspace: "/w".into(),
            config: serde_json::json!({}),
            source_host_key: None,
        }),
        Step::Build => Event::ImageBuilt(ImageBuilt {
            image_id: "sha256:1".into(),
            tag: "hello:c0ffee".into(),
            cache_used: false,
            duration_ms: 10,
            log_ref: None,
            log_digest: None,
            mode: BuildMode::Cloud,
            warnings: vec![],
            pushed: None,
            base_images: vec![],
        }),
        Step::Deploy => Event::WebContainerStarted(WebContainerStarted {
            container: "web-1".into(),
            host_port: 32768,
            host: String::new(),
            upstreams: vec![],
            warnings: vec![],
        }),
        Step::Release => Event::ReleaseCommandsRan(ReleaseCommandsRan { results: vec![], skipped: false }),
        Step::Processes => Event::ProcessesStarted(ProcessesStarted {
            containers: vec![ProcessContainer { process: "worker".into(), replica: 1, container: "worker-1".into() }],
        }),
        Step::HealthCheck => Event::HealthCheckPassed(HealthCheckPassed { path: "/".into(), status: 200, attempts: 1, elapsed_ms: 5 }),
        other => panic!("no canned outcome for {other}"),
    }
}

/// Requested, then every step dispatched and completed.
fn happy_path() -> Vec<Event> {
    let mut h = vec![requested()];
    for step in Step::PIPELINE {
        h.push(dispatched(step));
        h.push(outcome(step));
    }
    h
}

/// Everything up to the build, which fails.
fn build_fails() -> Vec<Event> {
    let mut h = vec![requested()];
    for step in [Step::CheckServices, Step::Checkout] {
        h.push(dispatched(step));
        h.push(outcome(step));
    }
    h.push(dispatched(Step::Build));
    h.push(Event::StepFailed(StepFailed { step: Step::Build, reason: "RUN exited 1".into(), attempt: 1, details: vec![], evidence: None }));
    h
}

/// The health check fails after containers were started.
fn health_check_fails() -> Vec<Event> {
    let mut h = vec![requested()];
    for step in &Step::PIPELINE[..6] {
        h.push(dispatched(*step));
        h.push(outcome(*step));
    }
    h.push(dispatched(Step::HealthCheck));
    h.push(Event::StepFailed(StepFailed {
        step: Step::HealthCheck,
        reason: "timed out".into(),
        attempt: 1,
        details: vec![],
        evidence: None,
    }));
    h
}

#[track_caller]
fn check(given: &[Event], expect: &[&str]) {
    check_queued(given, true, expect)
}

/// Like `check`, saying whether the deployment heads its environment's queue.
#[track_caller]
fn check_queued(given: &[Event], may_start: bool, expect: &[&str]) {
    check_with(given, &EnvironmentView { may_start, ..view() }, expect)
}

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

/// An environment served by release 1 (`old-web` on port 1000), no routers,
/// at time t(0).
fn view() -> EnvironmentView {
    EnvironmentView {
        may_start: true,
        active: Some(ActiveRelease {
            deployment: Uuid::from_u128(1),
            containers: vec!["old-web".into()],
            upstreams: vec!["127.0.0.1:1000".into()],
            host: String::new(),
        }),
        drain_seconds: 30,
        traffic: Some(Traffic { routes_version: 4, ..Default::default() }),
        switch_timeout: chrono::Duration::seconds(10),
        now: t(0),
        reusable_image: None,
        retries: Default::default(),
        heartbeat: None,
        heartbeat_timeout: chrono::Duration::seconds(60),
    }
}

/// `view()` with routers `a` and `b` registered, acknowledged up to the given versions.
fn with_routers(acks: &[(&str, u64)]) -> EnvironmentView {
    let mut v = view();
    v.traffic = Some(Traffic {
        routes_version: 4,
        routers: ["a".to_string(), "b".to_string()].into(),
        acknowledged: acks.iter().map(|(r, v)| (r.to_string(), *v)).collect(),
    });
    v
}

#[track_caller]
fn check_with(given: &[Event], env: &EnvironmentView, expect: &[&str]) {
    let state = fold(given.iter()).expect("legal history").expect("a deployment");
    let got: Vec<String> = decide(&state, env)
        .iter()
        .map(|d| match d {
            Decision::Dispatch(Command::RunStep(r)) => format!("dispatch {}", r.step),
            Decision::DispatchAgain { command_id, command: Command::RunStep(r) } => {
                format!("dispatch {} again as {}", r.step, command_id.as_u128())
            }
            Decision::DispatchAgain { .. } => "dispatch a cleanup again".into(),
            Decision::Dispatch(Command::RemoveContainers(r)) => format!("remove {}", r.containers.join(",")),
            Decision::Dispatch(Command::RetireRelease(r)) => format!("retire {}", r.containers.join(",")),
            Decision::Record(e) => format!("record {}", slipway_proto::envelope::Message::message_type(e)),
            Decision::RecordOnEnvironment(Event::DeploymentFinished(f)) => {
                format!("finish {}", if f.succeeded { "succeeded" } else { "failed" })
            }
            Decision::RecordOnEnvironment(e) => format!("environment {}", slipway_proto::envelope::Message::message_type(e)),
            Decision::RecordOnRoutes(Event::RouteChanged(r)) if r.standby.is_empty() => {
                format!("route {:?} {}", r.reason, r.upstreams.join(","))
            }
            Decision::RecordOnRoutes(Event::RouteChanged(r)) => {
                format!("route {:?} {} standby {}", r.reason, r.upstreams.join(","), r.standby.join(","))
            }
            Decision::RecordOnRoutes(e) => format!("routes {}", slipway_proto::envelope::Message::message_type(e)),
            Decision::WakeAt(at) => format!("wake at {}", (*at - t(0)).num_seconds()),
        })
        .collect();
    assert_eq!(got, expect);
}

/// The happy path with the traffic switch requested (route version 5, routers a and b).
fn switching() -> Vec<Event> {
    let mut h = happy_path();
    h.push(Event::TrafficSwitchRequested(TrafficSwitchRequested {
        route_version: 5,
        upstreams: vec!["127.0.0.1:32768".into()],
        routers: vec!["a".into(), "b".into()],
        deadline: t(10),
    }));
    h
}

const SUCCESS: [&str; 3] = ["record DeploymentSucceeded", "finish succeeded", "retire old-web"];
/// What follows every router's acknowledgement: the watch (60 s by default).
const WATCH: [&str; 2] = ["record ReleaseWatchStarted", "dispatch watch"];

#[test]
fn a_request_dispatches_the_service_check() {
    check(&[requested()], &["dispatch check_services"]);
}

#[test]
fn each_outcome_dispatches_the_next_step_in_the_seeds_order() {
    let h = happy_path();
    // After "requested, (dispatched, outcome) x n" the next step is dispatched.
    for (n, step) in Step::PIPELINE.iter().enumerate().skip(1) {
        check(&h[..1 + 2 * n], &[&format!("dispatch {step}")]);
    }
}

#[test]
fn a_dispatched_step_waits_for_its_worker() {
    check(&happy_path()[..2], &[]);
}

#[test]
fn all_steps_done_without_routers_moves_the_route_and_succeeds_at_once() {
    let mut expect =
        vec!["record TrafficSwitchRequested", "route Cutover 127.0.0.1:32768 standby 127.0.0.1:1000", "record TrafficSwitched"];
    expect.extend(WATCH);
    check(&happy_path(), &expect);
    let mut h = happy_path();
    h.push(Event::TrafficSwitchRequested(TrafficSwitchRequested {
        route_version: 5,
        upstreams: vec!["127.0.0.1:32768".into()],
        routers: vec![],
        deadline: t(10),
    }));
    h.push(Event::TrafficSwitched(TrafficSwitched { route_version: 5, routers: vec![] }));
    h.push(watch_started(60));
    h.push(dispatched(Step::Watch));
    h.push(watched());
    h.push(Event::DeploymentSucceeded(DeploymentSucceeded { image_id: "sha256:1".into(), commit: "c0ffee".into() }));
    check(&h, &[]);
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.status, Status::Succeeded);
    assert_eq!(state.context.image_id.as_deref(), Some("sha256:1"));
    assert_eq!(state.version, h.len() as u64);
}

#[test]
fn a_failed_build_fails_the_deployment_with_nothing_to_remove() {
    check(&build_fails(), &["record DeploymentFailed", "finish failed"]);
}

#[test]
fn a_failed_health_check_removes_the_new_containers() {
    check(&health_check_fails(), &["record DeploymentFailed", "finish failed", "remove web-1,worker-1"]);
    let mut h = health_check_fails();
    h.push(Event::DeploymentFailed(DeploymentFailed { step: Step::HealthCheck, reason: "timed out".into() }));
    check(&h, &[]);
    h.push(Event::ContainersRemoved(ContainersRemoved { containers: vec!["web-1".into(), "worker-1".into()] }));
    let state = fold(h.iter()).unwrap().unwrap();
    assert!(state.containers.is_empty());
    assert!(matches!(state.status, Status::Failed { step: Step::HealthCheck, .. }));
}

#[test]
fn out_of_order_histories_are_illegal_transitions() {
    let skip_ahead = [requested(), outcome(Step::Build)];
    let err = fold(skip_ahead.iter()).unwrap_err();
    assert!(err.to_string().contains("ImageBuilt"), "{err}");
    assert!(fold([outcome(Step::Checkout)].iter()).is_err(), "an outcome before the request");
    let mut twice = happy_path();
    twice.push(requested());
    assert!(fold(twice.iter()).is_err(), "a second request on one stream");
    let mut after_failure = build_fails();
    after_failure.push(outcome(Step::Build));
    assert!(fold(after_failure.iter()).is_err(), "an outcome after the step failed");
}

#[test]
fn skipped_steps_count_as_done() {
    let mut h = vec![requested()];
    for step in Step::PIPELINE {
        h.push(dispatched(step));
        h.push(Event::StepSkipped(StepSkipped { step, reason: "skipped".into() }));
    }
    check(&h[..h.len() - 2], &["dispatch health_check"]);
    assert_eq!(fold(h.iter()).unwrap().unwrap().next_step(), None);
}

#[test]
fn a_dry_run_succeeds_without_touching_routes_or_the_serving_release() {
    let Event::DeploymentRequested(mut r) = requested() else { unreachable!() };
    r.dry_run = true;
    let mut h = vec![Event::DeploymentRequested(r)];
    for step in Step::PIPELINE {
        h.push(dispatched(step));
        h.push(Event::StepSkipped(StepSkipped { step, reason: "dry run".into() }));
    }
    check(&h, &["record DeploymentSucceeded", "finish succeeded"]);
    let state = fold(h.iter()).unwrap().unwrap();
    let finished = decide(&state, &view()).into_iter().find_map(|d| match d {
        Decision::RecordOnEnvironment(Event::DeploymentFinished(f)) => Some(f),
        _ => None,
    });
    assert!(finished.unwrap().dry_run, "the environment projection must not take a dry run for a release");
}

#[test]
fn the_switch_waits_for_every_registered_router_then_succeeds() {
    check_with(
        &happy_path(),
        &with_routers(&[]),
        &["record TrafficSwitchRequested", "route Cutover 127.0.0.1:32768 standby 127.0.0.1:1000"],
    );
    check_with(&switching(), &with_routers(&[("a", 5)]), &["wake at 10"]);
    check_with(&switching(), &with_routers(&[("a", 5), ("b", 4)]), &["wake at 10"]);
    let mut expect = vec!["record TrafficSwitched"];
    expect.extend(WATCH);
    check_with(&switching(), &with_routers(&[("a", 5), ("b", 6)]), &expect);
}

#[test]
fn a_router_that_stopped_cleanly_is_not_waited_for() {
    let mut env = with_routers(&[("a", 5)]);
    if let Some(t) = env.traffic.as_mut() {
        t.routers.remove("b");
    }
    let mut expect = vec!["record TrafficSwitched"];
    expect.extend(WATCH);
    check_with(&switching(), &env, &expect);
}

#[test]
fn a_router_expired_while_the_switch_waits_for_it_is_waited_for_no_more() {
    // b registered with a 2 s lease and was never heard from again; a
    // heartbeats and acknowledged the switch's route version.
    let started = |id: &str| {
        Event::RouterStarted(RouterStarted { router_id: id.into(), listen: String::new(), domain: String::new(), lease_ms: Some(2_000) })
    };
    let mut liveness = Liveness::default();
    liveness.registry(1, t(0), &started("a"));
    liveness.registry(2, t(0), &started("b"));
    liveness.heard("a", t(2));
    let mut env = EnvironmentView { now: t(3), ..with_routers(&[("a", 5)]) };
    check_with(&switching(), &env, &["wake at 10"]);
    let expired: Vec<Event> = liveness.expired(t(3)).into_iter().map(|(_, e)| Event::RouterExpired(e)).collect();
    let named: Vec<&str> =
        expired.iter().filter_map(|e| if let Event::RouterExpired(x) = e { Some(x.router_id.as_str()) } else { None }).collect();
    assert_eq!(named, ["b"]);
    // Recorded, the expiry deregisters b: the switch completes before its deadline.
    let registry: Vec<Event> = [started("a"), started("b")].into_iter().chain(expired).collect();
    if let Some(traffic) = env.traffic.as_mut() {
        traffic.routers = fold_routers(registry.iter());
    }
    let mut expect = vec!["record TrafficSwitched"];
    expect.extend(WATCH);
    check_with(&switching(), &env, &expect);
}

#[test]
fn a_router_silent_past_the_deadline_fails_the_cutover_and_the_route_goes_back() {
    let late = EnvironmentView { now: t(10), ..with_routers(&[("a", 5)]) };
    check_with(&switching(), &late, &["record StepFailed"]);
    let state = fold(switching().iter()).unwrap().unwrap();
    let Decision::Record(Event::StepFailed(f)) = &decide(&state, &late)[0] else { panic!() };
    assert_eq!(f.step, Step::Cutover);
    assert!(f.reason.contains("router b ") && f.reason.contains("route version 5"), "{}", f.reason);

    let mut h = switching();
    h.push(Event::StepFailed(f.clone()));
    // The route returns to release 1; the new containers are drained, not cut off.
    check_with(&h, &late, &["record DeploymentFailed", "finish failed", "route Revert 127.0.0.1:1000", "retire web-1,worker-1"]);
}

#[test]
fn a_rollback_reuses_the_old_release_instead_of_checking_out_building_and_migrating() {
    let Event::DeploymentRequested(mut r) = requested() else { unreachable!() };
    r.rollback_of = Some(ReleaseSource {
        deployment_id: Uuid::from_u128(1),
        commit: "0ld".into(),
        image_id: "sha256:old".into(),
        config: serde_json::json!({}),
    });
    let mut h = vec![Event::DeploymentRequested(r), dispatched(Step::CheckServices), outcome(Step::CheckServices)];
    check(&h, &["record StepSkipped"]);
    h.push(Event::StepSkipped(StepSkipped { step: Step::Checkout, reason: "rollback".into() }));
    check(&h, &["record ImageReused"]);
    h.push(Event::ImageReused(ImageReused { image_id: "sha256:old".into(), source_deployment: Uuid::from_u128(1) }));
    check(&h, &["dispatch deploy"]);
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.context.image_id.as_deref(), Some("sha256:old"));
    assert_eq!(state.context.commit.as_deref(), Some("0ld"));
    h.push(dispatched(Step::Deploy));
    h.push(outcome(Step::Deploy));
    check(&h, &["record StepSkipped"]);
}

#[test]
fn a_deployment_queued_behind_another_waits_its_turn() {
    check_queued(&[requested()], false, &[]);
    check_queued(&[requested()], true, &["dispatch check_services"]);
    // Once started, it carries on whatever the queue says.
    check_queued(&happy_path()[..3], false, &["dispatch checkout"]);
}

#[test]
fn failure_at_each_step_fails_the_deployment_at_that_step() {
    for (n, step) in Step::PIPELINE.iter().enumerate() {
        let mut h = happy_path()[..2 + 2 * n].to_vec();
        h.push(Event::StepFailed(StepFailed { step: *step, reason: format!("{step} broke"), attempt: 1, details: vec![], evidence: None }));
        let state = fold(h.iter()).unwrap().unwrap();
        assert_eq!(state.status, Status::Failed { step: *step, reason: format!("{step} broke") });
        let decisions = decide(&state, &EnvironmentView { may_start: true, ..Default::default() });
        assert!(matches!(&decisions[0], Decision::Record(Event::DeploymentFailed(f)) if f.step == *step), "{decisions:?}");
    }
}

#[test]
fn a_duplicate_outcome_changes_nothing() {
    let mut h = happy_path()[..5].to_vec(); // .., ServicesChecked, dispatched checkout, CheckedOut
    h.push(outcome(Step::CheckServices));
    h.push(Event::StepFailed(StepFailed { step: Step::Checkout, reason: "late".into(), attempt: 1, details: vec![], evidence: None }));
    check(&h, &["dispatch build"]);
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.completed, vec![Step::CheckServices, Step::Checkout]);
    assert_eq!(state.status, Status::Running);
}

#[test]
fn a_known_image_of_the_same_commit_goes_to_the_build_as_its_reuse_candidate() {
    let h = &happy_path()[..5]; // requested, services checked, checked out
    let source = slipway_proto::command::ImageSource { deployment_id: Uuid::from_u128(7), image_id: "sha256:test".into() };
    let env = EnvironmentView { reusable_image: Some(source.clone()), ..view() };
    let state = fold(h.iter()).unwrap().unwrap();
    let decisions = decide(&state, &env);
    let [Decision::Dispatch(Command::RunStep(run))] = decisions.as_slice() else { panic!("{decisions:?}") };
    assert_eq!((run.step, run.context.reuse.as_ref()), (Step::Build, Some(&source)));
    // Other steps never carry it.
    let state = fold(happy_path()[..3].iter()).unwrap().unwrap();
    let decisions = decide(&state, &env);
    let [Decision::Dispatch(Command::RunStep(run))] = decisions.as_slice() else { panic!("{decisions:?}") };
    assert_eq!((run.step, run.context.reuse.as_ref()), (Step::Checkout, None));
}

#[test]
fn a_promotion_reuses_checkout_and_image_but_runs_the_release_commands() {
    let Event::DeploymentRequested(mut r) = requested() else { unreachable!() };
    r.promoted_from = Some(ReleaseSource {
        deployment_id: Uuid::from_u128(2),
        commit: "7e57".into(),
        image_id: "sha256:test".into(),
        config: serde_json::json!({}),
    });
    let mut h = vec![Event::DeploymentRequested(r), dispatched(Step::CheckServices), outcome(Step::CheckServices)];
    check(&h, &["record StepSkipped"]);
    h.push(Event::StepSkipped(StepSkipped { step: Step::Checkout, reason: "promotion".into() }));
    check(&h, &["record ImageReused"]);
    h.push(Event::ImageReused(ImageReused { image_id: "sha256:test".into(), source_deployment: Uuid::from_u128(2) }));
    h.push(dispatched(Step::Deploy));
    h.push(outcome(Step::Deploy));
    check(&h, &["dispatch release"]);
}

#[test]
fn a_step_without_an_outcome_by_its_deadline_is_dispatched_again_after_a_pause_then_failed() {
    let attempt = |n: u32, deadline: i64| {
        Event::StepDispatched(StepDispatched {
            step: Step::Checkout,
            command_id: Uuid::from_u128(500),
            attempt: n,
            deadline: Some(t(deadline)),
            dispatched_at: None,
        })
    };
    let mut h = happy_path()[..3].to_vec(); // requested, services checked
    h.push(attempt(1, 60));
    let at = |now: i64| EnvironmentView { now: t(now), ..view() };
    check_with(&h, &at(59), &["wake at 60"]);
    // Past the deadline: a 5 s pause (the default backoff), then attempt 2.
    check_with(&h, &at(60), &["wake at 65"]);
    let state = fold(h.iter()).unwrap().unwrap();
    let decisions = decide(&state, &at(65));
    // The same command (same id) goes out again, as attempt 2.
    let [Decision::DispatchAgain { command_id, command: Command::RunStep(run) }] = decisions.as_slice() else { panic!("{decisions:?}") };
    assert_eq!((run.step, run.attempt, command_id.as_u128()), (Step::Checkout, 2, 500));
    h.push(attempt(2, 130));
    check_with(&h, &at(131), &["wake at 140"]);
    h.push(attempt(3, 200));
    check_with(&h, &at(200), &["record StepFailed"]);
    let state = fold(h.iter()).unwrap().unwrap();
    let Decision::Record(Event::StepFailed(f)) = &decide(&state, &at(200))[0] else { panic!() };
    assert!(f.reason.contains("attempt 3 of 3") && f.reason.contains("slipway.step.checkout"), "{}", f.reason);
    // A late outcome of an earlier attempt still moves the deployment on.
    let mut late = h[..h.len() - 1].to_vec();
    late.push(outcome(Step::Checkout));
    check_with(&late, &at(135), &["dispatch build"]);
}

fn cancel(reason: &str) -> Event {
    Event::CancelRequested(CancelRequested { reason: reason.into() })
}

fn verdict(step: Step, reason: &str) -> Event {
    Event::DeploymentFailed(DeploymentFailed { step, reason: reason.into() })
}

#[test]
fn a_cancel_during_the_build_fails_the_build_with_who_cancelled() {
    let mut h = happy_path()[..6].to_vec(); // build dispatched, no outcome
    h.push(cancel("cancelled by token:ops"));
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.status, Status::Failed { step: Step::Build, reason: "cancelled by token:ops".into() });
    assert_eq!(state.cancelled.as_deref(), Some("cancelled by token:ops"));
    check(&h, &["record DeploymentFailed", "finish failed"]);
}

#[test]
fn a_cancel_after_containers_started_removes_them_and_keeps_the_old_release() {
    let mut h = happy_path()[..10].to_vec(); // web container started, release dispatched
    h.push(cancel("cancelled by cli:ann"));
    check(&h, &["record DeploymentFailed", "finish failed", "remove web-1"]);
}

#[test]
fn a_cancel_of_a_queued_deployment_fails_it_before_any_step() {
    let h = vec![requested(), cancel("cancelled by cli:ann")];
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.status, Status::Failed { step: Step::CheckServices, reason: "cancelled by cli:ann".into() });
    check_queued(&h, false, &["record DeploymentFailed", "finish failed"]);
}

#[test]
fn a_cancel_during_the_switch_moves_the_route_back() {
    let mut h = switching();
    h.push(cancel("cancelled by cli:ann"));
    check_with(
        &h,
        &with_routers(&[("a", 5)]),
        &["record DeploymentFailed", "finish failed", "route Revert 127.0.0.1:1000", "retire web-1,worker-1"],
    );
}

#[test]
fn a_step_failure_keeps_its_reason_when_a_cancel_follows() {
    let mut h = build_fails();
    h.push(cancel("cancelled by cli:ann"));
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.status, Status::Failed { step: Step::Build, reason: "RUN exited 1".into() });
}

#[test]
fn a_late_outcome_after_the_verdict_is_kept_and_its_containers_removed() {
    let mut h = happy_path()[..8].to_vec(); // deploy dispatched
    h.push(cancel("cancelled by cli:ann"));
    h.push(verdict(Step::Deploy, "cancelled by cli:ann"));
    // The worker was mid-step: its container started after the verdict.
    h.push(outcome(Step::Deploy));
    let state = fold(h.iter()).expect("a late outcome is legal").unwrap();
    assert!(state.is_finished());
    assert_eq!(state.late_containers, vec!["web-1".to_string()]);
    check(&h, &["remove web-1"]);
    h.push(Event::ContainersRemoved(ContainersRemoved { containers: vec!["web-1".into()] }));
    check(&h, &[]);
}

#[test]
fn a_late_duplicate_of_a_serving_container_is_never_removed() {
    let mut h = switching();
    h.push(Event::TrafficSwitched(TrafficSwitched { route_version: 5, routers: vec!["a".into(), "b".into()] }));
    h.push(Event::DeploymentSucceeded(DeploymentSucceeded { image_id: "sha256:1".into(), commit: "c0ffee".into() }));
    // A redelivered deploy command reports the same (deterministic) container.
    h.push(outcome(Step::Deploy));
    let state = fold(h.iter()).unwrap().unwrap();
    assert!(state.late_containers.is_empty());
    check(&h, &[]);
}

#[test]
fn nothing_but_cleanup_and_late_outcomes_may_follow_the_verdict() {
    let mut h = build_fails();
    h.push(verdict(Step::Build, "RUN exited 1"));
    h.push(cancel("too late"));
    assert!(fold(h.iter()).is_err());
}

/// A build dispatched at t(0) with a one-hour deadline, as `attempt`.
fn build_dispatched(attempt: u32, at: i64) -> Vec<Event> {
    let mut h = happy_path()[..5].to_vec(); // checked out
    h.push(Event::StepDispatched(StepDispatched {
        step: Step::Build,
        command_id: Uuid::from_u128(700),
        attempt,
        deadline: Some(t(at + 3600)),
        dispatched_at: Some(t(at)),
    }));
    h
}

fn beating(now: i64, beat: Option<i64>) -> EnvironmentView {
    EnvironmentView { now: t(now), heartbeat: beat.map(t), heartbeat_timeout: chrono::Duration::seconds(30), ..view() }
}

#[test]
fn a_build_not_yet_started_is_looked_at_again_a_heartbeat_timeout_later() {
    check_with(&build_dispatched(1, 0), &beating(10, None), &["wake at 40"]);
}

#[test]
fn a_heartbeating_build_waits_for_the_next_beat() {
    check_with(&build_dispatched(1, 0), &beating(100, Some(95)), &["wake at 125"]);
}

#[test]
fn a_build_whose_worker_went_silent_is_dispatched_again_under_the_same_id_long_before_its_deadline() {
    let h = build_dispatched(1, 0);
    // Last beat at 95: silent from 125, then the 5 s pause.
    check_with(&h, &beating(125, Some(95)), &["wake at 130"]);
    check_with(&h, &beating(130, Some(95)), &["dispatch build again as 700"]);
}

#[test]
fn a_beat_from_before_the_attempt_does_not_count() {
    // Attempt 2 went out at 130; the hung worker's last beat (95) is older.
    check_with(&build_dispatched(2, 130), &beating(140, Some(95)), &["wake at 170"]);
}

#[test]
fn a_build_silent_on_its_last_attempt_fails_saying_so() {
    let h = build_dispatched(3, 0);
    let state = fold(h.iter()).unwrap().unwrap();
    let decisions = decide(&state, &beating(200, Some(100)));
    let [Decision::Record(Event::StepFailed(f))] = decisions.as_slice() else { panic!("{decisions:?}") };
    assert!(f.reason.contains("stopped heartbeating") && f.reason.contains("attempt 3 of 3"), "{}", f.reason);
}

#[test]
fn other_steps_are_not_watched_by_heartbeat() {
    let mut h = happy_path()[..7].to_vec(); // built
    h.push(Event::StepDispatched(StepDispatched {
        step: Step::Deploy,
        command_id: Uuid::from_u128(800),
        attempt: 1,
        deadline: Some(t(900)),
        dispatched_at: Some(t(0)),
    }));
    check_with(&h, &beating(100, Some(10)), &["wake at 900"]);
}

// --- The watch after the switch, and the automatic rollback ---------------

fn watch_started(window: i64) -> Event {
    Event::ReleaseWatchStarted(ReleaseWatchStarted { until: t(window), window_ms: window as u64 * 1000 })
}

fn watched() -> Event {
    Event::ReleaseWatched(ReleaseWatched { watched_ms: 60_000, probes: 60, failed_probes: 0, containers: vec!["web-1".into()] })
}

fn watch_failed(reason: &str) -> Event {
    Event::StepFailed(StepFailed {
        step: Step::Watch,
        reason: reason.into(),
        attempt: 1,
        details: vec!["last words".into()],
        evidence: None,
    })
}

/// Switched (route version 5, routers a and b) and watched until t(60).
fn watching() -> Vec<Event> {
    let mut h = switching();
    h.push(Event::TrafficSwitched(TrafficSwitched { route_version: 5, routers: vec!["a".into(), "b".into()] }));
    h.push(watch_started(60));
    h.push(Event::StepDispatched(StepDispatched {
        step: Step::Watch,
        command_id: Uuid::from_u128(700),
        attempt: 1,
        deadline: Some(t(60 + 900)),
        dispatched_at: Some(t(0)),
    }));
    h
}

/// `watching()`, then the watch saw the web container exit.
fn watch_fails() -> Vec<Event> {
    let mut h = watching();
    h.push(watch_failed("container web-1 exited with code 3 2s after the traffic switch"));
    h
}

fn rolled_back(to: Option<u128>) -> Event {
    Event::ReleaseRolledBack(ReleaseRolledBack {
        to: to.map(Uuid::from_u128),
        reason: "container web-1 exited with code 3".into(),
        details: vec![],
        route_version: 6,
        routers: vec!["a".into(), "b".into()],
        deadline: t(10),
        router_errors: vec![],
    })
}

#[test]
fn after_every_router_switched_the_release_is_watched_until_its_window_ends() {
    let mut h = switching();
    h.push(Event::TrafficSwitched(TrafficSwitched { route_version: 5, routers: vec![] }));
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &WATCH);
    let state = fold(h.iter()).unwrap().unwrap();
    let decisions = decide(&state, &view());
    let Decision::Record(Event::ReleaseWatchStarted(w)) = &decisions[0] else { panic!("{decisions:?}") };
    assert_eq!((w.until, w.window_ms), (t(60), 60_000));
    let Decision::Dispatch(Command::RunStep(run)) = &decisions[1] else { panic!("{decisions:?}") };
    assert_eq!(run.context.watch_until, Some(t(60)), "the worker learns when the window ends");

    // Watching: the old release is not retired, the deployment is not a success yet.
    let state = fold(watching().iter()).unwrap().unwrap();
    assert!(state.is_watching());
    assert_eq!(state.status_word(), "watching");
    check_with(&watching(), &with_routers(&[("a", 5), ("b", 5)]), &["wake at 960"]);
}

#[test]
fn a_release_watched_to_the_end_succeeds_and_only_then_retires_the_old_one() {
    let mut h = watching();
    h.push(watched());
    let mut expect = vec!["route Settled 127.0.0.1:32768"];
    expect.extend(SUCCESS);
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &expect);
    // A first release had no standby: nothing to settle, nothing to retire.
    let first = EnvironmentView { active: None, ..with_routers(&[("a", 5), ("b", 5)]) };
    check_with(&h, &first, &["record DeploymentSucceeded", "finish succeeded"]);
    h.push(Event::DeploymentSucceeded(DeploymentSucceeded { image_id: "sha256:1".into(), commit: "c0ffee".into() }));
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.status_word(), "succeeded");
}

#[test]
fn with_watch_off_the_switch_is_the_success() {
    let mut h = switching();
    for e in h.iter_mut() {
        if let Event::CheckedOut(c) = e {
            c.config = serde_json::json!({"web": {"watch": "0ms"}});
        }
    }
    let mut expect = vec!["record TrafficSwitched"];
    expect.extend(SUCCESS);
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &expect);
    // Nothing stands by when nothing is watched.
    h.truncate(h.len() - 1);
    check_with(&h, &with_routers(&[]), &["record TrafficSwitchRequested", "route Cutover 127.0.0.1:32768"]);
}

#[test]
fn a_watch_that_fails_routes_back_to_the_old_release_then_waits_for_every_router() {
    check_with(&watch_fails(), &with_routers(&[("a", 5), ("b", 5)]), &["record ReleaseRolledBack", "route Rollback 127.0.0.1:1000"]);
    let state = fold(watch_fails().iter()).unwrap().unwrap();
    let mut after_switch = with_routers(&[("a", 5), ("b", 5)]);
    after_switch.traffic.as_mut().unwrap().routes_version = 5;
    let decisions = decide(&state, &after_switch);
    let Decision::Record(Event::ReleaseRolledBack(r)) = &decisions[0] else { panic!("{decisions:?}") };
    assert_eq!(r.to, Some(Uuid::from_u128(1)));
    assert_eq!((r.route_version, r.deadline), (6, t(10)));
    assert!(r.reason.contains("exited with code 3"), "{}", r.reason);
    assert_eq!(r.details, vec!["last words".to_string()], "the watch's evidence goes with it");

    let mut h = watch_fails();
    h.push(rolled_back(Some(1)));
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.status_word(), "rolling back");
    // Router b has not applied the route back yet.
    check_with(&h, &with_routers(&[("a", 6), ("b", 5)]), &["wake at 10"]);
    // Both have: failed, with the new containers drained; the old release serves.
    check_with(&h, &with_routers(&[("a", 6), ("b", 6)]), &["record DeploymentFailed", "finish failed", "retire web-1,worker-1"]);
    let decisions = decide(&state, &with_routers(&[("a", 6), ("b", 6)]));
    let Decision::Record(Event::DeploymentFailed(f)) = &decisions[0] else { panic!("{decisions:?}") };
    assert_eq!(f.step, Step::Watch);
    assert!(f.reason.contains("exited with code 3") && f.reason.contains("routed back to"), "{}", f.reason);
}

#[test]
fn a_rollback_a_router_never_acknowledges_still_ends_failed_naming_it() {
    let mut h = watch_fails();
    h.push(rolled_back(Some(1)));
    let late = EnvironmentView { now: t(10), ..with_routers(&[("a", 6), ("b", 5)]) };
    check_with(&h, &late, &["record DeploymentFailed", "finish failed", "retire web-1,worker-1"]);
    let state = fold(h.iter()).unwrap().unwrap();
    let Decision::Record(Event::DeploymentFailed(f)) = &decide(&state, &late)[0] else { panic!() };
    assert!(f.reason.contains("router b did not acknowledge route version 6"), "{}", f.reason);
}

#[test]
fn a_watch_failure_without_routers_rolls_back_and_fails_at_once() {
    check(
        &watch_fails(),
        &["record ReleaseRolledBack", "route Rollback 127.0.0.1:1000", "record DeploymentFailed", "finish failed", "retire web-1,worker-1"],
    );
}

#[test]
fn a_first_release_that_fails_its_watch_routes_to_nothing() {
    let env = EnvironmentView { active: None, ..view() };
    check_with(
        &watch_fails(),
        &env,
        &["record ReleaseRolledBack", "route Rollback ", "record DeploymentFailed", "finish failed", "retire web-1,worker-1"],
    );
}

#[test]
fn a_cancel_while_watching_rolls_back_too() {
    let mut h = watching();
    h.push(cancel("cancelled by token:ops"));
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &["record ReleaseRolledBack", "route Rollback 127.0.0.1:1000"]);
}

#[test]
fn a_watch_outcome_after_the_rollback_changes_nothing() {
    for late in [watched(), watch_failed("container worker-1 exited with code 137")] {
        let mut h = watch_fails();
        h.push(rolled_back(Some(1)));
        h.push(late.clone());
        let state = fold(h.iter()).expect("a late watch outcome is legal");
        assert_eq!(state.unwrap().status_word(), "rolling back");
        h.push(Event::DeploymentFailed(DeploymentFailed { step: Step::Watch, reason: "rolled back".into() }));
        h.push(late);
        assert!(fold(h.iter()).unwrap().unwrap().is_finished());
    }
    // A healthy watch that reports after a cancel, before the rollback was recorded.
    let mut h = watching();
    h.push(cancel("cancelled"));
    h.push(watched());
    assert!(matches!(fold(h.iter()).unwrap().unwrap().status, Status::Failed { step: Step::Watch, .. }));
}

#[test]
fn a_lost_watch_is_dispatched_again_with_the_same_end() {
    let late = EnvironmentView { now: t(960), ..with_routers(&[("a", 5), ("b", 5)]) };
    check_with(&watching(), &late, &["wake at 965"]);
    let later = EnvironmentView { now: t(965), ..late };
    check_with(&watching(), &later, &["dispatch watch again as 700"]);
    let state = fold(watching().iter()).unwrap().unwrap();
    let Decision::DispatchAgain { command: Command::RunStep(run), .. } = &decide(&state, &later)[0] else { panic!() };
    assert_eq!(run.context.watch_until, Some(t(60)));
}

#[test]
fn without_routers_the_release_recorded_as_serving_names_its_containers_and_upstreams() {
    // The next deployment retires what this records; a failed one reverts to it.
    let mut h = happy_path();
    for e in h.iter_mut() {
        if let Event::CheckedOut(c) = e {
            c.config = serde_json::json!({"web": {"watch": "0ms"}});
        }
    }
    let state = fold(h.iter()).unwrap().unwrap();
    let finished = decide(&state, &view()).into_iter().find_map(|d| match d {
        Decision::RecordOnEnvironment(Event::DeploymentFinished(f)) => Some(f),
        _ => None,
    });
    let finished = finished.expect("succeeds at once");
    assert_eq!(finished.containers, vec!["web-1".to_string(), "worker-1".to_string()]);
    assert_eq!(finished.upstreams, vec!["127.0.0.1:32768".to_string()]);
}

// --- The routers' 5xx and upstream-error counts during the watch ---------

/// Router `router`'s cumulative counts of route version `version` at t(at).
fn observed(router: &str, version: u64, requests: u64, errors_5xx: u64, upstream_errors: u64, at: i64) -> Event {
    Event::RouterErrorsObserved(RouterErrorsObserved {
        router_id: router.into(),
        route_version: version,
        requests,
        errors_5xx,
        upstream_errors,
        since: t(0),
        first_error_at: Some(t(1)),
        at: t(at),
    })
}

fn watching_with(observations: &[Event]) -> Vec<Event> {
    let mut h = watching();
    h.extend(observations.iter().cloned());
    h
}

#[test]
fn router_errors_above_the_rate_fail_the_watch_naming_the_figures_the_routers_and_the_times() {
    let h = watching_with(&[observed("a", 5, 40, 12, 0, 2), observed("b", 5, 20, 3, 1, 3)]);
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &["record StepFailed"]);
    let state = fold(h.iter()).unwrap().unwrap();
    let decisions = decide(&state, &with_routers(&[("a", 5), ("b", 5)]));
    let [Decision::Record(Event::StepFailed(f))] = decisions.as_slice() else { panic!("{decisions:?}") };
    assert_eq!(f.step, Step::Watch);
    assert_eq!(
        f.reason,
        "router errors: 16 of 60 requests to the release failed (27%: 15 answered 5xx, 1 upstream errors), \
         above web.watch_max_error_rate 10%, on routers a, b by 08:00:03.000 UTC\
         ; first error at 08:00:01.000 UTC (1.000s after the traffic switch)",
    );
    assert_eq!(f.details.len(), 2, "{:?}", f.details);
    assert!(f.details[0].starts_with("router a: 40 requests, 12 answered 5xx, 0 upstream errors"), "{}", f.details[0]);

    // Then the existing rollback path, with the routers' figures as evidence.
    let mut failed = h.clone();
    failed.push(Event::StepFailed(f.clone()));
    let state = fold(failed.iter()).unwrap().unwrap();
    let decisions = decide(&state, &with_routers(&[("a", 5), ("b", 5)]));
    let Decision::Record(Event::ReleaseRolledBack(r)) = &decisions[0] else { panic!("{decisions:?}") };
    assert!(r.reason.starts_with("router errors: 16 of 60"), "{}", r.reason);
    assert_eq!(r.router_errors.iter().map(|o| (o.router_id.as_str(), o.errors())).collect::<Vec<_>>(), [("a", 12), ("b", 4)]);
    assert!(matches!(&decisions[1], Decision::RecordOnRoutes(Event::RouteChanged(c)) if c.reason == RouteReason::Rollback));
}

#[test]
fn few_errors_or_a_low_rate_do_not_fail_the_watch() {
    let env = with_routers(&[("a", 5), ("b", 5)]);
    // 4 errors in 4 requests: fewer than 5 errors is noise.
    check_with(&watching_with(&[observed("a", 5, 4, 4, 0, 2)]), &env, &["wake at 960"]);
    // 10 of 100 is not above 10%.
    check_with(&watching_with(&[observed("a", 5, 100, 9, 1, 2)]), &env, &["wake at 960"]);
    // 11 of 100 is.
    check_with(&watching_with(&[observed("a", 5, 100, 9, 2, 2)]), &env, &["record StepFailed"]);
}

#[test]
fn only_the_newest_counts_of_each_router_for_the_cutovers_route_version_count() {
    let env = with_routers(&[("a", 5), ("b", 5)]);
    // Another route version's counts (the old release's) are history only.
    check_with(&watching_with(&[observed("a", 4, 50, 50, 0, 2)]), &env, &["wake at 960"]);
    // Counts are cumulative: a newer, healthier total replaces the older one,
    // and an older one arriving late does not replace the newer.
    let h = watching_with(&[observed("a", 5, 10, 6, 0, 2), observed("a", 5, 1000, 6, 0, 5), observed("a", 5, 10, 6, 0, 3)]);
    check_with(&h, &env, &["wake at 960"]);
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.router_errors["a"].requests, 1000);
}

#[test]
fn the_rate_is_the_apps_own_setting() {
    let mut h = watching_with(&[observed("a", 5, 100, 30, 0, 2)]);
    for e in h.iter_mut() {
        if let Event::CheckedOut(c) = e {
            c.config = serde_json::json!({"web": {"watch_max_error_rate": "50%"}});
        }
    }
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &["wake at 960"]);
    for e in h.iter_mut() {
        if let Event::CheckedOut(c) = e {
            c.config = serde_json::json!({"web": {"watch_max_error_rate": "100%"}});
        }
    }
    h.push(observed("a", 5, 100, 100, 0, 3));
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &["wake at 960"]);
}

#[test]
fn router_counts_before_the_watch_wait_for_it_and_after_the_verdict_change_nothing() {
    // Counted while routers were still switching: kept, and acted on once
    // every router switched and the watch began.
    let mut h = switching();
    h.push(observed("a", 5, 10, 10, 0, 1));
    check_with(&h, &with_routers(&[("a", 5), ("b", 4)]), &["wake at 10"]);
    h.push(Event::TrafficSwitched(TrafficSwitched { route_version: 5, routers: vec!["a".into(), "b".into()] }));
    h.push(watch_started(60));
    check_with(&h, &with_routers(&[("a", 5), ("b", 5)]), &["record StepFailed"]);

    // Reports that arrive once the watch failed, or after the verdict, are legal and ignored.
    let mut h = watch_fails();
    h.push(rolled_back(Some(1)));
    h.push(observed("a", 5, 10, 10, 0, 4));
    let state = fold(h.iter()).expect("a late report is legal").unwrap();
    assert!(state.router_errors.is_empty());
    h.push(Event::DeploymentFailed(DeploymentFailed { step: Step::Watch, reason: "rolled back".into() }));
    h.push(observed("a", 5, 20, 20, 0, 5));
    assert!(fold(h.iter()).unwrap().unwrap().is_finished());
}
