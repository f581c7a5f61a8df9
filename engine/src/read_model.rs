//! What each event means for the read models (`slipway_store::read_model`),
//! pure and synchronous: `Folder::fold` turns one recorded event into row
//! changes. A deployment's row needs its folded state (`Deployment`, whose
//! `status_word` the row's status is), so the folder keeps the state of the
//! deployments still running; a finished one only remembers the version it
//! finished at (later events — removed containers, a late outcome — change
//! no row). When it lacks a state it asks for the stream's history
//! (`Folded::NeedsHistory`), which the effectful side (`projector`) reads
//! and hands to `seed`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use slipway_proto::{Event, StreamId};
use slipway_store::read_model::{Change, DeploymentRow, ProjectRow};
use slipway_store::RecordedEvent;
use uuid::Uuid;

use crate::deployment::{evolve, Deployment, Status};

/// A running deployment's state with what its row needs beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub deployment: Deployment,
    pub requested_at: DateTime<Utc>,
    pub actor: String,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What one event meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    Changes(Vec<Change>),
    /// The deployment's state before this event is not known: seed it with
    /// the stream's events before `version`, then fold the event again.
    NeedsHistory {
        deployment: Uuid,
        version: u64,
    },
    /// The event cannot be read or cannot follow its stream: no change (a
    /// read model reports, never stalls on, a broken history).
    Unreadable(String),
}

/// The deployments a fold is following.
#[derive(Debug, Default)]
pub struct Folder {
    running: HashMap<Uuid, Tracked>,
    /// Finished (or broken) deployments, with the version that finished them.
    finished: HashMap<Uuid, u64>,
}

impl Folder {
    /// The row changes of `r`, the next event of the log.
    pub fn fold(&mut self, r: &RecordedEvent) -> Folded {
        let kind = r.envelope.message_type.as_str();
        let stream = StreamId::parse(&r.stream);
        if let Some(id) = stream.deployment_id() {
            return self.fold_deployment(id, r);
        }
        let wanted = matches!(
            (kind, &stream),
            ("ProjectCreated" | "EnvironmentAdded" | "EnvironmentRemoved" | "ProjectRemoved", StreamId::Project(_))
                | ("DeploymentFinished", StreamId::Environment(_))
        );
        // The project of a `project-<name>` stream (the only kind the
        // previews' events below are wanted from).
        let project = || stream.project_name().unwrap_or_default().to_string();
        if !wanted {
            return Folded::Changes(Vec::new());
        }
        let event = match r.envelope.decode::<Event>() {
            Ok(event) => event,
            Err(e) => return Folded::Unreadable(format!("{}@{}: {e}", r.stream, r.version)),
        };
        Folded::Changes(match event {
            Event::ProjectCreated(c) => {
                let mut environments = c.environments.clone();
                environments.sort();
                environments.dedup();
                vec![Change::Project(ProjectRow {
                    name: c.name,
                    repository: c.repository,
                    mirror_of: c.mirror_of,
                    default_branch: c.default_branch,
                    environments,
                    created_at: r.recorded_at,
                })]
            }
            Event::DeploymentFinished(f) if f.succeeded && !f.dry_run => {
                vec![Change::Serving { deployment: f.deployment_id, since: r.recorded_at }]
            }
            // Previews come and go on the project's stream.
            Event::EnvironmentAdded(a) => {
                vec![Change::Environment { project: project(), environment: a.name, added: true }]
            }
            Event::EnvironmentRemoved(e) => {
                vec![Change::Environment { project: project(), environment: e.name, added: false }]
            }
            Event::ProjectRemoved(r) => vec![Change::ProjectRemoved { name: r.name }],
            _ => Vec::new(),
        })
    }

    fn fold_deployment(&mut self, id: Uuid, r: &RecordedEvent) -> Folded {
        let before = if r.version == 1 {
            // A stream's first event starts it afresh (also after a reset).
            self.finished.remove(&id);
            None
        } else {
            match (self.running.get(&id), self.finished.get(&id)) {
                (Some(t), _) if t.deployment.version + 1 == r.version => self.running.remove(&id),
                (None, Some(&at)) if at < r.version => return Folded::Changes(Vec::new()),
                _ => return Folded::NeedsHistory { deployment: id, version: r.version },
            }
        };
        match step(before, r) {
            Ok(t) => {
                let row = row(&t);
                self.keep(id, t);
                Folded::Changes(vec![Change::Deployment(row)])
            }
            Err(why) => {
                self.running.remove(&id);
                self.finished.insert(id, r.version);
                Folded::Unreadable(why)
            }
        }
    }

    /// Takes the state of deployment `id` from its events before the one
    /// that asked (`history`, in order from version 1).
    pub fn seed(&mut self, id: Uuid, history: &[RecordedEvent]) -> Result<(), String> {
        self.running.remove(&id);
        self.finished.remove(&id);
        let mut state = None;
        for r in history {
            match step(state, r) {
                Ok(t) => state = Some(t),
                Err(why) => {
                    self.finished.insert(id, r.version);
                    return Err(why);
                }
            }
        }
        match state {
            Some(t) => {
                self.keep(id, t);
                Ok(())
            }
            None => Err(format!("deployment {id} has no history to follow")),
        }
    }

    fn keep(&mut self, id: Uuid, t: Tracked) {
        if t.finished_at.is_some() {
            self.finished.insert(id, t.deployment.version);
        } else {
            self.running.insert(id, t);
        }
    }
}

/// One deployment event applied to its tracked state.
fn step(before: Option<Tracked>, r: &RecordedEvent) -> Result<Tracked, String> {
    let event = r.envelope.decode::<Event>().map_err(|e| format!("{}@{}: {e}", r.stream, r.version))?;
    let verdict = matches!(event, Event::DeploymentSucceeded(_) | Event::DeploymentFailed(_));
    let (state, requested_at, actor, finished_at) = match before {
        Some(t) => (Some(t.deployment), t.requested_at, t.actor, t.finished_at),
        None => (None, r.recorded_at, r.envelope.actor.clone(), None),
    };
    let deployment = evolve(state, &event).map_err(|e| e.to_string())?;
    let finished_at = match finished_at {
        None if verdict => Some(r.recorded_at),
        at => at,
    };
    Ok(Tracked { deployment, requested_at, actor, finished_at })
}

/// A tracked deployment as its row.
pub fn row(t: &Tracked) -> DeploymentRow {
    let d = &t.deployment;
    // No step for one that failed before its first (rejected, cancelled
    // while it waited): naming the step it would have started says it ran.
    let (failed_step, failed_reason) = match &d.status {
        Status::Failed { step, reason } => (d.started().then(|| step.to_string()), Some(reason.clone())),
        _ => (None, None),
    };
    DeploymentRow {
        id: d.id,
        project: d.context.project.clone(),
        environment: d.context.environment.clone(),
        status: d.status_word().into(),
        git_ref: d.context.git_ref.clone(),
        commit: d.context.commit.clone(),
        image: d.context.image_id.clone(),
        actor: t.actor.clone(),
        requested_at: t.requested_at,
        finished_at: t.finished_at,
        failed_step,
        failed_reason,
        rollback_of: d.rollback_of,
        promoted_from: d.promoted_from,
        dry_run: d.context.dry_run,
        replay_of: d.replay_of.as_ref().map(|r| r.deployment_id),
    }
}
