//! Preview environments through the HTTP API on both stores, in-memory
//! SQLite and PostgreSQL (a fresh schema each): pull request webhooks of
//! each provider and branch pushes, signed with the project's secret as the
//! provider would, add, deploy and remove previews; a fork waits for an
//! approval; a preview past its time to live is swept away. No engine or
//! worker runs, so a requested deployment stays queued — which is how the
//! cancellations of a removal are seen; a serving release and a route are
//! recorded by hand, as the engine would have, to see them retired and removed.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{sha, Setup};
use serde_json::{json, Value};
use slipway_engine::lifecycle;
use slipway_proto::command::Command;
use slipway_proto::event::{
    deployment_stream, environment_stream, project_stream, DeploymentFinished, DeploymentRequested, RouteChanged, RouteReason, TokenScope,
    ROUTES_STREAM,
};
use slipway_proto::{Envelope, Event};
use slipway_store::{ExpectedVersion, Position};
use uuid::Uuid;

/// GitHub's `pull_request` event, trimmed; `fork` puts the head in another repository.
fn github_pr(action: &str, number: u64, head: &str, fork: bool) -> String {
    let head_repo = if fork { "mallory/app" } else { "octo-org/app" };
    json!({
        "action": action, "number": number,
        "pull_request": {
            "id": 1, "number": number, "state": if action == "closed" { "closed" } else { "open" }, "title": "Add a page",
            "merged": false, "user": {"login": "octocat", "id": 1},
            "head": {"label": "octocat:feature/page", "ref": "feature/page", "sha": head,
                "repo": {"id": 2, "name": "app", "full_name": head_repo, "fork": fork, "private": false}},
            "base": {"label": "octo-org:main", "ref": "main", "sha": sha(99),
                "repo": {"id": 1, "name": "app", "full_name": "octo-org/app", "fork": false, "private": true}}
        },
        "repository": {"id": 1, "name": "app", "full_name": "octo-org/app"},
        "sender": {"login": "octocat", "id": 1, "type": "User"}
    })
    .to_string()
}

/// GitLab's `Merge Request Hook`, trimmed.
fn gitlab_mr(action: &str, iid: u64, head: &str) -> String {
    json!({
        "object_kind": "merge_request", "event_type": "merge_request",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": {"id": 1, "name": "App", "path_with_namespace": "mike/app"},
        "object_attributes": {"id": 99, "iid": iid, "title": "MS-Viewport", "state": "opened", "action": action,
            "source_branch": "ms-viewport", "target_branch": "main", "source_project_id": 1, "target_project_id": 1,
            "last_commit": {"id": head, "message": "fixed readme", "title": "fixed readme"}},
        "repository": {"name": "App", "homepage": "http://gitlab.example.com/mike/app"}
    })
    .to_string()
}

/// Gitea's and Forgejo's `pull_request` event, trimmed.
fn gitea_pr(action: &str, number: u64, head: &str) -> String {
    json!({
        "action": action, "number": number,
        "pull_request": {"id": 1, "number": number, "state": "open", "title": "x",
            "head": {"label": "feature", "ref": "feature", "sha": head, "repo_id": 1, "repo": {"id": 1, "full_name": "gitea/app"}},
            "base": {"label": "main", "ref": "main", "sha": sha(99), "repo_id": 1, "repo": {"id": 1, "full_name": "gitea/app"}}},
        "repository": {"id": 1, "full_name": "gitea/app"},
        "sender": {"id": 1, "login": "gitea", "username": "gitea"}
    })
    .to_string()
}

fn uuid(v: &Value) -> Uuid {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).parse().unwrap()
}

