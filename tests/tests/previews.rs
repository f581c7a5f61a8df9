//! A pull request's preview end to end on real Docker (embedded store and
//! queue, for speed): a signed GitHub `pull_request` webhook opens `pr-7`,
//! which is deployed and answers through the router at
//! `<project>-pr-7.localhost`; closing the pull request removes its
//! containers and its route (the router answers 404 for the host name).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use slipway_engine::{auto_deploy, lifecycle, webhook, Status};
use slipway_proto::event::PreviewTrigger;
use slipway_tests::*;
use tower::ServiceExt;

/// GitHub's `pull_request` event, trimmed to what a preview reads and a bit more.
fn pull_request(action: &str, head: &str) -> String {
    json!({
        "action": action, "number": 7,
        "pull_request": {"number": 7, "state": "open", "title": "A preview",
            "head": {"ref": "feature/page", "sha": head, "repo": {"full_name": "octo/app", "fork": false}},
            "base": {"ref": "main", "sha": head, "repo": {"full_name": "octo/app", "fork": false}}},
        "sender": {"login": "octocat"}
    })
    .to_string()
}

async fn deliver(h: &Harness, secret: &str, delivery: &str, body: String) -> Value {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/hooks/github/{}", h.project))
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", format!("sha256={}", webhook::sign(secret, body.as_bytes())))
        .body(Body::from(body))
        .unwrap();
    let response = slipway_engine::api::app(h.store.clone()).oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_request_preview_is_deployed_routed_and_removed_with_everything() {
    let h = Harness::start(Backends::Embedded).await;
    let repo = AppRepo::new();
    let head = repo.commit(&busybox_app("preview of pr 7", "[web]\nport = 80\n", ""), "a page");
    h.create_project(&repo.path()).await;
    let secret = auto_deploy::rotate_webhook_secret(&*h.store, "test", &h.project).await.unwrap().unwrap();
    lifecycle::set_rule(&*h.store, "test", &h.project, PreviewTrigger::PullRequests, "test", None).await.unwrap().unwrap();

    let opened = deliver(&h, &secret, "d-1", pull_request("opened", &head)).await;
    assert_eq!((opened["status"].as_str(), opened["deployments"][0]["environment"].as_str()), (Some("deployed"), Some("pr-7")), "{opened}");
    let id = opened["deployments"][0]["deployment"].as_str().unwrap().parse().unwrap();
    let d = h.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(id).await);
    assert_eq!(d.context.commit.as_deref(), Some(head.as_str()));
    let page = eventually("pr-7 to answer through the router", Duration::from_secs(20), || async {
        h.routed_page("pr-7").await.ok().filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(page.1, "preview of pr 7\n");

    let closed = deliver(&h, &secret, "d-2", pull_request("closed", &head)).await;
    assert_eq!(closed["status"], "removed", "{closed}");
    h.wait_no_containers(id).await;
    let gone = eventually("the router to forget pr-7", Duration::from_secs(20), || async {
        h.routed_page("pr-7").await.ok().filter(|(status, _)| *status == 404)
    })
    .await;
    assert_eq!(gone.0, 404, "{}", gone.1);
    let p = slipway_engine::requests::load_project(&*h.store, &h.project).await.unwrap().unwrap();
    assert!(!p.environments.contains_key("pr-7"));
    h.shutdown().await;
}
