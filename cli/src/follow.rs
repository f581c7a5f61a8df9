//! Follows one deployment as it happens: prints each event as it is
//! recorded and the build log as it is written, until the deployment ends.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use slipway_proto::event::deployment_stream;
use slipway_proto::{Event, Step};
use slipway_store::EventStore;
use uuid::Uuid;

use crate::render;

/// How a followed deployment ended.
#[derive(Debug, Clone)]
pub struct Ending {
    pub succeeded: bool,
    pub failed_step: Option<Step>,
    pub reason: String,
    pub web_port: Option<u16>,
}

pub async fn follow(
    store: &dyn EventStore,
    id: Uuid,
    logs_dir: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<Ending> {
    let stream = deployment_stream(id);
    let mut wake = store.wakeups();
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut build_log: Option<(PathBuf, u64)> = None;
    let mut web_port = None;
    let mut said_waiting = false;
    loop {
        let mut ending = None;
        for recorded in store.read_stream(&stream, next).await? {
            next = recorded.version + 1;
            println!("{}", render::line(&recorded));
            match recorded.envelope.decode::<Event>() {
                Ok(Event::DeploymentRequested(r)) if !said_waiting => {
                    said_waiting = true;
                    let queue = slipway_engine::load::environment(store, &r.project, &r.environment).await?.queue;
                    if let Some(ahead) = queue.first().filter(|first| **first != id) {
                        let n = queue.iter().position(|d| *d == id).unwrap_or(1);
                        println!("     waiting for deployment {ahead} to finish ({n} ahead in {})", r.environment);
                    }
                }
                Ok(Event::StepDispatched(d)) if d.step == Step::Build => {
                    build_log = logs_dir.map(|dir| (dir.join(id.to_string()).join("build.log"), 0));
                }
                Ok(Event::ImageBuilt(_)) | Ok(Event::ImageReused(_)) => {
                    tail(&mut build_log);
                    build_log = None;
                }
                Ok(Event::WebContainerStarted(w)) => web_port = Some(w.host_port),
                Ok(Event::DeploymentSucceeded(_)) => {
                    ending = Some(Ending { succeeded: true, failed_step: None, reason: String::new(), web_port })
                }
                Ok(Event::DeploymentFailed(f)) => {
                    tail(&mut build_log);
                    ending = Some(Ending { succeeded: false, failed_step: Some(f.step), reason: f.reason, web_port })
                }
                _ => {}
            }
        }
        tail(&mut build_log);
        if let Some(e) = ending {
            return Ok(e);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("deployment {id} did not finish within {timeout:?}; it goes on: see `slipway events {stream}`");
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(100)).await;
    }
}

/// Prints what was added to the build log since the last look.
fn tail(log: &mut Option<(PathBuf, u64)>) {
    let Some((path, offset)) = log.as_mut() else { return };
    let Ok(mut file) = std::fs::File::open(&*path) else { return };
    if file.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut text = String::new();
    if let Ok(n) = file.read_to_string(&mut text) {
        *offset += n as u64;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            println!("     | {line}");
        }
    }
}