impl Setup {
    /// A project whose pull requests get previews inheriting `test`.
    async fn previewed(&self, name: &str, ttl: &str) -> String {
        let secret = self.project(name).await;
        let rule = json!({"pull_requests": true, "inherit": "test", "ttl": ttl});
        let reply = self.call(Method::PUT, &format!("/api/projects/{name}/previews"), Some(rule)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        secret
    }

    async fn request_of(&self, id: Uuid) -> (DeploymentRequested, String) {
        self.requested_one(id).await.unwrap_or_else(|| panic!("no request {id}"))
    }

    async fn has_environment(&self, project: &str, env: &str) -> bool {
        let p = slipway_engine::requests::load_project(&*self.store, project).await.unwrap().unwrap();
        p.environments.contains_key(env)
    }

    /// Records what the engine would after `id` succeeded and took traffic:
    /// it serves the environment (`DeploymentFinished`) and has a route.
    async fn serve(&self, project: &str, env: &str, id: Uuid) {
        let meta = slipway_proto::envelope::Metadata { correlation_id: id, causation_id: None, actor: "engine".into(), trace: None };
        let finished = Event::DeploymentFinished(DeploymentFinished {
            deployment_id: id,
            succeeded: true,
            containers: vec![format!("slipway-{project}-{env}-web")],
            upstreams: vec!["127.0.0.1:4000".into()],
            dry_run: false,
            host: String::new(),
        });
        let stream = environment_stream(project, env);
        let e = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), &stream, &finished, meta.clone()).unwrap();
        self.store.append(&stream, ExpectedVersion::Any, &[e], &[]).await.unwrap().unwrap();
        let route = Event::RouteChanged(RouteChanged {
            project: project.into(),
            environment: env.into(),
            deployment_id: Some(id),
            upstreams: vec!["127.0.0.1:4000".into()],
            reason: RouteReason::Cutover,
            standby: vec![],
        });
        let e = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), ROUTES_STREAM, &route, meta).unwrap();
        self.store.append(ROUTES_STREAM, ExpectedVersion::Any, &[e], &[]).await.unwrap().unwrap();
    }

    /// The commands waiting in the outbox.
    async fn outbox(&self) -> Vec<Command> {
        let entries = self.store.outbox().read(Position::default(), 1000).await.unwrap();
        entries.iter().map(|e| Envelope::from_json(e.body.as_bytes()).unwrap().decode::<Command>().unwrap()).collect()
    }
}

