//! Custom domains through the real router: an environment deployed on real
//! Docker answers under an exact domain and under a one-level wildcard,
//! from the route version that added them; a domain another environment
//! holds is refused with the holder named; a removed domain answers 404.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::time::Duration;

use slipway_engine::domains;
use slipway_engine::rejection::Rejection;
use slipway_engine::Status;
use slipway_tests::*;

const WEB: &str = r#"
[web]
port = 80
health_timeout = "20s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_answers_under_its_custom_domains_and_a_taken_name_is_refused() {
    let h = Harness::start(Backends::PostgresRabbit).await;
    let repo = AppRepo::new();
    repo.commit(&busybox_app("one", WEB, ""), "one");
    h.create_project(&repo.path()).await;
    let d = h.deploy("live", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", failure(&d));
    let store = &*h.store;
    // Given two domains of the live environment (one typed carelessly),
    let exact = format!("www.{}.example", h.project);
    let added = domains::add(store, "test", &h.project, "live", &format!("WWW.{}.Example.", h.project)).await.unwrap().unwrap();
    assert_eq!(added, exact);
    domains::add(store, "test", &h.project, "live", &format!("*.apps.{}.example", h.project)).await.unwrap().unwrap();
    // then the router serves both, the wildcard one level deep only,
    let router = h.router_addr();
    let get = move |host: String| async move { get_via(router, &host, "/", Duration::from_secs(5)).await };
    // (the router may take the two additions in two reloads, so wait for both)
    let wildcard = format!("api.apps.{}.example:8443", h.project);
    eventually("the router to serve both custom domains", Duration::from_secs(10), || async {
        let one = |answer: Result<(u16, String), String>| matches!(answer, Ok((200, body)) if body.trim() == "one");
        (one(get(exact.clone()).await) && one(get(wildcard.clone()).await)).then_some(())
    })
    .await;
    assert_eq!(get(format!("a.b.apps.{}.example", h.project)).await.unwrap().0, 404);
    // the same domain again changes nothing, another environment cannot take it,
    domains::add(store, "test", &h.project, "live", &exact).await.unwrap().unwrap();
    let Err(Rejection::Conflict(taken)) = domains::add(store, "test", &h.project, "test", &exact).await.unwrap() else { panic!("taken") };
    assert!(taken.contains(&format!("{} live", h.project)), "{taken}");
    let Err(Rejection::Invalid(bad)) = domains::add(store, "test", &h.project, "live", "not a domain").await.unwrap() else {
        panic!("bad")
    };
    assert!(bad.contains("expected a domain name"), "{bad}");
    let routes = slipway_engine::load::routes(store).await.unwrap();
    assert_eq!(domains::of_environment(&routes.domains, &h.project, "live").len(), 2);
    // and once removed, the name is served no more (and free to take).
    domains::remove(store, "test", &h.project, "live", &exact).await.unwrap().unwrap();
    eventually("the removed domain to answer 404", Duration::from_secs(10), || async {
        matches!(get(exact.clone()).await, Ok((404, _))).then_some(())
    })
    .await;
    assert!(matches!(domains::remove(store, "test", &h.project, "live", &exact).await.unwrap(), Err(Rejection::NotFound(_))));
    domains::add(store, "test", &h.project, "test", &exact).await.unwrap().unwrap();
    h.shutdown().await;
}
