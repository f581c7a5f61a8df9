//! Cancelling a running deployment: it fails at the step it is at, the
//! containers it started are removed (also one a worker reports after the
//! verdict), and the release serving before keeps serving throughout.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use slipway_engine::requests;
use slipway_engine::Status;
use slipway_proto::event::BuildMode;
use slipway_proto::{Event, Step};
use slipway_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_mid_release_removes_the_new_containers_and_the_old_release_serves() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n", ""), "v1");
    h.create_project(&repo.path()).await;
    let v1 = h.deploy("test", "main").await;
    assert_eq!(v1.status, Status::Succeeded, "{:?}", h.events(v1.id).await);

    // v2's release command runs for a while: cancel it then.
    repo.commit(&busybox_app("v2", "[web]\nport = 80\n\n[release]\ncommands = [\"sleep 6\"]\n", ""), "v2");
    let id = h.request("test", "main", BuildMode::Local, true).await;
    // Its container, not only its dispatch: a worker that has not taken the
    // command yet would skip it once cancelled, and report nothing late.
    eventually("v2's release command to start", Duration::from_secs(120), || async {
        containers_with_label(&format!("slipway.deployment={id}")).iter().any(|c| c.contains("-release-")).then_some(())
    })
    .await;
    requests::request_cancel(&*h.store, "token:ops", id, "wrong branch").await.unwrap().unwrap();

    let d = h.wait_finished(id, Duration::from_secs(60)).await;
    let (step, reason) = failure(&d);
    assert_eq!(step, Step::Release);
    assert_eq!(reason, "cancelled by token:ops: wrong branch");
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v1\n".to_string()));
    h.wait_no_containers(id).await;
    // A second cancel is refused: it has finished.
    let again = requests::request_cancel(&*h.store, "token:ops", id, "").await.unwrap();
    assert!(matches!(again, Err(slipway_engine::rejection::Rejection::Conflict(m)) if m.contains("already failed")));
    // The release worker reports late (its command ran on); the history
    // stays readable and the next deployment goes through.
    eventually("the late release outcome", Duration::from_secs(30), || async {
        h.events(id).await.iter().any(|e| matches!(e, Event::ReleaseCommandsRan(_) | Event::StepFailed(_))).then_some(())
    })
    .await;
    assert!(h.deployment(id).await.is_finished());
    repo.commit(&busybox_app("v3", "[web]\nport = 80\n", ""), "v3");
    let v3 = h.deploy("test", "main").await;
    assert_eq!(v3.status, Status::Succeeded, "{:?}", h.events(v3.id).await);
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v3\n".to_string()));
    h.shutdown().await;
}
