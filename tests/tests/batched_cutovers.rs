//! Many deployments reaching their cutover together: the engine decides
//! them one after another within one batch, each at the route version the
//! previous one leaves, and appends them together. Every switch must name
//! the routes stream version that holds its own route change, and the
//! router must acknowledge each. Real PostgreSQL, RabbitMQ and router;
//! stand-in steps (instant), so the cutovers pile up.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::driver::DriverOptions;
use slipway_engine::lease::DEFAULT_LEASE;
use slipway_node::{Parts, RouterOptions, RouterPart};
use slipway_proto::event::{deployment_stream, BuildMode, ROUTES_STREAM};
use slipway_proto::{Event, Step};
use slipway_store::postgres::PgOptions;
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_store::{EventStore, PgStore};
use slipway_tests::{amqp_url, create_project, eventually, pg_url, request_deployment};
use slipway_workers::steps::stand_in::StandIn;
use slipway_workers::WorkerOptions;
use uuid::Uuid;

const DEPLOYMENTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutovers_decided_together_each_name_their_own_route_version() {
    let tag = Uuid::now_v7().simple().to_string();
    let schema = format!("cutovers_{tag}");
    let store = PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services`"));
    let store: Arc<dyn EventStore> = Arc::new(store);
    let rabbit = RabbitQueue::connect(&amqp_url(), RabbitOptions::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable ({e}); run `scripts/services`"));
    let queue: Arc<dyn Queue> = Arc::new(Namespaced::new(Arc::new(rabbit), format!("t{tag}")));

    // The router first, so that every switch waits for it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let options = RouterOptions { router_id: "batch-router".into(), domain: "localhost".into(), listen, lease: DEFAULT_LEASE };
    let (stop_router, router_shutdown) = slipway_node::manual();
    let router_parts =
        Parts { router: Some(RouterPart { listener, https: None, options, proxy: Default::default() }), ..Default::default() };
    let memory: Arc<dyn Queue> = Arc::new(slipway_store::queue::memory::MemoryQueue::default());
    let router = tokio::spawn(slipway_node::serve(store.clone(), memory, router_parts, router_shutdown));
    eventually("the router to register", Duration::from_secs(20), || async {
        (store.stream_version("routers").await.unwrap() > 0).then_some(())
    })
    .await;

    for n in 0..DEPLOYMENTS {
        create_project(&*store, &format!("p{n}"), "/nonexistent", &["live"]).await;
    }
    let (stop, shutdown) = slipway_node::manual();
    let workers = WorkerOptions { actor: "worker:test".into(), concurrency: 8, ..Default::default() };
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: 0, ..Default::default() }),
        workers: Some((workers, Arc::new(StandIn { step_time: Duration::ZERO }))),
        ..Default::default()
    };
    let node = tokio::spawn(slipway_node::serve(store.clone(), queue.clone(), parts, shutdown));
    let mut ids = Vec::new();
    for n in 0..DEPLOYMENTS {
        ids.push(request_deployment(&*store, &format!("p{n}"), "live", "", BuildMode::Local, true).await);
    }

    let finished = |events: &[Event]| events.iter().any(|e| matches!(e, Event::DeploymentSucceeded(_) | Event::DeploymentFailed(_)));
    let mut switches = Vec::new();
    for id in &ids {
        let events = eventually("every deployment to finish", Duration::from_secs(120), || async {
            let recorded = store.read_stream(&deployment_stream(*id), 1).await.unwrap();
            let events: Vec<Event> = recorded.iter().map(|r| r.envelope.decode::<Event>().unwrap()).collect();
            finished(&events).then_some(events)
        })
        .await;
        assert!(events.iter().any(|e| matches!(e, Event::DeploymentSucceeded(_))), "deployment {id} failed: {events:?}");
        let requested = events.iter().find_map(|e| match e {
            Event::TrafficSwitchRequested(t) => Some(t.clone()),
            _ => None,
        });
        let requested = requested.unwrap_or_else(|| panic!("deployment {id} switched no traffic"));
        assert_eq!(requested.routers, vec!["batch-router".to_string()], "the switch waited for the router");
        switches.push((*id, requested.route_version));
    }
    let routes = store.read_stream(ROUTES_STREAM, 1).await.unwrap();
    assert_eq!(routes.iter().map(|r| r.version).collect::<Vec<_>>(), (1..=DEPLOYMENTS as u64).collect::<Vec<_>>());
    for (id, version) in &switches {
        let change = routes[(*version - 1) as usize].envelope.decode::<Event>().unwrap();
        match change {
            Event::RouteChanged(r) => assert_eq!(r.deployment_id, Some(*id), "route version {version} is another deployment's"),
            other => panic!("route version {version} is {other:?}"),
        }
    }
    let acknowledged = store.read_stream("router-batch-router", 1).await.unwrap();
    let last = acknowledged.last().map(|r| r.envelope.decode::<Event>().unwrap());
    assert!(matches!(&last, Some(Event::RouteAcknowledged(a)) if a.route_version == DEPLOYMENTS as u64), "{last:?}");

    let _ = stop.send(());
    node.await.unwrap().unwrap();
    let _ = stop_router.send(());
    router.await.unwrap().unwrap();
    for step in Step::ALL {
        let _ = queue.delete(&step.queue()).await;
    }
    if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
}
