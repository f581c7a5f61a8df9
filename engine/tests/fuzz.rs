//! Fuzzing what comes from outside: `slipway.toml` (from a repository),
//! the API's JSON bodies and the push webhooks (from the network, through
//! the real router and handlers), and the queue's message bodies (from
//! whoever can publish to the broker). Inputs are proptest's: mutations of
//! valid samples (bytes flipped, inserted, removed, spans repeated) and
//! JSON of random shape. Each target runs for `SLIPWAY_FUZZ_SECONDS` (2 s
//! by default, so CI stays lean; `scripts/fuzz` runs 60 s each) and checks:
//! - nothing panics (proptest reports a panic with the input that caused it);
//! - every refusal is a clear error: a non-empty message, and over HTTP a
//!   4xx with `{"error": {"code", "message"}}`, never a 500;
//! - nothing is lost or half-written: after the run every stream's hash
//!   chain verifies, and each accepted request left whole events.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};
use slipway_engine::api;
use slipway_engine::requests;
use slipway_proto::command::{DeploymentContext, RemoveContainers, RetireRelease, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::TokenScope;
use slipway_proto::{Command, Envelope};
use slipway_store::{chain, EventStore, SqliteStore};
use tower::ServiceExt;

/// How long each target runs.
fn budget() -> Duration {
    let seconds = std::env::var("SLIPWAY_FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(seconds.max(0.1))
}

/// Runs `test` on inputs from `strategy` until the budget is spent, in
/// rounds of 64 cases; a failing case fails the test, shrunk. Returns the
/// number of cases run.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) -> u64
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    let mut cases = 0u64;
    while started.elapsed() < budget() {
        // A runner per round, each from its own seed: a runner counts its
        // successes and would run nothing once it had reached `cases`.
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&cases.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        if let Err(e) = TestRunner::new_with_rng(config.clone(), rng).run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        cases += 64;
    }
    eprintln!("fuzz {name}: {cases} cases in {:.1}s, no failure", started.elapsed().as_secs_f64());
    cases
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    /// Repeat the span [at, at + len) once more, right after itself.
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), prop_oneof![any::<u8>(), Just(b'"'), Just(b'{'), Just(b'['), Just(b'\\'), Just(b'\n'), Just(b'=')])
            .prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Repeat(at, len)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for e in edits {
        let n = bytes.len().max(1);
        match *e {
            Edit::Flip(at, b) if !bytes.is_empty() => bytes[at % n] = b,
            Edit::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
            Edit::Remove(at) if !bytes.is_empty() => {
                bytes.remove(at % n);
            }
            Edit::Repeat(at, len) if !bytes.is_empty() => {
                let start = at % n;
                let end = (start + len).min(bytes.len());
                let span = bytes[start..end].to_vec();
                bytes.splice(end..end, span);
            }
            _ => {}
        }
    }
    bytes
}

/// A valid sample mutated by up to eight edits, or left whole.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (0..count, prop::collection::vec(edit(), 0..8)).prop_map(move |(i, edits)| apply(&seeds[i], &edits))
}

