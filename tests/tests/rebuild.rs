//! Rebuilding the projections from the log gives identical state (the read
//! models, which the engine's subscriber kept, row for row), and an engine
//! that re-reads the whole log decides nothing new.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use futures::TryStreamExt;
use slipway_engine::rebuild;
use slipway_engine::requests::{self, DeployRequest};
use slipway_engine::Status;
use slipway_proto::event::BuildMode;
use slipway_store::read_model::DeploymentQuery;
use slipway_store::Position;
use slipway_tests::*;

/// The events of every stream but the routers' own: a router writes a
/// heartbeat on `router-<id>` every so often whatever the engine does, so
/// those say nothing about what the engine decided.
async fn decided(h: &Harness) -> Vec<String> {
    let all = h.store.stream_all(Position::START).try_collect::<Vec<_>>().await.unwrap();
    all.iter()
        .filter(|r| !r.stream.starts_with("router-"))
        .map(|r| format!("{} v{} {}", r.stream, r.version, r.envelope.message_type))
        .collect()
}

/// Every row of every read model, as text.
async fn read_models(h: &Harness) -> (Vec<String>, Vec<String>, Vec<String>) {
    let models = h.store.read_models();
    let deployments = models.deployments(&DeploymentQuery { limit: 1_000, ..Default::default() }).await.unwrap();
    (
        models.projects(None, 1_000).await.unwrap().iter().map(|p| format!("{p:?}")).collect(),
        models.environments().await.unwrap().iter().map(|e| format!("{e:?}")).collect(),
        deployments.iter().map(|d| format!("{d:?}")).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projections_rebuilt_from_the_log_are_identical_and_replaying_decides_nothing_new() {
    let h = Harness::start(Backends::Embedded).await;
    let repo = AppRepo::new();
    h.create_project(&repo.path()).await;
    let mut real = Vec::new();
    for v in ["v1", "v2"] {
        repo.commit(&busybox_app(v, "[web]\nport = 80\n", ""), v);
        let d = h.deploy("live", "main").await;
        assert_eq!(d.status, Status::Succeeded);
        real.push(d);
    }
    h.wait_no_containers(real[0].id).await;
    // Many more deployments: dry runs on both environments.
    let mut ids = Vec::new();
    for n in 0..30 {
        let req = DeployRequest {
            project: h.project.clone(),
            environment: if n % 2 == 0 { "test".into() } else { "live".into() },
            git_ref: Some("main".into()),
            mode: BuildMode::Local,
            no_cache: false,
            run_release: false,
            dry_run: true,
        };
        ids.push(requests::request_deployment(&*h.store, "test", req).await.unwrap().unwrap());
    }
    for id in ids {
        assert_eq!(h.wait_finished(id, Duration::from_secs(60)).await.status, Status::Succeeded);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The engine's read-model subscriber keeps up on its own: nothing here caught it up.
    let head = h.store.stream_all(Position::START).try_collect::<Vec<_>>().await.unwrap().last().unwrap().position;
    eventually("the read models to reach the log's head", Duration::from_secs(30), || async {
        (h.store.read_models().position().await.unwrap() >= head).then_some(())
    })
    .await;
    let live = read_models(&h).await;
    assert_eq!(live.2.len(), 32, "{:?}", live.2);
    assert!(live.2.iter().all(|d| d.contains("status: \"succeeded\"")), "{:?}", live.2);
    let serving = format!("environment: \"live\", serving: Some({})", real[1].id);
    assert!(live.1.iter().any(|e| e.contains(&serving)), "{:?}", live.1);
    let before = rebuild::fold_all(&*h.store).await.unwrap();
    let count = decided(&h).await;
    assert!(before.broken.is_empty(), "{:?}", before.broken);
    assert!(before.streams.len() > 30, "{} streams", before.streams.len());

    let rebuilt = rebuild::rebuild(&*h.store).await.unwrap();
    assert_eq!(rebuilt, before, "folding again gives the same state");
    assert_eq!(read_models(&h).await, live, "the rebuilt read models equal the live ones, row for row");
    assert_eq!(rebuilt.digest(), before.digest());
    // An engine started now re-reads the whole log from the first event.
    let head = h.store.stream_all(Position::START).try_collect::<Vec<_>>().await.unwrap().last().unwrap().position;
    assert_eq!(h.store.operational().load_checkpoint(slipway_engine::driver::ENGINE_CHECKPOINT).await.unwrap(), Position::START);
    let (stop, shutdown) = slipway_node::manual();
    let driver = slipway_engine::driver::Driver::new(h.store.clone(), Default::default());
    let engine = tokio::spawn(driver.run(shutdown));
    eventually("the new engine to re-read the whole log", Duration::from_secs(60), || async {
        (h.store.operational().load_checkpoint(slipway_engine::driver::ENGINE_CHECKPOINT).await.unwrap() >= head).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    engine.await.unwrap().unwrap();
    let after = decided(&h).await;
    assert_eq!(after.len(), count.len(), "re-reading the log decided something again: {:?}", &after[count.len().min(after.len())..]);
    assert_eq!(rebuild::fold_all(&*h.store).await.unwrap().digest(), before.digest());
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v2\n".to_string()));
    h.shutdown().await;
}
