//! The HTTP API driven as a `Router` with `oneshot`, no socket, against an
//! in-memory SQLite store; and once through `serve` on a real port.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use slipway_engine::api;
use slipway_store::{EventStore, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const SECRET: &str = "S3ntinel-api";

async fn app() -> Router {
    let store = SqliteStore::in_memory().await.expect("in-memory SQLite store");
    api::app(Arc::new(store) as Arc<dyn EventStore>)
}

/// A response's status, headers and body (as text, for "appears nowhere").
struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    #[track_caller]
    fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }

    /// The `error` of a JSON error body.
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no `error` in {}", self.text)).to_string()
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, text: String::from_utf8(bytes.to_vec()).expect("UTF-8 body") }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Request::get(uri).body(Body::empty()).expect("request")).await
}

async fn call(app: &Router, method: Method, uri: &str, body: Value) -> Reply {
    raw(app, method, uri, &body.to_string()).await
}

async fn raw(app: &Router, method: Method, uri: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(api::ACTOR_HEADER, "test:alice")
        .body(Body::from(body.to_string()))
        .expect("request");
    send(app, request).await
}

async fn create_hello(app: &Router) {
    let body = json!({"name": "hello", "repository": "file:///srv/hello.git", "environments": ["test", "live"]});
    call(app, Method::POST, "/api/projects", body).await.expect(StatusCode::CREATED);
}

async fn deploy(app: &Router, body: Value) -> Value {
    call(app, Method::POST, "/api/projects/hello/environments/test/deployments", body)
        .await
        .expect(StatusCode::ACCEPTED)
        .json()
}

#[tokio::test]
async fn health_names_the_store() {
    let app = app().await;
    let body = get(&app, "/api/health").await.expect(StatusCode::OK).json();
    assert_eq!(body, json!({"status": "ok", "store": "sqlite"}));
}

#[tokio::test]
async fn creating_a_project_then_listing_and_showing_it() {
    let app = app().await;
    let body = json!({"name": "hello", "repository": "file:///srv/hello.git"});
    let created = call(&app, Method::POST, "/api/projects", body).await.expect(StatusCode::CREATED);
    assert_eq!(created.headers[header::LOCATION], "/api/projects/hello");
    let expected = json!({
        "name": "hello", "repository": "file:///srv/hello.git", "default_branch": "main", "environments": ["live", "test"]
    });
    assert_eq!(created.json(), expected);

    assert_eq!(get(&app, "/api/projects").await.expect(StatusCode::OK).json(), json!([expected]));
    let shown = get(&app, "/api/projects/hello").await.expect(StatusCode::OK).json();
    assert_eq!(shown["default_branch"], "main");
    assert_eq!(shown["environments"]["test"], json!({"settings": {}}));
}

#[tokio::test]
async fn creating_a_project_twice_is_a_conflict() {
    let app = app().await;
    create_hello(&app).await;
    let body = json!({"name": "hello", "repository": "file:///srv/other.git"});
    let again = call(&app, Method::POST, "/api/projects", body).await.expect(StatusCode::CONFLICT);
    assert!(again.error().contains("`hello` already exists"), "{}", again.text);
}

#[tokio::test]
async fn bad_project_input_is_a_400_naming_the_rule() {
    let app = app().await;
    let bad_name =
        call(&app, Method::POST, "/api/projects", json!({"name": "Hello_World", "repository": "file:///r"})).await;
    let message = bad_name.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("`Hello_World`") && message.contains("lowercase letters, digits or '-'"), "{message}");

    let relative = call(&app, Method::POST, "/api/projects", json!({"name": "hello", "repository": "src/hello"})).await;
    assert!(relative.expect(StatusCode::BAD_REQUEST).error().contains("absolute path"));

    let no_envs = json!({"name": "hello", "repository": "file:///r", "environments": []});
    let message = call(&app, Method::POST, "/api/projects", no_envs).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("at least one environment"), "{message}");
}

