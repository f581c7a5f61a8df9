//! The export format of the event log and its offline verification, with no
//! database: the log as the store reads it raw in global order (bodies as stored, never decoded and re-encoded, so a
//! changed byte stays changed), written as JSON Lines, and checked later with
//! no database by the same chain rules (`chain::verify`) and, for a full
//! export, against signed checkpoints (`checkpoint::LogCheck`).
//!
//! The format (`slipway-export/1`), one JSON object per line:
//!
//! ```text
//! {"slipway_export":"slipway-export/1","exported_at":"...","backend":"postgres","project":null,"since":null}
//! {"stream":"project-shop","version":1,"position":{"tx":812,"seq":1},"recorded_at":"2025-...Z","body":"{\"id\":...}","prev_hash":"000...","hash":"9f8..."}
//! ...one line per event, in global order...
//! {"slipway_export_end":{"events":1234,"sha256":"..."}}
//! ```
//!
//! `body` is the stored JSON text as a string, so its exact bytes survive;
//! the chain hash covers stream, version, body and prev_hash. `position` and
//! `recorded_at` are not in the chain: the end line's SHA-256 over every byte
//! before it (`head -n -1 FILE | sha256sum`) catches a change there (or
//! anywhere), and a missing end line a cut file. Verification hashes it on
//! a second thread. That digest is a seal against accidents, not against someone
//! who rewrites the file: the chains (and checkpoints) are what an attacker
//! cannot recompute without it showing.
//!
//! What a partial export proves: with `project`, whole streams are left out
//! (other projects', the routes and routers streams) and each included
//! stream is complete, so its chain is proved from its genesis. With
//! `since`, an included stream starts at its first event recorded at or
//! after that time; that event's `prev_hash` cannot be checked and is taken
//! as given (the report lists each such stream), and the chain is proved
//! from there on. Checkpoints cover the whole log in order, so only a full
//! export can be checked against them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_proto::{Envelope, Event, StreamId};

use crate::chain::{self, event_hash, ChainRow, Finding, TamperKind, GENESIS};
use crate::checkpoint::{Checkpoint, CheckpointReport, LogCheck, LogPosition};
use crate::Position;

/// The `slipway_export` of the files this code writes and reads.
pub const FORMAT: &str = "slipway-export/1";

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub slipway_export: String,
    pub exported_at: String,
    pub backend: String,
    /// Only this project's streams.
    pub project: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    pub since: Option<String>,
}

impl Header {
    pub fn is_partial(&self) -> bool {
        self.project.is_some() || self.since.is_some()
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line<'a> {
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    pub version: u64,
    pub position: LogPosition,
    #[serde(borrow)]
    pub recorded_at: Cow<'a, str>,
    #[serde(borrow)]
    pub body: Cow<'a, str>,
    #[serde(borrow)]
    pub prev_hash: Cow<'a, str>,
    #[serde(borrow)]
    pub hash: Cow<'a, str>,
}

/// The last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub slipway_export_end: EndFields,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndFields {
    pub events: u64,
    /// SHA-256 of every byte before the end line, hex.
    pub sha256: String,
}

const END_PREFIX: &[u8] = b"{\"slipway_export_end\"";

/// A stored event as it is in the table, body undecoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub position: Position,
    pub stream: String,
    pub version: u64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
    pub recorded_at: DateTime<Utc>,
}

/// Writes an export: the header, then `event` for each row, then `finish`.
#[derive(Debug)]
pub struct ExportWriter<W: Write> {
    out: W,
    digest: Sha256,
    events: u64,
    line: Vec<u8>,
}

