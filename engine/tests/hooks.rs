//! Push webhooks through the HTTP API (`Router` with `oneshot`) on both
//! stores, in-memory SQLite and PostgreSQL (a fresh schema each): recorded
//! sample payloads of each provider, signed here with the project's secret
//! as the provider would. No engine or worker runs, so a requested
//! deployment stays in its environment's queue — which is how a running
//! deployment and the ones waiting behind it are set up.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{sha, Reply, Setup};
use serde_json::{json, Value};
use slipway_engine::webhook::sign;
use slipway_proto::event::deployment_stream;
use slipway_proto::{Event, Step};
use uuid::Uuid;

// ---- Recorded sample payloads, trimmed, in each provider's shape ----

fn github_push(git_ref: &str, after: &str, message: &str) -> String {
    json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "created": false, "deleted": false, "forced": false,
        "base_ref": null,
        "compare": "https://github.com/octo-org/app/compare/abc...def",
        "commits": [{"id": after, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true, "message": message,
            "timestamp": "2025-03-01T12:00:00+01:00", "url": "https://github.com/octo-org/app/commit/x",
            "author": {"name": "Mona Octocat", "email": "mona@example.com", "username": "octocat"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [], "removed": [], "modified": ["README.md"]}],
        "head_commit": {"id": after, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true, "message": message,
            "timestamp": "2025-03-01T12:00:00+01:00", "url": "https://github.com/octo-org/app/commit/x",
            "author": {"name": "Mona Octocat", "email": "mona@example.com", "username": "octocat"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [], "removed": [], "modified": ["README.md"]},
        "repository": {"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": "app", "full_name": "octo-org/app",
            "private": true, "owner": {"name": "octo-org", "login": "octo-org", "id": 1}, "default_branch": "main"},
        "pusher": {"name": "octocat", "email": "mona@example.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User", "site_admin": false}
    })
    .to_string()
}

fn gitlab_push(git_ref: &str, after: &str, message: &str) -> String {
    json!({
        "object_kind": "push", "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": after, "ref": git_ref, "ref_protected": true, "checkout_sha": after, "message": null,
        "user_id": 4, "user_name": "John Smith", "user_username": "jsmith", "user_email": "", "user_avatar": "https://s.gravatar.com/avatar/x",
        "project_id": 15,
        "project": {"id": 15, "name": "App", "description": "", "web_url": "http://gitlab.example.com/mike/app",
            "git_ssh_url": "git@gitlab.example.com:mike/app.git", "git_http_url": "http://gitlab.example.com/mike/app.git",
            "namespace": "Mike", "visibility_level": 0, "path_with_namespace": "mike/app", "default_branch": "main"},
        "commits": [
            {"id": "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327", "message": "older commit", "title": "older commit",
             "timestamp": "2025-03-01T11:00:00+02:00", "url": "http://gitlab.example.com/mike/app/-/commit/b6568db",
             "author": {"name": "Jordi Mallach", "email": "jordi@example.com"}, "added": [], "modified": [], "removed": []},
            {"id": after, "message": message, "title": message,
             "timestamp": "2025-03-01T12:00:00+02:00", "url": "http://gitlab.example.com/mike/app/-/commit/x",
             "author": {"name": "GitLab dev user", "email": "gitlabdev@example.com"}, "added": [], "modified": ["README.md"], "removed": []}
        ],
        "total_commits_count": 2,
        "repository": {"name": "App", "url": "git@gitlab.example.com:mike/app.git", "description": "", "homepage": "http://gitlab.example.com/mike/app"}
    })
    .to_string()
}

