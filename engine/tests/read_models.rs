//! The read models: what each event means for a row (the pure fold, given
//! canned histories, no I/O), then on both backends: rows kept live by
//! racing writers equal the rows a rebuild folds from the log, row for row,
//! and pages, filters and positions behave, in the query layer and the API.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Duration, Utc};
use http_body_util::BodyExt;
use slipway_engine::projector::{self, Projector};
use slipway_engine::read_model::{Folded, Folder};
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::*;
use slipway_proto::{Envelope, Event, Step};
use slipway_store::postgres::PgOptions;
use slipway_store::read_model::{Before, Change, DeploymentQuery, DeploymentRow};
use slipway_store::{EventStore, ExpectedVersion, PgStore, Position, RecordedEvent, SqliteStore};
use tower::ServiceExt;
use uuid::Uuid;

const ID: Uuid = Uuid::from_u128(0xd);

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

fn requested(id: Uuid, project: &str, env: &str) -> Event {
    Event::DeploymentRequested(DeploymentRequested {
        deployment_id: id,
        project: project.into(),
        environment: env.into(),
        repository: "file:///srv/hello".into(),
        git_ref: "main".into(),
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        settings: Default::default(),
        dry_run: false,
        rollback_of: None,
        promoted_from: None,
        replay_of: None,
        source: Default::default(),
    })
}

fn outcome(step: Step) -> Event {
    match step {
        Step::CheckServices => Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None }),
        Step::Checkout => Event::CheckedOut(CheckedOut {
            commit: "c0ffee".into(),
            workspace: "/w".into(),
            config: serde_json::json!({}),
            source_host_key: None,
        }),
        Step::Build => Event::ImageReused(ImageReused { image_id: "sha256:1".into(), source_deployment: ID }),
        Step::Deploy => Event::WebContainerStarted(WebContainerStarted {
            container: "web-1".into(),
            host_port: 32768,
            host: String::new(),
            upstreams: vec![],
            warnings: vec![],
        }),
        Step::Release => Event::ReleaseCommandsRan(ReleaseCommandsRan { results: vec![], skipped: false }),
        Step::Processes => Event::ProcessesStarted(ProcessesStarted { containers: vec![] }),
        Step::HealthCheck => Event::HealthCheckPassed(HealthCheckPassed { path: "/".into(), status: 200, attempts: 1, elapsed_ms: 5 }),
        other => panic!("no canned outcome for {other}"),
    }
}

fn dispatched(step: Step) -> Event {
    Event::StepDispatched(StepDispatched { step, command_id: Uuid::now_v7(), attempt: 1, deadline: None, dispatched_at: None })
}

/// Every step passed and the traffic moved; the watch has started.
fn watching() -> Vec<Event> {
    let mut h = Vec::new();
    for step in Step::PIPELINE {
        h.push(dispatched(step));
        h.push(outcome(step));
    }
    h.push(Event::TrafficSwitchRequested(TrafficSwitchRequested {
        route_version: 1,
        upstreams: vec!["127.0.0.1:32768".into()],
        routers: vec![],
        deadline: t(60),
    }));
    h.push(Event::TrafficSwitched(TrafficSwitched { route_version: 1, routers: vec![] }));
    h.push(Event::ReleaseWatchStarted(ReleaseWatchStarted { until: t(120), window_ms: 60_000 }));
    h
}

/// Watched, then succeeded.
fn succeeded() -> Vec<Event> {
    let mut h = watching();
    h.push(Event::ReleaseWatched(ReleaseWatched { watched_ms: 60_000, probes: 60, failed_probes: 0, containers: vec![] }));
    h.push(Event::DeploymentSucceeded(DeploymentSucceeded { image_id: "sha256:1".into(), commit: "c0ffee".into() }));
    h
}

/// The build fails; the verdict is recorded.
fn build_fails() -> Vec<Event> {
    vec![
        dispatched(Step::CheckServices),
        outcome(Step::CheckServices),
        dispatched(Step::Checkout),
        outcome(Step::Checkout),
        dispatched(Step::Build),
        Event::StepFailed(StepFailed { step: Step::Build, reason: "RUN exited 1".into(), attempt: 1, details: vec![], evidence: None }),
        Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "RUN exited 1".into() }),
    ]
}

