//! The decider and the deployment projection, given / when / then, over
//! named canned histories. No I/O.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

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
    })
}

fn dispatched(step: Step) -> Event {
    Event::StepDispatched(StepDispatched { step, command_id: Uuid::from_u128(step as u128 + 100), attempt: 1 })
}

fn outcome(step: Step) -> Event {
    match step {
        Step::CheckServices => Event::ServicesChecked(ServicesChecked { services: vec![] }),
        Step::Checkout => Event::CheckedOut(CheckedOut { commit: "c0ffee".into(), workspace: "/w".into(), config: serde_json::json!({}) }),
        Step::Build => Event::ImageBuilt(ImageBuilt {
            image_id: "sha256:1".into(),
            tag: "hello:c0ffee".into(),
            cache_used: false,
            duration_ms: 10,
            log_ref: None,
            log_digest: None,
        }),
        Step::Deploy => Event::WebContainerStarted(WebContainerStarted { container: "web-1".into(), host_port: 32768 }),
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
    h.push(Event::StepFailed(StepFailed { step: Step::Build, reason: "RUN exited 1".into(), attempt: 1, details: vec![] }));
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
    h.push(Event::StepFailed(StepFailed { step: Step::HealthCheck, reason: "timed out".into(), attempt: 1, details: vec![] }));
    h
}

#[track_caller]
fn check(given: &[Event], expect: &[&str]) {
    check_queued(given, true, expect)
}

/// Like `check`, saying whether the deployment heads its environment's queue.
#[track_caller]
fn check_queued(given: &[Event], may_start: bool, expect: &[&str]) {
    let state = fold(given.iter()).expect("legal history").expect("a deployment");
    let env = EnvironmentView { may_start, active: Some((Uuid::from_u128(1), vec!["old-web".into()])), drain_seconds: 30 };
    let got: Vec<String> = decide(&state, &env)
        .iter()
        .map(|d| match d {
            Decision::Dispatch(Command::RunStep(r)) => format!("dispatch {}", r.step),
            Decision::Dispatch(Command::RemoveContainers(r)) => format!("remove {}", r.containers.join(",")),
            Decision::Dispatch(Command::RetireRelease(r)) => format!("retire {}", r.containers.join(",")),
            Decision::Record(e) => format!("record {}", slipway_proto::envelope::Message::message_type(e)),
            Decision::RecordOnEnvironment(Event::DeploymentFinished(f)) => {
                format!("finish {}", if f.succeeded { "succeeded" } else { "failed" })
            }
            Decision::RecordOnEnvironment(e) => format!("environment {}", slipway_proto::envelope::Message::message_type(e)),
        })
        .collect();
    assert_eq!(got, expect);
}

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
fn all_steps_done_means_success_and_then_nothing() {
    check(&happy_path(), &["record DeploymentSucceeded", "finish succeeded", "retire old-web"]);
    let mut h = happy_path();
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
        h.push(Event::StepSkipped(StepSkipped { step, reason: "dry run".into() }));
    }
    check(&h, &["record DeploymentSucceeded", "finish succeeded", "retire old-web"]);
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
        h.push(Event::StepFailed(StepFailed { step: *step, reason: format!("{step} broke"), attempt: 1, details: vec![] }));
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
    h.push(Event::StepFailed(StepFailed { step: Step::Checkout, reason: "late".into(), attempt: 1, details: vec![] }));
    check(&h, &["dispatch build"]);
    let state = fold(h.iter()).unwrap().unwrap();
    assert_eq!(state.completed, vec![Step::CheckServices, Step::Checkout]);
    assert_eq!(state.status, Status::Running);
}
