//! The HTTP API driven as a `Router` with `oneshot`, no socket, against an
//! in-memory SQLite store; and once through `serve` on a real port. Where a
//! test needs finished deployments, it records the events an engine and
//! its workers would (`finish`), so no Docker is needed here; the pipeline
//! itself is the tests crate's.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use slipway_engine::api::{self, Access, ApiConfig};
use slipway_engine::requests;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::*;
use slipway_proto::{Envelope, Event, Step};
use slipway_store::{EventStore, ExpectedVersion, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "S3ntinel-api";

/// An app over a fresh store, with one token of each scope.
struct Api {
    app: Router,
    store: Arc<dyn EventStore>,
    admin: String,
    deploy: String,
    read: String,
    data_dir: std::path::PathBuf,
}

impl Api {
    async fn new() -> Api {
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::in_memory().await.expect("in-memory SQLite store"));
        let issue = |name: &'static str, scope| {
            let store = store.clone();
            async move { requests::issue_token(&*store, "test:setup", name, scope).await.unwrap().unwrap() }
        };
        let (admin, deploy, read) =
            (issue("root", TokenScope::Admin).await, issue("ci", TokenScope::Deploy).await, issue("audit", TokenScope::Read).await);
        let data_dir = std::env::temp_dir().join(format!("slipway-api-test-{}", Uuid::now_v7()));
        let config = ApiConfig { data_dir: data_dir.clone(), ..Default::default() };
        Api { app: api::app_with(store.clone(), config), store, admin, deploy, read, data_dir }
    }

    fn token(&self, scope: TokenScope) -> &str {
        match scope {
            TokenScope::Admin => &self.admin,
            TokenScope::Deploy => &self.deploy,
            TokenScope::Read => &self.read,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        Reply { status, headers, text: String::from_utf8(bytes.to_vec()).expect("UTF-8 body") }
    }

    /// A request with `token` (none if `None`) and a JSON body (none if `None`).
    async fn request(&self, method: Method, uri: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        self.send(request.body(Body::from(body.unwrap_or_default().to_string())).expect("request")).await
    }

    /// GET as the read token.
    async fn get(&self, uri: &str) -> Reply {
        self.request(Method::GET, uri, Some(&self.read), None).await
    }

    /// A JSON request as the admin token.
    async fn call(&self, method: Method, uri: &str, body: Value) -> Reply {
        self.request(method, uri, Some(&self.admin), Some(&body.to_string())).await
    }

    async fn raw(&self, method: Method, uri: &str, body: &str) -> Reply {
        self.request(method, uri, Some(&self.admin), Some(body)).await
    }

    async fn create_hello(&self) {
        let body = json!({"name": "hello", "repo": "file:///srv/hello.git", "environments": ["test", "live"]});
        self.call(Method::POST, "/api/projects", body).await.expect(StatusCode::CREATED);
    }

    async fn deploy(&self, env: &str, body: Value) -> Uuid {
        let uri = format!("/api/projects/hello/environments/{env}/deployments");
        let reply = self.request(Method::POST, &uri, Some(&self.deploy), Some(&body.to_string())).await;
        id(&reply.expect(StatusCode::ACCEPTED).json()["deployment"])
    }

    /// Records what an engine and workers record for a deployment that
    /// checked out `commit`, built an image (with a build log on disk) and
    /// served (`succeeded`), or whose health check failed.
    async fn finish(&self, id: Uuid, commit: &str, succeeded: bool) {
        let d = slipway_engine::load::deployment(&*self.store, id).await.unwrap().unwrap();
        let log = self.data_dir.join(format!("logs/{id}/build.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, format!("Step 1/2 : FROM scratch\nbuilt {commit}\n")).unwrap();
        let mut events = Vec::new();
        for step in Step::PIPELINE {
            events.push(Event::StepDispatched(StepDispatched {
                step,
                command_id: Uuid::now_v7(),
                attempt: 1,
                deadline: None,
                dispatched_at: None,
            }));
            events.push(match step {
                Step::Checkout => Event::CheckedOut(CheckedOut {
                    commit: commit.into(),
                    workspace: "/w".into(),
                    config: json!({
                        "web": {"memory": "256m", "cpus": "0.5"},
                        "release": {"commands": ["migrate"]},
                        "processes": {"worker": {"command": ["w"], "pids": 20}},
                    }),
                    source_host_key: None,
                }),
                Step::Build => Event::ImageBuilt(ImageBuilt {
                    image_id: format!("sha256:{commit}"),
                    tag: format!("hello:{commit}"),
                    cache_used: false,
                    duration_ms: 5,
                    log_ref: Some(format!("logs/{id}/build.log")),
                    log_digest: None,
                    mode: BuildMode::Cloud,
                    warnings: vec![],
                    base_images: vec![],
                    pushed: None,
                }),
                Step::HealthCheck if !succeeded => Event::StepFailed(StepFailed {
                    step,
                    reason: "GET / answered 500".into(),
                    attempt: 1,
                    details: vec!["boom".into()],
                    evidence: None,
                }),
                step => Event::StepSkipped(StepSkipped { step, reason: "test".into() }),
            });
            if !succeeded && step == Step::HealthCheck {
                break;
            }
        }
        if succeeded {
            let routers = vec![];
            events.push(Event::TrafficSwitchRequested(TrafficSwitchRequested {
                route_version: 1,
                upstreams: vec!["127.0.0.1:1".into()],
                routers: routers.clone(),
                deadline: Utc::now(),
            }));
            events.push(Event::TrafficSwitched(TrafficSwitched { route_version: 1, routers }));
            events.push(Event::DeploymentSucceeded(DeploymentSucceeded { image_id: format!("sha256:{commit}"), commit: commit.into() }));
        } else {
            events.push(Event::DeploymentFailed(DeploymentFailed { step: Step::HealthCheck, reason: "GET / answered 500".into() }));
        }
        append(&*self.store, &deployment_stream(id), &events).await;
        let finished = Event::DeploymentFinished(DeploymentFinished {
            deployment_id: id,
            succeeded,
            containers: vec![],
            upstreams: vec![],
            dry_run: false,
            host: String::new(),
        });
        append(&*self.store, &environment_stream(&d.context.project, &d.context.environment), &[finished]).await;
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn append(store: &dyn EventStore, stream: &str, events: &[Event]) {
    let meta = || Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "engine".into(), trace: None };
    let envelopes: Vec<Envelope> = events.iter().map(|e| Envelope::new(Uuid::now_v7(), Utc::now(), stream, e, meta()).unwrap()).collect();
    store.append(stream, ExpectedVersion::Any, &envelopes, &[]).await.unwrap().unwrap();
}

fn id(value: &Value) -> Uuid {
    value.as_str().unwrap_or_else(|| panic!("not an id: {value}")).parse().unwrap()
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

    /// The message of a JSON error body, checking its code fits the status.
    #[track_caller]
    fn error(&self) -> String {
        let body = self.json();
        let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {}", self.text));
        let expected = match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "internal",
        };
        assert_eq!(code, expected, "{}", self.text);
        body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {}", self.text)).to_string()
    }
}

/// A route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{name}", "hello")
        .replace("{env}", "test")
        .replace("{id}", "0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f")
        .replace("{provider}", "github")
        .replace("{project}", "hello")
}

#[tokio::test]
async fn every_route_refuses_a_missing_unknown_malformed_revoked_or_expired_token_and_an_under_scoped_one() {
    let api = Api::new().await;
    let revoked = requests::issue_token(&*api.store, "test", "gone", TokenScope::Admin).await.unwrap().unwrap();
    requests::revoke_token(&*api.store, "test", "gone").await.unwrap().unwrap();
    // A token issued to expire a moment from now, over the API; one already past is refused.
    let admin = Some(api.token(TokenScope::Admin));
    let past = json!({"name": "late", "scope": "admin", "expires_at": "2020-01-01T00:00:00Z"});
    let refused = api.request(Method::POST, "/api/tokens", admin, Some(&past.to_string())).await.expect(StatusCode::BAD_REQUEST);
    assert!(refused.error().contains("already past"), "{}", refused.text);
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let brief = json!({"name": "brief", "scope": "admin", "expires_at": until.to_rfc3339()});
    let issued = api.request(Method::POST, "/api/tokens", admin, Some(&brief.to_string())).await.expect(StatusCode::CREATED).json();
    let expiring = issued["token"].as_str().unwrap().to_string();
    assert!(issued["expires_at"].is_string(), "{issued}");
    api.request(Method::GET, "/api/projects", Some(&expiring), None).await.expect(StatusCode::OK);
    let listed = api.request(Method::GET, "/api/tokens", admin, None).await.expect(StatusCode::OK).json();
    let shown = listed.as_array().unwrap().iter().find(|t| t["name"] == "brief").unwrap();
    assert_eq!(shown["expires_at"], issued["expires_at"], "{listed}");
    tokio::time::sleep((until - chrono::Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_millis(50)).await;
    let unknown = slipway_engine::tokens::generate();
    let routes = api::routes();
    assert!(routes.len() >= 27, "{routes:?}");
    for route in routes {
        let uri = concrete(route.path);
        let what = format!("{} {}", route.method, route.path);
        let required = match route.access {
            Access::Open => {
                api.request(route.method.clone(), &uri, None, None).await.expect(StatusCode::OK);
                continue;
            }
            // Webhooks: the signature is the credential, and a token is no
            // substitute for it (engine/tests/hooks.rs covers the rest).
            Access::Signature => {
                for token in [None, Some(api.token(TokenScope::Admin))] {
                    let reply = api.request(route.method.clone(), &uri, token, Some("{}")).await;
                    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.text);
                }
                continue;
            }
            Access::Scope(required) => required,
        };
        let missing = api.request(route.method.clone(), &uri, None, None).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{what}: {}", missing.text);
        assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer", "{what}");
        assert!(missing.error().contains("Authorization: Bearer"), "{what}: {}", missing.text);
        let refused = [
            (unknown.as_str(), "not known"),
            (revoked.as_str(), "`gone` was revoked"),
            (expiring.as_str(), "`brief` expired at"),
            ("slw_nope", "must be"),
        ];
        for (token, says) in refused {
            let reply = api.request(route.method.clone(), &uri, Some(token), None).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what} with {token}: {}", reply.text);
            assert!(reply.error().contains(says), "{what}: {}", reply.text);
        }
        let basic = Request::builder().method(route.method.clone()).uri(&uri).header(header::AUTHORIZATION, "Basic YTpi");
        assert_eq!(api.send(basic.body(Body::empty()).unwrap()).await.status, StatusCode::UNAUTHORIZED, "{what}");
        for scope in TokenScope::ALL.into_iter().filter(|s| *s < required) {
            let reply = api.request(route.method.clone(), &uri, Some(api.token(scope)), None).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what} with {scope}: {}", reply.text);
            let message = reply.error();
            assert!(message.contains(&format!("needs scope {required}")) && message.contains(&format!("has {scope}")), "{message}");
        }
        // A token of the right scope gets past the check (to whatever the
        // handler makes of a made-up project or deployment).
        let reply = api.request(route.method.clone(), &uri, Some(api.token(required)), None).await;
        assert!(![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&reply.status), "{what}: {}", reply.text);
    }
}