/// The watch fails: the route goes back.
fn rolling_back() -> Vec<Event> {
    let mut h = watching();
    h.push(Event::StepFailed(StepFailed { step: Step::Watch, reason: "web exited".into(), attempt: 1, details: vec![], evidence: None }));
    h.push(Event::ReleaseRolledBack(ReleaseRolledBack {
        to: None,
        reason: "web exited".into(),
        details: vec![],
        route_version: 2,
        routers: vec![],
        deadline: t(200),
        router_errors: vec![],
    }));
    h
}

/// Recorded events of one stream from version 1, a second apart.
fn recorded(stream: &str, events: &[Event], actor: &str) -> Vec<RecordedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(n, e)| {
            let meta = Metadata { correlation_id: ID, causation_id: None, actor: actor.into(), trace: None };
            RecordedEvent {
                position: Position { tx: 0, seq: n as i64 + 1 },
                stream: stream.into(),
                version: n as u64 + 1,
                envelope: Envelope::new(Uuid::now_v7(), t(n as i64), stream, e, meta).unwrap(),
                hash: String::new(),
                prev_hash: String::new(),
                recorded_at: t(n as i64),
            }
        })
        .collect()
}

fn history(events: Vec<Event>) -> Vec<RecordedEvent> {
    let mut all = vec![requested(ID, "hello", "test")];
    all.extend(events);
    recorded(&deployment_stream(ID), &all, "cli:ann")
}

/// The deployment rows a fold writes, one per event.
fn rows(folder: &mut Folder, events: &[RecordedEvent]) -> Vec<DeploymentRow> {
    events
        .iter()
        .flat_map(|r| match folder.fold(r) {
            Folded::Changes(changes) => changes,
            other => panic!("{}@{}: {other:?}", r.stream, r.version),
        })
        .map(|c| match c {
            Change::Deployment(row) => row,
            other => panic!("not a deployment row: {other:?}"),
        })
        .collect()
}

#[test]
fn a_deployment_row_follows_status_word_through_the_watch_to_success() {
    let events = history(succeeded());
    let rows = rows(&mut Folder::default(), &events);
    assert_eq!(rows.len(), events.len(), "one row state per event");
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let n = statuses.len();
    // Requested, it waits for its first step; dispatched, it runs.
    assert_eq!(&statuses[..2], ["queued", "running"]);
    assert_eq!(&statuses[n - 3..], ["watching", "running", "succeeded"]);
    let last = rows.last().unwrap();
    assert_eq!((last.commit.as_deref(), last.image.as_deref()), (Some("c0ffee"), Some("sha256:1")));
    assert_eq!((last.actor.as_str(), last.requested_at, last.finished_at), ("cli:ann", t(0), Some(t(n as i64 - 1))));
    assert_eq!((last.project.as_str(), last.environment.as_str(), last.git_ref.as_str()), ("hello", "test", "main"));
}

#[test]
fn a_failed_step_shows_at_once_and_the_verdict_finishes_the_row() {
    let rows = rows(&mut Folder::default(), &history(build_fails()));
    let failed = &rows[rows.len() - 2];
    assert_eq!((failed.status.as_str(), failed.finished_at), ("failed", None));
    assert_eq!((failed.failed_step.as_deref(), failed.failed_reason.as_deref()), (Some("build"), Some("RUN exited 1")));
    let last = rows.last().unwrap();
    assert_eq!((last.status.as_str(), last.finished_at.is_some()), ("failed", true));
}

#[test]
fn a_failed_watch_is_rolling_back_with_its_reason() {
    let last = rows(&mut Folder::default(), &history(rolling_back())).pop().unwrap();
    assert_eq!(last.status, "rolling back");
    assert_eq!((last.failed_step.as_deref(), last.failed_reason.as_deref()), (Some("watch"), Some("web exited")));
}

