//! The audit verbs: `slipway export` (the log as JSON Lines), `slipway audit
//! verify` (the database's hash chains, or an export offline, and signed
//! checkpoints), `slipway audit checkpoint` and `slipway audit keygen`.
//! They run before the shared store is opened: `verify --file` must work
//! with no database at all, and the others read the raw rows in global order,
//! which needs the concrete backend. The formats and rules live in
//! `slipway_store::{export, checkpoint, merkle}`; this module does the I/O.
//!
//! To checkpoint periodically, run `slipway audit checkpoint` from cron or a
//! systemd timer (see `slipway_store::checkpoint`): each run writes one file
//! when the log grew, and refuses to sign a log that no longer matches the
//! previous checkpoint.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use rand::RngCore;
use slipway_store::chain::ChainRow;

use slipway_store::checkpoint::{Builder, Checkpoint, CheckpointReport, Problem, PublicKey, SecretKey};
use slipway_store::export::{self, ExportReport, LogRow};
use slipway_store::postgres::redact_url;
use slipway_store::{EventStore, PgStore, SqliteStore, StoreError};

use crate::exit::{coded, Exit};

#[derive(Args)]
pub struct ExportArgs {
    /// Only this project's streams: project-P, its environments' streams and
    /// the deployments that name it (each stream complete, so it verifies
    /// from its first event).
    #[arg(long)]
    project: Option<String>,
    /// Only events recorded at or after this time (RFC 3339, e.g.
    /// 2025-01-31T00:00:00Z); each stream's first included event's
    /// prev_hash is then taken as given.
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check every stream's hash chain and report each changed, removed or
    /// reordered event: in the database, or offline in an export (--file,
    /// no database is opened); with --checkpoints also every signed checkpoint.
    Verify {
        /// Verify this export (from `slipway export`) instead of the database.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Also check every checkpoint (*.json) in this directory: its
        /// signature, and that the log's first N events still hash to its root.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The public key (file from `audit keygen`) every checkpoint must be
        /// signed with; without it each is checked against the key it names.
        #[arg(long, requires = "checkpoints")]
        public_key: Option<PathBuf>,
    },
    /// Sign a checkpoint (the Merkle root of every event so far) into DIR,
    /// outside the database; with --every, keep signing on that schedule
    /// (run it on a host that is not the database's, where the key stays).
    Checkpoint {
        /// The signing key (from `audit keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The directory of checkpoints (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Keep running: sign a checkpoint every SECONDS (one with no new
        /// events writes nothing); a failed round is reported and retried
        /// at the next.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        every: Option<u64>,
    },
    /// Create an Ed25519 checkpoint key: KEYFILE (mode 0600) and KEYFILE.pub.
    Keygen {
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2025-01-31T00:00:00Z ({e})"))
}

/// The store, as its backend: the raw global-order read is per backend.
enum Db {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Db {
    /// Opens `url` as `connect::store` does, keeping the concrete type.
    async fn open(url: &str, schema: Option<&str>) -> anyhow::Result<Db> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = Path::new(path);
            if !path.exists() {
                bail!("no SQLite store at {}", path.display());
            }
            let store = SqliteStore::open(path).await.with_context(|| format!("opening the SQLite store {}", path.display()))?;
            return Ok(Db::Sqlite(store));
        }
        if crate::connect::is_postgres(url) {
            let store = PgStore::connect(url, crate::connect::runtime_options(schema)).await?;
            return Ok(Db::Postgres(store));
        }
        bail!("--database `{}`: expected sqlite://PATH or postgres://USER:PASSWORD@HOST/DB", redact_url(url))
    }

    fn store(&self) -> &dyn EventStore {
        match self {
            Db::Postgres(s) => s,
            Db::Sqlite(s) => s,
        }
    }

    /// `chain_rows`, streamed.
    fn chains(&self) -> BoxStream<'_, Result<ChainRow, StoreError>> {
        match self {
            Db::Postgres(s) => export::postgres_chains(s),
            Db::Sqlite(s) => export::sqlite_chains(s),
        }
    }

    fn log(&self) -> BoxStream<'_, Result<LogRow, StoreError>> {
        match self {
            Db::Postgres(s) => export::postgres_log(s),
            Db::Sqlite(s) => export::sqlite_log(s),
        }
    }
}

