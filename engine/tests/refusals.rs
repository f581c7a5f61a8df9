//! Refusals are typed: every request the engine refuses says which kind of
//! refusal it is (not found, conflict, invalid, unavailable), decided where
//! it is refused, and the API answers each kind with its one status and
//! code — so neither the API nor the CLI reads a refusal's words. On SQLite
//! and PostgreSQL.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::json;
use slipway_engine::rejection::Rejection;
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_engine::source::SourceChange;
use slipway_engine::{auto_deploy, domains, lifecycle};
use slipway_proto::event::{BuildMode, TokenScope};
use slipway_store::StoreError;
use uuid::Uuid;

/// The kind of a refused request (panics when it was granted or failed).
#[track_caller]
fn kind<T: std::fmt::Debug, E: std::fmt::Debug>(outcome: Result<Result<T, Rejection>, E>) -> &'static str {
    outcome.unwrap().unwrap_err().kind()
}

fn project(name: &str) -> NewProject {
    NewProject {
        name: name.into(),
        repository: "file:///srv/app".into(),
        default_branch: "main".into(),
        environments: vec!["test".into(), "live".into()],
        mirror_of: None,
    }
}

fn deploy(project: &str, environment: &str, git_ref: Option<&str>) -> DeployRequest {
    DeployRequest {
        project: project.into(),
        environment: environment.into(),
        git_ref: git_ref.map(str::to_string),
        mode: BuildMode::Local,
        no_cache: false,
        run_release: false,
        dry_run: true,
    }
}

