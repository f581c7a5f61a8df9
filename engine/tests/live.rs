//! The live stream (`GET /api/deployments/{id}/stream`), `whoami` and the
//! dashboard's static routes, against real stores: SQLite and PostgreSQL
//! (own schema; a missing PostgreSQL fails the test). Deployments are
//! requested through the API and their outcomes appended the way workers
//! and the engine record them; logs are files in a logs directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use slipway_engine::{api, web};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::TokenScope;
use slipway_proto::event::{deployment_stream, DeploymentFailed, StepDispatched, StepFailed};
use slipway_proto::{Envelope, Event, Step};
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, ExpectedVersion, PgStore, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use uuid::Uuid;

/// A store, a logs directory, and the app serving both.
struct Setup {
    store: Arc<dyn EventStore>,
    app: Router,
    logs: PathBuf,
    schema: Option<String>,
    /// An admin token's value, sent with every request.
    token: String,
}

impl Setup {
    async fn sqlite() -> Setup {
        Setup::with(Arc::new(SqliteStore::in_memory().await.expect("in-memory SQLite store")), None, None).await
    }

    async fn postgres() -> Setup {
        let url = slipway_support::pg_url();
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let options = PgOptions { schema: Some(schema.clone()), max_connections: 4, migrate: true, ..Default::default() };
        let store = PgStore::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services` first"));
        Setup::with(Arc::new(store), Some(schema), None).await
    }

    /// `data_dir`: the workers' data directory (a fresh one by default).
    async fn with(store: Arc<dyn EventStore>, schema: Option<String>, data_dir: Option<PathBuf>) -> Setup {
        let data_dir = data_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("slipway-live-{}", Uuid::now_v7().simple())));
        let config = api::ApiConfig { data_dir: data_dir.clone(), ..Default::default() };
        let app = api::app_with(store.clone(), config).merge(web::routes());
        let token = slipway_engine::requests::issue_token(&*store, "test:setup", "live-test", TokenScope::Admin)
            .await
            .expect("store")
            .expect("token issued");
        Setup { store, app, logs: data_dir.join("logs"), schema, token }
    }

    async fn cleanup(self) {
        let _ = std::fs::remove_dir_all(&self.logs);
        if let Some(schema) = self.schema {
            let url = slipway_support::pg_url();
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
            }
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Body::from(body.to_string()))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A requested deployment of project `hello`, environment `test`.
    async fn requested(&self) -> Uuid {
        let project = json!({"name": "hello", "repository": "file:///srv/hello.git", "environments": ["test"]});
        let (status, _) = self.call(Method::POST, "/api/projects", project).await;
        assert!(status == StatusCode::CREATED || status == StatusCode::CONFLICT, "{status}");
        let (status, body) = self.call(Method::POST, "/api/projects/hello/environments/test/deployments", json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["deployment"].as_str().and_then(|s| s.parse().ok()).expect("a deployment id")
    }

    async fn record(&self, id: Uuid, actor: &str, events: &[Event]) {
        let stream = deployment_stream(id);
        let envelopes: Vec<Envelope> = events
            .iter()
            .map(|e| {
                let meta = Metadata { correlation_id: id, causation_id: None, actor: actor.into(), trace: None };
                Envelope::new(Uuid::now_v7(), Utc::now(), &stream, e, meta).expect("encodable")
            })
            .collect();
        self.store.append(&stream, ExpectedVersion::Any, &envelopes, &[]).await.expect("store").expect("no conflict");
    }

    fn write_log(&self, id: Uuid, file: &str, text: &str) {
        use std::io::Write;
        let dir = self.logs.join(id.to_string());
        std::fs::create_dir_all(&dir).expect("logs dir");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(file)).expect("log file");
        f.write_all(text.as_bytes()).expect("write log");
    }

    async fn open_stream(&self, uri: &str) -> Frames {
        self.open_stream_with(uri, &[]).await
    }

    /// `open_stream` with extra request headers (`Last-Event-ID`).
    async fn open_stream_with(&self, uri: &str, headers: &[(&str, &str)]) -> Frames {
        let mut request = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::empty()).expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        Frames { body: response.into_body(), buffer: String::new(), ended: false }
    }
}

fn dispatched(step: Step) -> Event {
    Event::StepDispatched(StepDispatched { step, command_id: Uuid::now_v7(), attempt: 1, deadline: None, dispatched_at: None })
}

fn build_failed() -> [Event; 2] {
    [
        Event::StepFailed(StepFailed { step: Step::Build, reason: "RUN exited 1".into(), attempt: 1, details: vec![], evidence: None }),
        Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "RUN exited 1".into() }),
    ]
}

/// One server-sent event: its `event:` name and its data.
#[derive(Debug, Clone)]
struct Sent {
    event: String,
    data: String,
    /// The SSE `id:` field, when the event has one.
    id: Option<String>,
}

impl Sent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{} data is not JSON ({e}): {}", self.event, self.data))
    }
}

/// Reads an SSE body frame by frame.
struct Frames {
    body: Body,
    buffer: String,
    ended: bool,
}

impl Frames {
    /// The next event (comments skipped), or `None` when the body ended.
    async fn next(&mut self) -> Option<Sent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data, mut id) = (String::from("message"), Vec::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(Sent { event, data: data.join("\n"), id });
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(10), self.body.frame()).await {
                Err(_) => panic!("no event within 10 s; had: {:?}", self.buffer),
                Ok(None) => self.ended = true,
                Ok(Some(frame)) => {
                    if let Ok(bytes) = frame.expect("body frame").into_data() {
                        self.buffer.push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
                    }
                }
            }
        }
    }

    /// Events up to and including the first that `stop` accepts.
    async fn until(&mut self, stop: impl Fn(&Sent) -> bool) -> Vec<Sent> {
        let mut got = Vec::new();
        loop {
            let sent = self.next().await.unwrap_or_else(|| panic!("the stream ended first; had {got:?}"));
            let done = stop(&sent);
            got.push(sent);
            if done {
                return got;
            }
        }
    }

    async fn rest(&mut self) -> Vec<Sent> {
        let mut got = Vec::new();
        while let Some(sent) = self.next().await {
            got.push(sent);
        }
        got
    }
}

fn types(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .map(|s| match s.event.as_str() {
            "deployment-event" => s.json()["type"].as_str().expect("type").to_string(),
            "log" => format!("log: {}", s.data),
            other => other.to_string(),
        })
        .collect()
}

async fn a_finished_deployment_streams_everything_then_closes(s: Setup) {
    let id = s.requested().await;
    s.record(id, "engine", &[dispatched(Step::Build)]).await;
    s.write_log(id, "build.log", "Step 1/2 : FROM scratch\r\n\nStep 2/2 : RUN false\nexit 1");
    s.write_log(id, "release-0.log", "never ran\n");
    s.write_log(id, "build-failed-1.log", "exit 1\n");
    s.record(id, "worker:w1", &build_failed()).await;

    let mut frames = s.open_stream(&format!("/api/deployments/{id}/stream")).await;
    let sent = frames.rest().await;
    assert_eq!(
        types(&sent),
        [
            "DeploymentRequested",
            "StepDispatched",
            // The build's lines before the build's end; the evidence that
            // repeats them is not sent; a log no ended step wrote, last.
            "log: Step 1/2 : FROM scratch",
            "log: Step 2/2 : RUN false",
            "log: exit 1",
            "StepFailed",
            "DeploymentFailed",
            "log: never ran",
            "end",
        ]
    );
    // The same events, versions, hashes and actors as /events.
    let (_, listed) = s.call(Method::GET, &format!("/api/deployments/{id}/events"), Value::Null).await;
    let streamed: Vec<Value> = sent.iter().filter(|e| e.event == "deployment-event").map(Sent::json).collect();
    assert_eq!(&streamed, listed.as_array().expect("a list"));
    assert_eq!(streamed.iter().map(|e| e["version"].as_u64().expect("version")).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(streamed.iter().all(|e| e["hash"].as_str().is_some_and(|h| h.len() == 64)));
    assert_eq!((streamed[0]["actor"].as_str(), streamed[3]["actor"].as_str()), (Some("token:live-test"), Some("worker:w1")));
    let end = sent.last().expect("end").json();
    assert_eq!(end, json!({"status": "failed", "step": "build", "reason": "RUN exited 1"}));

    // `logs=false`: the events and the end, no log lines.
    let quiet = s.open_stream(&format!("/api/deployments/{id}/stream?logs=false")).await.rest().await;
    assert_eq!(types(&quiet), ["DeploymentRequested", "StepDispatched", "StepFailed", "DeploymentFailed", "end"]);
    s.cleanup().await;
}

#[tokio::test]
async fn a_finished_deployment_streams_everything_then_closes_sqlite() {
    a_finished_deployment_streams_everything_then_closes(Setup::sqlite().await).await;
}

#[tokio::test]
async fn a_finished_deployment_streams_everything_then_closes_postgres() {
    a_finished_deployment_streams_everything_then_closes(Setup::postgres().await).await;
}

async fn events_and_log_lines_arrive_while_it_runs(s: Setup) {
    let id = s.requested().await;
    let mut frames = s.open_stream(&format!("/api/deployments/{id}/stream")).await;
    let first = frames.until(|e| e.event == "deployment-event").await;
    assert_eq!(types(&first), ["DeploymentRequested"]);

    s.record(id, "engine", &[dispatched(Step::Build)]).await;
    assert_eq!(types(&frames.until(|e| e.event == "deployment-event").await), ["StepDispatched"]);

    // A line waits for its newline while the deployment runs.
    s.write_log(id, "build.log", "Step 1/2 : FROM scratch\nStep 2/2 : R");
    assert_eq!(types(&frames.until(|e| e.event == "log").await), ["log: Step 1/2 : FROM scratch"]);
    s.write_log(id, "build.log", "UN false\n");
    assert_eq!(types(&frames.until(|e| e.event == "log").await), ["log: Step 2/2 : RUN false"]);

    s.record(id, "worker:w1", &build_failed()).await;
    let rest = frames.rest().await;
    assert_eq!(types(&rest), ["StepFailed", "DeploymentFailed", "end"]);
    s.cleanup().await;
}

#[tokio::test]
async fn events_and_log_lines_arrive_while_it_runs_sqlite() {
    events_and_log_lines_arrive_while_it_runs(Setup::sqlite().await).await;
}

#[tokio::test]
async fn events_and_log_lines_arrive_while_it_runs_postgres() {
    events_and_log_lines_arrive_while_it_runs(Setup::postgres().await).await;
}

/// A client whose connection dropped sends the last event's id back
/// (`Last-Event-ID`, as EventSource does) and gets only what followed it,
/// while the deployment goes on; a header that is not a version is refused.
async fn a_dropped_stream_resumes_after_the_last_event_id(s: Setup) {
    let id = s.requested().await;
    s.record(id, "engine", &[dispatched(Step::Build)]).await;
    let uri = format!("/api/deployments/{id}/stream?logs=false");
    let mut first = s.open_stream(&uri).await;
    let seen = first.until(|e| e.json()["type"] == "StepDispatched").await;
    assert_eq!(seen.iter().map(|e| e.id.as_deref()).collect::<Vec<_>>(), [Some("1"), Some("2")], "each event's id is its version");
    // The connection drops; meanwhile the deployment goes on.
    drop(first);
    s.record(id, "worker:w1", &build_failed()).await;

    let last = seen.last().and_then(|e| e.id.clone()).expect("an id");
    let resumed = s.open_stream_with(&uri, &[("last-event-id", &last)]).await.rest().await;
    assert_eq!(types(&resumed), ["StepFailed", "DeploymentFailed", "end"], "nothing seen before is sent again");
    assert_eq!(resumed.iter().map(|e| e.id.as_deref()).collect::<Vec<_>>(), [Some("3"), Some("4"), None]);
    // Resuming after the last event still ends the stream: the deployment is over.
    assert_eq!(types(&s.open_stream_with(&uri, &[("last-event-id", "4")]).await.rest().await), ["end"]);
    // Without the header it starts at version 1, as before.
    assert_eq!(types(&s.open_stream(&uri).await.rest().await).len(), 5);

    let request = Request::get(&uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", s.token))
        .header("last-event-id", "yesterday")
        .body(Body::empty())
        .expect("request");
    let response = s.app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("Last-Event-ID") && text.contains("yesterday"), "{text}");
    s.cleanup().await;
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_the_last_event_id_sqlite() {
    a_dropped_stream_resumes_after_the_last_event_id(Setup::sqlite().await).await;
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_the_last_event_id_postgres() {
    a_dropped_stream_resumes_after_the_last_event_id(Setup::postgres().await).await;
}

/// `GET /api/environments`: each environment's status with the routers'
/// traffic of the last hour, summed per minute (older samples left out).
async fn the_environments_page_shows_status_and_traffic(s: Setup) {
    use slipway_store::traffic::{minute_of, TrafficSample};
    let id = s.requested().await;
    let now = minute_of(Utc::now().timestamp());
    let sample = |router: &str, minute: i64, requests: i64, errors: i64| TrafficSample {
        router: router.into(),
        project: "hello".into(),
        environment: "test".into(),
        minute,
        requests,
        errors,
    };
    let samples = [sample("r1", now - 90, 1000, 0), sample("r1", now - 1, 60, 3), sample("r2", now - 1, 30, 0), sample("r1", now, 12, 0)];
    s.store.operational().record_traffic(&samples, now - 120).await.expect("store");
    let (status, listed) = s.call(Method::GET, "/api/environments", Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let test = &listed[0];
    assert_eq!((test["project"].as_str(), test["environment"].as_str()), (Some("hello"), Some("test")));
    assert_eq!(test["queue"], json!([id.to_string()]), "the same status as the environment's own route");
    assert_eq!(test["active"], Value::Null);
    assert_eq!(
        test["traffic"],
        json!([{"minute": now - 1, "requests": 90, "errors": 3}, {"minute": now, "requests": 12, "errors": 0}]),
        "summed over the routers, the last hour only"
    );
    let (status, refused) = s.call(Method::GET, "/api/environments?limit=0", Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    s.cleanup().await;
}

#[tokio::test]
async fn the_environments_page_shows_status_and_traffic_sqlite() {
    the_environments_page_shows_status_and_traffic(Setup::sqlite().await).await;
}

#[tokio::test]
async fn the_environments_page_shows_status_and_traffic_postgres() {
    the_environments_page_shows_status_and_traffic(Setup::postgres().await).await;
}

#[tokio::test]
async fn without_a_logs_directory_only_events_are_streamed() {
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::in_memory().await.expect("store"));
    let s = Setup::with(store, None, Some(PathBuf::from("/nonexistent"))).await;
    let id = s.requested().await;
    s.record(id, "engine", &[dispatched(Step::Build)]).await;
    s.record(id, "worker:w1", &build_failed()).await;
    let sent = s.open_stream(&format!("/api/deployments/{id}/stream")).await.rest().await;
    assert_eq!(types(&sent), ["DeploymentRequested", "StepDispatched", "StepFailed", "DeploymentFailed", "end"]);
}

#[tokio::test]
async fn unknown_and_malformed_deployments_are_refused_before_streaming() {
    let s = Setup::sqlite().await;
    let (status, body) = s.call(Method::GET, &format!("/api/deployments/{}/stream", Uuid::now_v7()), Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = s.call(Method::GET, "/api/deployments/nope/stream", Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("`nope` is not a deployment id"), "{body}");
    let id = s.requested().await;
    let (status, body) = s.call(Method::GET, &format!("/api/deployments/{id}/stream?from=2"), Value::Null).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.to_string().contains("unknown query `from=2`"), "{body}");
    s.cleanup().await;
}

/// A stream of a deployment that never ends must not hold the server's
/// graceful shutdown open.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let s = Setup::sqlite().await;
    let id = s.requested().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, s.app.clone(), async {
        let _ = stopped.await;
    }));
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /api/deployments/{id}/stream HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n", s.token);
    client.write_all(request.as_bytes()).await.expect("send");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("DeploymentRequested") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk)).await.expect("data").expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    stop.send(()).expect("server running");
    let done = tokio::time::timeout(Duration::from_secs(5), server).await;
    done.expect("serve returns within 5 s of shutdown with a stream open").expect("task").expect("serve Ok");
    s.cleanup().await;
}

#[tokio::test]
async fn whoami_names_the_token_and_its_scope() {
    let s = Setup::sqlite().await;
    let (status, body) = s.call(Method::GET, "/api/whoami", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"name": "live-test", "scope": "admin", "authenticated": true}));
}

#[tokio::test]
async fn the_dashboard_is_served_beside_the_api() {
    let s = Setup::sqlite().await;
    let get = |uri: &'static str| {
        let app = s.app.clone();
        async move {
            let response = app.oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("infallible");
            let headers = response.headers().clone();
            let status = response.status();
            let bytes = response.into_body().collect().await.expect("body").to_bytes();
            (status, headers, String::from_utf8(bytes.to_vec()).expect("UTF-8"))
        }
    };
    for page in ["/", "/ui", "/ui/", "/ui/deployment/x"] {
        let (status, headers, body) = get(page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8", "{page}");
        assert!(headers["content-security-policy"].to_str().expect("ascii").contains("script-src 'self'"));
        assert!(body.contains(r#"<script src="/ui/app.js" defer></script>"#), "{page}");
    }
    let (status, headers, body) = get("/ui/app.js").await;
    assert_eq!((status, &headers[header::CONTENT_TYPE]), (StatusCode::OK, &"text/javascript; charset=utf-8".parse().expect("value")));
    assert!(body.contains("Authorization") && body.contains("/stream"));
    let (status, headers, _) = get("/ui/style.css").await;
    assert_eq!((status, &headers[header::CONTENT_TYPE]), (StatusCode::OK, &"text/css; charset=utf-8".parse().expect("value")));
    // The vendored charting library, from this server (no CDN), under the same policy.
    let (_, _, index) = get("/").await;
    assert!(index.contains(r#"<script src="/ui/vendor/uplot.min.js" defer></script>"#), "{index}");
    let (status, headers, body) = get("/ui/vendor/uplot.min.js").await;
    assert_eq!((status, &headers[header::CONTENT_TYPE]), (StatusCode::OK, &"text/javascript; charset=utf-8".parse().expect("value")));
    assert!(headers["content-security-policy"].to_str().expect("ascii").contains("default-src 'none'"));
    assert!(body.contains("uPlot") && !body.contains("eval("), "uPlot, with no eval (the policy forbids it)");
    let (status, headers, body) = get("/ui/vendor/uplot.min.css").await;
    assert_eq!((status, &headers[header::CONTENT_TYPE]), (StatusCode::OK, &"text/css; charset=utf-8".parse().expect("value")));
    assert!(body.contains(".uplot"));
    // The API's own 404 still answers for what is neither.
    let (status, headers, _) = get("/api/nope").await;
    assert_eq!((status, &headers[header::CONTENT_TYPE]), (StatusCode::NOT_FOUND, &"application/json".parse().expect("value")));
}

/// One token may hold 16 live streams at once: the next is a 429 naming
/// the cap, and a stream the client drops gives its place back.
#[tokio::test]
async fn a_token_holds_at_most_sixteen_live_streams() {
    let s = Setup::sqlite().await;
    let id = s.requested().await;
    let uri = format!("/api/deployments/{id}/stream");
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(s.open_stream(&uri).await);
    }
    let (status, body) = s.call(Method::GET, &uri, Value::Null).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.to_string().contains("already holds 16 live streams"), "{body}");
    drop(open.pop());
    let again = s.open_stream(&uri).await;
    drop((open, again));
    s.cleanup().await;
}
