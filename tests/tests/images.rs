//! Image re-use on real Docker: live re-uses the image test built for the
//! same commit (no build), a new commit builds, a mirror project deploys its
//! original's image, and an image that is gone is built again.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use slipway_engine::requests::{self, NewProject};
use slipway_engine::Status;
use slipway_proto::event::BuildMode;
use slipway_proto::Event;
use slipway_tests::*;

const APP: &str = "[web]\nport = 80\n";

fn built(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::ImageBuilt(_)))
}

fn reused_from(events: &[Event]) -> Option<uuid::Uuid> {
    events.iter().find_map(|e| match e {
        Event::ImageReused(r) => Some(r.source_deployment),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_reuses_the_image_test_built_and_a_new_commit_builds() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", APP, ""), "v1");
    h.create_project(&repo.path()).await;

    let test = h.deploy_with("test", &v1, BuildMode::Cloud, true).await;
    assert_eq!(test.status, Status::Succeeded);
    assert!(built(&h.events(test.id).await));

    let live = h.deploy_with("live", &v1, BuildMode::Cloud, true).await;
    assert_eq!(live.status, Status::Succeeded, "{:?}", h.events(live.id).await);
    let events = h.events(live.id).await;
    assert!(!built(&events), "live built again: {events:?}");
    assert_eq!(reused_from(&events), Some(test.id));
    assert_eq!(live.context.image_id, test.context.image_id);
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()));

    // v2 also gains an unpinned install (never run: `true ||`), which the
    // build records as a warning with its line, without failing.
    let v2 = repo.commit(&busybox_app("v2", APP, "RUN true || apt-get install -y curl"), "v2");
    let live2 = h.deploy_with("live", &v2, BuildMode::Cloud, true).await;
    assert_eq!(live2.status, Status::Succeeded, "{:?}", h.events(live2.id).await);
    let events = h.events(live2.id).await;
    let build = events.iter().find_map(|e| match e {
        Event::ImageBuilt(b) => Some(b.clone()),
        _ => None,
    });
    let build = build.expect("a new commit must build");
    assert!(!build.cache_used, "cloud mode builds without the layer cache");
    let found: Vec<_> = build.warnings.iter().map(|w| (w.file.as_str(), w.line, w.rule.as_str())).collect();
    assert_eq!(found, vec![("Dockerfile", 4, "apt-unpinned")]);
    let v1_build = h.events(test.id).await.into_iter().find_map(|e| match e {
        Event::ImageBuilt(b) => Some(b),
        _ => None,
    });
    assert!(v1_build.unwrap().warnings.is_empty(), "FROM scratch and COPY are pinned");
    assert_ne!(live2.context.image_id, test.context.image_id);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirror_deploys_its_originals_image_and_a_missing_image_is_built_again() {
    let h = Harness::start(Backends::Embedded).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", APP, ""), "v1");
    h.create_project(&repo.path()).await;
    let mirror = format!("{}-m", h.project);
    let new = NewProject {
        name: mirror.clone(),
        repository: String::new(),
        default_branch: "main".into(),
        environments: vec!["live".into()],
        mirror_of: Some(h.project.clone()),
    };
    requests::create_project(&*h.store, "test", new).await.unwrap().unwrap();
    let original = h.deploy_with("test", &v1, BuildMode::Cloud, true).await;
    assert_eq!(original.status, Status::Succeeded);

    let id = h.request_for(&mirror, "live", &v1).await;
    let m = h.wait_finished(id, std::time::Duration::from_secs(120)).await;
    assert_eq!(m.status, Status::Succeeded, "{:?}", h.events(m.id).await);
    assert_eq!(reused_from(&h.events(m.id).await), Some(original.id));
    assert_eq!(m.context.image_id, original.context.image_id);
    assert_eq!(
        get_via(h.router_addr(), &slipway_node::host_name(&mirror, "live", "localhost"), "/", std::time::Duration::from_secs(5))
            .await
            .unwrap(),
        (200, "v1\n".to_string())
    );
    // A commit the original never built: the mirror builds it once, and the
    // original re-uses the mirror's build in turn.
    let v2 = repo.commit(&busybox_app("v2", APP, ""), "v2");
    let id = h.request_for(&mirror, "live", &v2).await;
    let m2 = h.wait_finished(id, std::time::Duration::from_secs(120)).await;
    assert_eq!(m2.status, Status::Succeeded);
    assert!(built(&h.events(m2.id).await));
    let o2 = h.deploy_with("live", &v2, BuildMode::Cloud, true).await;
    assert_eq!(o2.status, Status::Succeeded);
    assert_eq!(reused_from(&h.events(o2.id).await), Some(m2.id), "the original re-uses its mirror's build");
    remove_containers_with_label(&format!("slipway.project={mirror}"));

    // The image is gone (pruned): the next deployment of that commit builds it.
    remove_containers_with_label(&format!("slipway.project={}", h.project));
    let image = original.context.image_id.clone().unwrap();
    // --no-prune: the image only. Its untagged parents are the build
    // cache other tests running at the same time build on (without it, one
    // of them failed with "unable to find image" for a parent removed under it).
    let out = std::process::Command::new("docker").args(["rmi", "-f", "--no-prune", &image]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = h.deploy_with("live", &v1, BuildMode::Cloud, true).await;
    assert_eq!(again.status, Status::Succeeded, "{:?}", h.events(again.id).await);
    assert!(built(&h.events(again.id).await), "the image was gone; it must be built");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_deploys_exactly_the_image_test_runs_with_lives_settings_and_migrations() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    let toml = "[web]\nport = 80\n\n[release]\ncommands = [\"test -n \\\"$WHERE\\\"\"]\n";
    let v1 = repo.commit(&busybox_app("v1", toml, ""), "v1");
    repo.commit(&busybox_app("v2", APP, ""), "v2: main moved on");
    h.create_project(&repo.path()).await;
    h.set("test", "WHERE", "test", false).await;
    h.set("live", "WHERE", "live", false).await;
    let test = h.deploy_with("test", &v1, BuildMode::Cloud, true).await;
    assert_eq!(test.status, Status::Succeeded, "{:?}", h.events(test.id).await);

    let (id, source) =
        requests::request_promotion(&*h.store, "test", &h.project, "test", "live", BuildMode::Cloud, true).await.unwrap().unwrap();
    assert_eq!(source, test.id);
    let live = h.wait_finished(id, std::time::Duration::from_secs(120)).await;
    assert_eq!(live.status, Status::Succeeded, "{:?}", h.events(live.id).await);
    let events = h.events(live.id).await;
    assert!(!built(&events), "{events:?}");
    assert_eq!(reused_from(&events), Some(test.id));
    assert_eq!(live.context.commit.as_deref(), Some(v1.as_str()), "the commit test runs, not main's head");
    assert_ne!(live.context.settings["WHERE"], test.context.settings["WHERE"], "live runs with its own settings");
    let ran = events.iter().find_map(|e| match e {
        Event::ReleaseCommandsRan(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(ran.expect("release commands ran for live").results[0].exit_code, 0);
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()));
    h.shutdown().await;
}

/// The build log of a deployment (its `ImageBuilt.log_ref`).
async fn build_log(h: &Harness, id: uuid::Uuid) -> String {
    let log_ref = h.events(id).await.into_iter().find_map(|e| match e {
        Event::ImageBuilt(b) => b.log_ref,
        _ => None,
    });
    std::fs::read_to_string(log_ref.expect("a build log")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_takes_layers_from_the_cache_and_cloud_mode_rebuilds_them() {
    let h = Harness::start(Backends::Embedded).await;
    let repo = AppRepo::new();
    h.create_project(&repo.path()).await;
    // The busybox install step comes before the page, so a new page leaves it cacheable.
    let (c1, c2, c3) = (
        repo.commit(&busybox_app("one", APP, ""), "1"),
        repo.commit(&busybox_app("two", APP, ""), "2"),
        repo.commit(&busybox_app("three", APP, ""), "3"),
    );
    let first = h.deploy_with("test", &c1, BuildMode::Local, false).await;
    assert_eq!(first.status, Status::Succeeded);
    let local = h.deploy_with("test", &c2, BuildMode::Local, false).await;
    assert_eq!(local.status, Status::Succeeded);
    let log = build_log(&h, local.id).await;
    assert!(log.contains("Using cache"), "local mode rebuilt everything:\n{log}");
    let cloud = h.deploy_with("test", &c3, BuildMode::Cloud, false).await;
    assert_eq!(cloud.status, Status::Succeeded);
    let log = build_log(&h, cloud.id).await;
    assert!(log.contains("--install") && !log.contains("Using cache"), "cloud mode used the cache:\n{log}");
    h.shutdown().await;
}