on_both_stores!(each_refusal_has_the_kind_its_situation_calls_for);
async fn each_refusal_has_the_kind_its_situation_calls_for(s: &Setup) {
    let store = &*s.store;
    let (actor, nobody) = ("test", Uuid::now_v7());
    requests::create_project(store, actor, project("shop")).await.unwrap().unwrap();
    let outcome: Result<_, StoreError> = requests::create_project(store, actor, project("shop")).await;
    assert_eq!(kind(outcome), "conflict", "a name taken");
    assert_eq!(kind(requests::create_project(store, actor, project("Shop!")).await), "invalid");
    let mirror = NewProject { mirror_of: Some("ghost".into()), repository: String::new(), ..project("copy") };
    assert_eq!(kind(requests::create_project(store, actor, mirror).await), "not_found", "the original of a mirror");
    let mirror = NewProject { mirror_of: Some("shop".into()), repository: String::new(), ..project("copy") };
    requests::create_project(store, actor, mirror).await.unwrap().unwrap();
    // A mirror reaches its original's repository with the original's access,
    // whatever the change says (a pin for another host too).
    let pinned = SourceChange { known_hosts: Some(vec!["elsewhere ssh-ed25519 AAAA".into()]), ..SourceChange::default() };
    let refused = requests::change_source(store, actor, "copy", pinned).await.unwrap().unwrap_err();
    assert!(refused.kind() == "invalid" && refused.message().contains("is a mirror"), "{refused:?}");

    assert_eq!(kind(requests::request_deployment(store, actor, deploy("ghost", "test", None)).await), "not_found");
    assert_eq!(kind(requests::request_deployment(store, actor, deploy("shop", "qa", None)).await), "not_found");
    assert_eq!(kind(requests::request_deployment(store, actor, deploy("shop", "test", Some("--force"))).await), "invalid");
    assert_eq!(kind(requests::request_rollback(store, actor, "shop", "test", None).await), "conflict", "nothing to roll back to");
    assert_eq!(kind(requests::request_rollback(store, actor, "shop", "test", Some(nobody)).await), "not_found", "never served");
    assert_eq!(kind(requests::request_migrate(store, actor, "shop", "test").await), "conflict", "nothing serves");
    assert_eq!(kind(requests::request_promotion(store, actor, "shop", "test", "test", BuildMode::Cloud, true).await), "invalid");
    assert_eq!(kind(requests::request_promotion(store, actor, "shop", "test", "live", BuildMode::Cloud, true).await), "conflict");
    assert_eq!(kind(requests::request_replay(store, actor, nobody, None).await), "not_found");
    assert_eq!(kind(requests::request_cancel(store, actor, nobody, "").await), "not_found");

    // A running deployment cannot be replayed; a finished one cannot be cancelled.
    let running = requests::request_deployment(store, actor, deploy("shop", "test", None)).await.unwrap().unwrap();
    assert_eq!(kind(requests::request_replay(store, actor, running, None).await), "conflict");

    requests::issue_token(store, actor, "ci", TokenScope::Deploy).await.unwrap().unwrap();
    assert_eq!(kind(requests::issue_token(store, actor, "ci", TokenScope::Read).await), "conflict");
    assert_eq!(kind(requests::issue_token(store, actor, "Not A Name", TokenScope::Read).await), "invalid");
    assert_eq!(kind(requests::revoke_token(store, actor, "nobody").await), "not_found");

    assert_eq!(kind(domains::add(store, actor, "shop", "live", "not a domain").await), "invalid");
    assert_eq!(kind(domains::add(store, actor, "shop", "qa", "shop.example").await), "not_found");
    domains::add(store, actor, "shop", "live", "shop.example").await.unwrap().unwrap();
    assert_eq!(kind(domains::add(store, actor, "shop", "test", "shop.example").await), "conflict", "another environment holds it");
    assert_eq!(kind(domains::add(store, actor, "shop", "qa", "shop.example").await), "not_found", "no such environment, whoever holds it");
    assert_eq!(kind(domains::remove(store, actor, "shop", "test", "shop.example").await), "not_found");
    // Where a router serves environments, a name one label under its
    // domain could be another environment's host name.
    let router = slipway_proto::Event::RouterStarted(slipway_proto::event::RouterStarted {
        router_id: "edge-1".into(),
        listen: "127.0.0.1:80".into(),
        domain: "apps.example".into(),
        lease_ms: None,
    });
    let meta =
        slipway_proto::envelope::Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "router".into(), trace: None };
    let stream = slipway_proto::event::ROUTERS_STREAM;
    let started = slipway_proto::Envelope::new(Uuid::now_v7(), chrono::Utc::now(), stream, &router, meta).unwrap();
    store.append(stream, slipway_store::ExpectedVersion::Any, &[started], &[]).await.unwrap().unwrap();
    for taken in ["shop-test.apps.example", "*.apps.example"] {
        let refused = domains::add(store, actor, "shop", "live", taken).await.unwrap().unwrap_err();
        assert!(matches!(&refused, Rejection::Invalid(m) if m.contains("one label under `apps.example`")), "{taken}: {refused:?}");
    }
    domains::add(store, actor, "shop", "live", "www.shop.apps.example").await.unwrap().unwrap();

    assert_eq!(kind(auto_deploy::set_rule(store, actor, "shop", "main", "qa", None).await), "not_found");
    assert_eq!(kind(auto_deploy::set_rule(store, actor, "shop", "a b", "test", None).await), "invalid");
    assert_eq!(kind(auto_deploy::remove_rule(store, actor, "shop", "main").await), "not_found");
    let (previews, any) = (lifecycle::Removable::Previews, lifecycle::Removable::Any);
    assert_eq!(
        kind(lifecycle::remove_environment(store, actor, "shop", "test", "by hand", previews).await),
        "invalid",
        "a named environment"
    );
    assert_eq!(kind(lifecycle::remove_environment(store, actor, "shop", "pr-1", "by hand", previews).await), "not_found");
    assert_eq!(kind(lifecycle::remove_environment(store, actor, "shop", "pr-1", "by hand", any).await), "not_found");
    assert_eq!(kind(lifecycle::add_environment(store, actor, "shop", "test").await), "conflict");
    assert_eq!(kind(lifecycle::add_environment(store, actor, "shop", "No Name").await), "invalid");
    assert_eq!(kind(lifecycle::add_environment(store, actor, "nosuch", "qa").await), "not_found");
    assert_eq!(kind(lifecycle::approve(store, actor, "shop", "pr-1").await), "not_found");
}

