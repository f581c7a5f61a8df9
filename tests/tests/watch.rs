//! The watch after the switch, on real Docker through a real router: a
//! release that passes its health check and then crashes is rolled back
//! automatically while a load client counts failed requests, and a release
//! that stays healthy succeeds only once its window passed, the old release
//! staying up until then.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use slipway_engine::driver::DriverOptions;
use slipway_engine::Status;
use slipway_proto::event::BuildMode;
use slipway_proto::{Event, Step};
use slipway_tests::load::Load;
use slipway_tests::*;
use tokio::time::Instant;

const V1: &str = "[web]\nport = 80\n";

/// The busybox app, but healthy only until `/crash` appears in the
/// container, then exiting with 3: a release that passes its health check
/// and dies later, on cue.
fn crashes_on_cue(body: &str, toml: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    on_cue(body, toml, "exit 3")
}

/// The busybox app that, once `/crash` appears, runs `then` (in its shell,
/// PID 1).
fn on_cue(body: &str, toml: &str, then: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = busybox_app(body, toml, "");
    let dockerfile = String::from_utf8(files["Dockerfile"].clone()).unwrap();
    let (build, _cmd) = dockerfile.rsplit_once("CMD ").unwrap();
    let cmd = format!("CMD [\"sh\", \"-c\", \"httpd -p 80 -h /www; while [ ! -f /crash ]; do sleep 0.05; done; {then}\"]\n");
    files.insert("Dockerfile".into(), format!("{build}{cmd}").into_bytes());
    files
}

/// Asks the app in `container` to do what it does on cue.
fn cue(container: &str) {
    let out = std::process::Command::new("docker").args(["exec", container, "/bin/touch", "/crash"]).output().unwrap();
    assert!(out.status.success(), "docker exec: {}", String::from_utf8_lossy(&out.stderr));
}

fn engine() -> DriverOptions {
    DriverOptions { drain_seconds: 1, switch_timeout: Duration::from_secs(10), ..Default::default() }
}

/// Waits until the deployment's stream holds an event `pick` accepts.
async fn wait_for_event(h: &Harness, id: uuid::Uuid, what: &str, pick: impl Fn(&Event) -> bool) {
    eventually(what, Duration::from_secs(90), || async { h.events(id).await.iter().any(&pick).then_some(()) }).await;
}

/// The deployment's `ReleaseRolledBack`; fails the test without one.
fn rolled_back(events: &[Event]) -> slipway_proto::event::ReleaseRolledBack {
    let rolled = events.iter().find_map(|e| match e {
        Event::ReleaseRolledBack(r) => Some(r.clone()),
        _ => None,
    });
    rolled.unwrap_or_else(|| panic!("no ReleaseRolledBack in {events:?}"))
}