on_both_stores!(an_opened_pull_request_gets_a_deployed_preview_and_closing_it_removes_everything);
async fn an_opened_pull_request_gets_a_deployed_preview_and_closing_it_removes_everything(s: &Setup) {
    let secret = s.previewed("app", "7d").await;
    // The parent's settings, and one the preview overrides.
    let settings = json!({"set": {"GREETING": "hello", "COLOR": "blue"}});
    assert_eq!(s.call(Method::PUT, "/api/projects/app/environments/test/settings", Some(settings)).await.status, StatusCode::NO_CONTENT);
    let opened = s.deliver("github", "app", "pr-1", "pull_request", &github_pr("opened", 42, &sha(1), false), &secret).await;
    assert_eq!((opened.status, opened.json["status"].as_str()), (StatusCode::ACCEPTED, Some("deployed")), "{}", opened.json);
    assert_eq!(opened.json["deployments"][0]["environment"], "pr-42");
    let first = uuid(&opened.json["deployments"][0]["deployment"]);
    let (requested, actor) = s.request_of(first).await;
    assert_eq!(
        (requested.environment.as_str(), requested.git_ref.as_str(), actor.as_str()),
        ("pr-42", sha(1).as_str(), "webhook:github:octocat")
    );
    assert_eq!(requested.settings.keys().collect::<Vec<_>>(), ["COLOR", "GREETING"], "inherited from test");
    let added = s.project_events("app").await.into_iter().find_map(|e| match e {
        Event::EnvironmentAdded(a) => Some(a),
        _ => None,
    });
    let added = added.unwrap();
    assert_eq!((added.name.as_str(), added.inherits.as_deref(), added.ttl_seconds), ("pr-42", Some("test"), Some(7 * 86_400)));
    assert_eq!(added.preview.as_ref().map(|o| (o.number, o.head_repo_fork)), Some((Some(42), false)));
    // The preview's own setting overrides the parent's.
    let own = json!({"set": {"COLOR": "green"}});
    assert_eq!(s.call(Method::PUT, "/api/projects/app/environments/pr-42/settings", Some(own)).await.status, StatusCode::NO_CONTENT);
    // The first deployment serves; two more pushes wait behind a third that runs.
    s.serve("app", "pr-42", first).await;
    let second = s.deliver("github", "app", "pr-2", "pull_request", &github_pr("synchronize", 42, &sha(2), false), &secret).await;
    assert_eq!(second.json["status"], "deployed", "{}", second.json);
    let second = uuid(&second.json["deployments"][0]["deployment"]);
    let (requested, _) = s.request_of(second).await;
    let test = slipway_engine::requests::load_project(&*s.store, "app").await.unwrap().unwrap();
    assert_eq!(requested.settings["GREETING"], test.fingerprints("test")["GREETING"]);
    assert_ne!(requested.settings["COLOR"], test.fingerprints("test")["COLOR"], "the override wins");
    let third = s.deliver("github", "app", "pr-3", "pull_request", &github_pr("synchronize", 42, &sha(3), false), &secret).await;
    let third = uuid(&third.json["deployments"][0]["deployment"]);
    // The same body under another delivery id is the same delivery (a replay);
    let replayed = s.deliver("github", "app", "pr-4", "pull_request", &github_pr("synchronize", 42, &sha(3), false), &secret).await;
    assert_eq!(replayed.json["status"], "duplicate", "{}", replayed.json);
    // another event for the head the preview has already changes nothing.
    let same = s.deliver("github", "app", "pr-4b", "pull_request", &github_pr("synchronized", 42, &sha(3), false), &secret).await;
    assert_eq!(same.json["status"], "unchanged", "{}", same.json);
    let again = s.deliver("github", "app", "pr-3", "pull_request", &github_pr("synchronize", 42, &sha(3), false), &secret).await;
    assert_eq!((again.status, again.json["status"].as_str()), (StatusCode::OK, Some("duplicate")));
    // Closed: the preview goes with everything of it.
    let closed = s.deliver("github", "app", "pr-5", "pull_request", &github_pr("closed", 42, &sha(3), false), &secret).await;
    assert_eq!((closed.status, closed.json["status"].as_str()), (StatusCode::ACCEPTED, Some("removed")), "{}", closed.json);
    assert!(!s.has_environment("app", "pr-42").await, "the settings overlay is gone with it");
    let removed = s.project_events("app").await.into_iter().find_map(|e| match e {
        Event::EnvironmentRemoved(r) => Some(r),
        _ => None,
    });
    let removed = removed.unwrap();
    assert!(removed.reason.contains("#42 was closed"), "{removed:?}");
    assert_eq!((removed.cancelled, removed.retired, removed.route_removed), (vec![second, third], Some(first), true));
    for id in [second, third] {
        let d = slipway_engine::load::deployment(&*s.store, id).await.unwrap().unwrap();
        assert!(d.cancelled.as_deref().unwrap().contains("environment pr-42 removed"), "{:?}", d.cancelled);
    }
    // PostgreSQL shows the outbox only below the oldest transaction still
    // open in the database (another test's): read until it is there.
    let retire = slipway_support::eventually("the retire command in the outbox", std::time::Duration::from_secs(5), || async {
        s.outbox().await.into_iter().find_map(|c| match c {
            Command::RetireRelease(r) => Some(r),
            _ => None,
        })
    })
    .await;
    assert_eq!((retire.deployment_id, retire.containers), (first, vec!["slipway-app-pr-42-web".to_string()]));
    assert_eq!(retire.drain_seconds, slipway_core::preview::REMOVAL_DRAIN_SECONDS, "requests already sent there finish");
    let routes = slipway_engine::load::routes(&*s.store).await.unwrap();
    assert!(!routes.by_environment.contains_key(&("app".to_string(), "pr-42".to_string())), "the route is removed");
    let env = slipway_engine::load::environment(&*s.store, "app", "pr-42").await.unwrap();
    assert_eq!(env.active, None, "nothing serves it any more");
    // Reopened: a new preview of the same name, with nothing serving yet.
    let reopened = s.deliver("github", "app", "pr-6", "pull_request", &github_pr("reopened", 42, &sha(3), false), &secret).await;
    assert_eq!(reopened.json["status"], "deployed", "{}", reopened.json);
    assert!(s.has_environment("app", "pr-42").await);
    // Closing a pull request without a preview changes nothing; a label is ignored.
    let other = s.deliver("github", "app", "pr-7", "pull_request", &github_pr("closed", 7, &sha(3), false), &secret).await;
    assert_eq!(other.json["status"], "unchanged", "{}", other.json);
    let label = s.deliver("github", "app", "pr-8", "pull_request", &github_pr("labeled", 42, &sha(3), false), &secret).await;
    assert_eq!((label.status, label.json["status"].as_str()), (StatusCode::OK, Some("ignored")));
}

