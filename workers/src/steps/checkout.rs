//! Step::Checkout (seed: "The project's Git repository is checked out"):
//! resolves the deployment's ref to a commit, checks that commit out
//! (detached) into the deployment's own workspace
//! `<workspaces>/<deployment id>`, and records the commit together with the
//! app's `slipway.toml` as it is at that commit, so later steps and replays
//! work from recorded facts rather than from a branch that may have moved.
//!
//! Cloud mode wants a fresh checkout: the clone is built in a staging
//! directory and moved into place whole, so the workspace path holds either
//! nothing or a complete checkout. The one exception is a redelivery of the
//! same deployment's command: a complete, untouched checkout already in its
//! workspace is re-used as it is.

use std::path::{Path, PathBuf};

use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::{AppConfig, FILE_NAME};
use slipway_proto::event::{CheckedOut, StepFailed};
use slipway_proto::{Event, Step};
use uuid::Uuid;

use super::git::{self, SourceError};
use super::git_remote::Access;
use super::{Runtime, Settings};

/// Checks out the deployment's ref; never panics, every failure is a `StepFailed`.
pub async fn run(command: &RunStep, env: &Settings, rt: &Runtime) -> Event {
    let context = command.context.clone();
    let workspaces = rt.workspaces.clone();
    let access = Access::of(&context, env, &workspaces);
    // git2 blocks on disk and network I/O for the whole clone; keep it off the async workers.
    let outcome = tokio::task::spawn_blocking(move || check_out(&context, &workspaces, &access)).await;
    match outcome {
        Ok(Ok(checked_out)) => Event::CheckedOut(checked_out),
        Ok(Err(reason)) => failed(command, reason),
        Err(e) => failed(command, format!("the checkout stopped unexpectedly: {e}")),
    }
}

/// The workspace a deployment's checkout lives in, under `Runtime::workspaces`.
pub fn workspace_of(workspaces: &Path, deployment_id: Uuid) -> PathBuf {
    workspaces.join(deployment_id.to_string())
}

fn failed(command: &RunStep, reason: String) -> Event {
    Event::StepFailed(StepFailed { step: Step::Checkout, reason, attempt: command.attempt, details: vec![], evidence: None })
}

fn check_out(context: &DeploymentContext, workspaces: &Path, access: &Access) -> Result<CheckedOut, String> {
    // Refuse bad input before any directory is created or repository opened.
    git::validate_ref(&context.git_ref).map_err(reason)?;
    git::locate(&context.repository).map_err(reason)?;
    let workspace = workspace_of(workspaces, context.deployment_id);
    let (commit, source_host_key) = match git::completed_checkout(&workspace, &context.git_ref) {
        Some(commit) => (commit, None),
        None => check_out_fresh(context, workspaces, &workspace, access)?,
    };
    let config = read_config(&workspace, &commit)?;
    Ok(CheckedOut { commit, workspace: workspace.display().to_string(), config: config.to_value(), source_host_key })
}

/// Clones into a staging directory next to the workspaces and moves the
/// result into place, replacing whatever an earlier attempt left there.
fn check_out_fresh(
    context: &DeploymentContext,
    workspaces: &Path,
    workspace: &Path,
    access: &Access,
) -> Result<(String, git::MetHostKey), String> {
    let staging = Staging::create(workspaces, context.deployment_id)?;
    let (commit, met) = git::fresh_checkout(&context.repository, &context.git_ref, staging.path(), access).map_err(reason)?;
    // A concurrent delivery of the same command may have finished first; its
    // checkout is as good as ours and a later step may already be reading it.
    if let Some(existing) = git::completed_checkout(workspace, &context.git_ref) {
        return Ok((existing, met));
    }
    staging.move_to(workspace)?;
    Ok((commit, met))
}

/// `slipway.toml` at the checked-out commit; no file means every default.
fn read_config(workspace: &Path, commit: &str) -> Result<AppConfig, String> {
    match git::read_file_in_checkout(workspace, commit, FILE_NAME).map_err(reason)? {
        None => Ok(AppConfig::default()),
        Some(text) => AppConfig::parse(&text, FILE_NAME).map_err(|e| e.to_string()),
    }
}

fn reason(e: SourceError) -> String {
    e.to_string()
}

/// A directory under `<workspaces>/.staging/` that is removed again unless
/// it was moved into place. Its name is unique per attempt, so concurrent
/// deliveries never clone into the same directory.
struct Staging {
    path: PathBuf,
    moved: bool,
}

impl Staging {
    fn create(workspaces: &Path, deployment_id: Uuid) -> Result<Staging, String> {
        let path = workspaces.join(".staging").join(format!("{deployment_id}-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Staging { path, moved: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `workspace` with this checkout. A git working tree holds no
    /// absolute paths of its own, so it can move as a whole.
    fn move_to(mut self, workspace: &Path) -> Result<(), String> {
        remove_if_present(workspace)
            .and_then(|()| std::fs::rename(&self.path, workspace))
            .map_err(|e| format!("cannot move the checkout into {}: {e}", workspace.display()))?;
        self.moved = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.moved {
            // Best effort: a leftover staging directory wastes disk, nothing more.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