/// JSON of random shape, with the keys the bodies use among random ones.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("name".to_string()),
        Just("repo".to_string()),
        Just("set".to_string()),
        Just("unset".to_string()),
        Just("secret".to_string()),
        Just("value".to_string()),
        Just("branch".to_string()),
        Just("environment".to_string()),
        Just("inherit".to_string()),
        Just("ttl".to_string()),
        Just("ref".to_string()),
        Just("mode".to_string()),
        Just("source".to_string()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![Just("main"), Just("test"), Just("live"), Just("HEAD"), Just("../x"), Just("7d"), Just("-1")].prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

#[test]
fn slipway_toml_is_parsed_or_refused_with_the_file_and_key_named() {
    let seeds = vec![
        include_bytes!("../../examples/hello/slipway.toml").to_vec(),
        b"[web]\nport = 8080\nreplicas = 3\nmemory = \"256m\"\ncpus = 1.5\npids = 100\nwatch = \"0\"\nwatch_max_error_rate = \"10%\"\n\
          hosts = [\"node.labels.region==eu\"]\n[build]\ndockerfile = \"Dockerfile\"\n[services.db]\ntcp = \"DATABASE_URL\"\n"
            .to_vec(),
    ];
    let strategy = prop_oneof![4 => mutated(seeds), 1 => ".{0,200}".prop_map(String::into_bytes)];
    fuzz("slipway.toml", strategy, |bytes| {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = AppConfig::parse(&text, "slipway.toml") {
            let said = e.to_string();
            prop_assert!(said.contains("slipway.toml"), "the refusal names the file: {said}");
        }
        Ok(())
    });
}

#[test]
fn queue_message_bodies_decode_or_are_refused_with_a_reason() {
    let deployment = uuid::Uuid::now_v7();
    let context: DeploymentContext = serde_json::from_value(json!({
        "deployment_id": deployment, "project": "app", "environment": "test",
        "repository": "file:///srv/app.git", "git_ref": "main", "settings": {"A": "fingerprint"},
        "config": {"web": {"port": 80}}, "web_upstreams": ["127.0.0.1:3000"]
    }))
    .unwrap();
    let meta = || Metadata { correlation_id: deployment, causation_id: None, actor: "engine".into(), trace: None };
    let envelope = |command: Command| {
        Envelope::new(uuid::Uuid::now_v7(), chrono::Utc::now(), format!("deployment-{deployment}"), &command, meta())
            .unwrap()
            .to_json()
            .into_bytes()
    };
    let seeds = vec![
        envelope(Command::RunStep(RunStep { step: slipway_proto::Step::Build, attempt: 1, context })),
        envelope(Command::RetireRelease(RetireRelease { deployment_id: deployment, containers: vec!["a".into()], drain_seconds: 5 })),
        envelope(Command::RemoveContainers(RemoveContainers { deployment_id: deployment, containers: vec![] })),
    ];
    for seed in &seeds {
        if let Err(e) = Envelope::from_json(seed).and_then(|e| e.decode::<Command>()) {
            panic!("a seed is not a valid command ({e}): {}", String::from_utf8_lossy(seed));
        }
    }
    let strategy = prop_oneof![4 => mutated(seeds), 1 => prop::collection::vec(any::<u8>(), 0..256)];
    fuzz("queue message", strategy, |bytes| {
        match Envelope::from_json(&bytes).and_then(|e| e.decode::<Command>()) {
            Ok(Command::RunStep(step)) => {
                // The worker reads the app's configuration from the command too.
                let _ = serde_json::from_value::<AppConfig>(step.context.config);
            }
            Ok(_) => {}
            Err(e) => prop_assert!(!e.to_string().trim().is_empty(), "a refusal says why"),
        }
        Ok(())
    });
}

/// The API over a fresh SQLite store with an admin token, project `app`
/// and a webhook secret.
struct Target {
    runtime: tokio::runtime::Runtime,
    app: Router,
    store: Arc<dyn EventStore>,
    admin: String,
    secret: String,
}

impl Target {
    fn new() -> Target {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (store, admin, secret) = runtime.block_on(async {
            let store: Arc<dyn EventStore> = Arc::new(SqliteStore::in_memory().await.unwrap());
            let admin = requests::issue_token(&*store, "test:setup", "root", TokenScope::Admin).await.unwrap().unwrap();
            let new = requests::NewProject {
                name: "app".into(),
                repository: "file:///srv/app.git".into(),
                default_branch: "main".into(),
                environments: vec!["test".into(), "live".into()],
                mirror_of: None,
            };
            requests::create_project(&*store, "test:setup", new).await.unwrap().unwrap();
            slipway_engine::auto_deploy::set_rule(&*store, "test:setup", "app", "main", "test", None).await.unwrap().unwrap();
            let secret = slipway_engine::auto_deploy::rotate_webhook_secret(&*store, "test:setup", "app").await.unwrap().unwrap();
            (store, admin, secret)
        });
        let app = api::app(store.clone());
        Target { runtime, app, store, admin, secret }
    }

    /// Sends one request; the status and the body as JSON (`Null` if none).
    fn send(&self, request: Request<Body>) -> (StatusCode, Value, String) {
        self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), text)
        })
    }

    /// Every stream's hash chain still verifies.
    fn intact(&self) -> bool {
        self.runtime.block_on(async { chain::verify(&self.store.chain_rows().await.unwrap()).is_intact() })
    }
}

/// A refusal over HTTP is a 4xx with a code and a message; never a 500.
fn clear_refusal(status: StatusCode, body: &Value, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!status.is_server_error(), "{status}: {text}");
    if status.is_client_error() {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        prop_assert!(body["error"]["code"].is_string() && !message.trim().is_empty(), "{status} without a clear error: {text}");
    }
    Ok(())
}