impl<W: Write> ExportWriter<W> {
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut writer = ExportWriter { out, digest: Sha256::new(), events: 0, line: Vec::with_capacity(4096) };
        serde_json::to_writer(&mut writer.line, header)?;
        writer.emit()?;
        Ok(writer)
    }

    pub fn event(&mut self, row: &LogRow) -> io::Result<()> {
        let line = Line {
            stream: Cow::Borrowed(&row.stream),
            version: row.version,
            position: row.position.into(),
            recorded_at: Cow::Owned(row.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            body: Cow::Borrowed(&row.body),
            prev_hash: Cow::Borrowed(&row.prev_hash),
            hash: Cow::Borrowed(&row.hash),
        };
        serde_json::to_writer(&mut self.line, &line)?;
        self.events += 1;
        self.emit()
    }

    fn emit(&mut self) -> io::Result<()> {
        self.line.push(b'\n');
        self.digest.update(&self.line);
        self.out.write_all(&self.line)?;
        self.line.clear();
        Ok(())
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// What was written so far, leaving the output empty (a caller that
    /// writes to memory passes it on in chunks).
    pub fn take_output(&mut self) -> W
    where
        W: Default,
    {
        std::mem::take(&mut self.out)
    }

    /// Writes the end line; returns the output and the number of events.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let end = End { slipway_export_end: EndFields { events: self.events, sha256: hex::encode(self.digest.finalize_reset()) } };
        serde_json::to_writer(&mut self.out, &end)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok((self.out, self.events))
    }
}

/// Which streams belong to a project: `project-P`, the environment streams
/// of the environments its `ProjectCreated` names (by prefix when that is
/// unreadable), and every deployment stream whose `DeploymentRequested`
/// names P. Fed every row; only version 1 of a stream decides.
#[derive(Debug)]
pub struct ProjectStreams {
    project: String,
    environments: Option<Vec<String>>,
    candidates: Vec<String>,
    streams: HashSet<String>,
}

impl ProjectStreams {
    pub fn new(project: &str) -> Self {
        ProjectStreams { project: project.into(), environments: None, candidates: vec![], streams: HashSet::new() }
    }

    pub fn consider(&mut self, stream: &str, version: u64, body: &str) {
        if version != 1 {
            return;
        }
        match StreamId::parse(stream) {
            StreamId::Project(name) if name == self.project => {
                self.streams.insert(stream.into());
                if let Some(Event::ProjectCreated(p)) = decode(body) {
                    self.environments = Some(p.environments);
                }
            }
            // The combined name cannot be split: the project's environment
            // list (in `finish`) says which of these are its own.
            StreamId::Environment(combined) if combined.strip_prefix(self.project.as_str()).is_some_and(|s| s.starts_with('-')) => {
                self.candidates.push(stream.into());
            }
            // A deployment's stream is known by its first event, whatever
            // its id looks like (an export is read as written).
            StreamId::Deployment(_) | StreamId::Other(_) => {
                if let Some(Event::DeploymentRequested(r)) = decode(body) {
                    if r.project == self.project {
                        self.streams.insert(stream.into());
                    }
                }
            }
            _ => {}
        }
    }

    pub fn finish(mut self) -> HashSet<String> {
        for stream in self.candidates {
            let own = |e: &String| StreamId::environment(&self.project, e).to_string() == stream;
            if self.environments.as_ref().is_none_or(|envs| envs.iter().any(own)) {
                self.streams.insert(stream);
            }
        }
        self.streams
    }
}

fn decode(body: &str) -> Option<Event> {
    Envelope::from_json(body.as_bytes()).ok()?.decode::<Event>().ok()
}

/// A line that is not what an export holds there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    pub line: u64,
    pub problem: String,
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

/// A stream of a `since` export whose first event's `prev_hash` is taken as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub stream: String,
    pub version: u64,
    pub prev_hash: String,
}

/// What an export proves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub header: Option<Header>,
    pub events: u64,
    pub streams: u64,
    /// The first break of each stream, as `chain::verify` reports it.
    pub findings: Vec<Finding>,
    pub given: Vec<Given>,
    pub lines: Vec<LineProblem>,
    /// Problems of the file as a whole (end line, digest).
    pub file: Vec<String>,
    /// With checkpoints: what the export says about each.
    pub checkpoints: Option<Vec<CheckpointReport>>,
}

impl ExportReport {
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
            && self.lines.is_empty()
            && self.file.is_empty()
            && self.checkpoints.iter().flatten().all(CheckpointReport::holds)
    }
}

/// One stream's chain as the lines go by: checked event by event, so a clean
/// export needs no memory beyond one entry per stream. A stream that does
/// not walk cleanly is read again in full (`Verification::rows`) and judged
/// by `chain::verify`, so its finding is worded as the database's.
#[derive(Debug)]
struct Walk {
    version: u64,
    hash: String,
    broken: bool,
}

