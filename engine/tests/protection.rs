//! Approvals and freeze windows through the API, on both stores, with the
//! engine's driver running: a deployment to a protected environment waits
//! (`awaiting approval`, nothing dispatched) while one to an unprotected
//! environment starts; its requester cannot approve it; another deploy
//! token can, and then it starts; a rejection cancels with who and why; a
//! deployment inside a freeze window is refused naming it, an admin's
//! override with a reason is recorded; history shows all of it.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::Setup;
use serde_json::json;
use slipway_engine::driver::{Driver, DriverOptions};
use slipway_engine::protection;
use slipway_proto::event::{deployment_stream, TokenScope};
use slipway_proto::Event;
use slipway_support::eventually;
use uuid::Uuid;

/// How long anything here may take.
const PATIENCE: Duration = Duration::from_secs(20);

async fn events(setup: &Setup, id: Uuid) -> Vec<Event> {
    let recorded = setup.store.read_stream(&deployment_stream(id), 1).await.unwrap();
    recorded.iter().map(|r| r.envelope.decode::<Event>().unwrap()).collect()
}

async fn dispatched(setup: &Setup, id: Uuid) -> bool {
    events(setup, id).await.iter().any(|e| matches!(e, Event::StepDispatched(_)))
}

async fn deploy(setup: &Setup, token: &str, env: &str, body: serde_json::Value) -> common::Reply {
    setup.call_as(token, Method::POST, &format!("/api/projects/shop/environments/{env}/deployments"), Some(body)).await
}

fn id_of(reply: &common::Reply) -> Uuid {
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    reply.json["deployment"].as_str().unwrap().parse().unwrap()
}

