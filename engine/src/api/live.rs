//! Live progress of one deployment as server-sent events, for the dashboard
//! and any client that would rather not poll: `GET /api/deployments/{id}/stream`
//! sends the events recorded so far, then each new one as it is recorded
//! (`event: deployment-event`, the same JSON as `/events`), the lines the
//! workers append to the deployment's build and release logs (`event: log`,
//! one line of text each), and `event: end` once the deployment is final,
//! then closes. A comment every 15 s keeps proxies from timing it out.
//! A log line goes out before the event that ends the step that wrote it
//! (the build's `ImageBuilt`, the release's `ReleaseCommandsRan`, or the
//! step's failure), so a client printing the stream in order shows it under
//! its step.
//!
//! Each `deployment-event` carries its version as the SSE `id`, so a client
//! whose connection dropped resumes where it was: EventSource sends the last
//! id back as `Last-Event-ID` on its own (the dashboard, which reads the
//! stream with fetch, sends it by hand), and the stream starts after that
//! version instead of at 1. Log lines carry no id (they are lines of files,
//! not recorded events): a resumed stream sends them from the start again,
//! and a client that shows them clears its log when it reconnects.
//!
//! It polls the store from the last version it sent, waking early on the
//! store's wake-up hint, because the hint is only a hint and log files have
//! no hint at all. Logs are files under the workers' `logs` directory, so
//! they stream only where that directory is this process's (`all-in-one`,
//! or a server sharing the workers' data directory): the API learns the data
//! directory from its `ApiConfig` and streams events alone when no log
//! folder exists there.
//!
//! A stream would hold a graceful shutdown open forever, so `serve` hands
//! every stream a `Closing` signal and each ends when it fires.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;
use slipway_proto::event::deployment_stream;
use slipway_proto::{Event, Step};
use slipway_store::EventStore;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use uuid::Uuid;

use super::deployments::{parse_id, EventView};
use super::error::ApiError;
use super::extract::Params;
use super::{ApiResult, Store};
use crate::deployment::{evolve, Deployment, Status};

/// How often the store and the log files are looked at without a wake-up.
const POLL: Duration = Duration::from_millis(250);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// At most this much of one log file is read per poll, so a huge log
/// streams in pieces instead of landing in memory at once.
const READ_CHUNK: u64 = 256 * 1024;
/// A "line" without a newline this long is sent as it is.
const MAX_LINE: usize = 16 * 1024;

/// Fires (turns true) when the server begins its graceful shutdown.
#[derive(Debug, Clone)]
pub struct Closing(pub watch::Receiver<bool>);

/// Ends every live stream of an app when `close` is called.
#[derive(Debug)]
pub(super) struct CloseStreams(watch::Sender<bool>);

impl CloseStreams {
    pub(super) fn close(&self) {
        self.0.send_replace(true);
    }
}

/// `app` with the `Closing` signal its streams watch, and the switch.
pub(super) fn closing(app: axum::Router) -> (CloseStreams, axum::Router) {
    let (tx, rx) = watch::channel(false);
    (CloseStreams(tx), app.layer(Extension(Closing(rx))))
}

/// `GET /api/deployments/{id}/stream[?logs=false]`.
#[utoipa::path(get, path = "/api/deployments/{id}/stream", tag = "deployments",
    summary = "Follow a deployment live (server-sent events)",
    description = "`event: deployment-event` for each recorded event (the JSON of /events), first those recorded so far, \
then each new one; `event: log` for each line of the build and release logs; `event: end` (`{status, step?, reason?}`) \
once the deployment is final, then the stream closes. A `: keep-alive` comment every 15 s. \
Each `deployment-event` carries its version as the SSE `id`: a client that reconnects with `Last-Event-ID: N` gets the \
events after version N (log lines, which carry no id, start over).",
    params(("id" = Uuid, Path, description = "The deployment"),
        ("logs" = Option<bool>, Query, description = "`false` leaves the log lines out"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event version")),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a deployment id, an unknown query, or a `Last-Event-ID` that is not a version"), (status = 404, description = "No such deployment"),
        (status = 429, description = "The token holds as many live streams as it may")))]
