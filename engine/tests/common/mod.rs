//! What the webhook and preview tests share: the API over a fresh store
//! (in-memory SQLite, or PostgreSQL in a schema of its own), an admin
//! token, a project with a webhook secret, signed deliveries as each
//! provider sends them, and a macro running a test on both stores.

#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use slipway_engine::api;
use slipway_engine::webhook::sign;
use slipway_proto::event::{project_stream, TokenScope};
use slipway_proto::Event;
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, PgStore, Position, RecordedEvent, SqliteStore};
use tower::ServiceExt;
use uuid::Uuid;

pub struct Setup {
    pub store: Arc<dyn EventStore>,
    pub app: Router,
    pub admin: String,
    pub schema: Option<String>,
}

pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

impl Setup {
    pub async fn sqlite() -> Setup {
        Setup::with(Arc::new(SqliteStore::in_memory().await.expect("in-memory SQLite store")), None).await
    }

    pub async fn postgres() -> Setup {
        let url = slipway_support::pg_url();
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let options = PgOptions { schema: Some(schema.clone()), max_connections: 8, migrate: true, ..Default::default() };
        let store = PgStore::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services` first"));
        Setup::with(Arc::new(store), Some(schema)).await
    }

    pub async fn with(store: Arc<dyn EventStore>, schema: Option<String>) -> Setup {
        let admin = slipway_engine::requests::issue_token(&*store, "test:setup", "root", TokenScope::Admin).await.unwrap().unwrap();
        Setup { app: api::app(store.clone()), store, admin, schema }
    }

    pub async fn cleanup(self) {
        if let Some(schema) = self.schema {
            let url = slipway_support::pg_url();
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
            }
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, json, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// A JSON request as the admin token.
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {}", self.admin));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        self.send(request.body(Body::from(body.map(|b| b.to_string()).unwrap_or_default())).unwrap()).await
    }

    /// A JSON request with `token`.
    pub async fn call_as(&self, token: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        self.send(request.body(Body::from(body.map(|b| b.to_string()).unwrap_or_default())).unwrap()).await
    }

    /// A project with environments test and live, a webhook secret (returned)
    /// and the rules `main -> test`, `release/* -> live`.
    pub async fn project(&self, name: &str) -> String {
        let body = json!({"name": name, "repo": "file:///srv/app.git", "environments": ["test", "live"]});
        assert_eq!(self.call(Method::POST, "/api/projects", Some(body)).await.status, StatusCode::CREATED);
        let rotated = self.call(Method::POST, &format!("/api/projects/{name}/webhook-secret"), None).await;
        assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.json);
        assert_eq!(rotated.json["hooks"]["github"], format!("/api/hooks/github/{name}"));
        for (branch, env) in [("main", "test"), ("release/*", "live")] {
            let rule = json!({"branch": branch, "environment": env});
            let reply = self.call(Method::PUT, &format!("/api/projects/{name}/auto-deploy"), Some(rule)).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        }
        rotated.json["secret"].as_str().unwrap().to_string()
    }

    /// Delivers `body` as `provider` would, signed with `secret`.
    pub async fn deliver(&self, provider: &str, project: &str, delivery: &str, event: &str, body: &str, secret: &str) -> Reply {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/hooks/{provider}/{project}"))
            .header(header::CONTENT_TYPE, "application/json");
        let mac = sign(secret, body.as_bytes());
        request = match provider {
            "github" => request
                .header("X-GitHub-Event", event)
                .header("X-GitHub-Delivery", delivery)
                .header("X-Hub-Signature-256", format!("sha256={mac}")),
            "gitlab" => request.header("X-Gitlab-Event", event).header("X-Gitlab-Event-UUID", delivery).header("X-Gitlab-Token", secret),
            "gitea" => request.header("X-Gitea-Event", event).header("X-Gitea-Delivery", delivery).header("X-Gitea-Signature", mac),
            _ => request.header("X-Slipway-Delivery", delivery).header("X-Slipway-Signature", format!("sha256={mac}")),
        };
        self.send(request.body(Body::from(body.to_string())).unwrap()).await
    }

    /// Every event in global order, once two reads 100 ms apart agree: on
    /// PostgreSQL the global order shows a commit only once no older
    /// transaction of the whole database is still open, which other tests
    /// running at the same time can delay for a moment.
    pub async fn events(&self) -> Vec<RecordedEvent> {
        let mut last = self.store.read_all(Position::default(), 100_000).await.unwrap();
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.store.read_all(Position::default(), 100_000).await.unwrap();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    /// Every `DeploymentRequested` a webhook or an approval of `project`
    /// recorded, with its actor: found through the project's
    /// `PushReceived`, `PullRequestReceived` and `PreviewApproved` events
    /// and read from each deployment's own stream (the global order shows a
    /// commit only once no older transaction of the database is still
    /// open, which a busy test run can delay).
    pub async fn requested(&self, project: &str) -> Vec<(slipway_proto::event::DeploymentRequested, String)> {
        let mut found = Vec::new();
        for event in self.project_events(project).await {
            let ids: Vec<Uuid> = match event {
                Event::PushReceived(p) => p.deployments.iter().map(|d| d.deployment_id).collect(),
                Event::PullRequestReceived(p) => p.deployment.into_iter().collect(),
                Event::PreviewApproved(a) => vec![a.deployment],
                _ => vec![],
            };
            for id in ids {
                found.extend(self.requested_one(id).await);
            }
        }
        found
    }

    /// Deployment `id`'s request with its actor, read from its own stream.
    pub async fn requested_one(&self, id: Uuid) -> Option<(slipway_proto::event::DeploymentRequested, String)> {
        let recorded = self.store.read_stream(&slipway_proto::event::deployment_stream(id), 1).await.unwrap();
        recorded.first().and_then(|r| match r.envelope.decode::<Event>() {
            Ok(Event::DeploymentRequested(d)) => Some((d, r.envelope.actor.clone())),
            _ => None,
        })
    }

    pub async fn project_events(&self, project: &str) -> Vec<Event> {
        let recorded = self.store.read_stream(&project_stream(project), 1).await.unwrap();
        recorded.iter().map(|r| r.envelope.decode::<Event>().unwrap()).collect()
    }
}

/// A commit id made of the byte `n`.
pub fn sha(n: u8) -> String {
    format!("{:02x}", n).repeat(20)
}

#[macro_export]
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let setup = super::Setup::sqlite().await;
                super::$name(&setup).await;
                setup.cleanup().await;
            }

            #[tokio::test]
            async fn postgres() {
                let setup = super::Setup::postgres().await;
                super::$name(&setup).await;
                setup.cleanup().await;
            }
        }
    };
}
