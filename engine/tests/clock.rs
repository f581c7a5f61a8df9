//! The driver takes its time from a clock, so time can be moved instead of
//! waited for: with a `ManualClock` and no worker, a deployment's first
//! step is dispatched, nothing happens while the clock stands still, and
//! moving the clock past the step's deadline (and the retry pause) makes
//! the engine dispatch it again, then fail the deployment after the last
//! attempt — in milliseconds of real time, for a deadline of ten minutes.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::clock::ManualClock;
use slipway_engine::decider::Retries;
use slipway_engine::driver::{Driver, DriverOptions};
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::{Event, Step};
use slipway_store::{EventStore, SqliteStore};
use slipway_support::eventually;
use uuid::Uuid;

async fn events(store: &dyn EventStore, id: Uuid) -> Vec<Event> {
    store.read_stream(&deployment_stream(id), 1).await.unwrap().iter().map(|r| r.envelope.decode::<Event>().unwrap()).collect()
}

fn dispatches(events: &[Event]) -> Vec<(Step, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepDispatched(d) => Some((d.step, d.attempt)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_deadline_passes_when_the_clock_is_moved_not_when_time_passes() {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::in_memory().await.unwrap());
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let options = DriverOptions {
        step_timeout: Duration::from_secs(600),
        retries: Retries { max_attempts: 2, backoff: chrono::Duration::seconds(30) },
        clock: clock.clone(),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(Driver::new(store.clone(), options).run(async move {
        let _ = stopped.await;
    }));
    let project = NewProject {
        name: "shop".into(),
        repository: "/srv/git/shop".into(),
        default_branch: "main".into(),
        environments: vec!["live".into()],
        mirror_of: None,
    };
    requests::create_project(&*store, "test", project).await.unwrap().unwrap();
    let request = DeployRequest {
        project: "shop".into(),
        environment: "live".into(),
        git_ref: None,
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        dry_run: false,
    };
    let id = requests::request_deployment(&*store, "cli:test", request).await.unwrap().unwrap();
    let first = vec![(Step::CheckServices, 1)];
    eventually("the first dispatch", Duration::from_secs(10), || async { (dispatches(&events(&*store, id).await) == first).then_some(()) })
        .await;
    // Real time passes, the clock does not: nothing is dispatched again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dispatches(&events(&*store, id).await), first);
    // Past the deadline and the retry pause: the step's second attempt.
    clock.advance(chrono::Duration::seconds(601));
    clock.advance(chrono::Duration::seconds(31));
    eventually("the second attempt", Duration::from_secs(10), || async {
        (dispatches(&events(&*store, id).await) == vec![(Step::CheckServices, 1), (Step::CheckServices, 2)]).then_some(())
    })
    .await;
    // Past the second deadline: the last attempt is spent, the deployment fails.
    clock.advance(chrono::Duration::seconds(601));
    let failed = eventually("the deployment to fail", Duration::from_secs(10), || async {
        events(&*store, id).await.into_iter().find_map(|e| match e {
            Event::DeploymentFailed(f) => Some(f),
            _ => None,
        })
    })
    .await;
    assert_eq!(failed.step, Step::CheckServices);
    assert!(failed.reason.contains("attempt 2 of 2"), "{}", failed.reason);
    // The deadlines recorded are the clock's time, not the system's: the
    // second attempt's is ten minutes after the moved clock's 632 s.
    let deadlines: Vec<_> = events(&*store, id)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::StepDispatched(d) => d.deadline,
            _ => None,
        })
        .collect();
    assert_eq!(deadlines.len(), 2, "{deadlines:?}");
    assert_eq!(deadlines[1] - deadlines[0], chrono::Duration::seconds(632), "{deadlines:?}");
    stop.send(()).unwrap();
    driver.await.unwrap().unwrap();
}
