//! Canned history for the benchmarks that need a long log: whole projects,
//! each created and then given 50 deployments over `test` and `live` that
//! record every step, the switch, the watch and a verdict (1 in 8 fails its
//! build), with their environment queues, appended through the store API
//! (batched, 4 writers) as the engine would have recorded them.
//!
//! Shared by `slipway-bench-reads` (reads on a long log) and
//! `slipway-bench-farm --prefill` (deployments on a long log).

use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use slipway_proto::envelope::Metadata;
use slipway_proto::event::*;
use slipway_proto::{Envelope, Event, Step};
use slipway_store::event_store::StreamAppend;
use slipway_store::{EventStore, ExpectedVersion};
use uuid::Uuid;

pub const DEPLOYMENTS_PER_PROJECT: usize = 50;
const WRITERS: usize = 4;

/// Events one canned project adds to the log.
pub fn events_per_project() -> usize {
    project_events("app-00000").iter().map(|(_, events)| events.len()).sum()
}

/// Appends whole projects (`app-00000`, ...) until about `events` events;
/// returns how many were written.
pub async fn fill(store: &dyn EventStore, events: usize) -> anyhow::Result<usize> {
    let per_project = events_per_project();
    let projects = (events / per_project).max(1);
    let started = Instant::now();
    let writers = (0..WRITERS).map(|writer| async move {
        for p in (writer..projects).step_by(WRITERS) {
            let batch = project_events(&format!("app-{p:05}"));
            let appends: Vec<StreamAppend<'_>> =
                batch.iter().map(|(stream, events)| StreamAppend { stream, expected: ExpectedVersion::NoStream, events }).collect();
            store.append_streams(&appends, &[]).await?.context("unexpected conflict")?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(writers).await?;
    let written = projects * per_project;
    eprintln!("canned history: wrote {written} events at {:.0} ev/s", written as f64 / started.elapsed().as_secs_f64());
    Ok(written)
}

/// One project's streams and events: created, then its deployments, each
/// with its stream and its environment's queue entries.
pub fn project_events(project: &str) -> Vec<(String, Vec<Envelope>)> {
    let mut streams = Vec::new();
    let created = Event::ProjectCreated(ProjectCreated {
        name: project.into(),
        repository: format!("file:///srv/git/{project}.git"),
        mirror_of: None,
        environments: vec!["test".into(), "live".into()],
        default_branch: "main".into(),
    });
    streams.push((project_stream(project), vec![created]));
    let mut queues: [Vec<Event>; 2] = [Vec::new(), Vec::new()];
    for n in 0..DEPLOYMENTS_PER_PROJECT {
        let id = Uuid::now_v7();
        let env = ["test", "live"][n % 2];
        let fails = n % 8 == 5;
        streams.push((deployment_stream(id), deployment_events(id, project, env, fails)));
        let finished = DeploymentFinished {
            deployment_id: id,
            succeeded: !fails,
            containers: vec![],
            upstreams: vec![],
            dry_run: false,
            host: String::new(),
        };
        queues[n % 2].extend([Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: id }), Event::DeploymentFinished(finished)]);
    }
    for (env, events) in ["test", "live"].into_iter().zip(queues) {
        streams.push((environment_stream(project, env), events));
    }
    streams
        .into_iter()
        .map(|(stream, events)| {
            let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "cli:bench".into(), trace: None };
            let envelopes = events
                .iter()
                .map(|e| Envelope::new(Uuid::now_v7(), Utc::now(), stream.as_str(), e, meta.clone()).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            (stream, envelopes)
        })
        .collect()
}

/// A deployment's own stream: every step, the switch, the watch and the
/// verdict; or a failed build.
fn deployment_events(id: Uuid, project: &str, env: &str, fails: bool) -> Vec<Event> {
    let commit = "2f1c0e7a9b4d3c8e6f5a1b0c9d8e7f6a5b4c3d2e";
    let image = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let dispatched =
        |step| Event::StepDispatched(StepDispatched { step, command_id: Uuid::now_v7(), attempt: 1, deadline: None, dispatched_at: None });
    let mut h = vec![Event::DeploymentRequested(DeploymentRequested {
        deployment_id: id,
        project: project.into(),
        environment: env.into(),
        repository: format!("file:///srv/git/{project}.git"),
        git_ref: "refs/heads/main".into(),
        mode: BuildMode::Cloud,
        no_cache: false,
        run_release: true,
        settings: [("DATABASE_URL".to_string(), "fp:3b1f0c9d".to_string())].into(),
        dry_run: false,
        rollback_of: None,
        promoted_from: None,
        replay_of: None,
        source: Default::default(),
    })];
    for step in Step::PIPELINE {
        h.push(dispatched(step));
        if fails && step == Step::Build {
            let reason = "RUN npm ci exited with code 1".to_string();
            h.push(Event::StepFailed(StepFailed { step, reason: reason.clone(), attempt: 1, details: vec![], evidence: None }));
            h.push(Event::DeploymentFailed(DeploymentFailed { step, reason }));
            return h;
        }
        h.push(match step {
            Step::CheckServices => Event::ServicesChecked(ServicesChecked { services: vec![], source_host_key: None }),
            Step::Checkout => Event::CheckedOut(CheckedOut {
                commit: commit.into(),
                workspace: "/var/lib/slipway/w".into(),
                config: serde_json::json!({"web": {"port": 8080}}),
                source_host_key: None,
            }),
            Step::Build => Event::ImageReused(ImageReused { image_id: image.into(), source_deployment: id }),
            Step::Deploy => Event::WebContainerStarted(WebContainerStarted {
                container: format!("slipway-{project}-{env}-web"),
                host_port: 32768,
                host: String::new(),
                upstreams: vec![],
                warnings: vec![],
            }),
            Step::Release => Event::ReleaseCommandsRan(ReleaseCommandsRan { results: vec![], skipped: false }),
            Step::Processes => Event::ProcessesStarted(ProcessesStarted { containers: vec![] }),
            _ => Event::HealthCheckPassed(HealthCheckPassed { path: "/".into(), status: 200, attempts: 2, elapsed_ms: 340 }),
        });
    }
    let until = Utc::now() + chrono::Duration::seconds(60);
    h.extend([
        Event::TrafficSwitchRequested(TrafficSwitchRequested {
            route_version: 1,
            upstreams: vec!["127.0.0.1:32768".into()],
            routers: vec![],
            deadline: until,
        }),
        Event::TrafficSwitched(TrafficSwitched { route_version: 1, routers: vec![] }),
        Event::ReleaseWatchStarted(ReleaseWatchStarted { until, window_ms: 60_000 }),
        dispatched(Step::Watch),
        Event::ReleaseWatched(ReleaseWatched { watched_ms: 60_000, probes: 60, failed_probes: 0, containers: vec![] }),
        Event::DeploymentSucceeded(DeploymentSucceeded { image_id: image.into(), commit: commit.into() }),
    ]);
    h
}
