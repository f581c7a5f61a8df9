//! Exports, their offline verification and signed checkpoints against the
//! real PostgreSQL store: an export verifies with no database, a flipped
//! byte is named by stream and version, a project's export verifies on its
//! own, and a stream tail rewritten by a superuser (a valid chain, so the
//! chain verification passes) is caught by an earlier checkpoint.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use common::*;
use futures::TryStreamExt;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{DeploymentRequested, ProjectCreated};
use slipway_proto::{Envelope, Event};
use slipway_store::chain::{self, TamperKind};
use slipway_store::checkpoint::{Builder, Checkpoint, LogCheck, Problem, SecretKey};
use slipway_store::export::{self, ExportReport, ExportWriter, Header, LogRow, ProjectStreams};
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, ExpectedVersion, PgStore, StreamAppend};
use sqlx::{Connection, Executor};
use uuid::Uuid;

fn key() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

/// Every event in global order, once at least `n` are readable (the read
/// stops below transactions still open elsewhere in the cluster).
async fn log(store: &PgStore, n: usize) -> Vec<LogRow> {
    eventually(&format!("{n} events in global order"), Duration::from_secs(20), || async {
        let rows: Vec<LogRow> = export::postgres_log(store).try_collect().await.unwrap();
        (rows.len() >= n).then_some(rows)
    })
    .await
}

fn export_of(rows: &[LogRow], project: Option<&str>, since: Option<chrono::DateTime<Utc>>) -> Vec<u8> {
    let streams = project.map(|p| {
        let mut streams = ProjectStreams::new(p);
        rows.iter().for_each(|r| streams.consider(&r.stream, r.version, &r.body));
        streams.finish()
    });
    let header = Header {
        slipway_export: export::FORMAT.into(),
        exported_at: Utc::now().to_rfc3339(),
        backend: "postgres".into(),
        project: project.map(Into::into),
        since: since.map(|t| t.to_rfc3339()),
    };
    let mut writer = ExportWriter::new(Vec::new(), &header).unwrap();
    for row in rows {
        if streams.as_ref().is_none_or(|s| s.contains(&row.stream)) && since.is_none_or(|t| row.recorded_at >= t) {
            writer.event(row).unwrap();
        }
    }
    writer.finish().unwrap().0
}

fn verify(bytes: &[u8], checkpoints: Option<Vec<Checkpoint>>) -> ExportReport {
    export::verify(|| Ok(bytes), checkpoints).unwrap()
}

fn checkpoint(rows: &[LogRow], previous: Option<&Checkpoint>) -> Checkpoint {
    let mut builder = Builder::new(previous);
    rows.iter().for_each(|r| builder.push(r.position, &r.stream, r.version, &r.hash));
    let c = builder.finish(Utc::now().to_rfc3339(), &key()).unwrap();
    c.check_signature(Some(&key().public())).unwrap();
    c
}

fn check(rows: &[LogRow], checkpoints: Vec<Checkpoint>) -> Vec<slipway_store::checkpoint::CheckpointReport> {
    let mut check = LogCheck::new(checkpoints);
    rows.iter().for_each(|r| check.push(r.position, &r.stream, r.version, &r.hash));
    check.finish()
}

fn envelope(stream: &str, event: &Event) -> Envelope {
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "test".into(), trace: None };
    Envelope::new(Uuid::now_v7(), Utc::now(), stream, event, meta).unwrap()
}

fn project_created(name: &str) -> Envelope {
    let event = Event::ProjectCreated(ProjectCreated {
        name: name.into(),
        repository: "file:///srv/git/app.git".into(),
        mirror_of: None,
        environments: vec!["prod".into()],
        default_branch: "main".into(),
    });
    envelope(&format!("project-{name}"), &event)
}

fn deployment_requested(stream: &str, project: &str) -> Envelope {
    let payload = serde_json::json!({
        "deployment_id": Uuid::now_v7(), "project": project, "environment": "prod",
        "repository": "file:///srv/git/app.git", "git_ref": "main", "mode": "cloud"
    });
    let event = Event::DeploymentRequested(serde_json::from_value::<DeploymentRequested>(payload).unwrap());
    envelope(stream, &event)
}

