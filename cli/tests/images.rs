//! `slipway images prune`: images of the last N releases of each
//! environment stay (what serves, what rollback can reach); older builds go.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::process::Command;

use slipway_engine::Status;
use slipway_tests::*;

fn image_exists(id: &str) -> bool {
    Command::new("docker").args(["image", "inspect", id]).output().unwrap().status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_keeps_the_last_releases_images_and_removes_older_builds() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    h.create_project(&repo.path()).await;
    let mut releases = Vec::new();
    for v in ["v1", "v2", "v3"] {
        repo.commit(&busybox_app(v, "[web]\nport = 80\n", ""), v);
        let d = h.deploy("test", "main").await;
        assert_eq!(d.status, Status::Succeeded);
        releases.push(d);
    }
    for d in &releases[..2] {
        h.wait_no_containers(d.id).await;
    }
    // Their tags (an identical build elsewhere may share an image id).
    let mut images = Vec::new();
    for d in &releases {
        let tag = h.events(d.id).await.into_iter().find_map(|e| match e {
            slipway_proto::Event::ImageBuilt(b) => Some(b.tag),
            _ => None,
        });
        images.push(tag.unwrap());
    }
    assert!(images.iter().all(|i| image_exists(i)));

    let slipway = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .env("SLIPWAY_DATABASE", pg_app_url())
            .env("SLIPWAY_PG_SCHEMA", h.schema().unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let dry = slipway(&["images", "prune", "--keep", "2", "--dry-run"]);
    assert!(dry.contains(&format!("would remove {} (", images[0])) && !dry.contains(&images[1]), "{dry}");
    assert!(image_exists(&images[0]), "a dry run removes nothing");

    let out = slipway(&["images", "prune", "--keep", "2"]);
    assert!(out.contains(&format!("removed {} (", images[0])), "{out}");
    assert!(!image_exists(&images[0]));
    assert!(image_exists(&images[1]) && image_exists(&images[2]), "the last two releases keep their images");
    assert_eq!(h.routed_page("test").await.unwrap(), (200, "v3\n".to_string()));
    h.shutdown().await;
}