#[tokio::test]
async fn unknown_fields_and_malformed_json_are_400s() {
    let app = app().await;
    let unknown = json!({"name": "hello", "repository": "file:///r", "branch": "main"});
    let message = call(&app, Method::POST, "/api/projects", unknown).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("unknown field `branch`"), "{message}");

    let message =
        raw(&app, Method::POST, "/api/projects", r#"{"name": "hello","#).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.starts_with("invalid JSON body") && message.contains("EOF"), "{message}");

    let missing = call(&app, Method::POST, "/api/projects", json!({"name": "hello"})).await;
    let message = missing.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("must be an absolute path or a URL"), "{message}");
    let mirror = call(&app, Method::POST, "/api/projects", json!({"name": "m", "mirror_of": "nothing"})).await;
    let message = mirror.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("no project `nothing` to mirror"), "{message}");

    let wrong_type = json!({"set": {"PORT": 8080}});
    let reply = call(&app, Method::PUT, "/api/projects/hello/environments/test/settings", wrong_type).await;
    let message = reply.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("`set.PORT`"), "{message}");

    let not_json = Request::post("/api/projects").body(Body::from(r#"{"name":"x"}"#)).expect("request");
    let message = send(&app, not_json).await.expect(StatusCode::UNSUPPORTED_MEDIA_TYPE).error();
    assert!(message.contains("Content-Type: application/json"), "{message}");
}

#[tokio::test]
async fn secret_values_never_leave_the_api() {
    let app = app().await;
    create_hello(&app).await;
    let change = json!({"set": {"GREETING": "plain-hello"}, "secrets": {"API_TOKEN": SECRET}});
    let reply = call(&app, Method::PUT, "/api/projects/hello/environments/test/settings", change).await;
    assert!(reply.expect(StatusCode::NO_CONTENT).text.is_empty());

    let shown = get(&app, "/api/projects/hello").await.expect(StatusCode::OK);
    assert!(!shown.text.contains(SECRET), "secret value leaked: {}", shown.text);
    let settings = &shown.json()["environments"]["test"]["settings"];
    assert_eq!(settings["GREETING"]["value"], "plain-hello");
    assert_eq!(settings["GREETING"]["secret"], false);
    assert_eq!(settings["API_TOKEN"]["secret"], true);
    assert!(settings["API_TOKEN"]["fingerprint"].as_str().is_some_and(|f| !f.is_empty()));
    assert!(settings["API_TOKEN"].get("value").is_none());
    assert_eq!(shown.json()["environments"]["live"]["settings"], json!({}));

    // Nor through the deployment that carries the settings' fingerprints.
    let id = deploy(&app, json!({})).await["deployment"].as_str().expect("id").to_string();
    for uri in [format!("/api/deployments/{id}"), format!("/api/deployments/{id}/events")] {
        let reply = get(&app, &uri).await.expect(StatusCode::OK);
        assert!(!reply.text.contains(SECRET), "secret value leaked by {uri}: {}", reply.text);
    }

    let unset = json!({"unset": ["GREETING"]});
    call(&app, Method::PUT, "/api/projects/hello/environments/test/settings", unset)
        .await
        .expect(StatusCode::NO_CONTENT);
    let settings = get(&app, "/api/projects/hello").await.json()["environments"]["test"]["settings"].clone();
    assert!(settings.get("GREETING").is_none() && settings.get("API_TOKEN").is_some(), "{settings}");
}

#[tokio::test]
async fn bad_settings_are_400s_and_unknown_places_404s() {
    let app = app().await;
    create_hello(&app).await;
    let url = "/api/projects/hello/environments/test/settings";
    let bad_key = call(&app, Method::PUT, url, json!({"set": {"1BAD": "x"}})).await.expect(StatusCode::BAD_REQUEST);
    assert!(bad_key.error().contains("setting name `1BAD`"));
    let twice =
        call(&app, Method::PUT, url, json!({"set": {"A": "x"}, "unset": ["A"]})).await.expect(StatusCode::BAD_REQUEST);
    assert!(twice.error().contains("`A` appears more than once"));
    call(&app, Method::PUT, url, json!({})).await.expect(StatusCode::BAD_REQUEST);

    let reply =
        call(&app, Method::PUT, "/api/projects/hello/environments/prod/settings", json!({"set": {"A": "x"}})).await;
    assert!(reply.expect(StatusCode::NOT_FOUND).error().contains("no environment `prod` (it has: live, test)"));
    let reply =
        call(&app, Method::PUT, "/api/projects/nope/environments/test/settings", json!({"set": {"A": "x"}})).await;
    assert!(reply.expect(StatusCode::NOT_FOUND).error().contains("no project `nope`"));
}

#[tokio::test]
async fn deployments_queue_up_and_show_their_state_and_events() {
    let app = app().await;
    create_hello(&app).await;
    let first = deploy(&app, json!({"ref": "v1", "dry_run": true})).await;
    assert_eq!(first["queued_behind"], json!([]));
    let first_id = first["deployment"].as_str().expect("deployment id").to_string();
    let second = deploy(&app, json!({"mode": "local"})).await;
    assert_eq!(second["queued_behind"], json!([first_id]));

    // No engine runs here: the deployment stays requested.
    let d = get(&app, &format!("/api/deployments/{first_id}")).await.expect(StatusCode::OK).json();
    assert_eq!(d["status"], "running");
    assert_eq!(d["failure"], Value::Null);
    assert_eq!(d["completed"], json!([]));
    assert_eq!(
        (d["project"].as_str(), d["environment"].as_str(), d["ref"].as_str()),
        (Some("hello"), Some("test"), Some("v1"))
    );
    assert_eq!(
        (d["mode"].as_str(), d["run_release"].as_bool(), d["dry_run"].as_bool()),
        (Some("cloud"), Some(true), Some(true))
    );
    assert_eq!(d["commit"], Value::Null);

    let events = get(&app, &format!("/api/deployments/{first_id}/events")).await.expect(StatusCode::OK).json();
    let events = events.as_array().expect("a list of events");
    assert_eq!(events.len(), 1);
    let requested = &events[0];
    assert_eq!((requested["version"].as_u64(), requested["type"].as_str()), (Some(1), Some("DeploymentRequested")));
    assert_eq!(requested["actor"], "test:alice");
    assert!(requested["hash"].as_str().is_some_and(|h| h.len() == 64) && requested["recorded_at"].is_string());
    let payload = &requested["payload"];
    assert_eq!(payload["deployment_id"].as_str(), Some(first_id.as_str()));
    assert_eq!(payload["repository"], "file:///srv/hello.git");
    assert_eq!((payload["git_ref"].as_str(), payload["mode"].as_str()), (Some("v1"), Some("cloud")));

    // Local mode runs release commands only when asked to migrate.
    let second_id = second["deployment"].as_str().expect("deployment id");
    let d = get(&app, &format!("/api/deployments/{second_id}")).await.json();
    assert_eq!(
        (d["mode"].as_str(), d["run_release"].as_bool(), d["ref"].as_str()),
        (Some("local"), Some(false), Some("main"))
    );
    let migrating = deploy(&app, json!({"mode": "local", "migrate": true})).await;
    let d = get(&app, &format!("/api/deployments/{}", migrating["deployment"].as_str().expect("id"))).await.json();
    assert_eq!(d["run_release"], true);

    let status = get(&app, "/api/projects/hello/environments/test").await.expect(StatusCode::OK).json();
    assert_eq!(status["last_succeeded"], Value::Null);
    assert_eq!(status["queue"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["queue"][0].as_str(), Some(first_id.as_str()));
}

#[tokio::test]
async fn bad_deployment_requests() {
    let app = app().await;
    create_hello(&app).await;
    let url = "/api/projects/hello/environments/test/deployments";
    let mode = call(&app, Method::POST, url, json!({"mode": "orbit"})).await.expect(StatusCode::BAD_REQUEST);
    assert!(mode.error().contains("unknown variant `orbit`"), "{}", mode.text);
    let option = call(&app, Method::POST, url, json!({"ref": "--upload-pack=x"})).await.expect(StatusCode::BAD_REQUEST);
    assert!(option.error().contains("looks like an option"));
    call(&app, Method::POST, url, json!({"ref": ""})).await.expect(StatusCode::BAD_REQUEST);
    call(&app, Method::POST, url, json!({"force": true})).await.expect(StatusCode::BAD_REQUEST);
    call(&app, Method::POST, "/api/projects/nope/environments/test/deployments", json!({}))
        .await
        .expect(StatusCode::NOT_FOUND);
    call(&app, Method::POST, "/api/projects/hello/environments/prod/deployments", json!({}))
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_things_are_404s_and_malformed_ids_400s() {
    let app = app().await;
    let reply = get(&app, "/api/projects/nope").await.expect(StatusCode::NOT_FOUND);
    assert!(reply.error().contains("no project `nope`; create it with POST /api/projects"));
    get(&app, "/api/projects/nope/environments/test").await.expect(StatusCode::NOT_FOUND);

    let unknown = "0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f";
    for uri in [format!("/api/deployments/{unknown}"), format!("/api/deployments/{unknown}/events")] {
        let reply = get(&app, &uri).await.expect(StatusCode::NOT_FOUND);
        assert!(reply.error().contains(unknown), "{}", reply.text);
    }
    for uri in ["/api/deployments/not-a-uuid", "/api/deployments/not-a-uuid/events"] {
        let reply = get(&app, uri).await.expect(StatusCode::BAD_REQUEST);
        assert!(reply.error().contains("`not-a-uuid` is not a deployment id"), "{}", reply.text);
    }

    let reply = get(&app, "/api/nothing-here").await.expect(StatusCode::NOT_FOUND);
    assert!(reply.error().contains("no endpoint GET /api/nothing-here"));
    let reply = send(&app, Request::delete("/api/projects").body(Body::empty()).expect("request")).await;
    let reply = reply.expect(StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.error().contains("DELETE is not allowed"));
    assert!(reply.headers.contains_key(header::ALLOW));
}

#[tokio::test]
async fn the_actor_header_is_checked_and_defaults_to_api() {
    let app = app().await;
    let request = Request::post("/api/projects")
        .header(header::CONTENT_TYPE, "application/json")
        .header(api::ACTOR_HEADER, "x".repeat(200))
        .body(Body::from(json!({"name": "hello", "repository": "file:///r"}).to_string()))
        .expect("request");
    assert!(send(&app, request).await.expect(StatusCode::BAD_REQUEST).error().contains("X-Slipway-Actor"));

    let request = Request::post("/api/projects")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(json!({"name": "hello", "repository": "file:///r"}).to_string()))
        .expect("request");
    send(&app, request).await.expect(StatusCode::CREATED);
    let request = Request::post("/api/projects/hello/environments/test/deployments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("request");
    let id =
        send(&app, request).await.expect(StatusCode::ACCEPTED).json()["deployment"].as_str().expect("id").to_string();
    let events = get(&app, &format!("/api/deployments/{id}/events")).await.json();
    assert_eq!(events[0]["actor"], "api", "the default actor");
}

#[tokio::test]
async fn serve_answers_on_a_real_socket_and_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, app().await, async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write request");
    let mut response = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response));
    read.await.expect("a response within 10 s").expect("read response");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok","store":"sqlite"}"#), "{response}");

    stop.send(()).expect("server still running");
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops within 10 s");
    stopped.expect("server task").expect("serve returns Ok");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
}