fn gitea_push(git_ref: &str, after: &str, message: &str) -> String {
    json!({
        "ref": git_ref, "before": "28e1879d029cb852e4844d9c718537df08844e03", "after": after,
        "compare_url": "https://forgejo.example.com/gitea/app/compare/28e1879...x",
        "commits": [{"id": after, "message": message, "url": "https://forgejo.example.com/gitea/app/commit/x",
            "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "committer": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "verification": null, "timestamp": "2025-03-01T12:00:00Z", "added": [], "removed": [], "modified": ["README.md"]}],
        "total_commits": 1,
        "head_commit": {"id": after, "message": message, "url": "https://forgejo.example.com/gitea/app/commit/x",
            "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "committer": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "timestamp": "2025-03-01T12:00:00Z", "added": [], "removed": [], "modified": ["README.md"]},
        "repository": {"id": 1, "owner": {"id": 1, "login": "gitea", "full_name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
            "name": "app", "full_name": "gitea/app", "private": false, "default_branch": "main"},
        "pusher": {"id": 1, "login": "gitea", "full_name": "Gitea", "email": "someone@gitea.io", "avatar_url": "https://x", "username": "gitea"},
        "sender": {"id": 1, "login": "gitea", "full_name": "Gitea", "email": "someone@gitea.io", "username": "gitea"}
    })
    .to_string()
}

fn generic_push(git_ref: &str, after: &str, message: &str) -> String {
    json!({"ref": git_ref, "after": after, "pusher": "ci-bot", "head_commit_message": message}).to_string()
}

/// (provider, push event name, payload maker, the pusher its sample names)
type Sample = (&'static str, &'static str, fn(&str, &str, &str) -> String, &'static str);

const SAMPLES: [Sample; 4] = [
    ("github", "push", github_push, "octocat"),
    ("gitlab", "Push Hook", gitlab_push, "jsmith"),
    ("gitea", "push", gitea_push, "gitea"),
    ("generic", "push", generic_push, "ci-bot"),
];

on_both_stores!(a_push_from_each_provider_deploys_the_pushed_commit_as_the_pusher);
async fn a_push_from_each_provider_deploys_the_pushed_commit_as_the_pusher(s: &Setup) {
    for (n, (provider, event, payload, pusher)) in SAMPLES.into_iter().enumerate() {
        let project = format!("app-{provider}");
        let secret = s.project(&project).await;
        let commit = sha(n as u8 + 1);
        let reply =
            s.deliver(provider, &project, &format!("d-{provider}"), event, &payload("refs/heads/main", &commit, "fix"), &secret).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{provider}: {}", reply.json);
        assert_eq!(reply.json["status"], "deployed", "{provider}: {}", reply.json);
        let id: Uuid = reply.json["deployments"][0]["deployment"].as_str().unwrap().parse().unwrap();
        assert_eq!(reply.json["deployments"][0]["environment"], "test");
        let (requested, actor) = s.requested_one(id).await.unwrap();
        assert_eq!((requested.project.as_str(), requested.environment.as_str()), (project.as_str(), "test"));
        assert_eq!(requested.git_ref, commit, "{provider}: the pushed commit, not the branch");
        assert_eq!(actor, format!("webhook:{provider}:{pusher}"));
        let received = s.project_events(&project).await.into_iter().find_map(|e| match e {
            Event::PushReceived(p) => Some(p),
            _ => None,
        });
        let received = received.unwrap_or_else(|| panic!("{provider}: no PushReceived"));
        assert_eq!((received.delivery.as_str(), received.pusher.as_str()), (format!("d-{provider}").as_str(), pusher));
        assert_eq!(received.deployments[0].deployment_id, id);
    }
    // A release branch goes to live by the glob rule; a feature branch nowhere.
    let secret = s.project("globbed").await;
    let reply = s.deliver("github", "globbed", "r1", "push", &github_push("refs/heads/release/2.1", &sha(9), "rc"), &secret).await;
    assert_eq!(
        (reply.json["deployments"][0]["environment"].as_str(), reply.json["deployments"][0]["rule"].as_str()),
        (Some("live"), Some("release/*"))
    );
    let reply = s.deliver("github", "globbed", "f1", "push", &github_push("refs/heads/feature/x", &sha(10), "wip"), &secret).await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (StatusCode::ACCEPTED, Some("unmatched")), "{}", reply.json);
}

on_both_stores!(a_bad_or_missing_signature_is_refused_and_records_nothing);
async fn a_bad_or_missing_signature_is_refused_and_records_nothing(s: &Setup) {
    let secret = s.project("app").await;
    let before = s.events().await.len();
    let body = github_push("refs/heads/main", &sha(1), "fix");
    let wrong = "slwh_".to_string() + &"0".repeat(64);
    for (provider, event, payload, _) in SAMPLES {
        let body = payload("refs/heads/main", &sha(1), "fix");
        let reply = s.deliver(provider, "app", "x1", event, &body, &wrong).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{provider}: {}", reply.json);
    }
    // Signed right, but the body changed on the way.
    let mac = sign(&secret, body.as_bytes());
    let tampered = body.replace("octocat", "mallory");
    let request = |body: String, signature: Option<String>| {
        let mut r = Request::builder()
            .method(Method::POST)
            .uri("/api/hooks/github/app")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "x2");
        if let Some(sig) = signature {
            r = r.header("X-Hub-Signature-256", sig);
        }
        r.body(Body::from(body)).unwrap()
    };
    for (what, req) in [
        ("a changed body", request(tampered, Some(format!("sha256={mac}")))),
        ("no signature", request(body.clone(), None)),
        ("a bearer token instead", {
            let mut r = request(body.clone(), None);
            r.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {}", s.admin).parse().unwrap());
            r
        }),
        ("a sha1 signature", request(body.clone(), Some(format!("sha1={}", &mac[..40])))),
    ] {
        let reply = s.send(req).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.json);
        assert_eq!(reply.json["error"]["code"], "unauthorized", "{what}");
    }
    // An unknown project and one without a secret answer exactly like a bad signature.
    let body = json!({"name": "nosecret", "repo": "file:///srv/app.git"});
    assert_eq!(s.call(Method::POST, "/api/projects", Some(body)).await.status, StatusCode::CREATED);
    let before_unknown = s.events().await.len();
    let unknown = s.deliver("github", "ghost", "x3", "push", &github_push("refs/heads/main", &sha(1), "m"), &secret).await;
    let nosecret = s.deliver("github", "nosecret", "x3", "push", &github_push("refs/heads/main", &sha(1), "m"), &secret).await;
    let wrong = s.deliver("github", "app", "x3", "push", &github_push("refs/heads/main", &sha(1), "m"), "guess").await;
    for reply in [&unknown, &nosecret, &wrong] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.json);
    }
    let message = |r: &Reply, project: &str| r.json["error"]["message"].as_str().unwrap().replace(project, "P");
    assert_eq!(message(&unknown, "ghost"), message(&wrong, "app"));
    assert_eq!(message(&nosecret, "nosecret"), message(&wrong, "app"));
    assert_eq!(s.events().await.len(), before_unknown, "a refused webhook records nothing");
    // The second project's creation and its two environments' name claims.
    assert_eq!(before_unknown, before + 3, "only the second project's creation was recorded");
    assert!(s.requested("app").await.is_empty());
    let metrics = slipway_telemetry::metrics::render();
    assert!(metrics.contains("slipway_webhooks_total{provider=\"github\",outcome=\"unauthorized\"}"), "{metrics}");
}