on_both_stores!(the_api_answers_each_kind_with_its_status_and_code);
async fn the_api_answers_each_kind_with_its_status_and_code(s: &Setup) {
    s.call(Method::POST, "/api/projects", Some(json!({"name": "shop", "repo": "file:///srv/app"}))).await;
    let env = "/api/projects/shop/environments/test";
    let cases = [
        (
            Method::POST,
            "/api/projects".to_string(),
            Some(json!({"name": "shop", "repo": "file:///srv/app"})),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            Method::POST,
            "/api/projects".into(),
            Some(json!({"name": "Shop!", "repo": "file:///srv/app"})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (Method::POST, format!("{env}/rollback"), None, StatusCode::CONFLICT, "conflict"),
        (Method::POST, format!("{env}/rollback"), Some(json!({"to": Uuid::now_v7()})), StatusCode::NOT_FOUND, "not_found"),
        (Method::POST, format!("{env}/deployments"), Some(json!({"ref": "--force"})), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, format!("/api/deployments/{}/replay", Uuid::now_v7()), None, StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, format!("{env}/domains/shop.example"), None, StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, "/api/projects/shop/auto-deploy?branch=main".into(), None, StatusCode::NOT_FOUND, "not_found"),
        // An environment named in a body is bad input, not a missing resource.
        (
            Method::PUT,
            "/api/projects/shop/auto-deploy".into(),
            Some(json!({"branch": "main", "environment": "qa"})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = s.call(method.clone(), &path, body).await;
        assert_eq!((reply.status, reply.json["error"]["code"].as_str()), (status, Some(code)), "{method} {path}: {}", reply.text);
    }
}

on_both_stores!(a_domain_added_while_its_environment_is_removed_never_outlives_it);
/// Adding a domain and removing its environment at the same moment: one of
/// the two is refused, or the removal comes first and the addition finds
/// no environment. Never both, which would leave a domain routing to an
/// environment that is gone (and block nothing, so nobody would notice).
async fn a_domain_added_while_its_environment_is_removed_never_outlives_it(s: &Setup) {
    let store = &*s.store;
    let actor = "test";
    requests::create_project(store, actor, project("shop")).await.unwrap().unwrap();
    let any = lifecycle::Removable::Any;
    let (mut added, mut removed) = (0, 0);
    for round in 0..30 {
        let env = format!("qa{round}");
        lifecycle::add_environment(store, actor, "shop", &env).await.unwrap().unwrap();
        let domain = format!("qa{round}.shop.example");
        let (add, remove) = tokio::join!(
            domains::add(store, actor, "shop", &env, &domain),
            lifecycle::remove_environment(store, actor, "shop", &env, "", any)
        );
        let (add, remove) = (add.unwrap(), remove.unwrap());
        assert!(add.is_err() || remove.is_err(), "round {round}: the domain was added and its environment removed");
        added += usize::from(add.is_ok());
        removed += usize::from(remove.is_ok());
        let routes = slipway_engine::load::routes(store).await.unwrap();
        assert_eq!(routes.domains.contains_key(&domain), add.is_ok(), "round {round}");
    }
    assert_eq!(added + removed, 30, "one of the two lands each round");
    // The addition is on the environment's own stream too: its history shows it.
    lifecycle::add_environment(store, actor, "shop", "last").await.unwrap().unwrap();
    domains::add(store, actor, "shop", "last", "last.shop.example").await.unwrap().unwrap();
    let stream = slipway_proto::event::environment_stream("shop", "last");
    let events: Vec<_> = store.read_stream(&stream, 1).await.unwrap().into_iter().map(|r| r.envelope.message_type).collect();
    assert!(events.iter().any(|t| t == "DomainAdded"), "{events:?}");
}