#[tokio::test]
async fn domains_are_added_listed_refused_when_taken_and_removed() {
    let api = Api::new().await;
    let body = json!({"name": "hello", "repository": "file:///srv/hello.git"});
    api.call(Method::POST, "/api/projects", body).await.expect(StatusCode::CREATED);
    let put = |env: &str, domain: &str| format!("/api/projects/hello/environments/{env}/domains/{domain}");
    let added = api.request(Method::PUT, &put("live", "WWW.Example.com"), Some(api.token(TokenScope::Admin)), None).await;
    assert_eq!(added.expect(StatusCode::OK).json(), json!({"project": "hello", "environment": "live", "domains": ["www.example.com"]}));
    // A domain belongs to one environment: 409, naming the holder.
    let taken = api.request(Method::PUT, &put("test", "www.example.com"), Some(api.token(TokenScope::Admin)), None).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    assert!(taken.error().contains("already routes to hello live"), "{}", taken.text);
    let bad = api.request(Method::PUT, &put("live", "nodots"), Some(api.token(TokenScope::Admin)), None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let listed = api.get("/api/projects/hello/environments/live/domains").await.expect(StatusCode::OK).json();
    assert_eq!(listed["domains"], json!(["www.example.com"]));
    let removed = api.request(Method::DELETE, &put("live", "www.example.com"), Some(api.token(TokenScope::Admin)), None).await;
    assert_eq!(removed.expect(StatusCode::OK).json()["domains"], json!([]));
    let again = api.request(Method::DELETE, &put("live", "www.example.com"), Some(api.token(TokenScope::Admin)), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
    // Recorded on the routes stream, with the token as the actor.
    let routes = api.store.read_stream(slipway_proto::event::ROUTES_STREAM, 1).await.unwrap();
    assert_eq!(routes.iter().map(|r| r.envelope.message_type.as_str()).collect::<Vec<_>>(), ["DomainAdded", "DomainRemoved"]);
}

#[tokio::test]
async fn health_is_open_and_names_the_store() {
    let api = Api::new().await;
    let body = api.request(Method::GET, "/healthz", None, None).await.expect(StatusCode::OK).json();
    assert_eq!(body, json!({"status": "ok", "store": "sqlite"}));
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let api = Api::new().await;
    let doc = api.get("/openapi.json").await.expect(StatusCode::OK).json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for route in api::routes() {
        let op = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {} is not documented", route.method, route.path);
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test]
async fn creating_a_project_then_listing_and_showing_it() {
    let api = Api::new().await;
    let body = json!({"name": "hello", "repository": "file:///srv/hello.git"});
    let created = api.call(Method::POST, "/api/projects", body).await.expect(StatusCode::CREATED);
    assert_eq!(created.headers[header::LOCATION], "/api/projects/hello");
    let expected = json!({
        "name": "hello", "repo": "file:///srv/hello.git", "mirror_of": null, "default_branch": "main", "environments": ["live", "test"]
    });
    assert_eq!(created.json(), expected);

    assert_eq!(api.get("/api/projects").await.expect(StatusCode::OK).json(), json!([expected]));
    let shown = api.get("/api/projects/hello").await.expect(StatusCode::OK).json();
    assert_eq!((shown["default_branch"].as_str(), shown["repo"].as_str()), (Some("main"), Some("file:///srv/hello.git")));
    assert_eq!(shown["environments"]["test"], json!({"settings": {}}));

    let mirror = api.call(Method::POST, "/api/projects", json!({"name": "hello-eu", "mirror_of": "hello"})).await;
    assert_eq!(mirror.expect(StatusCode::CREATED).json()["mirror_of"], "hello");
    let events = api.store.read_stream("project-hello", 1).await.unwrap();
    assert_eq!(events[0].envelope.actor, "token:root", "the token's name is the actor");
}

#[tokio::test]
async fn creating_a_project_twice_is_a_conflict() {
    let api = Api::new().await;
    api.create_hello().await;
    let body = json!({"name": "hello", "repo": "file:///srv/other.git"});
    let again = api.call(Method::POST, "/api/projects", body).await.expect(StatusCode::CONFLICT);
    assert!(again.error().contains("`hello` already exists"), "{}", again.text);
}

#[tokio::test]
async fn bad_project_input_is_a_400_naming_the_rule() {
    let api = Api::new().await;
    let bad_name = api.call(Method::POST, "/api/projects", json!({"name": "Hello_World", "repo": "file:///r"})).await;
    let message = bad_name.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("`Hello_World`") && message.contains("lowercase letters, digits or '-'"), "{message}");

    let relative = api.call(Method::POST, "/api/projects", json!({"name": "hello", "repo": "src/hello"})).await;
    assert!(relative.expect(StatusCode::BAD_REQUEST).error().contains("absolute path"));

    let no_envs = json!({"name": "hello", "repo": "file:///r", "environments": []});
    let message = api.call(Method::POST, "/api/projects", no_envs).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("at least one environment"), "{message}");
}

#[tokio::test]
async fn unknown_fields_and_malformed_json_are_400s() {
    let api = Api::new().await;
    let unknown = json!({"name": "hello", "repo": "file:///r", "branch": "main"});
    let message = api.call(Method::POST, "/api/projects", unknown).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("unknown field `branch`"), "{message}");

    let message = api.raw(Method::POST, "/api/projects", r#"{"name": "hello","#).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.starts_with("invalid JSON body") && message.contains("EOF"), "{message}");

    let missing = api.call(Method::POST, "/api/projects", json!({"name": "hello"})).await;
    let message = missing.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.starts_with("`repo` is required"), "{message}");

    // A body is an object: serde alone would read a struct from an array,
    // field by position, and issue an admin token for `["t", "admin"]`.
    for (path, body) in [("/api/projects", json!(["arr", "file:///r"])), ("/api/tokens", json!(["arrtok", "admin"]))] {
        let message = api.call(Method::POST, path, body).await.expect(StatusCode::BAD_REQUEST).error();
        assert_eq!(message, "invalid JSON body: expected an object, `{...}`", "{path}");
    }
    let twice = json!({"name": "dup", "repo": "file:///r", "environments": ["x", "x"]});
    let message = api.call(Method::POST, "/api/projects", twice).await.expect(StatusCode::BAD_REQUEST).error();
    assert_eq!(message, "environment `x` is listed twice; name each environment once");
    // Each `<project>-<env>` is one label of a host name: at most 63 characters.
    let long = json!({"name": "p".repeat(60), "repo": "file:///r", "environments": ["live"]});
    let message = api.call(Method::POST, "/api/projects", long).await.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("is 65 characters") && message.contains("at most 63"), "{message}");
    assert_eq!(api.get(&format!("/api/projects/{}", "p".repeat(60))).await.status, StatusCode::NOT_FOUND, "nothing was created");
    let mirror = api.call(Method::POST, "/api/projects", json!({"name": "m", "mirror_of": "nothing"})).await;
    let message = mirror.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("no project `nothing` to mirror"), "{message}");

    let wrong_type = json!({"set": {"PORT": 8080}});
    let reply = api.call(Method::PUT, "/api/projects/hello/environments/test/settings", wrong_type).await;
    let message = reply.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("`set.PORT`"), "{message}");
    // No environment variable holds a NUL: refused at once, naming the key only.
    api.create_hello().await;
    let nul = json!({"set": {"API_KEY": {"value": "hunter2-SECRET-\u{0}-tail", "secret": true}}});
    let reply = api.call(Method::PUT, "/api/projects/hello/environments/test/settings", nul).await;
    let message = reply.expect(StatusCode::BAD_REQUEST).error();
    assert!(message.contains("`API_KEY` contains a NUL byte") && !message.contains("hunter2"), "{message}");

    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(3 << 20));
    let reply = api.raw(Method::POST, "/api/projects", &huge).await.expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error(), "the request body is over the API's 2 MiB limit");
    let replay = format!("/api/deployments/{}/replay", Uuid::now_v7());
    api.raw(Method::POST, &replay, &huge).await.expect(StatusCode::PAYLOAD_TOO_LARGE);

    let request = Request::post("/api/projects")
        .header(header::AUTHORIZATION, format!("Bearer {}", api.admin))
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    let message = api.send(request).await.expect(StatusCode::UNSUPPORTED_MEDIA_TYPE).error();
    assert!(message.contains("Content-Type: application/json"), "{message}");
}