on_both_stores!(gitlab_merge_requests_and_gitea_pull_requests_come_and_go);
async fn gitlab_merge_requests_and_gitea_pull_requests_come_and_go(s: &Setup) {
    let secret = s.previewed("app", "1d").await;
    let open = s.deliver("gitlab", "app", "m1", "Merge Request Hook", &gitlab_mr("open", 7, &sha(1)), &secret).await;
    assert_eq!(open.json["status"], "deployed", "{}", open.json);
    let id = uuid(&open.json["deployments"][0]["deployment"]);
    assert_eq!(s.request_of(id).await.1, "webhook:gitlab:root");
    let update = s.deliver("gitlab", "app", "m2", "Merge Request Hook", &gitlab_mr("update", 7, &sha(2)), &secret).await;
    assert_eq!(update.json["status"], "deployed", "{}", update.json);
    let merged = s.deliver("gitlab", "app", "m3", "Merge Request Hook", &gitlab_mr("merge", 7, &sha(2)), &secret).await;
    assert_eq!(merged.json["status"], "removed", "{}", merged.json);
    assert!(!s.has_environment("app", "pr-7").await);
    let open = s.deliver("gitea", "app", "g1", "pull_request", &gitea_pr("opened", 3, &sha(4)), &secret).await;
    assert_eq!((open.json["status"].as_str(), open.json["deployments"][0]["environment"].as_str()), (Some("deployed"), Some("pr-3")));
    let closed = s.deliver("gitea", "app", "g2", "pull_request", &gitea_pr("closed", 3, &sha(4)), &secret).await;
    assert_eq!(closed.json["status"], "removed", "{}", closed.json);
    // Without a rule, a pull request is acknowledged and records nothing.
    let plain = s.project("plain").await;
    let before = s.events().await.len();
    let reply = s.deliver("github", "plain", "x1", "pull_request", &github_pr("opened", 1, &sha(1), false), &plain).await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (StatusCode::OK, Some("ignored")), "{}", reply.json);
    assert_eq!(s.events().await.len(), before);
    // Signed wrong: refused like a push.
    let reply = s.deliver("github", "app", "x2", "pull_request", &github_pr("opened", 1, &sha(1), false), "guess").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // Malformed: 400 naming the field.
    let reply = s.deliver("github", "app", "x3", "pull_request", r#"{"action":"opened","number":1}"#, &secret).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["error"]["message"].as_str().unwrap().contains("pull_request"), "{}", reply.json);
}