// An axum handler takes what it needs as extractors, one argument each.
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    State(store): Store,
    Params(id): Params<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    config: Option<Extension<std::sync::Arc<super::ApiConfig>>>,
    closing: Option<Extension<Closing>>,
    caller: super::Caller,
    Extension(quotas): Extension<std::sync::Arc<super::quota::Quotas>>,
) -> ApiResult<([(HeaderName, &'static str); 1], Sse<impl Stream<Item = Result<SseEvent, Infallible>>>)> {
    // Scope `read`: a token check belongs here, before the 200 goes out
    // (once streaming, a 401 or 403 can no longer be sent).
    let id = parse_id(&id)?;
    let resume_after = last_event_id(&headers)?;
    // The workers' log directory (`<data dir>/logs`): one folder per
    // deployment holding `build.log` and `release-N.log`.
    let logs = if wants_logs(query.as_deref())? { config.map(|Extension(c)| c.data_dir.join("logs")) } else { None };
    if store.stream_version(&deployment_stream(id)).await? == 0 {
        return Err(ApiError::NotFound(format!("no deployment {id}")));
    }
    let follower = Follower {
        wake: store.wakeups(),
        store,
        id,
        next_version: 1,
        resume_after,
        state: None,
        logs: logs.map(|dir| LogTail::new(dir.join(id.to_string()))),
        closing: closing.map(|Extension(Closing(rx))| rx),
        first: true,
        done: false,
    };
    // Held until the stream is dropped: the client went away or it ended.
    let held = quotas.take(&caller.name, super::quota::Long::Stream)?;
    let events = stream::unfold(follower, |mut f| async move { f.next_batch().await.map(|batch| (batch, f)) }).flat_map(stream::iter).map(
        move |event| {
            let _held = &held;
            Ok(event)
        },
    );
    // A buffering reverse proxy (nginx) would hold the events back.
    let unbuffered = [(HeaderName::from_static("x-accel-buffering"), "no")];
    Ok((unbuffered, Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))))
}

/// The version a reconnecting client saw last (`Last-Event-ID`), 0 when
/// it sends none: the stream sends the events after it.
fn last_event_id(headers: &HeaderMap) -> ApiResult<u64> {
    let Some(value) = headers.get("last-event-id") else { return Ok(0) };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "header `Last-Event-ID` is `{}`: expected the version of the last `deployment-event` received (a whole number)",
            text.chars().take(40).collect::<String>()
        ))
    })
}

/// `logs=false` leaves the log lines out: a list of deployments needs only
/// their steps. Anything else in the query is a mistake worth saying.
fn wants_logs(query: Option<&str>) -> ApiResult<bool> {
    let mut logs = true;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        logs = match pair {
            "logs=true" | "logs=1" => true,
            "logs=false" | "logs=0" => false,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query `{other}`: the stream takes only `logs=false` (leave out the log lines)"
                )))
            }
        };
    }
    Ok(logs)
}

/// One client's position in a deployment's stream and its log files.
struct Follower {
    store: Arc<dyn EventStore>,
    wake: watch::Receiver<u64>,
    id: Uuid,
    next_version: u64,
    /// Events up to this version were sent on an earlier connection: they
    /// are folded (to know when the deployment ends) but not sent again.
    resume_after: u64,
    state: Option<Deployment>,
    logs: Option<LogTail>,
    closing: Option<watch::Receiver<bool>>,
    first: bool,
    done: bool,
}