#[tokio::test]
async fn secret_values_never_leave_the_api() {
    let api = Api::new().await;
    api.create_hello().await;
    let change = json!({
        "set": {"GREETING": "plain-hello", "DB_PASSWORD": {"value": format!("{SECRET}-2"), "secret": true}, "PLAIN": {"value": "p"}},
        "secrets": {"API_TOKEN": SECRET}
    });
    let reply = api.call(Method::PUT, "/api/projects/hello/environments/test/settings", change).await;
    assert!(reply.expect(StatusCode::NO_CONTENT).text.is_empty());

    let settings = api.get("/api/projects/hello/environments/test/settings").await.expect(StatusCode::OK);
    assert!(!settings.text.contains(SECRET), "secret value leaked: {}", settings.text);
    assert_eq!(settings.json(), json!({"API_TOKEN": "(secret)", "DB_PASSWORD": "(secret)", "GREETING": "plain-hello", "PLAIN": "p"}));

    let shown = api.get("/api/projects/hello").await.expect(StatusCode::OK);
    assert!(!shown.text.contains(SECRET), "secret value leaked: {}", shown.text);
    let settings = &shown.json()["environments"]["test"]["settings"];
    assert_eq!(settings["GREETING"]["value"], "plain-hello");
    assert_eq!(settings["GREETING"]["secret"], false);
    assert_eq!(settings["API_TOKEN"]["secret"], true);
    assert!(settings["API_TOKEN"]["fingerprint"].as_str().is_some_and(|f| !f.is_empty()));
    assert!(settings["API_TOKEN"].get("value").is_none());
    assert_eq!(shown.json()["environments"]["live"]["settings"], json!({}));

    // Nor through anything that carries the settings' fingerprints.
    let id = api.deploy("test", json!({})).await;
    api.finish(id, "c0ffee", true).await;
    for uri in [
        format!("/api/deployments/{id}"),
        format!("/api/deployments/{id}/events"),
        format!("/api/deployments/{id}/history"),
        format!("/api/deployments/{id}/logs"),
        format!("/api/diff?a={id}&b={id}"),
        "/api/deployments".to_string(),
        "/api/projects/hello/environments/test/releases".to_string(),
        "/api/export".to_string(),
    ] {
        let reply = api.get(&uri).await.expect(StatusCode::OK);
        assert!(!reply.text.contains(SECRET), "secret value leaked by {uri}: {}", reply.text);
    }

    let unset = json!({"unset": ["GREETING"]});
    api.call(Method::PUT, "/api/projects/hello/environments/test/settings", unset).await.expect(StatusCode::NO_CONTENT);
    let settings = api.get("/api/projects/hello/environments/test/settings").await.json();
    assert!(settings.get("GREETING").is_none() && settings.get("API_TOKEN").is_some(), "{settings}");
}

