//! Zero-downtime cutover through a real router on real Docker: a load
//! client counts failed requests while deployments (good and failing) run
//! back to back, over plain HTTP and over HTTPS (HTTP/2 and HTTP/1.1, an
//! uploaded certificate on a custom domain); a long (8 s) request survives the switch; rollback; a restarted
//! router serves the current release at once; a router that is down fails
//! the switch and the old release keeps serving.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use slipway_engine::driver::DriverOptions;
use slipway_engine::Status;
use slipway_proto::event::{BuildMode, CertificateSource};
use slipway_proto::{Event, Step};
use slipway_tests::load::{Load, Sample};
use slipway_tests::tls::{https_get, TestCa};
use slipway_tests::*;
use tokio::time::Instant;

const OK: &str = r#"
[web]
port = 80
health_timeout = "20s"

[release]
commands = ["true"]
"#;

const BAD_RELEASE: &str = r#"
[web]
port = 80

[release]
commands = ["false"]
"#;

const BAD_HEALTH: &str = r#"
[web]
port = 80
health_path = "/missing"
health_timeout = "2s"
"#;

fn engine(drain_seconds: u64, switch_timeout: Duration) -> DriverOptions {
    DriverOptions { drain_seconds, switch_timeout, ..Default::default() }
}

/// The app answering `body`, with a CGI script `/cgi-bin/slow` that
/// answers `slow <body>` after 8 s (longer than a deployment takes even on
/// a loaded machine, so the switch happens while it is in flight).
fn app(body: &str, toml: &str, extra: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = busybox_app(body, toml, extra);
    let slow = format!("#!/bin/sh\nsleep 8\necho 'Content-Type: text/plain'\necho\necho 'slow {body}'\n");
    files.insert("www/cgi-bin/slow".into(), slow.into_bytes());
    files
}

/// One deployment of the run: when it was requested and seen finished,
/// what served before and what must serve after.
struct Mark {
    requested: Instant,
    finished: Instant,
    before: String,
    after: String,
}

/// Every sample answered, with v1 or v2; between deployments only the
/// serving version; during one, the old version and then (on success) the
/// new one, never back.
fn check_samples(loops: &[Vec<Sample>], marks: &[Mark]) -> usize {
    let mut total = 0;
    for samples in loops {
        let mut switched = vec![false; marks.len()];
        for s in samples {
            total += 1;
            let body = s.outcome.as_ref().unwrap_or_else(|e| panic!("a request failed: {e}"));
            assert!(body == "v1" || body == "v2", "unexpected answer {body:?}");
            let Some(k) = marks.iter().rposition(|m| m.requested <= s.started) else { continue };
            let m = &marks[k];
            if s.started >= m.finished {
                assert_eq!(body, &m.after, "after deployment {k} finished");
            } else if body == &m.after && m.after != m.before {
                switched[k] = true;
            } else {
                assert_eq!(body, &m.before, "during deployment {k}");
                assert!(!switched[k], "deployment {k}: the answer flipped back to {body}");
            }
        }
    }
    total
}

