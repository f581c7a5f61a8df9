//! A failed step's output — a container's last log lines, a build's or a
//! release command's last output — is kept as a log beside the build and
//! release logs, and the `StepFailed` event names it (`evidence`: path and
//! SHA-256) instead of carrying it. The output is the app's: it can hold
//! anything (a value printed under a name the worker cannot know, a
//! customer's data), and the event log is permanent, exported and
//! hash-chained, so nothing an app printed goes into it. The text is
//! scrubbed of every value the worker resolved before it is written, like
//! the release logs.

use std::path::Path;

use sha2::{Digest, Sha256};
use slipway_proto::command::RunStep;
use slipway_proto::event::{LogRef, StepFailed};
use slipway_proto::Event;

use super::{Runtime, Scrubber, Settings};

/// `event` with a failure's output moved to a log under
/// `<logs>/<deployment>/`; any other event as it is.
pub async fn keep(event: Event, command: &RunStep, settings: &Settings, rt: &Runtime) -> Event {
    match event {
        Event::StepFailed(failed) if !failed.details.is_empty() => Event::StepFailed(kept(failed, command, settings, rt).await),
        other => other,
    }
}

async fn kept(mut failed: StepFailed, command: &RunStep, settings: &Settings, rt: &Runtime) -> StepFailed {
    let name = format!("{}-failed-{}.log", failed.step, failed.attempt);
    let path = rt.logs.join(command.context.deployment_id.to_string()).join(name);
    let scrubber = Scrubber::new(settings);
    let mut text = String::new();
    for line in &failed.details {
        scrubber.scrub_into(line, |piece| text.push_str(piece));
        text.push('\n');
    }
    match write_private(&path, text.as_bytes()).await {
        Ok(()) => {
            failed.details.clear();
            failed.evidence = Some(LogRef { path: path.display().to_string(), sha256: hex::encode(Sha256::digest(text.as_bytes())) });
        }
        // The output stays out of the log either way; the event says why it is missing.
        Err(e) => failed.details = vec![format!("(the step's output could not be kept at {}: {e})", path.display())],
    }
    failed
}

/// Writes `bytes` to `path` readable by its owner only, in a directory
/// made for its owner only; a redelivered step writes the same file again.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        std::io::Write::write_all(&mut file, &bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::Step;

    #[allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking
    #[tokio::test]
    async fn a_failures_output_goes_to_a_private_scrubbed_log_and_the_event_keeps_its_reference() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime { workspaces: dir.path().join("ws"), logs: dir.path().join("logs"), registry: None, pull_base_images: false };
        let command: RunStep = serde_json::from_value(serde_json::json!({
            "step": "health_check", "attempt": 2,
            "context": {"deployment_id": "0190a3c1-0000-7000-8000-0000000000ab", "project": "shop", "environment": "live",
                        "repository": "r", "git_ref": "main"},
        }))
        .unwrap();
        let settings: Settings = [("API_TOKEN".to_string(), "tok-5ecret-42".to_string())].into_iter().collect();
        let failed = StepFailed {
            step: Step::HealthCheck,
            reason: "web container exited with code 1".into(),
            attempt: 2,
            details: vec!["starting".into(), "giving up, token tok-5ecret-42".into()],
            evidence: None,
        };
        let Event::StepFailed(kept) = keep(Event::StepFailed(failed), &command, &settings, &rt).await else { panic!("not a StepFailed") };
        // The event carries no output, only where it is and its digest;
        assert!(kept.details.is_empty(), "{:?}", kept.details);
        let evidence = kept.evidence.unwrap();
        assert!(evidence.path.ends_with("0190a3c1-0000-7000-8000-0000000000ab/health_check-failed-2.log"), "{}", evidence.path);
        // the log holds it scrubbed, for its owner only, and matches the digest.
        let text = std::fs::read_to_string(&evidence.path).unwrap();
        assert_eq!(text, "starting\ngiving up, token ***\n");
        assert_eq!(evidence.sha256, hex::encode(Sha256::digest(text.as_bytes())));
        assert_eq!(std::fs::metadata(&evidence.path).unwrap().permissions().mode() & 0o777, 0o600);
        let parent = Path::new(&evidence.path).parent().unwrap();
        assert_eq!(std::fs::metadata(parent).unwrap().permissions().mode() & 0o777, 0o700);
        // A failure without output, and any other outcome, pass as they are.
        let bare = StepFailed { step: Step::Build, reason: "no Dockerfile".into(), attempt: 1, details: vec![], evidence: None };
        assert_eq!(keep(Event::StepFailed(bare.clone()), &command, &settings, &rt).await, Event::StepFailed(bare));
    }
}