/// The first pass over an export. The caller computes the seal (SHA-256
/// of the lines `push_line` says it covers), so that hashing can run on a
/// core of its own (`verify`).
#[derive(Debug)]
pub struct Verifier {
    line: u64,
    header: Option<Header>,
    end: Option<EndFields>,
    events: u64,
    last_position: Option<Position>,
    walks: HashMap<String, Walk>,
    given: Vec<Given>,
    lines: Vec<LineProblem>,
    check: Option<LogCheck>,
}

impl Verifier {
    /// With `checkpoints`, the events are also checked against them.
    pub fn new(checkpoints: Option<Vec<Checkpoint>>) -> Self {
        Verifier {
            line: 0,
            header: None,
            end: None,
            events: 0,
            last_position: None,
            walks: HashMap::new(),
            given: vec![],
            lines: vec![],
            check: checkpoints.map(LogCheck::new),
        }
    }

    fn problem(&mut self, problem: impl Into<String>) {
        self.lines.push(LineProblem { line: self.line, problem: problem.into() });
    }

    /// The next line, with its newline if it has one. Returns whether the
    /// seal covers it (every line but the end line).
    pub fn push_line(&mut self, raw: &[u8]) -> bool {
        self.line += 1;
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        if self.end.is_some() {
            self.problem("after the end line");
            return true;
        }
        if text.starts_with(END_PREFIX) {
            match serde_json::from_slice::<End>(text) {
                // The seal does not cover this line: only its exact text will do.
                Ok(end) if serde_json::to_vec(&end).is_ok_and(|exact| exact == text) && raw.ends_with(b"\n") => {
                    self.end = Some(end.slipway_export_end);
                    return false;
                }
                Ok(_) => self.problem("the end line is not as written (spacing or newline changed)"),
                Err(e) => self.problem(format!("malformed end line: {e}")),
            }
            return true;
        }
        self.read_line(text);
        true
    }

    fn read_line(&mut self, text: &[u8]) {
        if self.line == 1 {
            match serde_json::from_slice::<Header>(text) {
                Ok(header) if header.slipway_export == FORMAT => {
                    self.header = Some(header);
                    return;
                }
                Ok(header) => return self.problem(format!("export format `{}`, expected `{FORMAT}`", header.slipway_export)),
                Err(e) => self.problem(format!("not an export header ({e})")),
            }
        }
        match serde_json::from_slice::<Line>(text) {
            Ok(line) => self.event(&line),
            Err(e) => self.problem(format!("malformed event line: {e}")),
        }
    }

    fn event(&mut self, line: &Line) {
        self.events += 1;
        let position = Position::from(line.position);
        if let Some(last) = self.last_position.filter(|last| position <= *last) {
            self.problem(format!(
                "{}@{} (position {position}) is not after the previous event's {last}: lines out of order",
                line.stream, line.version
            ));
        }
        self.last_position = Some(position);
        if let Some(check) = &mut self.check {
            check.push(position, &line.stream, line.version, &line.hash);
        }
        let consistent = event_hash(&line.prev_hash, &line.stream, line.version, &line.body) == line.hash;
        match self.walks.get_mut(line.stream.as_ref()) {
            Some(walk) if walk.broken => {}
            Some(walk) => {
                if consistent && line.version == walk.version + 1 && line.prev_hash == walk.hash {
                    walk.version = line.version;
                    walk.hash.clear();
                    walk.hash.push_str(&line.hash);
                } else {
                    walk.broken = true;
                }
            }
            None => {
                let since = self.header.as_ref().is_some_and(|h| h.since.is_some());
                let genesis = line.version == 1 && line.prev_hash == GENESIS;
                if since && !genesis && consistent {
                    self.given.push(Given {
                        stream: line.stream.to_string(),
                        version: line.version,
                        prev_hash: line.prev_hash.to_string(),
                    });
                }
                let walk = Walk {
                    version: line.version,
                    hash: line.hash.to_string(),
                    broken: !(consistent && (genesis || since && line.version > 1)),
                };
                self.walks.insert(line.stream.to_string(), walk);
            }
        }
    }