on_both_stores!(a_fork_s_pull_request_waits_until_someone_with_deploy_scope_approves_its_head);
async fn a_fork_s_pull_request_waits_until_someone_with_deploy_scope_approves_its_head(s: &Setup) {
    let secret = s.previewed("app", "7d").await;
    let opened = s.deliver("github", "app", "f1", "pull_request", &github_pr("opened", 9, &sha(1), true), &secret).await;
    assert_eq!((opened.status, opened.json["status"].as_str()), (StatusCode::ACCEPTED, Some("awaiting_approval")), "{}", opened.json);
    assert!(opened.json["message"].as_str().unwrap().contains("slipway preview approve app pr-9"), "{}", opened.json);
    assert!(s.has_environment("app", "pr-9").await, "the preview exists, empty");
    assert!(s.requested("app").await.is_empty(), "a fork deploys nothing before an approval");
    // A read token may not approve; a deploy token may.
    let read = slipway_engine::requests::issue_token(&*s.store, "test", "viewer", TokenScope::Read).await.unwrap().unwrap();
    let deploy = slipway_engine::requests::issue_token(&*s.store, "test", "alice", TokenScope::Deploy).await.unwrap().unwrap();
    let approve = |token: String| {
        let request = axum::http::Request::builder()
            .method(Method::POST)
            .uri("/api/projects/app/environments/pr-9/approve")
            .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        s.send(request)
    };
    assert_eq!(approve(read).await.status, StatusCode::FORBIDDEN);
    let approved = approve(deploy.clone()).await;
    assert_eq!(approved.status, StatusCode::ACCEPTED, "{}", approved.json);
    assert_eq!(approved.json["approved_by"], "token:alice");
    let id = uuid(&approved.json["deployment"]);
    let (requested, actor) = s.request_of(id).await;
    assert_eq!((requested.git_ref.as_str(), requested.environment.as_str(), actor.as_str()), (sha(1).as_str(), "pr-9", "token:alice"));
    let approval = s.project_events("app").await.into_iter().find_map(|e| match e {
        Event::PreviewApproved(a) => Some(a),
        _ => None,
    });
    let approval = approval.unwrap();
    assert_eq!((approval.commit, approval.approved_by, approval.deployment), (sha(1), "token:alice".to_string(), id));
    let twice = approve(deploy.clone()).await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST);
    assert!(twice.json["error"]["message"].as_str().unwrap().contains("already approved"), "{}", twice.json);
    // A new head commit waits for its own approval.
    let pushed = s.deliver("github", "app", "f2", "pull_request", &github_pr("synchronize", 9, &sha(2), true), &secret).await;
    assert_eq!(pushed.json["status"], "awaiting_approval", "{}", pushed.json);
    assert_eq!(s.requested("app").await.len(), 1);
    // The project shows that head as waiting, not as what the preview runs.
    let waiting = || async { s.call(Method::GET, "/api/projects/app", None).await.json["previews"][0].clone() };
    assert_eq!(waiting().await, json!({"name": "pr-9", "head": sha(2), "awaiting_approval": true}));
    assert_eq!(approve(deploy).await.status, StatusCode::ACCEPTED);
    assert_eq!(waiting().await["awaiting_approval"], false);
    let (requested, _) = s.requested("app").await.pop().unwrap();
    assert_eq!(requested.git_ref, sha(2));
    // A pull request from the same repository needs no approval.
    let own = s.call(Method::POST, "/api/projects/app/environments/test/approve", None).await;
    assert_eq!(own.status, StatusCode::BAD_REQUEST, "{}", own.json);
}

on_both_stores!(a_preview_without_a_push_for_its_time_to_live_is_swept_away);
async fn a_preview_without_a_push_for_its_time_to_live_is_swept_away(s: &Setup) {
    let secret = s.previewed("app", "2s").await;
    let opened = s.deliver("github", "app", "t1", "pull_request", &github_pr("opened", 5, &sha(1), false), &secret).await;
    let queued = uuid(&opened.json["deployments"][0]["deployment"]);
    // Nothing expires before its time.
    assert!(lifecycle::sweep(&*s.store, chrono::Utc::now()).await.unwrap().is_empty());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sweeper = tokio::spawn(lifecycle::run_sweep(s.store.clone(), Duration::from_millis(200), async move {
        let _ = stopped.await;
    }));
    slipway_support::eventually("pr-5 to be removed after its 2 s", Duration::from_secs(10), || async {
        (!s.has_environment("app", "pr-5").await).then_some(())
    })
    .await;
    let _ = stop.send(());
    sweeper.await.unwrap();
    let recorded = s.store.read_stream(&project_stream("app"), 1).await.unwrap();
    let removal = recorded.iter().find(|r| r.envelope.message_type == "EnvironmentRemoved").unwrap();
    assert_eq!(removal.envelope.actor, "engine");
    let Ok(Event::EnvironmentRemoved(r)) = removal.envelope.decode::<Event>() else { panic!("not a removal") };
    assert_eq!((r.reason.as_str(), r.cancelled), ("no push for 2s", vec![queued]));
    let cancelled = s.store.read_stream(&deployment_stream(queued), 1).await.unwrap();
    assert_eq!(cancelled.last().unwrap().envelope.message_type, "CancelRequested");
}