fn running(container: &str) -> bool {
    let out = std::process::Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", container]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_crashes_after_its_switch_is_rolled_back_under_load() {
    let h = Harness::start_engine(Backends::PostgresRabbit, engine()).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", V1, ""), "v1");
    let v2 = repo.commit(&crashes_on_cue("v2", "[web]\nport = 80\nwatch = \"60s\"\n"), "v2 crashes");
    h.create_project(&repo.path()).await;
    let d1 = h.deploy("live", &v1).await;
    assert_eq!(d1.status, Status::Succeeded, "{:?}", h.events(d1.id).await);

    let load = Load::start(h.router_addr(), &h.host("live"), 3, Duration::from_millis(10));
    let id = h.request("live", &v2, BuildMode::Local, true).await;
    wait_for_event(&h, id, "the watch to start", |e| matches!(e, Event::ReleaseWatchStarted(_))).await;
    let watching = h.deployment(id).await;
    assert_eq!(watching.status_word(), "watching");
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v2\n".to_string()), "v2 took the traffic");
    assert!(d1.containers.iter().all(|c| running(c)), "the old release stays up during the watch");

    let web = watching.context.web_container.clone().unwrap();
    let crashed = Instant::now();
    cue(&web);
    let back = eventually("the route back on v1", Duration::from_secs(30), || async {
        matches!(h.routed_page("live").await, Ok((200, body)) if body == "v1\n").then_some(Instant::now())
    })
    .await;
    println!("crash -> route back on the old release: {} ms", (back - crashed).as_millis());

    let d2 = h.wait_finished(id, Duration::from_secs(60)).await;
    let (step, reason) = failure(&d2);
    assert_eq!(step, Step::Watch);
    assert!(reason.contains("exited with code 3") && reason.contains(&format!("routed back to {}", d1.id)), "{reason}");
    let events = h.events(id).await;
    let rolled = rolled_back(&events);
    assert_eq!(rolled.to, Some(d1.id));
    assert!(rolled.reason.contains(&web) && rolled.reason.contains("after the traffic switch"), "{}", rolled.reason);
    assert!(!events.iter().any(|e| matches!(e, Event::DeploymentSucceeded(_))), "{events:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let loops = load.stop().await;
    let samples: Vec<_> = loops.iter().flatten().collect();
    let failed: Vec<_> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    println!("{} requests through the router, {} failed", samples.len(), failed.len());
    for s in &failed {
        println!("  failed {} ms after the crash: {:?}", (s.started - crashed).as_millis(), s.outcome);
    }
    // The previous release stands by while the new one is watched: a
    // request the dying container refuses or drops (a bodiless GET) goes
    // there, so at most the requests in flight at the crash may fail, one
    // per load loop, and in practice none do.
    for s in &failed {
        assert!(s.started >= crashed && s.started <= back, "a request failed outside the crash window: {:?}", s.outcome);
    }
    assert!(failed.len() <= 3, "{} requests failed in the {:?} from the crash to the route back", failed.len(), back - crashed);
    for s in samples.iter().filter(|s| s.started > back) {
        assert_eq!(s.outcome.as_deref(), Ok("v1"), "after the rollback only v1 answers");
    }
    assert!(d1.containers.iter().all(|c| running(c)), "the old release serves on");
    h.wait_no_containers(id).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_healthy_past_its_window_succeeds_and_only_then_retires_the_old_one() {
    let h = Harness::start_engine(Backends::Embedded, engine()).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", V1, ""), "v1");
    let v2 = repo.commit(&busybox_app("v2", "[web]\nport = 80\nwatch = \"3s\"\n", ""), "v2");
    h.create_project(&repo.path()).await;
    let d1 = h.deploy("live", &v1).await;
    assert_eq!(d1.status, Status::Succeeded);

    let id = h.request("live", &v2, BuildMode::Local, true).await;
    wait_for_event(&h, id, "the watch to start", |e| matches!(e, Event::ReleaseWatchStarted(_))).await;
    let started = Instant::now();
    assert_eq!(h.deployment(id).await.status_word(), "watching");
    assert!(d1.containers.iter().all(|c| running(c)), "the old release stays up during the watch");
    let d2 = h.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(d2.status, Status::Succeeded, "{:?}", h.events(id).await);
    assert!(started.elapsed() >= Duration::from_millis(2500), "succeeded {:?} into a 3 s watch", started.elapsed());
    let events = h.events(id).await;
    let watched = events.iter().find_map(|e| match e {
        Event::ReleaseWatched(w) => Some(w.clone()),
        _ => None,
    });
    let watched = watched.unwrap_or_else(|| panic!("no ReleaseWatched in {events:?}"));
    assert!(watched.probes >= 2 && watched.failed_probes == 0, "{watched:?}");
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v2\n".to_string()));
    h.wait_no_containers(d1.id).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_oom_killed_while_watched_is_rolled_back_saying_so() {
    let h = Harness::start_engine(Backends::Embedded, engine()).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", V1, ""), "v1");
    // 16 MiB of memory, then a shell variable of 200 MB.
    let greedy = on_cue("v2", "[web]\nport = 80\nwatch = \"60s\"\nmemory = \"16m\"\n", "x=$(head -c 200000000 /dev/zero | tr '\\\\0' a)");
    let v2 = repo.commit(&greedy, "v2 eats memory");
    h.create_project(&repo.path()).await;
    assert_eq!(h.deploy("live", &v1).await.status, Status::Succeeded);

    let id = h.request("live", &v2, BuildMode::Local, true).await;
    wait_for_event(&h, id, "the watch to start", |e| matches!(e, Event::ReleaseWatchStarted(_))).await;
    cue(&h.deployment(id).await.context.web_container.unwrap());
    let d2 = h.wait_finished(id, Duration::from_secs(60)).await;
    let (step, reason) = failure(&d2);
    assert_eq!(step, Step::Watch);
    assert!(reason.contains("OOM-killed"), "{reason}");
    assert!(h.events(id).await.iter().any(|e| matches!(e, Event::ReleaseRolledBack(r) if r.reason.contains("OOM-killed"))));
    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()), "the old release serves");
    h.shutdown().await;
}

/// The busybox app that stays up and healthy (`/health` answers 200) but
/// answers 500 on `/` (a CGI where the page was: busybox httpd runs
/// `cgi-bin/index.cgi` for a directory without `index.html`, which the
/// image removes).
fn fails_on_root(toml: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = busybox_app("v2", toml, "");
    files.insert("www/health".into(), b"ok\n".to_vec());
    let cgi = "#!/bin/sh\necho 'Status: 500 Internal Server Error'\necho 'Content-Type: text/plain'\necho\necho broken\n";
    files.insert("www/cgi-bin/index.cgi".into(), cgi.as_bytes().to_vec());
    let dockerfile = String::from_utf8(files["Dockerfile"].clone()).unwrap();
    let dockerfile = dockerfile.replace(
        "COPY www /www\n",
        "COPY www /www\nRUN [\"/bin/rm\", \"/www/index.html\"]\nRUN [\"/bin/chmod\", \"755\", \"/www/cgi-bin/index.cgi\"]\n",
    );
    files.insert("Dockerfile".into(), dockerfile.into_bytes());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_stays_up_but_answers_500_is_rolled_back_on_the_routers_counts() {
    let h = Harness::start_engine(Backends::Embedded, engine()).await;
    let repo = AppRepo::new();
    let v1 = repo.commit(&busybox_app("v1", V1, ""), "v1");
    let v2 = repo.commit(&fails_on_root("[web]\nport = 80\nhealth_path = \"/health\"\nwatch = \"15s\"\n"), "v2 answers 500");
    h.create_project(&repo.path()).await;
    let d1 = h.deploy("live", &v1).await;
    assert_eq!(d1.status, Status::Succeeded, "{:?}", h.events(d1.id).await);

    let load = Load::start(h.router_addr(), &h.host("live"), 2, Duration::from_millis(20));
    let id = h.request("live", &v2, BuildMode::Local, true).await;
    let d2 = h.wait_finished(id, Duration::from_secs(90)).await;
    let (step, reason) = failure(&d2);
    assert_eq!(step, Step::Watch);
    assert!(reason.starts_with("router errors: ") && reason.contains(&format!("routed back to {}", d1.id)), "{reason}");
    assert!(!reason.contains("exited") && !reason.contains("failed 3 times"), "the container and its health path were fine: {reason}");

    let events = h.events(id).await;
    let rolled = rolled_back(&events);
    assert_eq!(rolled.to, Some(d1.id));
    assert!(rolled.reason.contains("answered 5xx") && rolled.reason.contains("web.watch_max_error_rate 10%"), "{}", rolled.reason);
    let [seen] = rolled.router_errors.as_slice() else { panic!("one router's figures: {:?}", rolled.router_errors) };
    assert!(seen.errors_5xx >= 5 && seen.requests >= seen.errors_5xx && seen.first_error_at.is_some(), "{seen:?}");
    let reports = events.iter().filter(|e| matches!(e, Event::RouterErrorsObserved(_))).count();
    assert!((1..=20).contains(&reports), "{reports} reports: rate-limited, not one per request");
    let watch_started = events.iter().find_map(|e| match e {
        Event::ReleaseWatchStarted(w) => Some(w.clone()),
        _ => None,
    });
    let watch_started = watch_started.unwrap_or_else(|| panic!("no ReleaseWatchStarted in {events:?}"));
    let switched_at = watch_started.until - chrono::Duration::milliseconds(watch_started.window_ms as i64);
    println!(
        "switch -> rollback recorded: {} ms; {} report(s); {} of {} requests failed on the router",
        (rolled.deadline - chrono::Duration::seconds(10) - switched_at).num_milliseconds(),
        reports,
        seen.errors(),
        seen.requests,
    );

    assert_eq!(h.routed_page("live").await.unwrap(), (200, "v1\n".to_string()), "the old release serves");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples: Vec<_> = load.stop().await.into_iter().flatten().collect();
    let first_500 = samples.iter().find(|s| matches!(&s.outcome, Err(e) if e.starts_with("500"))).map(|s| s.started);
    let first_500 = first_500.unwrap_or_else(|| panic!("the load never saw v2's 500"));
    let back = samples.iter().filter(|s| s.started > first_500 && s.outcome.as_deref() == Ok("v1")).map(|s| s.started).next();
    let back = back.unwrap_or_else(|| panic!("v1 never answered again"));
    println!("first 500 through the router -> v1 answers again: {} ms", (back - first_500).as_millis());
    assert!(back - first_500 < Duration::from_secs(10), "rolled back within the window");
    assert!(d1.containers.iter().all(|c| running(c)), "the old release serves on");
    h.wait_no_containers(id).await;
    h.shutdown().await;
}