#[test]
fn events_after_the_verdict_change_no_row() {
    let mut all = build_fails();
    all.push(Event::ContainersRemoved(ContainersRemoved { containers: vec!["web-1".into()] }));
    let events = history(all);
    let mut folder = Folder::default();
    rows(&mut folder, &events[..events.len() - 1]);
    assert_eq!(folder.fold(events.last().unwrap()), Folded::Changes(vec![]));
}

#[test]
fn a_folder_that_starts_mid_deployment_asks_for_the_history_then_goes_on() {
    let events = history(succeeded());
    let mut folder = Folder::default();
    let at = &events[5];
    assert_eq!(folder.fold(at), Folded::NeedsHistory { deployment: ID, version: 6 });
    folder.seed(ID, &events[..5]).unwrap();
    let resumed = rows(&mut folder, &events[5..]);
    assert_eq!(resumed.last(), rows(&mut Folder::default(), &events).last());
    // A state older than the event (another writer went further): ask again.
    let mut behind = Folder::default();
    rows(&mut behind, &events[..3]);
    assert!(matches!(behind.fold(&events[6]), Folded::NeedsHistory { version: 7, .. }));
}

#[test]
fn projects_and_serving_releases_come_from_their_streams() {
    let created = Event::ProjectCreated(ProjectCreated {
        name: "hello".into(),
        repository: "file:///srv/hello".into(),
        mirror_of: None,
        environments: vec!["test".into(), "live".into()],
        default_branch: "main".into(),
    });
    let mut folder = Folder::default();
    let Folded::Changes(changes) = folder.fold(&recorded("project-hello", &[created], "cli:ann")[0]) else { panic!() };
    let [Change::Project(p)] = changes.as_slice() else { panic!("{changes:?}") };
    assert_eq!((p.name.as_str(), p.environments.clone(), p.created_at), ("hello", vec!["live".into(), "test".into()], t(0)));

    let finished = |succeeded, dry_run| {
        Event::DeploymentFinished(DeploymentFinished {
            deployment_id: ID,
            succeeded,
            containers: vec![],
            upstreams: vec![],
            dry_run,
            host: String::new(),
        })
    };
    let env = recorded("environment-hello-test", &[finished(true, false), finished(true, true), finished(false, false)], "engine");
    assert_eq!(folder.fold(&env[0]), Folded::Changes(vec![Change::Serving { deployment: ID, since: t(0) }]));
    assert_eq!(folder.fold(&env[1]), Folded::Changes(vec![]), "a dry run serves nothing");
    assert_eq!(folder.fold(&env[2]), Folded::Changes(vec![]));
}

// ---- On both backends ----

