//! Two deployments of one environment requested at the same moment through
//! two API server processes (each also running an engine, beside a third
//! engine): they run one after the other, never interleaved.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use slipway_engine::requests;
use slipway_engine::Status;
use slipway_proto::event::{deployment_stream, TokenScope};
use slipway_proto::Event;
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, PgStore};
use slipway_tests::*;
use uuid::Uuid;

mod common;
use common::{http, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_requests_through_two_api_processes_run_one_after_the_other() {
    require_docker();
    let tag = Uuid::now_v7().simple().to_string();
    let (schema, namespace, project) = (format!("conc_{tag}"), format!("conc{}", &tag[20..]), format!("conc-{}", &tag[24..]));
    let store: Arc<dyn EventStore> =
        Arc::new(PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), ..Default::default() }).await.unwrap());
    let mut c = Cluster::start(&schema, &namespace);
    let token = requests::issue_token(&*store, "test", "conc", TokenScope::Deploy).await.unwrap().unwrap();
    let apis: Vec<String> =
        (0..2).map(|_| format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())).collect();
    for (n, addr) in apis.iter().enumerate() {
        let api = c.spawn(&format!("api{n}"), &["server", "--listen", addr, "--drain", "0"]);
        c.extra.push(api);
    }
    for addr in &apis {
        let url = format!("http://{addr}/healthz");
        eventually("the API to answer", Duration::from_secs(30), || async {
            slipway_workers::http::get_status(&url, Duration::from_secs(1)).await.ok().filter(|s| *s == 200)
        })
        .await;
    }
    let repo = AppRepo::new();
    repo.commit(&busybox_app("v1", "[web]\nport = 80\n\n[release]\ncommands = [\"sleep 0.5\"]\n", ""), "v1");
    create_project(&*store, &project, &repo.path().display().to_string(), &["live"]).await;

    let path = format!("/api/projects/{project}/environments/live/deployments");
    let body = r#"{"mode": "local", "migrate": true}"#;
    let ((s1, b1), (s2, b2)) =
        tokio::join!(http(&apis[0], "POST", &path, Some(&token), Some(body)), http(&apis[1], "POST", &path, Some(&token), Some(body)));
    assert_eq!((s1, s2), (202, 202), "{b1} / {b2}");
    let id = |b: &str| -> Uuid { serde_json::from_str::<serde_json::Value>(b).unwrap()["deployment"].as_str().unwrap().parse().unwrap() };
    let (a, b) = (id(&b1), id(&b2));

    let mut finished = Vec::new();
    for d in [a, b] {
        let state = eventually(&format!("deployment {d}"), Duration::from_secs(120), || async {
            slipway_engine::load::deployment(&*store, d).await.ok().flatten().filter(|s| s.is_finished())
        })
        .await;
        assert_eq!(state.status, Status::Succeeded, "{:?}\n{}", state.status, c.logs());
        finished.push(store.read_stream(&deployment_stream(d), 1).await.unwrap());
    }
    // Whichever the environment queued first ran first; the other's first
    // step was dispatched only after the first had finished.
    let first_dispatch = |events: &[slipway_store::RecordedEvent]| {
        events.iter().find(|r| matches!(r.envelope.decode::<Event>(), Ok(Event::StepDispatched(_)))).unwrap().recorded_at
    };
    let end = |events: &[slipway_store::RecordedEvent]| {
        events.iter().find(|r| matches!(r.envelope.decode::<Event>(), Ok(Event::DeploymentSucceeded(_)))).unwrap().recorded_at
    };
    let (x, y) = (&finished[0], &finished[1]);
    let (earlier, later) = if first_dispatch(x) < first_dispatch(y) { (x, y) } else { (y, x) };
    assert!(first_dispatch(later) > end(earlier), "the deployments overlapped");
    c.remove(&project).await;
}