#[tokio::test]
async fn source_credentials_are_set_kept_secret_and_reach_deployment_requests_by_fingerprint() {
    let api = Api::new().await;
    let body = json!({"name": "hello", "repo": "git@git.example.com:org/hello.git"});
    api.call(Method::POST, "/api/projects", body).await.expect(StatusCode::CREATED);
    let known = "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let key = format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n-----END OPENSSH PRIVATE KEY-----\n");
    let change = json!({"set": {"ssh_key": key}, "known_hosts": [known]});
    api.call(Method::PUT, "/api/projects/hello/source", change).await.expect(StatusCode::NO_CONTENT);
    let shown = api.get("/api/projects/hello").await.expect(StatusCode::OK);
    assert!(!shown.text.contains(SECRET), "secret value leaked: {}", shown.text);
    assert_eq!(shown.json()["source"], json!({"credentials": ["ssh_key"], "known_hosts": [known], "submodules": false}));

    let id = api.deploy("test", json!({})).await;
    let events = api.get(&format!("/api/deployments/{id}/events")).await.expect(StatusCode::OK);
    assert!(!events.text.contains(SECRET), "secret value leaked: {}", events.text);
    assert!(events.text.contains("hmac-sha256:") && events.text.contains(known), "{}", events.text);

    let bad = api.call(Method::PUT, "/api/projects/hello/source", json!({"set": {"tokn": "x"}})).await;
    assert!(bad.expect(StatusCode::BAD_REQUEST).text.contains("not one of token"));
    let bad = api.call(Method::PUT, "/api/projects/hello/source", json!({"known_hosts": ["host ssh-ed25519"]})).await;
    assert!(bad.expect(StatusCode::BAD_REQUEST).text.contains("HOST KEY-TYPE KEY"));
    // A pin for another host would never be checked: the fetch would trust
    // whatever key it met first.
    let elsewhere = known.replacen("git.example.com", "[git.example.com]:2222", 1);
    let bad = api.call(Method::PUT, "/api/projects/hello/source", json!({"known_hosts": [elsewhere]})).await;
    assert!(bad.expect(StatusCode::BAD_REQUEST).text.contains("no line is for `git.example.com`"));
    let pinned = json!({"name": "pinned", "repo": "ssh://git@git.example.com:2222/org/hello.git", "source": {"known_hosts": [known]}});
    let bad = api.call(Method::POST, "/api/projects", pinned).await;
    assert!(bad.expect(StatusCode::BAD_REQUEST).text.contains("no line is for `[git.example.com]:2222`"));
    api.call(Method::PUT, "/api/projects/nope/source", json!({"submodules": true})).await.expect(StatusCode::NOT_FOUND);
    let in_url = json!({"name": "leaky", "repo": "https://bot:t0ken@git.example.com/org/leaky.git"});
    let refused = api.call(Method::POST, "/api/projects", in_url).await.expect(StatusCode::BAD_REQUEST);
    assert!(refused.text.contains("carries a credential") && !refused.text.contains("t0ken"), "{}", refused.text);
}