impl Follower {
    /// What happened since the last look, waiting up to `POLL` for it
    /// (except the first time); `None` once the stream should close.
    async fn next_batch(&mut self) -> Option<Vec<SseEvent>> {
        if self.done {
            return None;
        }
        if !std::mem::take(&mut self.first) && !self.pause().await {
            return None;
        }
        let mut batch = Vec::new();
        // Which step each sent event ends (its outcome, or its failure), so
        // that a log's lines go before the end of the step that wrote them.
        let mut ends: Vec<Option<Step>> = Vec::new();
        match self.store.read_stream(&deployment_stream(self.id), self.next_version).await {
            Ok(recorded) => {
                for r in recorded {
                    self.next_version = r.version + 1;
                    let decoded = r.envelope.decode::<Event>();
                    let ended = decoded.as_ref().ok().and_then(ends_step);
                    let folded = decoded
                        .map_err(|e| format!("event {} of deployment {} cannot be decoded: {e}", r.version, self.id))
                        .and_then(|event| evolve(self.state.take(), &event).map_err(|e| e.to_string()));
                    if r.version > self.resume_after {
                        batch.push(deployment_event(EventView::from(r)));
                        ends.push(ended);
                    }
                    match folded {
                        Ok(state) => self.state = Some(state),
                        Err(reason) => return Some(self.fail(batch, format!("{reason}; check the log with `slipway audit verify`"))),
                    }
                }
            }
            // The client reconnects; a stream left open would only repeat it.
            Err(e) => return Some(self.fail(batch, format!("the event store failed: {e}; reconnect to resume"))),
        }
        let finished = self.state.as_ref().filter(|d| d.is_finished());
        if let Some(logs) = &mut self.logs {
            // Workers write a log before they record the outcome, and the
            // events were read first: every line a step wrote before the
            // event that ends it is read now.
            let ended: Vec<Step> = ends.iter().flatten().copied().collect();
            let lines = logs.read(finished.is_some(), &ended).await;
            batch = interleave(batch, &ends, lines);
        }
        if let Some(d) = finished {
            batch.push(end_event(d));
            self.done = true;
        }
        Some(batch)
    }

    /// Waits for a wake-up or `POLL`; false when the server is closing.
    async fn pause(&mut self) -> bool {
        let closing = async {
            match &mut self.closing {
                Some(rx) => {
                    // A dropped sender means the server is gone too.
                    let _ = rx.wait_for(|closing| *closing).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = slipway_store::subscription::wait_for_wakeup(&mut self.wake, POLL) => true,
            _ = closing => false,
        }
    }

    fn fail(&mut self, mut batch: Vec<SseEvent>, message: String) -> Vec<SseEvent> {
        tracing::error!(deployment = %self.id, error = %message, "live stream failed");
        let body = json!({ "error": { "code": "internal", "message": message } });
        batch.push(SseEvent::default().event("error").data(body.to_string()));
        self.done = true;
        batch
    }
}

fn deployment_event(view: EventView) -> SseEvent {
    let event = SseEvent::default().event("deployment-event").id(view.version.to_string());
    match event.json_data(&view) {
        Ok(event) => event,
        // Serialising plain data cannot fail; say so rather than panic.
        Err(e) => SseEvent::default().event("error").data(format!("an event could not be serialised: {e}")),
    }
}

fn log_event(line: String) -> SseEvent {
    SseEvent::default().event("log").data(line)
}

/// The step an event ends, as far as logs go: its outcome, or its failure.
fn ends_step(event: &Event) -> Option<Step> {
    match event {
        Event::StepFailed(f) => Some(f.step),
        Event::DeploymentFailed(f) => Some(f.step),
        other => other.completes_step(),
    }
}

/// The step that writes a log file: `build.log` the build, `release-N.log`
/// the release commands, `STEP-failed-N.log` the failed step it is the
/// evidence of.
fn step_of_log(name: &str) -> Option<Step> {
    match name {
        _ if evidence_of(name).is_some() => evidence_of(name),
        "build.log" => Some(Step::Build),
        _ if name.starts_with("release-") => Some(Step::Release),
        _ => None,
    }
}

/// The step a failure's evidence (`STEP-failed-ATTEMPT.log`) is of.
fn evidence_of(name: &str) -> Option<Step> {
    let (step, attempt) = name.strip_suffix(".log")?.rsplit_once("-failed-")?;
    attempt.parse::<u32>().ok()?;
    step.parse().ok()
}

/// The stream leaves out a failed build's or release's evidence: it is the
/// last lines of the build or release logs the stream already carried. A
/// container's output (a health check's, a start's) is only there, so it
/// goes out, before the failure.
fn streamed(name: &str) -> bool {
    !matches!(evidence_of(name), Some(Step::Build | Step::Release))
}

/// `events` with each log line (`(file, line)`) placed as `placement` says.
fn interleave(events: Vec<SseEvent>, ends: &[Option<Step>], lines: Vec<(String, String)>) -> Vec<SseEvent> {
    let at = placement(ends, lines.iter().map(|(file, _)| file.as_str()));
    let mut before: Vec<Vec<SseEvent>> = (0..=events.len()).map(|_| Vec::new()).collect();
    for ((_, line), i) in lines.into_iter().zip(at) {
        before[i].push(log_event(line));
    }
    let mut slots = before.into_iter();
    let mut out = Vec::new();
    for event in events {
        out.extend(slots.next().into_iter().flatten());
        out.push(event);
    }
    out.extend(slots.flatten());
    out
}

/// For each log line, by the file it came from, the index of the event it
/// goes before: the first event that ends the step writing that file;
/// `ends.len()` (after them all) for a step still running or a file no step
/// claims. Pure.
fn placement<'a>(ends: &[Option<Step>], files: impl Iterator<Item = &'a str>) -> Vec<usize> {
    files
        .map(|file| {
            let step = step_of_log(file);
            ends.iter().position(|e| step.is_some() && *e == step).unwrap_or(ends.len())
        })
        .collect()
}

fn end_event(d: &Deployment) -> SseEvent {
    let body = match &d.status {
        Status::Succeeded => json!({ "status": "succeeded" }),
        Status::Failed { step, reason } => json!({ "status": "failed", "step": step, "reason": reason }),
        // `is_finished` said otherwise; report what the projection holds.
        Status::Running => json!({ "status": "running" }),
    };
    SseEvent::default().event("end").data(body.to_string())
}

/// Where each of a deployment's log files was read up to.
struct LogTail {
    dir: PathBuf,
    files: BTreeMap<String, Lines>,
}

impl LogTail {
    fn new(dir: PathBuf) -> LogTail {
        LogTail { dir, files: BTreeMap::new() }
    }