async fn postgres() -> (Arc<dyn EventStore>, String) {
    let url = slipway_support::pg_url();
    let schema = format!("t_{}", Uuid::now_v7().simple());
    let options = PgOptions { schema: Some(schema.clone()), max_connections: 8, migrate: true, ..Default::default() };
    let store =
        PgStore::connect(&url, options).await.unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services` first"));
    (Arc::new(store), schema)
}

async fn drop_schema(schema: &str) {
    let url = slipway_support::pg_url();
    if let Ok(pool) = sqlx::PgPool::connect(&url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
    }
}

async fn append(store: &dyn EventStore, stream: &str, events: &[Event]) {
    let meta = || Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "engine".into(), trace: None };
    let envelopes: Vec<Envelope> = events.iter().map(|e| Envelope::new(Uuid::now_v7(), Utc::now(), stream, e, meta()).unwrap()).collect();
    store.append(stream, ExpectedVersion::Any, &envelopes, &[]).await.unwrap().unwrap();
}

async fn deploy(store: &dyn EventStore, project: &str, env: &str) -> Uuid {
    let req = DeployRequest {
        project: project.into(),
        environment: env.into(),
        git_ref: None,
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        dry_run: false,
    };
    requests::request_deployment(store, "cli:ann", req).await.unwrap().unwrap()
}

/// Every row of every read model.
async fn snapshot(store: &dyn EventStore) -> (Vec<String>, Vec<String>, Vec<DeploymentRow>) {
    let models = store.read_models();
    let projects = models.projects(None, 1_000).await.unwrap().iter().map(|p| format!("{p:?}")).collect();
    let environments = models.environments().await.unwrap().iter().map(|e| format!("{e:?}")).collect();
    let deployments = models.deployments(&DeploymentQuery { limit: 1_000, ..Default::default() }).await.unwrap();
    (projects, environments, deployments)
}

async fn live_rows_equal_rebuilt_rows(store_arc: Arc<dyn EventStore>) {
    let store = &*store_arc;
    for name in ["alpha", "beta"] {
        let new = NewProject {
            name: name.into(),
            repository: "file:///srv/app".into(),
            default_branch: "main".into(),
            environments: vec!["test".into(), "live".into()],
            mirror_of: None,
        };
        requests::create_project(store, "cli:ann", new).await.unwrap().unwrap();
    }
    // The engine's subscriber, kept across batches, and reads that catch up on their own.
    let mut live = Projector::default();
    let (good, bad, rolled, watched, queued) = (
        deploy(store, "alpha", "live").await,
        deploy(store, "alpha", "test").await,
        deploy(store, "beta", "live").await,
        deploy(store, "beta", "test").await,
        deploy(store, "beta", "test").await,
    );
    live.catch_up(store).await.unwrap();
    let ok = succeeded();
    append(store, &deployment_stream(good), &ok[..8]).await;
    projector::catch_up(store).await.unwrap(); // a read in between: starts mid-deployment
    append(store, &deployment_stream(good), &ok[8..]).await;
    let finished = DeploymentFinished {
        deployment_id: good,
        succeeded: true,
        containers: vec![],
        upstreams: vec![],
        dry_run: false,
        host: String::new(),
    };
    append(store, &environment_stream("alpha", "live"), &[Event::DeploymentFinished(finished)]).await;
    append(store, &deployment_stream(bad), &build_fails()).await;
    append(store, &deployment_stream(rolled), &rolling_back()).await;
    append(store, &deployment_stream(watched), &watching()).await;
    // Previews come and go on the project's stream.
    let added = |name: &str| {
        Event::EnvironmentAdded(EnvironmentAdded {
            name: name.into(),
            inherits: Some("test".into()),
            preview: None,
            ttl_seconds: None,
            at: t(0),
        })
    };
    let removed =
        Event::EnvironmentRemoved(serde_json::from_value(serde_json::json!({"name": "pr-2", "reason": "pull request #2 closed"})).unwrap());
    append(store, &project_stream("beta"), &[added("pr-1"), added("pr-2"), removed]).await;
    // Two writers race over the same events; each batch lands once.
    let mut other = Projector::default();
    let (a, b) = tokio::join!(live.catch_up(store), other.catch_up(store));
    assert_eq!(a.unwrap(), b.unwrap());
    let before = snapshot(store).await;

    let status = |id: Uuid| before.2.iter().find(|d| d.id == id).map(|d| d.status.clone()).unwrap();
    assert_eq!(
        [good, bad, rolled, watched, queued].map(status),
        ["succeeded", "failed", "rolling back", "watching", "queued"].map(String::from)
    );
    assert_eq!(before.0.len(), 2);
    assert!(before.0.iter().any(|p| p.contains("\"beta\"") && p.contains("pr-1") && !p.contains("pr-2")), "{:?}", before.0);
    assert!(before.1.iter().any(|e| e.contains("\"pr-1\"")) && !before.1.iter().any(|e| e.contains("\"pr-2\"")), "{:?}", before.1);
    assert!(before.1.iter().any(|e| e.contains("\"alpha\"") && e.contains("\"live\"") && e.contains(&good.to_string())), "{:?}", before.1);

    let state = slipway_engine::rebuild::rebuild(store).await.unwrap();
    assert!(state.broken.is_empty(), "{:?}", state.broken);
    assert_eq!(snapshot(store).await, before, "the rebuilt read models equal the live ones, row for row");
    assert_eq!(store.read_models().position().await.unwrap(), projector::catch_up(store).await.unwrap());

    // Pages, newest first, and filters.
    let page = |q: DeploymentQuery| async move {
        projector::deployments(store, &q).await.unwrap().0.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    let beta = |limit, before| DeploymentQuery { project: Some("beta".into()), limit, before, ..Default::default() };
    assert_eq!(page(beta(2, None)).await, vec![queued, watched]);
    assert_eq!(page(beta(2, Some(Before::Deployment(watched)))).await, vec![rolled]);
    let rolled_at = before.2.iter().find(|d| d.id == rolled).unwrap().requested_at;
    assert_eq!(page(beta(5, Some(Before::Time(rolled_at + Duration::microseconds(1))))).await, vec![rolled]);
    let test_env = DeploymentQuery { environment: Some("test".into()), ..beta(5, None) };
    assert_eq!(page(test_env).await, vec![queued, watched]);
    let failed = DeploymentQuery { status: Some("failed".into()), limit: 5, ..Default::default() };
    assert_eq!(page(failed).await, vec![bad]);
    let waiting = DeploymentQuery { status: Some("queued".into()), limit: 5, ..Default::default() };
    assert_eq!(page(waiting).await, vec![queued]);
    // By actor, exactly as recorded, and from a time on.
    let by = |actor: &str| DeploymentQuery { actor: Some(actor.into()), ..beta(5, None) };
    assert_eq!(page(by("cli:ann")).await, vec![queued, watched, rolled]);
    assert_eq!(page(by("cli:bob")).await, Vec::<Uuid>::new());
    let since = DeploymentQuery { since: Some(rolled_at), ..beta(5, None) };
    assert_eq!(page(since).await, vec![queued, watched, rolled]);
    let watched_at = before.2.iter().find(|d| d.id == watched).unwrap().requested_at;
    let range = DeploymentQuery { since: Some(rolled_at), ..beta(5, Some(Before::Time(watched_at))) };
    assert_eq!(page(range).await, vec![rolled], "since .. before is a time range");
    let (projects, _) = projector::projects(store, Some("alpha"), 5).await.unwrap();
    assert_eq!(projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["beta"]);

    // The API answers from the same tables and says from which position.
    let token = requests::issue_token(store, "test", "reader", TokenScope::Read).await.unwrap().unwrap();
    let get = |uri: String| {
        let app = slipway_engine::api::app_with(store_arc.clone(), Default::default());
        let request = Request::get(uri).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
        async move {
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let at = response.headers()[slipway_engine::api::READ_POSITION].to_str().unwrap().to_string();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (at, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        }
    };
    let (at, listed) = get(format!("/api/deployments?project=beta&status=watching&before={queued}")).await;
    assert_eq!(at, store.read_models().position().await.unwrap().to_string());
    assert_eq!(listed.as_array().unwrap().iter().map(|d| d["deployment"].as_str().unwrap()).collect::<Vec<_>>(), [watched.to_string()]);
    let (_, nobody) = get("/api/deployments?actor=cli:bob".into()).await;
    assert_eq!(nobody, serde_json::json!([]));
    let (_, since) = get(format!(
        "/api/deployments?project=beta&actor=cli:ann&since={}",
        rolled_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
    .await;
    assert_eq!(since.as_array().unwrap().len(), 3, "{since}");
    let (_, failed) = get("/api/deployments?status=failed".into()).await;
    assert_eq!(failed[0]["status"], "failed at build: RUN exited 1");
    let (_, projects) = get("/api/projects?after=alpha".into()).await;
    assert_eq!(projects.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect::<Vec<_>>(), ["beta"]);

    // A read sees a write made a moment ago, with no subscriber running.
    let newest = deploy(store, "alpha", "test").await;
    let (rows, at) = projector::deployments(store, &DeploymentQuery { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(rows[0].id, newest);
    assert!(at > Position::START);
}

#[tokio::test]
async fn on_postgres_live_read_models_equal_rebuilt_ones_and_page_by_keyset() {
    let (store, schema) = postgres().await;
    live_rows_equal_rebuilt_rows(store).await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn on_sqlite_live_read_models_equal_rebuilt_ones_and_page_by_keyset() {
    live_rows_equal_rebuilt_rows(Arc::new(SqliteStore::in_memory().await.unwrap())).await;
}