/// Deploys each commit of `plan` to `live` in turn, from `serving`: one
/// that names a version must succeed and serve it, one that names none
/// must fail and leave what served. Returns each deployment's `Mark`.
async fn deploy_all(h: &Harness, plan: &[(&str, Option<&str>)], serving: &str) -> Vec<Mark> {
    let mut serving = serving.to_string();
    let mut marks = Vec::new();
    for (commit, expect) in plan {
        let requested = Instant::now();
        let d = h.deploy_with("live", commit, BuildMode::Local, true).await;
        let finished = Instant::now();
        let after = match expect {
            Some(version) => {
                assert_eq!(d.status, Status::Succeeded, "{commit}: {:?}", h.events(d.id).await);
                version.to_string()
            }
            None => {
                assert!(matches!(d.status, Status::Failed { .. }), "{commit} should fail");
                serving.clone()
            }
        };
        marks.push(Mark { requested, finished, before: serving.clone(), after: after.clone() });
        serving = after;
    }
    marks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_deployments_under_load_lose_no_request() {
    let h = Harness::start_engine(Backends::PostgresRabbit, engine(2, Duration::from_secs(10))).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&app("v1", OK, ""), "v1");
    let v2 = repo.commit(&app("v2", OK, ""), "v2");
    let bad_release = repo.commit(&app("v3", BAD_RELEASE, ""), "release fails");
    let bad_health = repo.commit(&app("v3", BAD_HEALTH, ""), "never healthy");
    let bad_build = repo.commit(&app("v3", OK, "RUN [\"/bin/false\"]"), "build fails");
    h.create_project(&repo.path()).await;
    let first = h.deploy("live", &v1).await;
    assert_eq!(first.status, Status::Succeeded, "{:?}", h.events(first.id).await);
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()));

    let plan: Vec<(&str, Option<&str>)> = vec![
        (&v2, Some("v2")),
        (&bad_release, None),
        (&v1, Some("v1")),
        (&bad_health, None),
        (&v2, Some("v2")),
        (&bad_build, None),
        (&v1, Some("v1")),
        (&v2, Some("v2")),
        (&v1, Some("v1")),
        (&bad_release, None),
        (&v2, Some("v2")),
        (&v1, Some("v1")),
        (&bad_health, None),
        (&v2, Some("v2")),
        (&v1, Some("v1")),
        (&bad_build, None),
        (&v2, Some("v2")),
        (&v1, Some("v1")),
        (&v2, Some("v2")),
        (&bad_release, None),
    ];
    assert_eq!(plan.len(), 20);
    let load = Load::start(h.router_addr(), &h.host("live"), 3, Duration::from_millis(10));
    let marks = deploy_all(&h, &plan, "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loops = load.stop().await;
    let total = check_samples(&loops, &marks);
    assert!(total > 500, "the load client sent only {total} requests");
    println!("{total} requests through the router during 20 deployments, 0 failed");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_under_https_load_lose_no_request() {
    let mut h = Harness::start_engine(Backends::PostgresRabbit, engine(1, Duration::from_secs(10))).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&app("v1", OK, ""), "v1");
    let v2 = repo.commit(&app("v2", OK, ""), "v2");
    let bad_health = repo.commit(&app("v3", BAD_HEALTH, ""), "never healthy");
    h.create_project(&repo.path()).await;
    let first = h.deploy("live", &v1).await;
    assert_eq!(first.status, Status::Succeeded, "{:?}", h.events(first.id).await);

    // A custom domain with an uploaded certificate, served on the router's HTTPS listener.
    let domain = format!("{}.example.test", h.project);
    slipway_engine::domains::add(&*h.store, "test", &h.project, "live", &domain).await.unwrap().unwrap();
    let ca = TestCa::new();
    let (chain, key) = ca.issue(&[&domain]);
    slipway_engine::certificates::store_certificate(&*h.store, "test", &domain, &chain, &key, CertificateSource::Uploaded, Utc::now())
        .await
        .unwrap()
        .unwrap();
    let https = h.serve_https().await;
    eventually("the router to serve the domain over HTTPS", Duration::from_secs(20), || async {
        let answer = https_get(https, &domain, "/", &ca.pem(), &["h2", "http/1.1"]).await.ok()?;
        (answer.body == "v1\n").then_some(())
    })
    .await;

    let load = Load::start_https(https, &domain, &ca.pem(), 4, Duration::from_millis(10));
    let marks = deploy_all(&h, &[(&v2, Some("v2")), (&bad_health, None), (&v1, Some("v1"))], "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = check_samples(&load.stop().await, &marks);
    assert!(total > 100, "the load client sent only {total} requests");
    println!("{total} requests over HTTPS during 3 deployments, 0 failed");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_request_started_before_the_switch_completes_after_it() {
    let h = Harness::start_engine(Backends::PostgresRabbit, engine(12, Duration::from_secs(10))).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&app("v1", OK, ""), "v1");
    let v2 = repo.commit(&app("v2", OK, ""), "v2");
    h.create_project(&repo.path()).await;
    assert_eq!(h.deploy("live", &v1).await.status, Status::Succeeded);

    let (addr, host) = (h.router_addr(), h.host("live"));
    let slow = tokio::spawn(async move {
        let answer = get_via(addr, &host, "/cgi-bin/slow", Duration::from_secs(20)).await;
        (answer, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d2 = h.deploy("live", &v2).await;
    let switched = Instant::now();
    assert_eq!(d2.status, Status::Succeeded, "{:?}", h.events(d2.id).await);
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v2\n".to_string()));
    let (answer, answered) = slow.await.unwrap();
    assert!(answered > switched, "the slow request ended before the switch; the test proves nothing");
    assert_eq!(answer.unwrap(), (200, "slow v1\n".to_string()));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_serves_the_previous_release_again_without_failed_requests() {
    let h = Harness::start_engine(Backends::PostgresRabbit, engine(1, Duration::from_secs(10))).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&app("v1", OK, ""), "v1");
    let v2 = repo.commit(&app("v2", OK, ""), "v2");
    h.create_project(&repo.path()).await;
    let d1 = h.deploy("live", &v1).await;
    assert_eq!(d1.status, Status::Succeeded);
    let load = Load::start(h.router_addr(), &h.host("live"), 2, Duration::from_millis(10));
    let requested = Instant::now();
    let d2 = h.deploy("live", &v2).await;
    assert_eq!(d2.status, Status::Succeeded);
    let mut marks = vec![Mark { requested, finished: Instant::now(), before: "v1".into(), after: "v2".into() }];

    let requested = Instant::now();
    let (back, warnings) = h.rollback("live", None).await;
    assert_eq!(back.status, Status::Succeeded, "{:?}", h.events(back.id).await);
    marks.push(Mark { requested, finished: Instant::now(), before: "v2".into(), after: "v1".into() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let total = check_samples(&load.stop().await, &marks);
    assert!(total > 50, "only {total} requests");
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()));

    // v2 ran `true` as a release command since v1: the operator is told.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(&d2.id.to_string()) && warnings[0].contains("`true`"), "{warnings:?}");
    // Same image and commit as v1; nothing built, no release command run.
    assert_eq!(back.context.image_id, d1.context.image_id);
    assert_eq!(back.context.commit, d1.context.commit);
    let events = h.events(back.id).await;
    assert!(events.iter().any(|e| matches!(e, Event::ImageReused(r) if r.source_deployment == d1.id)), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::ImageBuilt(_) | Event::ReleaseCommandsRan(_))), "{events:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_router_serves_the_current_release_at_once_and_a_dead_one_fails_the_switch() {
    let mut h = Harness::start_engine(Backends::Embedded, engine(1, Duration::from_secs(3))).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&app("v1", OK, ""), "v1");
    let v2 = repo.commit(&app("v2", OK, ""), "v2");
    h.create_project(&repo.path()).await;
    assert_eq!(h.deploy("live", &v1).await.status, Status::Succeeded);

    h.stop_router().await;
    h.start_router().await;
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()), "first request after a restart");

    // Killed, it stays registered for its lease (30 s, longer than the 3 s
    // switch timeout): the switch waits for it, then fails.
    h.kill_router().await;
    let failed = h.deploy("live", &v2).await;
    let (step, reason) = failure(&failed);
    assert_eq!(step, Step::Cutover);
    assert!(reason.contains("test-router"), "{reason}");
    h.wait_no_containers(failed.id).await;
    h.start_router().await;
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()), "the old release serves");

    // Back up, the next switch completes.
    let d = h.deploy("live", &v2).await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v2\n".to_string()));
    h.shutdown().await;
}