    /// New complete lines of every `*.log` file, with the file's name, file
    /// by file in name order (`build.log` before `release-0.log`). A file
    /// whose step is in `ended` is read to its end; another at most
    /// `READ_CHUNK` at a time. `flush` also sends what follows the last
    /// newline: the deployment is over, nothing more comes. A folder or file
    /// not there yet is simply not read yet.
    async fn read(&mut self, flush: bool, ended: &[Step]) -> Vec<(String, String)> {
        let mut names = Vec::new();
        if let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") && streamed(&name) {
                    names.push(name);
                }
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let whole = flush || step_of_log(&name).is_some_and(|step| ended.contains(&step));
            let lines = self.files.entry(name.clone()).or_default();
            let mut read = Vec::new();
            loop {
                let chunk = read_from(&self.dir.join(&name), lines.offset).await;
                if chunk.is_empty() {
                    break;
                }
                lines.offset += chunk.len() as u64;
                read.extend(lines.push(&chunk));
                if !whole {
                    break;
                }
            }
            if flush {
                read.extend(lines.flush());
            }
            out.extend(read.into_iter().map(|line| (name.clone(), line)));
        }
        out
    }
}

/// Up to `READ_CHUNK` bytes of `path` from `offset`; nothing on any error
/// (a log being created, rotated away or unreadable is retried next poll).
async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let Ok(mut file) = tokio::fs::File::open(path).await else { return buf };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return buf;
    }
    let _ = file.take(READ_CHUNK).read_to_end(&mut buf).await;
    buf
}

/// Splits bytes arriving in pieces into lines: a line cut by a read waits
/// for its end. Pure, so it is tested without files.
#[derive(Debug, Default)]
struct Lines {
    offset: u64,
    partial: Vec<u8>,
}

impl Lines {
    /// The complete lines in `chunk` (after what was left over), as text fit
    /// for an SSE data field: lossy UTF-8, no carriage returns, blank lines
    /// dropped.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                out.extend(clean(&std::mem::take(&mut self.partial)));
            } else {
                self.partial.push(byte);
                if self.partial.len() >= MAX_LINE {
                    out.extend(clean(&std::mem::take(&mut self.partial)));
                }
            }
        }
        out
    }

    /// What was left after the last newline.
    fn flush(&mut self) -> Option<String> {
        clean(&std::mem::take(&mut self.partial))
    }
}

