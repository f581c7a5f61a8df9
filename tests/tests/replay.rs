//! Replaying a failed deployment: its release command fails because of
//! something outside Slipway (here: the time — the command passes only
//! after a moment); once that is fixed, `replay` resumes at the release
//! without rebuilding, succeeds, and both histories name each other.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use slipway_engine::requests;
use slipway_engine::Status;
use slipway_proto::{Event, Step};
use slipway_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_resumes_at_the_failed_release_without_rebuilding() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let ready_at = chrono::Utc::now().timestamp() + 6;
    let toml = format!("[web]\nport = 80\n\n[release]\ncommands = [\"test $(date +%s) -ge {ready_at}\"]\n");
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", &toml, ""), "v1");
    h.create_project(&repo.path()).await;
    h.set("test", "GREETING", "hi", true).await;

    let failed = h.deploy("test", "main").await;
    let (step, _) = failure(&failed);
    assert_eq!(step, Step::Release);
    h.wait_no_containers(failed.id).await;
    // The branch moves on meanwhile; a replay still runs the recorded commit.
    repo.commit(&busybox_app("v2", "[web]\nport = 80\n", ""), "v2");

    // The outside cause goes away.
    while chrono::Utc::now().timestamp() < ready_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let replay = requests::request_replay(&*h.store, "test", failed.id, None).await.unwrap().unwrap();
    assert_eq!(replay.from_step, Step::Release);
    let d = h.wait_finished(replay.deployment_id, Duration::from_secs(120)).await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    assert_eq!(d.context.commit, failed.context.commit, "the recorded commit, not the branch's new head");
    assert_eq!(d.context.settings, failed.context.settings, "the recorded settings snapshot");
    let events = h.events(d.id).await;
    assert!(!events.iter().any(|e| matches!(e, Event::ImageBuilt(_))), "rebuilt: {events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::ImageReused(r) if r.source_deployment == failed.id)));
    assert!(events.iter().any(|e| matches!(e, Event::ReleaseCommandsRan(r) if !r.skipped && r.results[0].exit_code == 0)));
    assert!(matches!(&events[0], Event::DeploymentRequested(r) if r.replay_of.as_ref().map(|s| s.deployment_id) == Some(failed.id)));
    // The original's history names the replay; it is otherwise unchanged.
    let original = h.deployment(failed.id).await;
    assert_eq!(original.replayed_as, vec![d.id]);
    assert_eq!(original.status, failed.status);
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v1\n".to_string()));

    // A replay from a later step does not run the release commands again.
    let again = requests::request_replay(&*h.store, "test", d.id, Some(Step::HealthCheck)).await.unwrap().unwrap();
    let d2 = h.wait_finished(again.deployment_id, Duration::from_secs(120)).await;
    assert_eq!(d2.status, Status::Succeeded, "{:?}", h.events(d2.id).await);
    let events = h.events(d2.id).await;
    assert!(events.iter().any(|e| matches!(e, Event::StepSkipped(s) if s.step == Step::Release)), "{events:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_runs_the_release_commands_a_local_deployment_skipped() {
    let h = Harness::start(Backends::Embedded).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n\n[release]\ncommands = [\"echo migrated\"]\n", ""), "v1");
    h.create_project(&repo.path()).await;
    // Local mode without --migrate: the release commands are skipped.
    let d = h.deploy_with("test", "main", slipway_proto::event::BuildMode::Local, false).await;
    assert_eq!(d.status, Status::Succeeded);
    let skipped = h.events(d.id).await.into_iter().any(|e| matches!(e, Event::ReleaseCommandsRan(r) if r.skipped));
    assert!(skipped);

    let m = requests::request_migrate(&*h.store, "test", &h.project, "test").await.unwrap().unwrap();
    let migrated = h.wait_finished(m.deployment_id, Duration::from_secs(120)).await;
    assert_eq!(migrated.status, Status::Succeeded, "{:?}", h.events(migrated.id).await);
    let events = h.events(migrated.id).await;
    assert!(events.iter().any(|e| matches!(e, Event::ReleaseCommandsRan(r) if !r.skipped && r.results.len() == 1)), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::ImageBuilt(_))), "the serving image, not a rebuild");
    assert_eq!(migrated.context.image_id, d.context.image_id);
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v1\n".to_string()));
    h.shutdown().await;
}