on_both_stores!(a_redelivered_id_deploys_once_even_when_deliveries_race);
async fn a_redelivered_id_deploys_once_even_when_deliveries_race(s: &Setup) {
    let secret = s.project("app").await;
    let body = github_push("refs/heads/main", &sha(1), "fix");
    let first = s.deliver("github", "app", "dup-1", "push", &body, &secret).await;
    assert_eq!((first.status, first.json["status"].as_str()), (StatusCode::ACCEPTED, Some("deployed")));
    let again = s.deliver("github", "app", "dup-1", "push", &body, &secret).await;
    assert_eq!((again.status, again.json["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{}", again.json);
    // The same signed body replayed under a new delivery id is the same delivery.
    let replayed = s.deliver("github", "app", "replay-1", "push", &body, &secret).await;
    assert_eq!((replayed.status, replayed.json["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{}", replayed.json);
    assert_eq!(s.requested("app").await.len(), 1);
    // The same id delivered eight times at once: one lands, the others see it.
    let body = github_push("refs/heads/main", &sha(2), "next");
    let replies = futures::future::join_all((0..8).map(|_| s.deliver("github", "app", "race-1", "push", &body, &secret))).await;
    let deployed = replies.iter().filter(|r| r.status == StatusCode::ACCEPTED).count();
    let duplicate = replies.iter().filter(|r| r.status == StatusCode::OK && r.json["status"] == "duplicate").count();
    assert_eq!((deployed, duplicate), (1, 7), "{:?}", replies.iter().map(|r| (r.status, r.json.clone())).collect::<Vec<_>>());
    assert_eq!(s.requested("app").await.len(), 2);
    // The same id from another provider is another delivery.
    let generic = generic_push("main", &sha(3), "m");
    let other = s.deliver("generic", "app", "dup-1", "push", &generic, &secret).await;
    assert_eq!(other.json["status"], "deployed", "{}", other.json);
    let replayed = s.deliver("generic", "app", "dup-2", "push", &generic, &secret).await;
    assert_eq!(replayed.json["status"], "duplicate", "a captured generic push deploys nothing again: {}", replayed.json);
    assert_eq!(s.requested("app").await.len(), 3);
}

on_both_stores!(a_skip_phrase_or_a_deleted_branch_deploys_nothing_and_is_recorded);
async fn a_skip_phrase_or_a_deleted_branch_deploys_nothing_and_is_recorded(s: &Setup) {
    let secret = s.project("app").await;
    let gl = gitlab_push("refs/heads/main", &sha(1), "docs only [skip deploy]");
    let reply = s.deliver("gitlab", "app", "s1", "Push Hook", &gl, &secret).await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (StatusCode::ACCEPTED, Some("skipped")), "{}", reply.json);
    let gh = github_push("refs/heads/main", &sha(2), "Tidy\n\n[Deploy Skip]");
    assert_eq!(s.deliver("github", "app", "s2", "push", &gh, &secret).await.json["status"], "skipped");
    let mut deleted: Value = serde_json::from_str(&github_push("refs/heads/main", &"0".repeat(40), "x")).unwrap();
    deleted["deleted"] = json!(true);
    deleted["head_commit"] = Value::Null;
    let reply = s.deliver("github", "app", "s3", "push", &deleted.to_string(), &secret).await;
    assert_eq!(reply.json["status"], "skipped", "{}", reply.json);
    assert!(s.requested("app").await.is_empty(), "nothing deployed");
    let skipped: Vec<_> = s
        .project_events("app")
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::PushSkipped(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 3);
    assert_eq!((skipped[0].delivery.as_str(), skipped[0].commit.as_str()), ("s1", sha(1).as_str()));
    assert!(skipped[0].reason.contains("[skip deploy]") && skipped[1].reason.contains("[deploy skip]"), "{skipped:?}");
    assert!(skipped[2].reason.contains("deleted"), "{:?}", skipped[2]);
    // A skipped delivery is a delivery: sent again, it is a duplicate.
    assert_eq!(s.deliver("gitlab", "app", "s1", "Push Hook", &gl, &secret).await.json["status"], "duplicate");
}

on_both_stores!(a_newer_push_supersedes_the_older_one_still_waiting);
async fn a_newer_push_supersedes_the_older_one_still_waiting(s: &Setup) {
    let secret = s.project("app").await;
    // A deployment someone requested runs (heads the queue); pushes wait behind it.
    let manual = s.call(Method::POST, "/api/projects/app/environments/test/deployments", Some(json!({}))).await;
    let manual: Uuid = manual.json["deployment"].as_str().unwrap().parse().unwrap();
    let secret = &secret;
    let push = |n: u8| {
        let body = gitea_push("refs/heads/main", &sha(n), &format!("change {n}"));
        async move { s.deliver("gitea", "app", &format!("p{n}"), "push", &body, secret).await }
    };
    let first = push(1).await;
    let older: Uuid = first.json["deployments"][0]["deployment"].as_str().unwrap().parse().unwrap();
    assert!(first.json["superseded"].is_null(), "{}", first.json);
    let second = push(2).await;
    let newer: Uuid = second.json["deployments"][0]["deployment"].as_str().unwrap().parse().unwrap();
    assert_eq!(second.json["superseded"], json!([older]), "{}", second.json);
    // The older one is cancelled, with the reason; the manual one runs on, the newer one waits.
    let cancelled = slipway_engine::load::deployment(&*s.store, older).await.unwrap().unwrap();
    let reason = format!("superseded by {newer} (push of {})", &sha(2)[..12]);
    assert_eq!(cancelled.cancelled.as_deref(), Some(reason.as_str()));
    assert!(matches!(&cancelled.status, slipway_engine::Status::Failed { step: Step::CheckServices, reason: r } if *r == reason));
    let recorded = s.store.read_stream(&deployment_stream(older), 1).await.unwrap();
    assert_eq!(recorded.last().unwrap().envelope.actor, "webhook:gitea:gitea");
    // The engine, deciding, records its failure (and it leaves the queue).
    let decisions = slipway_engine::decide(&cancelled, &Default::default());
    assert!(
        decisions.iter().any(|d| matches!(d, slipway_engine::Decision::Record(Event::DeploymentFailed(f)) if f.reason == reason)),
        "{decisions:?}"
    );
    for running in [manual, newer] {
        let d = slipway_engine::load::deployment(&*s.store, running).await.unwrap().unwrap();
        assert_eq!(d.cancelled, None, "{running}");
    }
    // Superseded once: a third push cancels only the second.
    let third = push(3).await;
    assert_eq!(third.json["superseded"], json!([newer]), "{}", third.json);
    // Two pushes at once: one of them lands first and the other supersedes it.
    let (a, b) = futures::future::join(push(4), push(5)).await;
    let ids: Vec<Value> = [&a, &b].iter().map(|r| r.json["deployments"][0]["deployment"].clone()).collect();
    let superseded: Vec<Value> = [&a, &b].iter().flat_map(|r| r.json["superseded"].as_array().cloned().unwrap_or_default()).collect();
    assert_eq!(superseded.len(), 2, "the third push's and the first of the pair: {} {}", a.json, b.json);
    assert!(ids.iter().filter(|id| superseded.contains(id)).count() == 1, "{} {}", a.json, b.json);
    let env = slipway_engine::load::environment(&*s.store, "app", "test").await.unwrap();
    assert_eq!(env.queue.len(), 6, "nothing leaves the queue until the engine records the failures");
}

on_both_stores!(pings_and_other_events_are_acknowledged_and_record_nothing);
async fn pings_and_other_events_are_acknowledged_and_record_nothing(s: &Setup) {
    let secret = s.project("app").await;
    let before = s.events().await.len();
    let ping = json!({"zen": "Design for failure.", "hook_id": 1, "hook": {"type": "Repository", "events": ["push"]}}).to_string();
    let reply = s.deliver("github", "app", "ping-1", "ping", &ping, &secret).await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (StatusCode::OK, Some("ignored")), "{}", reply.json);
    let tag = s.deliver("gitlab", "app", "t1", "Tag Push Hook", "{}", &secret).await;
    assert_eq!(tag.json["status"], "ignored");
    // Too large: 413 before anything else is looked at.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(slipway_engine::webhook::MAX_BODY));
    assert_eq!(s.deliver("github", "app", "big", "push", &big, &secret).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Signed but malformed: 400 naming the field.
    let bad = s
        .deliver(
            "github",
            "app",
            "bad",
            "push",
            r#"{"ref":"refs/heads/main","after":"nope","pusher":{"name":"x"},"head_commit":null}"#,
            &secret,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json["error"]["message"].as_str().unwrap().contains("`after`"), "{}", bad.json);
    let reply = s.deliver("nohost", "app", "n", "push", "{}", &secret).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(s.events().await.len(), before);
}

on_both_stores!(rules_and_secrets_are_managed_by_admins_and_the_secret_is_recorded_nowhere);
async fn rules_and_secrets_are_managed_by_admins_and_the_secret_is_recorded_nowhere(s: &Setup) {
    let secret = s.project("app").await;
    let rules = s.call(Method::GET, "/api/projects/app/auto-deploy", None).await;
    assert_eq!(rules.json, json!([{"branch": "main", "environment": "test"}, {"branch": "release/*", "environment": "live"}]));
    let moved = s.call(Method::PUT, "/api/projects/app/auto-deploy", Some(json!({"branch": "main", "environment": "live"}))).await;
    assert_eq!(moved.json[0], json!({"branch": "main", "environment": "live"}), "a glob set again takes the new environment");
    let bad_env = s.call(Method::PUT, "/api/projects/app/auto-deploy", Some(json!({"branch": "x", "environment": "prod"}))).await;
    assert_eq!(bad_env.status, StatusCode::BAD_REQUEST);
    assert!(bad_env.json["error"]["message"].as_str().unwrap().contains("has no environment `prod`"), "{}", bad_env.json);
    let bad_glob = s.call(Method::PUT, "/api/projects/app/auto-deploy", Some(json!({"branch": "a//b", "environment": "test"}))).await;
    assert_eq!(bad_glob.status, StatusCode::BAD_REQUEST);
    let removed = s.call(Method::DELETE, "/api/projects/app/auto-deploy?branch=release%2F*", None).await;
    assert_eq!(removed.json, json!([{"branch": "main", "environment": "live"}]), "{}", removed.json);
    let gone = s.call(Method::DELETE, "/api/projects/app/auto-deploy?branch=nope", None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    // Rotated: the old secret stops verifying, the new one works.
    let new = s.call(Method::POST, "/api/projects/app/webhook-secret", None).await.json["secret"].as_str().unwrap().to_string();
    assert_ne!(new, secret);
    let body = github_push("refs/heads/main", &sha(1), "m");
    assert_eq!(s.deliver("github", "app", "o1", "push", &body, &secret).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.deliver("github", "app", "o1", "push", &body, &new).await.status, StatusCode::ACCEPTED);
    // Neither secret is in any event, nor in the export.
    for r in s.events().await {
        let text = r.envelope.to_json();
        assert!(!text.contains(&secret) && !text.contains(&new), "{} {}: {text}", r.stream, r.version);
    }
    let export = s
        .send(
            Request::builder().uri("/api/export").header(header::AUTHORIZATION, format!("Bearer {}", s.admin)).body(Body::empty()).unwrap(),
        )
        .await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.text.contains("WebhookSecretRotated") && !export.text.contains(&secret) && !export.text.contains(&new));
    let rotations = s.project_events("app").await.into_iter().filter(|e| matches!(e, Event::WebhookSecretRotated(_))).count();
    assert_eq!(rotations, 2);
}

on_both_stores!(a_push_waits_for_the_approvals_its_environment_requires_and_is_refused_in_a_freeze);
async fn a_push_waits_for_the_approvals_its_environment_requires_and_is_refused_in_a_freeze(s: &Setup) {
    let secret = s.project("guarded").await;
    let store = &*s.store;
    slipway_engine::protection::protect(store, "test", "guarded", "test", 1).await.unwrap().unwrap();
    // A push to a protected environment is requested, and waits for an approval like anyone's request;
    let reply = s.deliver("github", "guarded", "g1", "push", &github_push("refs/heads/main", &sha(21), "fix"), &secret).await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (StatusCode::ACCEPTED, Some("deployed")), "{}", reply.json);
    let id: Uuid = reply.json["deployments"][0]["deployment"].as_str().unwrap().parse().unwrap();
    let state = slipway_engine::load::deployment(store, id).await.unwrap().unwrap();
    assert_eq!(state.status_word(), "awaiting approval");
    // inside a freeze window it is refused, with the window named in the reply and on the recorded push.
    slipway_engine::protection::set_freeze(store, "test", "guarded", "test", "* * * * *", 3600).await.unwrap().unwrap();
    let reply = s.deliver("github", "guarded", "g2", "push", &github_push("refs/heads/main", &sha(22), "more"), &secret).await;
    assert_eq!((reply.status, reply.json["status"].as_str()), (StatusCode::ACCEPTED, Some("refused")), "{}", reply.json);
    assert!(reply.json["message"].as_str().unwrap().contains("frozen by the window \"* * * * *\""), "{}", reply.json);
    let received = s
        .project_events("guarded")
        .await
        .into_iter()
        .rev()
        .find_map(|e| match e {
            Event::PushReceived(p) => Some(p),
            _ => None,
        })
        .unwrap();
    assert!(received.deployments.is_empty() && received.refused.len() == 1, "{received:?}");
    assert_eq!(s.requested("guarded").await.len(), 1, "only the first push requested a deployment");
}