#[test]
fn api_json_bodies_are_taken_or_refused_clearly_and_the_log_stays_whole() {
    let target = Target::new();
    let routes: Vec<(Method, &str, Value)> = vec![
        (Method::POST, "/api/projects", json!({"name": "shop", "repo": "file:///srv/shop.git", "environments": ["test"]})),
        (
            Method::PUT,
            "/api/projects/app/environments/test/settings",
            json!({"set": {"A": "1", "B": {"value": "x", "secret": true}}, "unset": ["C"]}),
        ),
        (Method::POST, "/api/projects/app/environments/test/deployments", json!({"ref": "main", "mode": "cloud", "dry_run": true})),
        (Method::PUT, "/api/projects/app/auto-deploy", json!({"branch": "release/*", "environment": "live", "poll_seconds": 60})),
        (Method::PUT, "/api/projects/app/previews", json!({"pull_requests": true, "inherit": "test", "ttl": "2d"})),
        (Method::PUT, "/api/projects/app/source", json!({"set": {"token": "t0k3n"}, "remove": [], "submodules": true})),
        (Method::PUT, "/api/projects/app/environments/live/freezes", json!({"schedule": "0 18 * * FRI", "duration": "64h"})),
        (Method::PUT, "/api/projects/app/environments/live/protection", json!({"approvals": 1})),
        (
            Method::POST,
            "/api/notifications",
            json!({"target": "webhook", "url": "https://example.com/hook", "events": ["deployment_failed"]}),
        ),
        (Method::POST, "/api/tokens", json!({"name": "ci2", "scope": "deploy"})),
    ];
    let seeds: Vec<Vec<u8>> = routes.iter().map(|(_, _, body)| body.to_string().into_bytes()).collect();
    let count = routes.len();
    let body = prop_oneof![3 => mutated(seeds), 1 => json_value().prop_map(|v| v.to_string().into_bytes())];
    let accepted = std::cell::Cell::new(0u64);
    fuzz("API bodies", (0..count, body), |(route, bytes)| {
        let (method, path, _) = &routes[route];
        let request = Request::builder()
            .method(method.clone())
            .uri(*path)
            .header("authorization", format!("Bearer {}", target.admin))
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .unwrap();
        let (status, body, text) = target.send(request);
        clear_refusal(status, &body, &text)?;
        if status.is_success() {
            accepted.set(accepted.get() + 1);
        }
        Ok(())
    });
    assert!(accepted.get() > 0, "some mutated bodies are still valid and accepted");
    assert!(target.intact(), "every stream's hash chain verifies after the run");
}

#[test]
fn push_webhooks_deploy_or_are_refused_clearly_and_the_log_stays_whole() {
    let target = Target::new();
    let push = |git_ref: &str, after: &str, message: &str| {
        json!({
            "ref": git_ref, "before": "0000000000000000000000000000000000000000", "after": after,
            "head_commit": {"id": after, "message": message, "author": {"name": "Mona", "username": "octocat"}},
            "pusher": {"name": "octocat"}, "repository": {"full_name": "octo-org/app", "default_branch": "main"},
            "commits": [{"id": after, "message": message}]
        })
        .to_string()
        .into_bytes()
    };
    let pull_request = json!({
        "action": "opened", "number": 42,
        "pull_request": {"number": 42, "state": "open", "head": {"ref": "feature/x", "sha": "a".repeat(40),
            "repo": {"full_name": "octo-org/app"}}, "base": {"ref": "main", "repo": {"full_name": "octo-org/app"}}},
        "repository": {"full_name": "octo-org/app"}, "sender": {"login": "octocat"}
    })
    .to_string()
    .into_bytes();
    let seeds = vec![
        push("refs/heads/main", &"b".repeat(40), "fix the thing"),
        push("refs/heads/main", &"c".repeat(40), "docs [skip deploy]"),
        push("refs/tags/v1", &"d".repeat(40), "tag"),
        pull_request,
    ];
    let strategy = (mutated(seeds), prop_oneof![Just("push"), Just("pull_request"), Just("ping")], 0u32..1_000_000);
    let deployed = std::cell::Cell::new(0u64);
    fuzz("push webhooks", strategy, |(bytes, event, delivery)| {
        let signature = format!("sha256={}", slipway_engine::webhook::sign(&target.secret, &bytes));
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/hooks/github/app")
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", format!("fuzz-{delivery}"))
            .header("x-hub-signature-256", signature)
            .body(Body::from(bytes))
            .unwrap();
        let (status, body, text) = target.send(request);
        clear_refusal(status, &body, &text)?;
        if status == StatusCode::ACCEPTED {
            deployed.set(deployed.get() + 1);
        }
        Ok(())
    });
    assert!(deployed.get() > 0, "some mutated pushes still deploy");
    assert!(target.intact(), "every stream's hash chain verifies after the run");
}