/// Two projects whose names share a prefix (`a` and `a-b`), their
/// environments and deployments, and streams of no project; some appended
/// together in one transaction. Returns the number of events.
async fn two_projects(store: &PgStore) -> usize {
    let mut n = 0;
    for project in ["a", "a-b"] {
        let stream = format!("project-{project}");
        let mut events = vec![project_created(project)];
        events.extend(common::events(&stream, 0..2));
        n += events.len();
        store.append(&stream, ExpectedVersion::NoStream, &events, &[]).await.unwrap().unwrap();
    }
    for (deployment, project) in [("deployment-1", "a"), ("deployment-2", "a-b"), ("deployment-3", "a")] {
        let mut d = vec![deployment_requested(deployment, project)];
        d.extend(common::events(deployment, 0..3));
        let env = format!("environment-{project}-prod");
        let e = common::events(&env, 0..2);
        let routes = common::events("routes", 0..1);
        let appends = [
            StreamAppend { stream: deployment, expected: ExpectedVersion::NoStream, events: &d },
            StreamAppend { stream: &env, expected: ExpectedVersion::Any, events: &e },
            StreamAppend { stream: "routes", expected: ExpectedVersion::Any, events: &routes },
        ];
        store.append_streams(&appends, &[]).await.unwrap().unwrap();
        n += d.len() + e.len() + routes.len();
    }
    n
}

#[tokio::test]
async fn postgres_an_export_verifies_offline() {
    let (store, schema) = pg_store().await;
    let n = two_projects(&store).await;
    let rows = log(&store, n).await;
    let bytes = export_of(&rows, None, None);
    let report = verify(&bytes, None);
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events, report.streams), (n as u64, 8));
    // The export carries the stored bytes: every line's body is the table's.
    let stored: Vec<String> = sqlx::query_scalar("SELECT body FROM events ORDER BY tx, position").fetch_all(store.pool()).await.unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let exported: Vec<String> =
        text.lines().filter_map(|l| serde_json::from_str::<export::Line>(l).ok().map(|line| line.body.into_owned())).collect();
    assert_eq!(exported, stored);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn postgres_a_flipped_byte_in_an_export_is_named_by_stream_and_version() {
    let (store, schema) = pg_store().await;
    let n = two_projects(&store).await;
    let bytes = export_of(&log(&store, n).await, None, None);
    let text = String::from_utf8(bytes.clone()).unwrap();
    let (line_start, line) = text
        .lines()
        .scan(0, |at, l| {
            let start = *at;
            *at += l.len() + 1;
            Some((start, l))
        })
        .find(|(_, l)| l.starts_with("{\"stream\":\"deployment-3\",\"version\":2,"))
        .unwrap();

    // A byte of the event's body ("test" -> "tesu" in its actor).
    let mut flipped = bytes.clone();
    flipped[line_start + line.find("\\\"actor\\\":\\\"test").unwrap() + 15] ^= 0x01;
    let report = verify(&flipped, None);
    let found: Vec<_> = report.findings.iter().map(|f| (f.stream.as_str(), f.version, f.kind)).collect();
    assert_eq!(found, [("deployment-3", 2, TamperKind::Changed)], "{report:?}");
    assert!(!report.is_intact());

    // A byte the chain does not cover (the position) is caught by the seal.
    let mut flipped = bytes.clone();
    flipped[line_start + line.find("\"seq\":").unwrap() + 6] ^= 0x01;
    let report = verify(&flipped, None);
    assert!(report.findings.is_empty(), "{report:?}");
    assert!(report.file.iter().any(|p| p.contains("SHA-256")), "{report:?}");
    assert!(!report.is_intact());
    drop_schema(&schema).await;
}