/// A carriage return cannot travel in an SSE field (it ends the line):
/// a progress line rewritten with `\r` shows its last state.
fn clean(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let last = text.trim_end_matches('\r').rsplit('\r').next().unwrap_or_default();
    (!last.trim().is_empty()).then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_query_only_switches_logs_off() {
        assert!(wants_logs(None).unwrap());
        assert!(wants_logs(Some("")).unwrap());
        assert!(!wants_logs(Some("logs=false")).unwrap());
        assert!(wants_logs(Some("logs=0&logs=1")).unwrap());
        let err = wants_logs(Some("from=3")).unwrap_err().to_string();
        assert!(err.contains("`from=3`") && err.contains("logs=false"), "{err}");
    }

    #[test]
    fn last_event_id_is_a_version_or_nothing() {
        let with = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", v.parse().unwrap_or_else(|_| HeaderValue::from_static("?")));
            last_event_id(&headers)
        };
        assert_eq!(last_event_id(&HeaderMap::new()).ok(), Some(0));
        assert_eq!(with("").ok(), Some(0));
        assert_eq!(with("17").ok(), Some(17));
        let err = with("abc").unwrap_err().to_string();
        assert!(err.contains("Last-Event-ID") && err.contains("`abc`") && err.contains("whole number"), "{err}");
    }

    #[test]
    fn a_line_cut_by_a_read_waits_for_its_end() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"Step 1/4 : FROM scratch\nStep 2/4 : CO"), vec!["Step 1/4 : FROM scratch"]);
        assert_eq!(lines.push(b"PY busybox /bin/busybox\n"), vec!["Step 2/4 : COPY busybox /bin/busybox"]);
        assert_eq!(lines.flush(), None);
    }

    #[test]
    fn blank_lines_and_carriage_returns_do_not_reach_the_client() {
        let mut lines = Lines::default();
        let got = lines.push(b"\n  \r\nwindows line\r\n10%\r50%\r100%\n");
        assert_eq!(got, vec!["windows line", "100%"]);
    }

    #[test]
    fn flush_sends_the_unterminated_tail() {
        let mut lines = Lines::default();
        assert!(lines.push(b"exit 1").is_empty());
        assert_eq!(lines.flush().as_deref(), Some("exit 1"));
        assert_eq!(lines.flush(), None, "flushed once");
    }

    #[test]
    fn an_endless_line_is_sent_in_pieces() {
        let mut lines = Lines::default();
        let got = lines.push(&vec![b'x'; MAX_LINE * 2 + 3]);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(lines.flush().map(|l| l.len()), Some(3));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"caf\xe9\n"), vec!["caf\u{fffd}"]);
    }

    #[test]
    fn a_log_line_goes_before_the_end_of_the_step_that_wrote_it() {
        // dispatched build, built, dispatched deploy, started, dispatched release
        let ends = [None, Some(Step::Build), None, Some(Step::Deploy), None, Some(Step::Release)];
        let files = ["build.log", "build.log", "release-0.log", "release-1.log", "notes.log"];
        assert_eq!(placement(&ends, files.into_iter()), vec![1, 1, 5, 5, 6]);
        // The build still running: its lines after everything read so far.
        assert_eq!(placement(&[None], ["build.log"].into_iter()), vec![1]);
        // A failed build ends the build, too.
        let failed = Event::DeploymentFailed(slipway_proto::event::DeploymentFailed { step: Step::Build, reason: "no".into() });
        assert_eq!(ends_step(&failed), Some(Step::Build));
    }

    #[test]
    fn a_failure_s_evidence_goes_out_only_when_no_log_carried_it() {
        // The release's evidence repeats release-N.log: left out, not read as a release log.
        assert_eq!(evidence_of("release-failed-1.log"), Some(Step::Release));
        assert!(!streamed("release-failed-1.log") && !streamed("build-failed-2.log"));
        // A health check's is the container's output: sent before the check's failure.
        assert!(streamed("health_check-failed-1.log"));
        let ends = [None, Some(Step::Release), None, Some(Step::HealthCheck)];
        assert_eq!(placement(&ends, ["health_check-failed-1.log"].into_iter()), vec![3]);
        // Logs that only look alike are what they were.
        assert_eq!(evidence_of("release-0.log"), None);
        assert_eq!(evidence_of("nosuch-failed-1.log"), None);
        assert!(streamed("release-0.log") && streamed("build.log"));
    }
}