    /// Ends the first pass; `sealed` is the SHA-256 (hex) of the lines
    /// `push_line` said the seal covers.
    pub fn finish(self, sealed: &str) -> Verification {
        let mut file = Vec::new();
        match &self.end {
            Some(end) => {
                if end.events != self.events {
                    file.push(format!("the end line counts {} events, the file holds {}", end.events, self.events));
                }
                if end.sha256 != sealed {
                    file.push("the file's SHA-256 does not match its end line: bytes were changed".into());
                }
            }
            None => file.push("no end line: the export is cut short".into()),
        }
        let filtered = self.header.as_ref().is_none_or(Header::is_partial);
        let checkpoints = match self.check {
            Some(_) if filtered => {
                file.push(
                    "checkpoints cover the whole log: only a full export (no --project, no --since) can be checked against them".into(),
                );
                None
            }
            Some(check) => Some(check.finish()),
            None => None,
        };
        let partial: HashSet<String> = self.given.iter().map(|g| g.stream.clone()).collect();
        let broken = self.walks.iter().filter(|(_, w)| w.broken).map(|(s, _)| (s.clone(), Vec::new())).collect();
        Verification {
            report: ExportReport {
                header: self.header,
                events: self.events,
                streams: self.walks.len() as u64,
                findings: vec![],
                given: self.given,
                lines: self.lines,
                file,
                checkpoints,
            },
            broken,
            partial,
        }
    }
}

/// The first pass's verdict; streams that did not walk cleanly need their
/// rows (a second pass over the same lines) before the report.
#[derive(Debug)]
pub struct Verification {
    report: ExportReport,
    broken: HashMap<String, Vec<ChainRow>>,
    partial: HashSet<String>,
}

impl Verification {
    /// Whether `rows` must be fed the lines again.
    pub fn needs_rows(&self) -> bool {
        !self.broken.is_empty()
    }

    /// A line of the second pass: keeps the rows of broken streams.
    pub fn rows(&mut self, raw: &[u8]) {
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        let Ok(line) = serde_json::from_slice::<Line>(text) else { return };
        if let Some(rows) = self.broken.get_mut(line.stream.as_ref()) {
            rows.push(ChainRow {
                stream: line.stream.into_owned(),
                version: line.version,
                body: line.body.into_owned(),
                prev_hash: line.prev_hash.into_owned(),
                hash: line.hash.into_owned(),
            });
        }
    }

    pub fn report(self) -> ExportReport {
        let mut report = self.report;
        let mut broken: Vec<_> = self.broken.into_iter().collect();
        broken.sort_by(|a, b| a.0.cmp(&b.0));
        for (stream, mut rows) in broken {
            // As the database orders them: by version.
            rows.sort_by_key(|r| r.version);
            let finding =
                if self.partial.contains(&stream) { partial_finding(&rows) } else { chain::verify(&rows).findings.into_iter().next() };
            report.findings.extend(finding);
        }
        report
    }
}

/// `chain::verify` for a stream that starts after its genesis: the first
/// event's `prev_hash` is taken as given, the rest must chain from it.
fn partial_finding(rows: &[ChainRow]) -> Option<Finding> {
    let first = rows.first()?;
    let finding = |row: &ChainRow, kind, detail: String| Finding { stream: row.stream.clone(), version: row.version, kind, detail };
    let mut prev = first.prev_hash.as_str();
    for (i, row) in rows.iter().enumerate() {
        let expected = first.version + i as u64;
        if event_hash(&row.prev_hash, &row.stream, row.version, &row.body) != row.hash {
            return Some(finding(row, TamperKind::Changed, "stored bytes do not match the event's hash".into()));
        }
        if row.version != expected {
            return Some(finding(row, TamperKind::Removed, format!("version {expected} is missing")));
        }
        if row.prev_hash != prev {
            return Some(if rows.iter().any(|r| r.hash == row.prev_hash) {
                finding(row, TamperKind::Reordered, "follows a different event than it was written after".into())
            } else {
                finding(row, TamperKind::Removed, "the event it was written after is missing".into())
            });
        }
        prev = &row.hash;
    }
    None
}