pub async fn export(args: ExportArgs, database: &str, schema: Option<&str>) -> anyhow::Result<ExitCode> {
    let db = Db::open(database, schema).await?;
    if let Some(project) = &args.project {
        if db.store().stream_version(&slipway_proto::event::project_stream(project)).await? == 0 {
            return Err(crate::exit::not_found(format!("no project `{project}`")));
        }
    }
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(File::create(path).map_err(given(|| format!("creating {}", path.display())))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let out = BufWriter::with_capacity(1 << 20, out);
    let (_, events) = export::write_export(db.store(), args.project.as_deref(), args.since, out).await?;
    let to = args.output.as_ref().map_or("standard output".to_string(), |p| p.display().to_string());
    eprintln!("exported {events} events to {to}");
    Ok(ExitCode::SUCCESS)
}

/// What `audit verify` found: printed line by line as text, or gathered
/// into one JSON document with `--json`.
struct Findings {
    json: bool,
    found: serde_json::Map<String, serde_json::Value>,
}

impl Findings {
    fn new(json: bool) -> Findings {
        Findings { json, found: serde_json::Map::new() }
    }

    /// `line` for people; `what` under `key` for `--json`.
    fn add(&mut self, key: &str, line: String, what: String) {
        if self.json {
            let list = self.found.entry(key).or_insert_with(|| serde_json::Value::Array(vec![]));
            if let Some(list) = list.as_array_mut() {
                list.push(what.into());
            }
        } else {
            println!("{line}");
        }
    }

    /// The closing summary; with `--json` the document, with `intact` and the counts.
    fn finish(mut self, summary: String, events: u64, streams: u64, intact: bool) -> anyhow::Result<()> {
        if !self.json {
            println!("{summary}");
            return Ok(());
        }
        self.found.insert("events".into(), events.into());
        self.found.insert("streams".into(), streams.into());
        self.found.insert("intact".into(), intact.into());
        self.found.insert("summary".into(), summary.into());
        println!("{}", serde_json::to_string_pretty(&self.found)?);
        Ok(())
    }
}

pub async fn audit(cmd: AuditCmd, database: &str, schema: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify { file: Some(file), checkpoints, public_key } => {
            let checkpoints = match &checkpoints {
                Some(dir) => Some(load_checkpoints(dir, public_key.as_deref())?),
                None => None,
            };
            verify_file(file, checkpoints, Findings::new(json)).await
        }
        AuditCmd::Verify { file: None, checkpoints, public_key } => {
            let checkpoints = match &checkpoints {
                Some(dir) => Some(load_checkpoints(dir, public_key.as_deref())?),
                None => None,
            };
            verify_database(&Db::open(database, schema).await?, checkpoints, Findings::new(json)).await
        }
        AuditCmd::Checkpoint { key, out, every: None } => checkpoint(&Db::open(database, schema).await?, &key, &out).await,
        AuditCmd::Checkpoint { key, out, every: Some(seconds) } => {
            let db = Db::open(database, schema).await?;
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(seconds));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
                match checkpoint(&db, &key, &out).await {
                    Ok(code) if code == ExitCode::SUCCESS => {}
                    Ok(_) => eprintln!("slipway: this round signed nothing; trying again in {seconds}s"),
                    Err(e) => eprintln!("slipway: checkpoint failed: {e:#}; trying again in {seconds}s"),
                }
            }
        }
        AuditCmd::Keygen { out } => keygen(&out),
    }
}

/// The checkpoints of a directory, each with its file name, and those that
/// could not be trusted (unreadable, bad signature, wrong key).
struct Loaded {
    good: Vec<(String, Checkpoint)>,
    bad: Vec<String>,
    keyed: bool,
}

fn load_checkpoints(dir: &Path, public_key: Option<&Path>) -> anyhow::Result<Loaded> {
    let expected = match public_key {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(given(|| format!("reading the public key {}", path.display())))?;
            Some(PublicKey::parse(&text).map_err(given(|| format!("public key {}", path.display())))?)
        }
        None => None,
    };
    let mut loaded = Loaded { good: vec![], bad: vec![], keyed: expected.is_some() };
    for (name, path) in checkpoint_files(dir)? {
        let checked = fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(Checkpoint::from_json(&text)?))
            .and_then(|c| c.check_signature(expected.as_ref()).map(|()| c).map_err(anyhow::Error::from));
        match checked {
            Ok(c) => loaded.good.push((name, c)),
            Err(e) => loaded.bad.push(format!("{name}: {e:#}")),
        }
    }
    if loaded.good.is_empty() && loaded.bad.is_empty() {
        return Err(coded(Exit::Usage, format!("no checkpoint files (*.json) in {}", dir.display())));
    }
    loaded.good.sort_by_key(|(_, c)| c.events);
    Ok(loaded)
}