#[tokio::test]
async fn bad_settings_are_400s_and_unknown_places_404s() {
    let api = Api::new().await;
    api.create_hello().await;
    let url = "/api/projects/hello/environments/test/settings";
    let bad_key = api.call(Method::PUT, url, json!({"set": {"1BAD": "x"}})).await.expect(StatusCode::BAD_REQUEST);
    assert!(bad_key.error().contains("setting name `1BAD`"));
    let twice = api.call(Method::PUT, url, json!({"set": {"A": "x"}, "unset": ["A"]})).await.expect(StatusCode::BAD_REQUEST);
    assert!(twice.error().contains("`A` appears more than once"));
    api.call(Method::PUT, url, json!({})).await.expect(StatusCode::BAD_REQUEST);
    api.call(Method::PUT, url, json!({"set": {"A": {"value": "x", "hidden": true}}})).await.expect(StatusCode::BAD_REQUEST);

    let reply = api.call(Method::PUT, "/api/projects/hello/environments/prod/settings", json!({"set": {"A": "x"}})).await;
    assert!(reply.expect(StatusCode::NOT_FOUND).error().contains("no environment `prod` (it has: live, test)"));
    let reply = api.call(Method::PUT, "/api/projects/nope/environments/test/settings", json!({"set": {"A": "x"}})).await;
    assert!(reply.expect(StatusCode::NOT_FOUND).error().contains("no project `nope`"));
    api.get("/api/projects/hello/environments/prod/settings").await.expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deployments_queue_up_and_show_their_state_and_events() {
    let api = Api::new().await;
    api.create_hello().await;
    let first = api.deploy("test", json!({"ref": "v1", "dry_run": true})).await;
    let second_reply = api
        .request(Method::POST, "/api/projects/hello/environments/test/deployments", Some(&api.deploy), Some(r#"{"mode": "local"}"#))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(second_reply.json()["queued_behind"], json!([first.to_string()]));
    let second = id(&second_reply.json()["deployment"]);
    assert_eq!(second_reply.headers[header::LOCATION], format!("/api/deployments/{second}"));

    // No engine runs here: the deployment stays requested, queued until
    // its first step is dispatched.
    let d = api.get(&format!("/api/deployments/{first}")).await.expect(StatusCode::OK).json();
    assert_eq!(d["status"], "queued");
    assert_eq!((d["failure"].clone(), d["url"].clone()), (Value::Null, Value::Null));
    assert_eq!((d["completed"].clone(), d["steps"].clone()), (json!([]), json!([])));
    assert_eq!((d["project"].as_str(), d["environment"].as_str(), d["ref"].as_str()), (Some("hello"), Some("test"), Some("v1")));
    assert_eq!((d["mode"].as_str(), d["run_release"].as_bool(), d["dry_run"].as_bool()), (Some("cloud"), Some(true), Some(true)));
    assert!(d["requested_at"].is_string() && d["finished_at"].is_null(), "{d}");

    let events = api.get(&format!("/api/deployments/{first}/events")).await.expect(StatusCode::OK).json();
    let events = events.as_array().expect("a list of events");
    assert_eq!(events.len(), 1);
    let requested = &events[0];
    assert_eq!((requested["version"].as_u64(), requested["type"].as_str()), (Some(1), Some("DeploymentRequested")));
    assert_eq!(requested["actor"], "token:ci");
    assert!(requested["hash"].as_str().is_some_and(|h| h.len() == 64) && requested["recorded_at"].is_string());
    let payload = &requested["payload"];
    assert_eq!(payload["deployment_id"].as_str(), Some(first.to_string().as_str()));
    assert_eq!((payload["git_ref"].as_str(), payload["mode"].as_str()), (Some("v1"), Some("cloud")));

    // Local mode runs release commands only when asked to migrate.
    let d = api.get(&format!("/api/deployments/{second}")).await.json();
    assert_eq!((d["mode"].as_str(), d["run_release"].as_bool(), d["ref"].as_str()), (Some("local"), Some(false), Some("main")));
    let migrating = api.deploy("test", json!({"mode": "local", "migrate": true})).await;
    assert_eq!(api.get(&format!("/api/deployments/{migrating}")).await.json()["run_release"], true);

    let status = api.get("/api/projects/hello/environments/test").await.expect(StatusCode::OK).json();
    assert_eq!((status["active"].clone(), status["url"].clone()), (Value::Null, Value::Null));
    assert_eq!(status["queue"], json!([first.to_string(), second.to_string(), migrating.to_string()]));

    // Newest first, limited, filtered.
    let listed = api.get("/api/projects/hello/environments/test/deployments?limit=2").await.expect(StatusCode::OK).json();
    let ids: Vec<Uuid> = listed.as_array().unwrap().iter().map(|d| id(&d["deployment"])).collect();
    assert_eq!(ids, vec![migrating, second]);
    assert_eq!(listed[0]["status"], "queued");
    // A dry run says so in the list.
    let all = api.get("/api/projects/hello/environments/test/deployments").await.json();
    let dry: Vec<(Uuid, bool)> = all.as_array().unwrap().iter().map(|d| (id(&d["deployment"]), d["dry_run"] == true)).collect();
    assert_eq!(dry, vec![(migrating, false), (second, false), (first, true)]);
    let live = api.deploy("live", json!({})).await;
    let all: Vec<Uuid> = api.get("/api/deployments").await.json().as_array().unwrap().iter().map(|d| id(&d["deployment"])).collect();
    assert_eq!(all, vec![live, migrating, second, first]);
    let only_live = api.get("/api/deployments?project=hello&environment=live").await.json();
    assert_eq!(only_live.as_array().map(Vec::len), Some(1));
    api.get("/api/deployments?environment=live").await.expect(StatusCode::BAD_REQUEST);
    api.get("/api/deployments?project=nope").await.expect(StatusCode::NOT_FOUND);
    api.get("/api/deployments?limit=0").await.expect(StatusCode::BAD_REQUEST);
    api.get("/api/deployments?bogus=1").await.expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_finished_deployment_shows_steps_history_logs_and_a_diff() {
    let api = Api::new().await;
    api.create_hello().await;
    let good = api.deploy("test", json!({})).await;
    api.finish(good, "aaa111", true).await;
    let bad = api.deploy("test", json!({})).await;
    api.finish(bad, "bbb222", false).await;

    let d = api.get(&format!("/api/deployments/{good}")).await.expect(StatusCode::OK).json();
    assert_eq!((d["status"].as_str(), d["commit"].as_str()), (Some("succeeded"), Some("aaa111")));
    let steps = d["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names[..Step::PIPELINE.len()], Step::PIPELINE.map(|s| s.as_str()), "{names:?}");
    assert_eq!((steps[1]["step"].as_str(), steps[1]["state"].as_str()), (Some("checkout"), Some("succeeded")));
    assert_eq!(steps[0]["state"], "skipped");
    assert!(steps[1]["started_at"].is_string() && steps[1]["finished_at"].is_string() && steps[1]["attempts"] == 1, "{}", steps[1]);
    let d = api.get(&format!("/api/deployments/{bad}")).await.json();
    assert_eq!(d["failure"], json!({"step": "health_check", "reason": "GET / answered 500"}));

    let history = api.get(&format!("/api/deployments/{bad}/history")).await.expect(StatusCode::OK).json();
    assert!(history["summary"]["status"].as_str().is_some_and(|s| s.starts_with("failed at health_check")), "{history}");
    assert!(history["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["event"] == "StepFailed")));

    let logs = api.get(&format!("/api/deployments/{bad}/logs")).await.expect(StatusCode::OK);
    assert_eq!(logs.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(logs.text.contains("== build\nStep 1/2 : FROM scratch\nbuilt bbb222\n"), "{}", logs.text);
    assert!(logs.text.contains("health_check failed (attempt 1): GET / answered 500\nboom\n"), "{}", logs.text);

    let diff = api.get(&format!("/api/diff?a={good}&b={bad}")).await.expect(StatusCode::OK).json();
    assert_eq!(diff["commit"], json!({"a": "aaa111", "b": "bbb222"}));
    api.get(&format!("/api/diff?a={good}")).await.expect(StatusCode::BAD_REQUEST);
    api.get(&format!("/api/diff?a={good}&b=nope")).await.expect(StatusCode::BAD_REQUEST);
    api.get(&format!("/api/diff?a={good}&b={}", Uuid::now_v7())).await.expect(StatusCode::NOT_FOUND);

    let releases = api.get("/api/projects/hello/environments/test/releases").await.expect(StatusCode::OK).json();
    assert_eq!(releases.as_array().map(Vec::len), Some(1));
    assert_eq!((id(&releases[0]["deployment"]), releases[0]["serving"].as_bool()), (good, Some(true)));
    assert_eq!(releases[0]["origin"], "built");
    let status = api.get("/api/projects/hello/environments/test").await.json();
    assert_eq!((id(&status["active"]["deployment"]), status["active"]["commit"].as_str()), (good, Some("aaa111")));
    let limits = json!({"web": {"memory": "256m", "cpus": "0.5"}, "processes": {"worker": {"pids": 20}}});
    assert_eq!(status["active"]["limits"], limits, "the limits its recorded slipway.toml set");
}

/// A rollback without `to` goes back past earlier releases of the image
/// that serves: the same image again would change nothing.
#[tokio::test]
async fn a_rollback_goes_back_to_the_last_release_of_another_image() {
    let api = Api::new().await;
    api.create_hello().await;
    let mut ids = Vec::new();
    for commit in ["aaa111", "bbb222", "bbb222"] {
        let d = api.deploy("test", json!({})).await;
        api.finish(d, commit, true).await;
        ids.push(d);
    }
    let rollback = |env: &'static str| {
        let api = &api;
        async move { api.request(Method::POST, &format!("/api/projects/hello/environments/{env}/rollback"), Some(&api.deploy), None).await }
    };
    let back = rollback("test").await.expect(StatusCode::ACCEPTED).json();
    assert_eq!(id(&back["target"]), ids[0], "past the release of the same image");
    for _ in 0..2 {
        let d = api.deploy("live", json!({})).await;
        api.finish(d, "ccc333", true).await;
    }
    let refused = rollback("live").await.expect(StatusCode::CONFLICT);
    assert!(refused.error().contains("no earlier release with another image than the one serving"), "{}", refused.text);
}

#[tokio::test]
async fn rollback_promote_migrate_and_replay_are_202s_or_409s_when_there_is_nothing_to_act_on() {
    let api = Api::new().await;
    api.create_hello().await;
    let env = "/api/projects/hello/environments/test";
    let as_deployer = |method: Method, uri: String, body: Option<&'static str>| {
        let api = &api;
        async move { api.request(method, &uri, Some(&api.deploy), body).await }
    };
    // Nothing serves yet.
    let reply = as_deployer(Method::POST, format!("{env}/rollback"), None).await.expect(StatusCode::CONFLICT);
    assert!(reply.error().contains("no earlier release to roll back to"), "{}", reply.text);
    let reply = as_deployer(Method::POST, format!("{env}/migrate"), None).await.expect(StatusCode::CONFLICT);
    assert!(reply.error().contains("serves no release to migrate"));
    let promote = r#"{"from": "test", "to": "live"}"#;
    let reply = as_deployer(Method::POST, "/api/projects/hello/promote".into(), Some(promote)).await.expect(StatusCode::CONFLICT);
    assert!(reply.error().contains("test serves no release to promote"));
    let running = api.deploy("test", json!({})).await;
    let reply = as_deployer(Method::POST, format!("/api/deployments/{running}/replay"), None).await.expect(StatusCode::CONFLICT);
    assert!(reply.error().contains("still running"));

    api.finish(running, "aaa111", true).await;
    let reply = as_deployer(Method::POST, format!("{env}/rollback"), None).await.expect(StatusCode::CONFLICT);
    assert!(reply.error().contains("no earlier release"));
    let to_serving = format!(r#"{{"to": "{running}"}}"#);
    let reply = api.request(Method::POST, &format!("{env}/rollback"), Some(&api.deploy), Some(&to_serving)).await;
    assert!(reply.expect(StatusCode::CONFLICT).error().contains("already serves"));
    let second = api.deploy("test", json!({})).await;
    api.finish(second, "bbb222", true).await;

    let rollback = as_deployer(Method::POST, format!("{env}/rollback"), None).await.expect(StatusCode::ACCEPTED).json();
    assert_eq!(id(&rollback["target"]), running);
    assert!(rollback["warnings"].as_array().is_some_and(|w| w.is_empty()), "{rollback}");
    let d = api.get(&format!("/api/deployments/{}", id(&rollback["deployment"]))).await.json();
    assert_eq!((d["rollback_of"].as_str(), d["commit"].as_str()), (Some(running.to_string().as_str()), Some("aaa111")));

    let promoted = as_deployer(Method::POST, "/api/projects/hello/promote".into(), Some(promote)).await.expect(StatusCode::ACCEPTED).json();
    assert_eq!(id(&promoted["source"]), second);
    let d = api.get(&format!("/api/deployments/{}", id(&promoted["deployment"]))).await.json();
    assert_eq!((d["environment"].as_str(), d["image"].as_str()), (Some("live"), Some("sha256:bbb222")));
    let same = as_deployer(Method::POST, "/api/projects/hello/promote".into(), Some(r#"{"from": "test", "to": "test"}"#)).await;
    same.expect(StatusCode::BAD_REQUEST);
    as_deployer(Method::POST, "/api/projects/hello/promote".into(), Some(r#"{"from": "test", "to": "prod"}"#))
        .await
        .expect(StatusCode::NOT_FOUND);

    let migrate = as_deployer(Method::POST, format!("{env}/migrate"), None).await.expect(StatusCode::ACCEPTED).json();
    assert_eq!((id(&migrate["replay_of"]), migrate["from_step"].as_str()), (second, Some("release")));
    // Behind the rollback, which has not run.
    assert_eq!(migrate["queued_behind"], json!([rollback["deployment"]]));

    let replay = as_deployer(Method::POST, format!("/api/deployments/{running}/replay"), Some(r#"{"from_step": "build"}"#))
        .await
        .expect(StatusCode::ACCEPTED)
        .json();
    assert_eq!((id(&replay["replay_of"]), replay["from_step"].as_str()), (running, Some("build")));
    let bad_step = as_deployer(Method::POST, format!("/api/deployments/{running}/replay"), Some(r#"{"from_step": "dance"}"#)).await;
    bad_step.expect(StatusCode::BAD_REQUEST);
    let events = api.store.read_stream(&deployment_stream(id(&replay["deployment"])), 1).await.unwrap();
    assert_eq!(events[0].envelope.actor, "token:ci");
}

#[tokio::test]
async fn tokens_are_issued_once_listed_without_values_used_and_revoked() {
    let api = Api::new().await;
    let issued = api.call(Method::POST, "/api/tokens", json!({"name": "deployer", "scope": "deploy"})).await.expect(StatusCode::CREATED);
    let body = issued.json();
    let value = body["token"].as_str().unwrap().to_string();
    assert!(slipway_engine::tokens::is_well_formed(&value), "{value}");
    assert_eq!((body["name"].as_str(), body["scope"].as_str()), (Some("deployer"), Some("deploy")));

    let listed = api.request(Method::GET, "/api/tokens", Some(&api.admin), None).await.expect(StatusCode::OK);
    assert!(!listed.text.contains(&value) && !listed.text.contains(&slipway_engine::tokens::hash(&value)), "{}", listed.text);
    let list = listed.json();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["audit", "ci", "deployer", "root"]);
    let deployer = listed.json().as_array().unwrap().iter().find(|t| t["name"] == "deployer").cloned().unwrap();
    assert_eq!((deployer["issued_by"].as_str(), deployer["revoked"].as_bool()), (Some("token:root"), Some(false)));

    // It works, with its scope.
    api.request(Method::GET, "/api/projects", Some(&value), None).await.expect(StatusCode::OK);
    let reply = api.request(Method::POST, "/api/tokens", Some(&value), Some(r#"{"name": "x", "scope": "admin"}"#)).await;
    reply.expect(StatusCode::FORBIDDEN);

    let again = api.call(Method::POST, "/api/tokens", json!({"name": "deployer", "scope": "read"})).await;
    assert!(again.expect(StatusCode::CONFLICT).error().contains("`deployer` exists"));
    api.call(Method::POST, "/api/tokens", json!({"name": "Bad Name", "scope": "read"})).await.expect(StatusCode::BAD_REQUEST);
    api.call(Method::POST, "/api/tokens", json!({"name": "x", "scope": "root"})).await.expect(StatusCode::BAD_REQUEST);

    api.request(Method::DELETE, "/api/tokens/deployer", Some(&api.admin), None).await.expect(StatusCode::NO_CONTENT);
    let refused = api.request(Method::GET, "/api/projects", Some(&value), None).await.expect(StatusCode::UNAUTHORIZED);
    assert!(refused.error().contains("`deployer` was revoked"));
    api.request(Method::DELETE, "/api/tokens/deployer", Some(&api.admin), None).await.expect(StatusCode::CONFLICT);
    api.request(Method::DELETE, "/api/tokens/nobody", Some(&api.admin), None).await.expect(StatusCode::NOT_FOUND);
    let reissue = api.call(Method::POST, "/api/tokens", json!({"name": "deployer", "scope": "read"})).await;
    assert!(reissue.expect(StatusCode::CONFLICT).error().contains("names are not reused"));

    // The tokens stream records who did what, and hashes only.
    let events = api.store.read_stream(TOKENS_STREAM, 1).await.unwrap();
    let text: String = events.iter().map(|e| e.envelope.to_json()).collect();
    assert!(!text.contains(&value));
    assert_eq!(events.last().unwrap().envelope.message_type, "TokenRevoked");
    assert_eq!(events.last().unwrap().envelope.actor, "token:root");
}

#[tokio::test]
async fn the_actor_header_is_ignored_the_token_names_the_actor() {
    let api = Api::new().await;
    api.create_hello().await;
    let request = Request::post("/api/projects/hello/environments/test/deployments")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::AUTHORIZATION, format!("bearer {}", api.deploy))
        .header("x-slipway-actor", "cli:mallory")
        .body(Body::from("{}"))
        .unwrap();
    let d = id(&api.send(request).await.expect(StatusCode::ACCEPTED).json()["deployment"]);
    let events = api.get(&format!("/api/deployments/{d}/events")).await.json();
    assert_eq!(events[0]["actor"], "token:ci");
}

#[tokio::test]
async fn export_verify_and_workers() {
    let api = Api::new().await;
    api.create_hello().await;
    let d = api.deploy("test", json!({})).await;
    let export = api.get("/api/export").await.expect(StatusCode::OK);
    assert_eq!(export.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let lines: Vec<Value> = export.text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["slipway_export"], "slipway-export/1");
    assert_eq!(lines[0]["backend"], "sqlite");
    // 3 tokens, the project, its 2 environments' name claims, the request and its queue entry.
    assert_eq!(lines.last().unwrap()["slipway_export_end"]["events"], 8);
    assert!(!export.text.contains(&api.admin[4..]), "a token value is in the export");

    // Long enough to be sent in several chunks; what arrives verifies like a file.
    let many: Vec<Event> = (0..600).map(|n| Event::TokenRevoked(TokenRevoked { name: format!("n{n}") })).collect();
    append(&*api.store, "filler", &many).await;
    let export = api.get("/api/export").await.expect(StatusCode::OK);
    let bytes = export.text.clone().into_bytes();
    let report = slipway_store::export::verify(|| Ok(std::io::Cursor::new(bytes.clone())), None).unwrap();
    assert!(report.is_intact() && report.lines.is_empty() && report.file.is_empty(), "{:?}", report.file);
    assert_eq!(report.events, 608);

    let only = api.get("/api/export?project=hello").await.expect(StatusCode::OK);
    assert!(only.text.contains(&format!("deployment-{d}")) && !only.text.contains("\"stream\":\"tokens\""), "{}", only.text);
    api.get("/api/export?project=nope").await.expect(StatusCode::NOT_FOUND);
    let reply = api.get("/api/export?since=yesterday").await.expect(StatusCode::BAD_REQUEST);
    assert!(reply.error().contains("RFC 3339"));
    let since = api.get("/api/export?since=2999-01-01T00:00:00Z").await.expect(StatusCode::OK);
    assert_eq!(since.text.lines().count(), 2, "header and end line only");

    let report = api.request(Method::POST, "/api/audit/verify", Some(&api.read), None).await.expect(StatusCode::OK).json();
    assert_eq!(report, json!({"events": 608, "streams": 7, "intact": true, "findings": []}));

    assert_eq!(api.get("/api/workers").await.expect(StatusCode::OK).json(), json!([]));
    let me = api.request(Method::GET, "/api/whoami", Some(&api.deploy), None).await.expect(StatusCode::OK).json();
    assert_eq!(me, json!({"name": "ci", "scope": "deploy", "authenticated": true}));
    let now = Utc::now();
    let beat = |id: &str, last_seen, stopped| slipway_store::WorkerBeat {
        id: id.into(),
        host: "h".into(),
        steps: vec!["build".into()],
        busy: vec![],
        commands: vec![],
        started_at: now,
        last_seen,
        stopped,
    };
    api.store.operational().heartbeat(&beat("w1", now, false)).await.unwrap();
    api.store.operational().heartbeat(&beat("w2", now - chrono::Duration::seconds(60), false)).await.unwrap();
    api.store.operational().heartbeat(&beat("w3", now, true)).await.unwrap();
    let workers = api.get("/api/workers").await.json();
    let states: std::collections::BTreeMap<String, String> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_str().unwrap().to_string(), w["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, [("w1", "alive"), ("w2", "missing"), ("w3", "stopped")].map(|(a, b)| (a.into(), b.into())).into());
}

#[tokio::test]
async fn unknown_things_are_404s_and_malformed_ids_400s() {
    let api = Api::new().await;
    let reply = api.get("/api/projects/nope").await.expect(StatusCode::NOT_FOUND);
    assert!(reply.error().contains("no project `nope`; create it with POST /api/projects"));
    api.get("/api/projects/nope/environments/test").await.expect(StatusCode::NOT_FOUND);

    let unknown = "0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f";
    for tail in ["", "/events", "/history", "/logs"] {
        let reply = api.get(&format!("/api/deployments/{unknown}{tail}")).await.expect(StatusCode::NOT_FOUND);
        assert!(reply.error().contains(unknown), "{}", reply.text);
        let reply = api.get(&format!("/api/deployments/not-a-uuid{tail}")).await.expect(StatusCode::BAD_REQUEST);
        assert!(reply.error().contains("`not-a-uuid` is not a deployment id"), "{}", reply.text);
    }

    let reply = api.get("/api/nothing-here").await.expect(StatusCode::NOT_FOUND);
    assert!(reply.error().contains("no endpoint GET /api/nothing-here"));
    let reply = api.request(Method::DELETE, "/api/projects", Some(&api.admin), None).await.expect(StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.error().contains("DELETE is not allowed"));
    assert!(reply.headers.contains_key(header::ALLOW));
}

#[tokio::test]
async fn serve_answers_on_a_real_socket_and_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, Api::new().await.app.clone(), async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write request");
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

/// Whether the server closed `stream` (end of file, or reset) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut seen)).await;
    read.is_ok().then(|| String::from_utf8_lossy(&seen).into_owned())
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_and_slow_or_idle_clients_cut_off() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let limits = api::ServeLimits { max_connections: 8, max_connections_per_client: 2, header_timeout: Duration::from_secs(2) };
    let server = tokio::spawn(api::serve_with(listener, Api::new().await.app.clone(), limits, std::future::pending()));

    // Two idle connections take this client's share: a third is closed at
    // once, with nothing read from it and nothing answered.
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let answered = closed_within(&mut third, Duration::from_secs(1)).await;
    assert_eq!(answered.as_deref(), Some(""), "the connection over the per-client cap is closed unanswered");
    // The two held ones still serve;
    first.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.expect("an answer on a held connection");
    assert_eq!(&head, b"HTTP/1.1 200");
    // an idle kept-alive connection is closed after the header timeout,
    assert!(closed_within(&mut second, Duration::from_secs(6)).await.is_some(), "an idle connection is closed");
    assert!(closed_within(&mut first, Duration::from_secs(6)).await.is_some(), "a kept-alive connection is closed when idle");

    // and so is a client sending its headers a byte at a time (slowloris),
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let trickle = async {
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await?;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            slow.write_all(b"X").await?;
        }
        std::io::Result::Ok(())
    };
    let cut = tokio::time::timeout(Duration::from_secs(10), trickle).await.expect("the trickle ends within 10 s");
    assert!(cut.is_err(), "the server stops reading a request whose headers take longer than the timeout");

    // while a normal client is served once the caps have room.
    assert_eq!(status_of(addr, "/healthz", "").await, 200);
    server.abort();
}

/// One request on a fresh connection to `addr`: the status line's code.
async fn status_of(addr: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut response = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response));
    read.await.expect("a response within 10 s").expect("read response");
    response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn an_address_that_keeps_presenting_refused_tokens_is_held_off_with_429() {
    let api = Api::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let server = tokio::spawn(api::serve(listener, api.app.clone(), std::future::pending()));
    assert_eq!(status_of(addr, "/api/projects", &api.admin).await, 200);
    // Guessing: well-formed unknown tokens and malformed ones, 20 refusals in all,
    let unknown = format!("slw_{}", "0".repeat(64));
    for n in 0..20 {
        let token = if n % 2 == 0 { unknown.as_str() } else { "not-a-token" };
        assert_eq!(status_of(addr, "/api/projects", token).await, 401, "attempt {n}");
    }
    // then the address is held off, whatever it presents, without a look at the token.
    assert_eq!(status_of(addr, "/api/projects", &unknown).await, 429);
    assert_eq!(status_of(addr, "/api/projects", &api.admin).await, 429);
    server.abort();
}

#[tokio::test]
async fn cancel_records_the_request_and_is_a_409_once_finished() {
    let api = Api::new().await;
    api.create_hello().await;
    let running = api.deploy("test", json!({})).await;
    let uri = format!("/api/deployments/{running}/cancel");
    let reply = api.request(Method::POST, &uri, Some(&api.deploy), Some(r#"{"reason": "wrong branch"}"#)).await;
    assert_eq!(id(&reply.expect(StatusCode::ACCEPTED).json()["deployment"]), running);
    let events = api.store.read_stream(&deployment_stream(running), 1).await.unwrap();
    let cancel = events.last().unwrap();
    assert_eq!((cancel.envelope.message_type.as_str(), cancel.envelope.actor.as_str()), ("CancelRequested", "token:ci"));
    assert!(cancel.envelope.payload.get().contains("wrong branch"), "{}", cancel.envelope.payload.get());

    let done = api.deploy("live", json!({})).await;
    api.finish(done, "aaa111", true).await;
    let reply = api.request(Method::POST, &format!("/api/deployments/{done}/cancel"), Some(&api.deploy), None).await;
    assert!(reply.expect(StatusCode::CONFLICT).error().contains("already succeeded"));
    let unknown = format!("/api/deployments/{}/cancel", Uuid::now_v7());
    api.request(Method::POST, &unknown, Some(&api.deploy), None).await.expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn status_shows_the_serving_release_live_state_from_the_host_agent() {
    // Given a release serving, and the host agent's records of its crash-looping process,
    let api = Api::new().await;
    api.create_hello().await;
    let id = api.deploy("test", json!({"ref": "main"})).await;
    api.finish(id, "c0ffee", true).await;
    let status = api.get("/api/projects/hello/environments/test").await.expect(StatusCode::OK).json();
    assert_eq!(status["active"]["live"]["state"], "running", "nothing recorded: running as started");
    let record = |exits, restarts, state| {
        Event::ContainerSupervised(ContainerSupervised {
            deployment_id: id,
            container: "crash-1".into(),
            state,
            exits,
            restarts,
            last_exit: Some(3),
            oom: false,
            host: "h".into(),
        })
    };
    let records = [record(1, 0, LiveState::Down), record(4, 4, LiveState::CrashLooping)];
    append(&*api.store, &environment_stream("hello", "test"), &records).await;
    // then the status says crash-looping, with the restarts and the last exit code.
    let status = api.get("/api/projects/hello/environments/test").await.expect(StatusCode::OK).json();
    assert_eq!(status["active"]["live"], json!({"state": "crash_looping", "restarts": 4, "last_exit": 3, "oom_kills": 0}));
}

/// Over PostgreSQL with a statement timeout, as `slipway serve` opens the
/// API's store: a request whose statement waits past it (here an append
/// behind a stream's advisory lock, held by another session) is answered
/// 503 `unavailable`, saying why, and not left hanging; the next one works.
#[tokio::test]
async fn a_statement_past_the_api_stores_timeout_is_a_503() {
    use slipway_store::postgres::PgOptions;
    use sqlx::Connection;
    let url = slipway_support::pg_url();
    let schema = format!("t_{}", Uuid::now_v7().simple());
    let options = PgOptions {
        schema: Some(schema.clone()),
        max_connections: 4,
        statement_timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let store = slipway_store::PgStore::connect(&url, options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services` first"));
    let store: Arc<dyn EventStore> = Arc::new(store);
    let admin = requests::issue_token(&*store, "test:setup", "root", TokenScope::Admin).await.unwrap().unwrap();
    let app = api::app(store.clone());
    let name = format!("slow{}", &Uuid::now_v7().simple().to_string()[24..]);
    let create = || {
        let body = json!({"name": name, "repo": "file:///srv/slow.git", "environments": ["test"]}).to_string();
        Request::builder()
            .method(Method::POST)
            .uri("/api/projects")
            .header(header::AUTHORIZATION, format!("Bearer {admin}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };

    // Advisory locks are the database's, whatever the schema.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut held = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(format!("project-{name}")).execute(&mut *held).await.unwrap();
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(create())).await.expect("the request hung").unwrap();
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("longer than the HTTP API allows") && message.contains("statement timeout"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));

    held.rollback().await.unwrap();
    let response = app.clone().oneshot(create()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&mut other).await;
}