async fn approvals_and_freezes(setup: &Setup) {
    let store = &*setup.store;
    let token = |name: &'static str| async move {
        slipway_engine::requests::issue_token(store, "test", name, TokenScope::Deploy).await.unwrap().unwrap()
    };
    let (ann, bob) = (token("ann").await, token("bob").await);
    setup.project("shop").await;
    let too_many = protection::protect(store, "test", "shop", "live", 1_000_000).await.unwrap();
    assert!(matches!(&too_many, Err(slipway_engine::rejection::Rejection::Invalid(e)) if e.contains("expected 0 to 10")), "{too_many:?}");
    protection::protect(store, "test", "shop", "live", 1).await.unwrap().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(Driver::new(setup.store.clone(), DriverOptions::default()).run(async move {
        let _ = stopped.await;
    }));

    // Given a deployment to the protected live and one to test,
    let live = id_of(&deploy(setup, &ann, "live", json!({})).await);
    let test = id_of(&deploy(setup, &ann, "test", json!({})).await);
    // the one to test starts and the one to live waits for an approval.
    eventually("the unprotected deployment to start", PATIENCE, || async { dispatched(setup, test).await.then_some(()) }).await;
    assert!(!dispatched(setup, live).await);
    let state = slipway_engine::load::deployment(store, live).await.unwrap().unwrap();
    assert_eq!(state.status_word(), "awaiting approval");
    assert!(events(setup, test).await.iter().all(|e| !matches!(e, Event::ApprovalRequired(_))), "test is unprotected");
    let listed = setup.call(Method::GET, "/api/deployments?project=shop&status=awaiting%20approval", None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json);
    // Its requester cannot approve it,
    let own = setup.call_as(&ann, Method::POST, &format!("/api/deployments/{live}/approve"), None).await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{}", own.json);
    assert!(own.text.contains("token:ann requested deployment") && own.text.contains("cannot approve it too"), "{}", own.text);
    // someone else with deploy scope can, and then it starts.
    let approved =
        setup.call_as(&bob, Method::POST, &format!("/api/deployments/{live}/approve"), Some(json!({"reason": "looks good"}))).await;
    assert_eq!(approved.status, StatusCode::ACCEPTED, "{}", approved.json);
    assert_eq!(approved.json["approvals"], json!({"given": 1, "required": 1}), "{}", approved.json);
    eventually("the approved deployment to start", PATIENCE, || async { dispatched(setup, live).await.then_some(()) }).await;
    let again = setup.call_as(&bob, Method::POST, &format!("/api/deployments/{live}/approve"), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.json);

    // A rejected deployment is cancelled, with who and why.
    setup.call_as(&bob, Method::POST, &format!("/api/deployments/{live}/cancel"), None).await;
    let second = id_of(&deploy(setup, &ann, "live", json!({})).await);
    let rejected =
        setup.call_as(&bob, Method::POST, &format!("/api/deployments/{second}/reject"), Some(json!({"reason": "not today"}))).await;
    assert_eq!(rejected.status, StatusCode::ACCEPTED, "{}", rejected.json);
    let state = slipway_engine::load::deployment(store, second).await.unwrap().unwrap();
    assert_eq!(state.rejected, Some(("token:bob".to_string(), "not today".to_string())));
    assert!(matches!(&state.status, slipway_engine::Status::Failed { reason, .. } if reason == "rejected by token:bob: not today"));
    assert!(!dispatched(setup, second).await);

    // Inside a freeze window a deployment is refused (409) naming the window,
    protection::set_freeze(store, "test", "shop", "live", "* * * * *", 3600).await.unwrap().unwrap();
    let frozen = deploy(setup, &ann, "live", json!({})).await;
    assert_eq!(frozen.status, StatusCode::CONFLICT, "{}", frozen.json);
    assert!(frozen.text.contains("frozen by the window \\\"* * * * *\\\""), "{}", frozen.text);
    // a deploy token may not override it, an admin may with a reason, recorded;
    let refused = deploy(setup, &ann, "live", json!({"override_freeze": "hotfix"})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    let overridden = id_of(&deploy(setup, &setup.admin, "live", json!({"override_freeze": "hotfix for the outage"})).await);
    let recorded = events(setup, overridden).await;
    assert!(recorded
        .iter()
        .any(|e| matches!(e, Event::FreezeOverridden(o) if o.by == "token:root" && o.reason == "hotfix for the outage")));
    assert!(recorded.iter().any(|e| matches!(e, Event::ApprovalRequired(a) if a.approvals == 1)), "and it still waits for approval");
    // and the other environments are not frozen.
    id_of(&deploy(setup, &ann, "test", json!({})).await);

    // History shows the approval, the rejection and the override with their actors.
    let history = setup.call(Method::GET, &format!("/api/deployments/{live}/history"), None).await;
    let entries = history.json["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["event"] == "DeploymentApproved" && e["actor"] == "token:bob"), "{}", history.json);
    let history = setup.call(Method::GET, &format!("/api/deployments/{second}/history"), None).await;
    assert!(history.json["entries"].as_array().unwrap().iter().any(|e| e["event"] == "DeploymentRejected" && e["actor"] == "token:bob"));
    // The rejected one never started a step, and says so (not "failed at check_services"),
    let never = "failed before it started: rejected by token:bob: not today";
    eventually("the rejection's verdict", PATIENCE, || async {
        let history = setup.call(Method::GET, &format!("/api/deployments/{second}/history"), None).await;
        (history.json["summary"]["status"] == never).then_some(())
    })
    .await;
    // in the deployments list too, whose failure names no step.
    let listed = eventually("the rejection in the read model", PATIENCE, || async {
        let listed = setup.call(Method::GET, "/api/deployments?project=shop&environment=live", None).await;
        listed.json.as_array()?.iter().find(|d| d["deployment"] == second.to_string() && d["status"] == never).cloned()
    })
    .await;
    assert_eq!(listed["failure"], json!({"reason": "rejected by token:bob: not today"}), "{listed}");
    let history = setup.call(Method::GET, &format!("/api/deployments/{overridden}/history"), None).await;
    assert!(history.json["entries"].as_array().unwrap().iter().any(|e| e["event"] == "FreezeOverridden" && e["actor"] == "token:root"));

    // With two approvals required, the first approver is told it waits for
    // one more, and the second that it starts.
    protection::protect(store, "test", "shop", "test", 2).await.unwrap().unwrap();
    let carol = token("carol").await;
    let twice = id_of(&deploy(setup, &ann, "test", json!({})).await);
    let approve =
        |token: String| async move { setup.call_as(&token, Method::POST, &format!("/api/deployments/{twice}/approve"), None).await };
    let first = approve(bob.clone()).await;
    assert_eq!(first.json["approvals"], json!({"given": 1, "required": 2}), "{}", first.json);
    let state = slipway_engine::load::deployment(store, twice).await.unwrap().unwrap();
    assert_eq!(state.status_word(), "awaiting approval");
    let second = approve(carol).await;
    assert_eq!(second.json["approvals"], json!({"given": 2, "required": 2}), "{}", second.json);
    let state = slipway_engine::load::deployment(store, twice).await.unwrap().unwrap();
    assert!(!state.awaiting_approval(), "{state:?}");
    stop.send(()).unwrap();
    driver.await.unwrap().unwrap();
}

on_both_stores!(approvals_and_freezes);