fn checkpoint_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(given(|| format!("reading the checkpoint directory {}", dir.display())))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push((path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), path));
        }
    }
    files.sort();
    Ok(files)
}

async fn verify_database(db: &Db, checkpoints: Option<Loaded>, mut out: Findings) -> anyhow::Result<ExitCode> {
    let report = export::verify_chains(db.chains()).await?;
    for finding in &report.findings {
        out.add("tampered", format!("TAMPERED {finding}"), finding.to_string());
    }
    let checked = match checkpoints {
        Some(loaded) => {
            let mut check = slipway_store::checkpoint::LogCheck::new(loaded.good.iter().map(|(_, c)| c.clone()).collect());
            let mut rows = db.log();
            while let Some(row) = rows.try_next().await? {
                check.push(row.position, &row.stream, row.version, &row.hash);
            }
            Some(print_checkpoints(&loaded, &check.finish(), false, &mut out))
        }
        None => None,
    };
    let (checked, checkpoints_hold) = checked.unwrap_or((String::new(), true));
    let verdict = if report.is_intact() {
        "every hash chain is intact".to_string()
    } else {
        format!("{} stream(s) tampered with", report.findings.len())
    };
    let summary = format!("{} events in {} streams checked; {verdict}{checked}", report.events, report.streams);
    let intact = report.is_intact() && checkpoints_hold;
    out.finish(summary, report.events as u64, report.streams as u64, intact)?;
    Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn verify_file(file: PathBuf, checkpoints: Option<Loaded>, mut out: Findings) -> anyhow::Result<ExitCode> {
    let (good, loaded) = match checkpoints {
        Some(loaded) => (Some(loaded.good.iter().map(|(_, c)| c.clone()).collect()), Some(loaded)),
        None => (None, None),
    };
    let path = file.clone();
    let report: ExportReport =
        tokio::task::spawn_blocking(move || export::verify(|| File::open(&path).map(|f| BufReader::with_capacity(1 << 20, f)), good))
            .await?
            .map_err(given(|| format!("reading the export {}", file.display())))?;
    for problem in &report.lines {
        out.add("malformed", format!("MALFORMED {problem}"), problem.to_string());
    }
    for problem in &report.file {
        out.add("file", format!("FILE {problem}"), problem.to_string());
    }
    for finding in &report.findings {
        out.add("tampered", format!("TAMPERED {finding}"), finding.to_string());
    }
    for given in &report.given {
        let what =
            format!("{}@{}: starts after its first event; prev_hash {} taken as given", given.stream, given.version, given.prev_hash);
        out.add("given", format!("GIVEN {what}"), what.clone());
    }
    let (checked, checkpoints_hold) = match (&loaded, &report.checkpoints) {
        (Some(loaded), Some(reports)) => print_checkpoints(loaded, reports, true, &mut out),
        _ => (String::new(), true),
    };
    let scope = match &report.header {
        Some(h) if h.is_partial() => format!(
            " (partial export:{}{})",
            h.project.as_ref().map_or(String::new(), |p| format!(" project {p}")),
            h.since.as_ref().map_or(String::new(), |s| format!(" since {s}"))
        ),
        _ => String::new(),
    };
    let verdict = if report.findings.is_empty() {
        "every hash chain is intact".to_string()
    } else {
        format!("{} stream(s) tampered with", report.findings.len())
    };
    let problems = report.lines.len() + report.file.len();
    let problems = if problems == 0 { String::new() } else { format!("; {problems} problem(s) with the file") };
    let summary = format!("{} events in {} streams checked{scope}; {verdict}{problems}{checked}", report.events, report.streams);
    let intact = report.is_intact() && checkpoints_hold;
    out.finish(summary, report.events as u64, report.streams as u64, intact)?;
    Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints one line per checkpoint (and per problem); returns the summary's
/// tail and whether every checkpoint holds.
/// `of_file`: the log is an export, which may simply be older than a
/// checkpoint (a shorter log then says so too).
fn print_checkpoints(loaded: &Loaded, reports: &[CheckpointReport], of_file: bool, out: &mut Findings) -> (String, bool) {
    for bad in &loaded.bad {
        out.add("checkpoints_broken", format!("CHECKPOINT BROKEN {bad}"), bad.clone());
    }
    let mut broken = loaded.bad.len();
    for ((name, _), report) in loaded.good.iter().zip(reports) {
        let c = &report.checkpoint;
        let what = format!("{name}: {} events up to {}:{}, signed {}", c.events, c.position.tx, c.position.seq, c.created_at);
        if report.holds() {
            out.add("checkpoints_ok", format!("CHECKPOINT ok {what}"), what);
        } else {
            broken += 1;
            let problems: Vec<String> = report
                .problems
                .iter()
                .map(|p| match p {
                    Problem::Shorter { .. } if of_file => format!(
                        "{p}, or the export was made before this checkpoint was signed ({}): verify a newer export, or keep \
                         only the checkpoints signed before it in the directory",
                        c.created_at
                    ),
                    _ => p.to_string(),
                })
                .collect();
            let mut lines = format!("CHECKPOINT BROKEN {what}");
            problems.iter().for_each(|p| lines.push_str(&format!("\n  {p}")));
            out.add("checkpoints_broken", lines, format!("{what}: {}", problems.join("; ")));
        }
    }
    let total = loaded.good.len() + loaded.bad.len();
    let keyed = if loaded.keyed { "" } else { " (signatures checked against the key each file names; pass --public-key to pin it)" };
    if broken == 0 {
        (format!("; {total} checkpoint(s) hold{keyed}"), true)
    } else {
        (format!("; {broken} of {total} checkpoint(s) BROKEN{keyed}"), false)
    }
}

async fn checkpoint(db: &Db, key: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let key_text = fs::read_to_string(key).map_err(given(|| format!("reading the key {}", key.display())))?;
    let secret = SecretKey::parse(&key_text).map_err(given(|| format!("key {}", key.display())))?;
    if fs::metadata(key).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        eprintln!("warning: {} is readable by others; `chmod 600` it", key.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut previous: Option<(String, Checkpoint)> = None;
    for (name, path) in checkpoint_files(dir)? {
        let text = fs::read_to_string(&path)?;
        let c = Checkpoint::from_json(&text).with_context(|| format!("{name} in {}", dir.display()))?;
        c.check_signature(None).with_context(|| format!("{name} in {}", dir.display()))?;
        if previous.as_ref().is_none_or(|(_, p)| c.events > p.events) {
            previous = Some((name, c));
        }
    }
    let mut builder = Builder::new(previous.as_ref().map(|(_, c)| c));
    let mut rows = db.log();
    while let Some(row) = rows.try_next().await? {
        builder.push(row.position, &row.stream, row.version, &row.hash);
    }
    let checkpoint = match builder.finish(now(), &secret) {
        Ok(c) => c,
        Err(refusal) => {
            let name = previous.map(|(n, _)| n).unwrap_or_default();
            eprintln!("slipway: not signed: {refusal} (previous checkpoint {name})");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some((name, p)) = &previous {
        if p.events == checkpoint.events {
            println!("no new events since {name} ({} events); nothing written", p.events);
            return Ok(ExitCode::SUCCESS);
        }
    }
    let name = format!("checkpoint-{:012}.json", checkpoint.events);
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    fs::write(&partial, checkpoint.to_json()).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{}: {} events up to {}:{}, root {}, {} stream head(s), key {}",
        path.display(),
        checkpoint.events,
        checkpoint.position.tx,
        checkpoint.position.seq,
        checkpoint.root,
        checkpoint.heads.len(),
        checkpoint.public_key
    );
    Ok(ExitCode::SUCCESS)
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let secret = SecretKey::from_seed(seed);
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    if public_path.exists() {
        return Err(coded(Exit::Conflict, format!("{} already exists; not overwriting", public_path.display())));
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).map_err(|e| {
        let exit = if e.kind() == std::io::ErrorKind::AlreadyExists { Exit::Conflict } else { Exit::Usage };
        coded(exit, format!("creating {} (it must not exist yet): {e}", out.display()))
    })?;
    file.write_all(secret.to_text().as_bytes())?;
    file.sync_all()?;
    let public = secret.public().to_hex();
    fs::write(&public_path, secret.public().to_text()).with_context(|| format!("writing {}", public_path.display()))?;
    println!("secret key {} (mode 0600), public key {}: {public}", out.display(), public_path.display());
    Ok(ExitCode::SUCCESS)
}

/// A file or key the command was given that cannot be used: bad input
/// (exit status 2), not a finding about the log.
fn given<E: std::fmt::Display>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> anyhow::Error {
    move |e| coded(Exit::Usage, format!("{}: {e}", what()))
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}