/// Verifies an export read by `open` (called once, or twice when a stream
/// is broken). The seal is hashed on a thread of its own, in blocks, while
/// this one parses and hashes the events.
pub fn verify<R: BufRead>(mut open: impl FnMut() -> io::Result<R>, checkpoints: Option<Vec<Checkpoint>>) -> io::Result<ExportReport> {
    const BLOCK: usize = 1 << 20;
    let mut verifier = Verifier::new(checkpoints);
    let input = open()?;
    let sealed = std::thread::scope(|scope| {
        let (blocks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let hasher = scope.spawn(move || {
            let mut digest = Sha256::new();
            received.iter().for_each(|block| digest.update(&block));
            hex::encode(digest.finalize())
        });
        let mut block = Vec::with_capacity(BLOCK);
        let read = each_line(input, |raw| {
            if verifier.push_line(raw) {
                block.extend_from_slice(raw);
                if block.len() >= BLOCK {
                    // The hasher only stops early by panicking, which `join` reports.
                    let _ = blocks.send(std::mem::replace(&mut block, Vec::with_capacity(BLOCK)));
                }
            }
        });
        let _ = blocks.send(block);
        drop(blocks);
        let sealed = hasher.join().map_err(|_| io::Error::other("the seal's hashing thread panicked"))?;
        read.map(|()| sealed)
    })?;
    let mut verification = verifier.finish(&sealed);
    if verification.needs_rows() {
        each_line(open()?, |raw| verification.rows(raw))?;
    }
    Ok(verification.report())
}

/// Calls `f` with every line (with its newline), without decoding UTF-8.
pub fn each_line(mut input: impl BufRead, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        f(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(streams: &[&str], per: u64) -> Vec<LogRow> {
        let mut prev: HashMap<&str, String> = HashMap::new();
        let mut out = Vec::new();
        for v in 1..=per {
            for s in streams {
                let p = prev.get(s).cloned().unwrap_or_else(|| GENESIS.into());
                let body = format!("{{\"n\":\"{s} {v}\"}}");
                let hash = event_hash(&p, s, v, &body);
                prev.insert(s, hash.clone());
                out.push(LogRow {
                    position: Position { tx: 0, seq: out.len() as i64 + 1 },
                    stream: s.to_string(),
                    version: v,
                    body,
                    prev_hash: p,
                    hash,
                    recorded_at: DateTime::from_timestamp(1_700_000_000 + out.len() as i64, 0).unwrap_or_default(),
                });
            }
        }
        out
    }

    fn header(since: Option<&str>) -> Header {
        Header {
            slipway_export: FORMAT.into(),
            exported_at: "2025-01-01T00:00:00Z".into(),
            backend: "test".into(),
            project: None,
            since: since.map(Into::into),
        }
    }

    fn export(rows: &[LogRow], header: &Header) -> Vec<u8> {
        let mut w = ExportWriter::new(Vec::new(), header).expect("in memory");
        rows.iter().for_each(|r| w.event(r).expect("in memory"));
        w.finish().expect("in memory").0
    }

    fn check(bytes: &[u8]) -> ExportReport {
        verify(|| Ok(bytes), None).expect("in memory")
    }

    #[test]
    fn an_export_verifies() {
        let report = check(&export(&rows(&["a", "b"], 3), &header(None)));
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.events, report.streams), (6, 2));
    }

    #[test]
    fn every_single_flipped_byte_is_found() {
        let bytes = export(&rows(&["a", "b"], 1), &header(None));
        for i in 0..bytes.len() {
            let flips = (0..8).map(|bit| bytes[i] ^ (1 << bit));
            for other in flips.chain(*b" 0\"\\").filter(|b| *b != bytes[i]) {
                let mut flipped = bytes.clone();
                flipped[i] = other;
                assert!(!check(&flipped).is_intact(), "byte {i} as {other:#x} went unnoticed");
            }
        }
    }

    #[test]
    fn a_changed_body_is_named_by_stream_and_version_as_the_database_does() {
        let mut all = rows(&["a", "b"], 3);
        all[3].body = all[3].body.replace("b 2", "b 9");
        let report = check(&export(&all, &header(None)));
        let found: Vec<_> = report.findings.iter().map(|f| (f.stream.as_str(), f.version, f.kind)).collect();
        assert_eq!(found, [("b", 2, TamperKind::Changed)]);
    }

    #[test]
    fn a_removed_line_is_found_even_with_a_fresh_seal() {
        let mut all = rows(&["a", "b"], 3);
        all.remove(2);
        let report = check(&export(&all, &header(None)));
        let found: Vec<_> = report.findings.iter().map(|f| (f.stream.as_str(), f.version, f.kind)).collect();
        assert_eq!(found, [("a", 3, TamperKind::Removed)]);
        assert!(report.file.is_empty() && report.lines.is_empty());
    }

    #[test]
    fn a_since_export_takes_each_streams_first_prev_hash_as_given() {
        let all = rows(&["a", "b"], 4);
        let report = check(&export(&all[2..], &header(Some("2023-11-14T22:13:22Z"))));
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.given.iter().map(|g| (g.stream.as_str(), g.version)).collect::<Vec<_>>(), [("a", 2), ("b", 2)]);
        // Without `since` in the header the same lines are a removal.
        let report = check(&export(&all[2..], &header(None)));
        assert_eq!(report.findings.len(), 2);
        // And a gap after the given start is still found.
        let mut cut = all[2..].to_vec();
        cut.remove(2);
        let report = check(&export(&cut, &header(Some("x"))));
        let found: Vec<_> = report.findings.iter().map(|f| (f.stream.as_str(), f.version, f.kind)).collect();
        assert_eq!(found, [("a", 4, TamperKind::Removed)]);
    }

    #[test]
    fn malformed_and_missing_lines_are_named() {
        let bytes = export(&rows(&["a"], 2), &header(None));
        let text = String::from_utf8(bytes).expect("utf-8");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(2, "{\"stream\":");
        let report = check(format!("{}\n", lines.join("\n")).as_bytes());
        assert_eq!(report.lines.iter().map(|l| l.line).collect::<Vec<_>>(), [3]);
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(check(cut.as_bytes()).file.iter().any(|p| p.contains("cut short")));
    }

    #[test]
    fn lines_out_of_version_order_are_judged_as_the_database_orders_them() {
        let mut all = rows(&["a"], 3);
        all.swap(1, 2);
        all[1].position = Position { tx: 0, seq: 2 };
        all[2].position = Position { tx: 0, seq: 3 };
        assert!(check(&export(&all, &header(None))).is_intact());
    }

    #[test]
    fn lines_swapped_in_the_file_are_named_by_stream_and_version() {
        let bytes = export(&rows(&["a", "b"], 2), &header(None));
        let text = String::from_utf8(bytes).expect("utf-8");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(2, 3);
        let report = check(format!("{}\n", lines.join("\n")).as_bytes());
        let said: Vec<String> = report.lines.iter().map(|l| l.problem.clone()).collect();
        assert!(said.iter().any(|p| p.starts_with("b@1 (position ") && p.ends_with("lines out of order")), "{said:?}");
    }

    #[test]
    fn project_streams_follow_the_events_that_name_the_project() {
        use slipway_proto::envelope::Metadata;
        use slipway_proto::event::{deployment_stream, DeploymentRequested};
        let meta = || Metadata { correlation_id: uuid::Uuid::nil(), causation_id: None, actor: "t".into(), trace: None };
        let body =
            |stream: &str, e: &Event| Envelope::new(uuid::Uuid::now_v7(), Utc::now(), stream, e, meta()).expect("encodable").to_json();
        let created = |name: &str| {
            Event::ProjectCreated(slipway_proto::event::ProjectCreated {
                name: name.into(),
                repository: "r".into(),
                mirror_of: None,
                environments: vec!["prod".into()],
                default_branch: "main".into(),
            })
        };
        let requested = |project: &str| {
            let json = serde_json::json!({
                "deployment_id": uuid::Uuid::nil(), "project": project, "environment": "prod",
                "repository": "r", "git_ref": "main", "mode": "cloud"
            });
            Event::DeploymentRequested(serde_json::from_value::<DeploymentRequested>(json).expect("payload"))
        };
        let mut p = ProjectStreams::new("a");
        p.consider("project-a", 1, &body("project-a", &created("a")));
        p.consider("project-a-b", 1, &body("project-a-b", &created("a-b")));
        p.consider("environment-a-prod", 1, "{}");
        p.consider("environment-a-b-prod", 1, "{}");
        let (d1, d2) = (deployment_stream(uuid::Uuid::from_u128(1)), deployment_stream(uuid::Uuid::from_u128(2)));
        p.consider(&d1, 1, &body(&d1, &requested("a")));
        p.consider(&d2, 1, &body(&d2, &requested("a-b")));
        p.consider(&d2, 2, &body(&d2, &requested("a")));
        p.consider("routes", 1, "{}");
        let mut streams: Vec<_> = p.finish().into_iter().collect();
        streams.sort();
        assert_eq!(streams, [d1.as_str(), "environment-a-prod", "project-a"]);
    }
}