#[tokio::test]
async fn postgres_a_project_export_verifies_on_its_own() {
    let (store, schema) = pg_store().await;
    let n = two_projects(&store).await;
    let rows = log(&store, n).await;
    let bytes = export_of(&rows, Some("a"), None);
    let report = verify(&bytes, None);
    assert!(report.is_intact(), "{report:?}");
    assert!(report.given.is_empty(), "whole streams need nothing taken as given");
    let streams: BTreeSet<String> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<export::Line>(l).ok().map(|line| line.stream.into_owned()))
        .collect();
    let expected: BTreeSet<String> =
        ["deployment-1", "deployment-3", "environment-a-prod", "project-a"].into_iter().map(String::from).collect();
    assert_eq!(streams, expected);

    // From a time on: each stream's first included event is taken as given.
    let since = rows.iter().find(|r| r.stream == "deployment-3").unwrap().recorded_at;
    let report = verify(&export_of(&rows, Some("a"), Some(since)), None);
    assert!(report.is_intact(), "{report:?}");
    let given: Vec<_> = report.given.iter().map(|g| (g.stream.as_str(), g.version)).collect();
    assert_eq!(given, [("environment-a-prod", 3)]);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn postgres_a_rewritten_tail_is_caught_by_a_checkpoint_and_not_by_the_chains() {
    let (store, schema) = pg_store().await;
    let n = two_projects(&store).await;
    let signed = checkpoint(&log(&store, n).await, None);
    assert_eq!(signed.events, n as u64);

    // A superuser deletes the last two events of deployment-1 ...
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.expect("PostgreSQL superuser (scripts/services)");
    admin.execute(format!("SET search_path = \"{schema}\"").as_str()).await.unwrap();
    admin.execute("ALTER TABLE events DISABLE TRIGGER USER").await.unwrap();
    admin.execute("DELETE FROM events WHERE stream = 'deployment-1' AND version >= 3").await.unwrap();
    admin.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_update_delete").await.unwrap();
    admin.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_truncate").await.unwrap();
    admin.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_tokens_need_an_issuer").await.unwrap();
    admin.close().await.unwrap();
    // ... and appends two others in their place, with a valid chain.
    let fresh =
        PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), max_connections: 2, migrate: false, ..Default::default() })
            .await
            .unwrap();
    let forged = common::events("deployment-1", 90..92);
    fresh.append("deployment-1", ExpectedVersion::Exactly(2), &forged, &[]).await.unwrap().unwrap();

    // The chains cannot tell ...
    let chains = chain::verify(&store.chain_rows().await.unwrap());
    assert!(chains.is_intact(), "{chains:?}");
    assert_eq!(chains.events, n as u64);
    // ... the checkpoint can, and names the stream and the first rewritten version.
    let rows = log(&store, n).await;
    let report = &check(&rows, vec![signed.clone()])[0];
    assert!(report.problems.iter().any(|p| matches!(p, Problem::Root { .. })), "{:?}", report.problems);
    let heads: Vec<_> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::Head { stream, version, first_differing, .. } => Some((stream.as_str(), *version, *first_differing)),
            _ => None,
        })
        .collect();
    assert_eq!(heads, [("deployment-1", 4, Some(3))]);

    // So can an export of the rewritten log, offline: chains intact, checkpoint broken.
    let report = verify(&export_of(&rows, None, None), Some(vec![signed.clone()]));
    assert!(report.findings.is_empty() && report.file.is_empty(), "{report:?}");
    assert!(!report.checkpoints.as_ref().unwrap()[0].holds());
    assert!(!report.is_intact());

    // And no new checkpoint is signed over it.
    let mut builder = Builder::new(Some(&signed));
    rows.iter().for_each(|r| builder.push(r.position, &r.stream, r.version, &r.hash));
    assert!(builder.finish(Utc::now().to_rfc3339(), &key()).is_err());
    drop_schema(&schema).await;
}

#[tokio::test]
async fn postgres_an_untampered_log_holds_every_checkpoint() {
    let (store, schema) = pg_store().await;
    let mut n = two_projects(&store).await;
    let first = checkpoint(&log(&store, n).await, None);
    let s = "deployment-1";
    store.append(s, ExpectedVersion::Any, &common::events(s, 10..15), &[]).await.unwrap().unwrap();
    n += 5;
    let second = checkpoint(&log(&store, n).await, Some(&first));
    assert_eq!((second.base, second.events), (first.events, n as u64));
    assert_eq!(second.heads.iter().map(|h| (h.stream.as_str(), h.version)).collect::<Vec<_>>(), [(s, 9)]);
    store.append(s, ExpectedVersion::Any, &common::events(s, 20..22), &[]).await.unwrap().unwrap();
    n += 2;

    let rows = log(&store, n).await;
    let reports = check(&rows, vec![first.clone(), second.clone()]);
    assert!(reports.iter().all(|r| r.holds()), "{reports:?}");
    let report = verify(&export_of(&rows, None, None), Some(vec![first, second]));
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.checkpoints.map(|c| c.len()), Some(2));
    drop_schema(&schema).await;
}
