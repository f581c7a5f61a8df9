//! `DesiredView` against the full load it replaces: after every change —
//! a deployment on one environment, an environment added, one removed, a
//! new project — a refresh equals `load::desired` read afresh, and it read
//! only the environment streams that changed (one of fifty, not fifty).
//! On both backends.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use common::Setup;
use slipway_engine::desired::DesiredView;
use slipway_engine::load;
use slipway_engine::reconcile::Desired;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::*;
use slipway_proto::{Envelope, Event};
use slipway_store::{EventStore, ExpectedVersion};
use uuid::Uuid;

async fn append(store: &dyn EventStore, stream: &str, event: Event) {
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "test".into(), trace: None };
    let envelope = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), stream, &event, meta).unwrap();
    store.append(stream, ExpectedVersion::Any, &[envelope], &[]).await.unwrap().unwrap();
}

/// (project, environment, version, serving) of each, to compare.
fn summary(desired: &[Desired]) -> Vec<(String, String, u64, Option<Uuid>)> {
    desired
        .iter()
        .map(|d| (d.project.clone(), d.environment.clone(), d.state.version, d.state.active.as_ref().map(|a| a.deployment)))
        .collect()
}

#[track_caller]
fn same(view: &DesiredView, fresh: &[Desired]) {
    assert_eq!(summary(view.environments()), summary(fresh));
}

#[tokio::test]
async fn sqlite_a_refresh_reads_only_what_changed_and_equals_a_fresh_load() {
    let setup = Setup::sqlite().await;
    a_refresh_reads_only_what_changed(&setup).await;
}

#[tokio::test]
async fn postgres_a_refresh_reads_only_what_changed_and_equals_a_fresh_load() {
    let setup = Setup::postgres().await;
    a_refresh_reads_only_what_changed(&setup).await;
    setup.cleanup().await;
}

async fn a_refresh_reads_only_what_changed(setup: &Setup) {
    let store = &*setup.store;
    for n in 0..25 {
        setup.project(&format!("p{n:02}")).await;
    }
    let mut view = DesiredView::new();
    assert_eq!(view.refresh(store).await.unwrap(), 50, "the first refresh loads every environment");
    same(&view, &load::desired(store).await.unwrap());
    assert_eq!(view.refresh(store).await.unwrap(), 0, "nothing changed, nothing read");

    // A release starts serving p07 live.
    let d = Uuid::now_v7();
    let stream = environment_stream("p07", "live");
    append(store, &stream, Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: d })).await;
    let finished = DeploymentFinished {
        deployment_id: d,
        succeeded: true,
        containers: vec!["web".into()],
        upstreams: vec!["127.0.0.1:4000".into()],
        dry_run: false,
        host: "h".into(),
    };
    append(store, &stream, Event::DeploymentFinished(finished)).await;
    assert_eq!(view.refresh(store).await.unwrap(), 1, "one environment read again");
    same(&view, &load::desired(store).await.unwrap());
    let live = view.environments().iter().find(|e| e.project == "p07" && e.environment == "live").unwrap();
    assert_eq!(live.state.active.as_ref().map(|a| a.deployment), Some(d));
    assert!(live.settled_at.is_some());

    // An environment added to p03, one removed from p04, a new project.
    let at = chrono::Utc::now();
    let added = EnvironmentAdded { name: "pr-1".into(), inherits: None, preview: None, ttl_seconds: None, at };
    append(store, &project_stream("p03"), Event::EnvironmentAdded(added)).await;
    let removed = EnvironmentRemoved { name: "test".into(), reason: "gone".into(), cancelled: vec![], retired: None, route_removed: false };
    append(store, &project_stream("p04"), Event::EnvironmentRemoved(removed)).await;
    setup.project("zz").await;
    assert_eq!(view.refresh(store).await.unwrap(), 3, "p03 pr-1, zz test and zz live");
    let fresh = load::desired(store).await.unwrap();
    same(&view, &fresh);
    assert_eq!(fresh.len(), 52);
    assert!(!view.environments().iter().any(|e| e.project == "p04" && e.environment == "test"));
}