on_both_stores!(a_branch_preview_follows_its_pushes_and_goes_with_the_branch);
async fn a_branch_preview_follows_its_pushes_and_goes_with_the_branch(s: &Setup) {
    let secret = s.project("app").await;
    let rule = json!({"branches": "feature/*", "inherit": "test"});
    let rules = s.call(Method::PUT, "/api/projects/app/previews", Some(rule)).await;
    assert_eq!(rules.json, json!([{"trigger": {"branches": "feature/*"}, "inherit": "test", "ttl_seconds": 604_800}]), "{}", rules.json);
    let push = |after: String| json!({"ref": "refs/heads/feature/Login_Page", "after": after, "pusher": "ci"}).to_string();
    let reply = s.deliver("generic", "app", "b1", "push", &push(sha(1)), &secret).await;
    assert_eq!(reply.json["deployments"][0]["environment"], "feature-login-page", "{}", reply.json);
    assert!(s.has_environment("app", "feature-login-page").await);
    let reply = s.deliver("generic", "app", "b2", "push", &push(sha(2)), &secret).await;
    assert_eq!(reply.json["deployments"][0]["environment"], "feature-login-page", "{}", reply.json);
    let deleted = json!({"ref": "refs/heads/feature/Login_Page", "after": "0".repeat(40), "pusher": "ci", "deleted": true}).to_string();
    let reply = s.deliver("generic", "app", "b3", "push", &deleted, &secret).await;
    assert_eq!(reply.json["status"], "skipped", "{}", reply.json);
    assert!(reply.json["message"].as_str().unwrap().contains("preview feature-login-page removed"), "{}", reply.json);
    assert!(!s.has_environment("app", "feature-login-page").await);
    // Rules: listed, refused when wrong, removed.
    let bad = s.call(Method::PUT, "/api/projects/app/previews", Some(json!({"pull_requests": true, "inherit": "nope"}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json["error"]["message"].as_str().unwrap().contains("`nope`"), "{}", bad.json);
    let both =
        s.call(Method::PUT, "/api/projects/app/previews", Some(json!({"pull_requests": true, "branches": "x", "inherit": "test"}))).await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    let removed = s.call(Method::DELETE, "/api/projects/app/previews?branches=feature%2F*", None).await;
    assert_eq!((removed.status, removed.json.clone()), (StatusCode::OK, json!([])), "{}", removed.json);
    // A named environment an auto-deploy rule deploys to is not removed.
    let named = s.call(Method::DELETE, "/api/projects/app/environments/test", None).await;
    assert_eq!(named.status, StatusCode::CONFLICT);
    assert!(named.json["error"]["message"].as_str().unwrap().contains("auto-deploy rule for `main`"), "{}", named.json);
}

on_both_stores!(an_admin_adds_a_named_environment_and_removes_it_once_nothing_counts_on_it);
async fn an_admin_adds_a_named_environment_and_removes_it_once_nothing_counts_on_it(s: &Setup) {
    s.project("shop").await;
    let deployer = slipway_engine::requests::issue_token(&*s.store, "test", "dev", TokenScope::Deploy).await.unwrap().unwrap();
    let environments = "/api/projects/shop/environments";
    // Added by an admin, once, under a DNS label; a deploy token may not.
    let added = s.call(Method::POST, environments, Some(json!({"name": "staging"}))).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.json);
    assert_eq!(s.call(Method::POST, environments, Some(json!({"name": "staging"}))).await.status, StatusCode::CONFLICT);
    assert_eq!(s.call(Method::POST, environments, Some(json!({"name": "Staging!"}))).await.status, StatusCode::BAD_REQUEST);
    let refused = s.call_as(&deployer, Method::POST, environments, Some(json!({"name": "qa"}))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert!(s.has_environment("shop", "staging").await);
    let shown = s.call(Method::GET, "/api/projects/shop", None).await;
    assert!(shown.json["previews"].as_array().unwrap().is_empty(), "a named environment, not a preview: {}", shown.json);
    // A release serves it, behind a domain.
    let requested = s.call_as(&deployer, Method::POST, "/api/projects/shop/environments/staging/deployments", Some(json!({}))).await;
    assert_eq!(requested.status, StatusCode::ACCEPTED, "{}", requested.json);
    let serving = uuid(&requested.json["deployment"]);
    s.serve("shop", "staging", serving).await;
    let domain = "/api/projects/shop/environments/staging/domains/staging.example";
    assert_eq!(s.call(Method::PUT, domain, None).await.status, StatusCode::OK);

    // Removing it: a deploy token may not; while a domain routes to it, nobody may.
    let staging = "/api/projects/shop/environments/staging";
    let refused = s.call_as(&deployer, Method::DELETE, staging, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert!(refused.text.contains("needs scope admin"), "{}", refused.text);
    let refused = s.call(Method::DELETE, staging, None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.json);
    assert!(refused.text.contains("slipway domain remove shop staging 'staging.example'"), "{}", refused.text);
    // Nor one an auto-deploy rule deploys to.
    let refused = s.call(Method::DELETE, "/api/projects/shop/environments/test", None).await;
    assert!(refused.status == StatusCode::CONFLICT && refused.text.contains("auto-deploy rule for `main`"), "{}", refused.text);
    assert_eq!(s.call(Method::DELETE, domain, None).await.status, StatusCode::OK);
    let removed = s.call(Method::DELETE, staging, None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.json);
    assert_eq!((uuid(&removed.json["retired"]), removed.json["route_removed"].as_bool()), (serving, Some(true)), "{}", removed.json);
    assert!(!s.has_environment("shop", "staging").await);
    let routes = slipway_engine::load::routes(&*s.store).await.unwrap();
    assert!(!routes.by_environment.contains_key(&("shop".to_string(), "staging".to_string())), "the route is removed");
    let retire = slipway_support::eventually("the retire command in the outbox", Duration::from_secs(5), || async {
        s.outbox().await.into_iter().find_map(|c| match c {
            Command::RetireRelease(r) if r.deployment_id == serving => Some(r),
            _ => None,
        })
    })
    .await;
    assert_eq!(retire.containers, vec!["slipway-shop-staging-web".to_string()]);
    // The lists forget it; added again, it starts with nothing serving.
    slipway_support::eventually("the read model to drop it", Duration::from_secs(5), || async {
        let listed = s.call(Method::GET, "/api/environments", None).await;
        let gone = !listed.json.as_array()?.iter().any(|e| e["project"] == "shop" && e["environment"] == "staging");
        gone.then_some(())
    })
    .await;
    assert_eq!(s.call(Method::POST, environments, Some(json!({"name": "staging"}))).await.status, StatusCode::CREATED);
    let status = s.call(Method::GET, staging, None).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.json);
    assert!(status.json["active"].is_null(), "{}", status.json);
}

on_both_stores!(an_admin_removes_a_project_with_everything_it_runs_and_its_name_stays_taken);
async fn an_admin_removes_a_project_with_everything_it_runs_and_its_name_stays_taken(s: &Setup) {
    s.project("shop").await;
    let deployer = slipway_engine::requests::issue_token(&*s.store, "test", "dev", TokenScope::Deploy).await.unwrap().unwrap();
    let requested = s.call_as(&deployer, Method::POST, "/api/projects/shop/environments/live/deployments", Some(json!({}))).await;
    let serving = uuid(&requested.json["deployment"]);
    s.serve("shop", "live", serving).await;
    let queued = s.call_as(&deployer, Method::POST, "/api/projects/shop/environments/test/deployments", Some(json!({}))).await;
    let queued = uuid(&queued.json["deployment"]);
    // A mirror builds from it, and a domain routes to it: refused until both are gone.
    let mirror = json!({"name": "shop-eu", "environments": ["live"], "mirror_of": "shop"});
    assert_eq!(s.call(Method::POST, "/api/projects", Some(mirror)).await.status, StatusCode::CREATED);
    let domain = "/api/projects/shop/environments/live/domains/shop.example";
    assert_eq!(s.call(Method::PUT, domain, None).await.status, StatusCode::OK);
    let refused = s.call_as(&deployer, Method::DELETE, "/api/projects/shop", None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "admin only: {}", refused.json);
    let refused = s.call(Method::DELETE, "/api/projects/shop", None).await;
    assert!(refused.status == StatusCode::CONFLICT && refused.text.contains("project remove shop-eu --yes"), "{}", refused.text);
    assert_eq!(s.call(Method::DELETE, "/api/projects/shop-eu", None).await.status, StatusCode::OK);
    let refused = s.call(Method::DELETE, "/api/projects/shop", None).await;
    assert!(refused.status == StatusCode::CONFLICT && refused.text.contains("domain remove shop live 'shop.example'"), "{}", refused.text);
    assert_eq!(s.call(Method::DELETE, domain, None).await.status, StatusCode::OK);

    let removed = s.call(Method::DELETE, "/api/projects/shop", None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.json);
    let by_env = |env: &str| removed.json["environments"].as_array().unwrap().iter().find(|e| e["environment"] == env).cloned().unwrap();
    assert_eq!(uuid(&by_env("live")["retired"]), serving, "{}", removed.json);
    assert_eq!(by_env("test")["cancelled"], json!([queued.to_string()]), "{}", removed.json);
    let d = slipway_engine::load::deployment(&*s.store, queued).await.unwrap().unwrap();
    assert!(d.cancelled.as_deref().unwrap().contains("environment test removed"), "{:?}", d.cancelled);
    let routes = slipway_engine::load::routes(&*s.store).await.unwrap();
    assert!(!routes.by_environment.keys().any(|(p, _)| p == "shop"), "its routes are removed");
    // Gone from requests and lists; its history stays.
    assert_eq!(s.call(Method::GET, "/api/projects/shop", None).await.status, StatusCode::NOT_FOUND);
    let again = s.call_as(&deployer, Method::POST, "/api/projects/shop/environments/live/deployments", Some(json!({}))).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.json);
    slipway_support::eventually("the read models to forget it", Duration::from_secs(5), || async {
        let projects = s.call(Method::GET, "/api/projects", None).await;
        let environments = s.call(Method::GET, "/api/environments", None).await;
        let gone = !projects.json.as_array()?.iter().any(|p| p["name"] == "shop")
            && !environments.json.as_array()?.iter().any(|e| e["project"] == "shop");
        gone.then_some(())
    })
    .await;
    assert_eq!(s.call(Method::GET, &format!("/api/deployments/{serving}/history"), None).await.status, StatusCode::OK);
    assert!(s.project_events("shop").await.iter().any(|e| matches!(e, Event::ProjectRemoved(r) if r.reason == "removed by token:root")));
    // Its name is not created again.
    let reuse =
        s.call(Method::POST, "/api/projects", Some(json!({"name": "shop", "repo": "file:///srv/app.git", "environments": ["test"]}))).await;
    assert!(reuse.status == StatusCode::CONFLICT && reuse.text.contains("was removed"), "{}", reuse.text);
    assert_eq!(s.call(Method::DELETE, "/api/projects/shop", None).await.status, StatusCode::NOT_FOUND);
}
