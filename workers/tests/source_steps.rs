//! The source steps against real git repositories and real services:
//! `checkout` (ref resolution, the workspace, the recorded config,
//! idempotent redelivery, refused input) and `check_services` (reading
//! `slipway.toml` at a ref without a checkout, then probing postgres, tcp and
//! http services, never leaking a password). Repositories are made with git2
//! in temp dirs; PostgreSQL is the local one (`SLIPWAY_PG_URL`).

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use git2::{Oid, Repository, RepositoryInitOptions, Signature};
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::event::{CheckedOut, ServicesChecked, StepFailed};
use slipway_proto::{Event, Message, Step};
use slipway_workers::steps::{check_services, checkout, Runtime, Settings};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

// ---------------------------------------------------------------- fixtures

/// A source repository: `main` has two commits, tag `v1` (annotated) marks the first.
struct Source {
    _dir: TempDir,
    path: PathBuf,
    first: String,
    second: String,
}

impl Source {
    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// The standard source: `app.txt` and `slipway.toml` change between the commits.
fn source() -> Result<Source> {
    source_with(&[
        &[("app.txt", "one\n"), ("slipway.toml", "[web]\nport = 8000\n")],
        &[("app.txt", "two\n"), ("slipway.toml", "[web]\nport = 8001\nhealth_path = \"/healthz\"\n")],
    ])
}

/// A source whose commits write the given files, in order, on `main`.
fn source_with(commits: &[&[(&str, &str)]]) -> Result<Source> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("app");
    let repo = Repository::init_opts(&path, RepositoryInitOptions::new().initial_head("main"))?;
    let mut ids = Vec::new();
    for (i, files) in commits.iter().enumerate() {
        ids.push(commit(&repo, &path, files, &format!("commit {i}"))?);
    }
    let first = *ids.first().context("no commits")?;
    let sig = signature()?;
    repo.tag("v1", &repo.find_object(first, None)?, &sig, "release 1", false)?;
    let second = ids.last().context("no commits")?.to_string();
    Ok(Source { _dir: dir, path, first: first.to_string(), second })
}

fn signature() -> Result<Signature<'static>> {
    Ok(Signature::now("Test", "test@example.com")?)
}

fn commit(repo: &Repository, workdir: &Path, files: &[(&str, &str)], message: &str) -> Result<Oid> {
    let mut index = repo.index()?;
    for (name, text) in files {
        std::fs::write(workdir.join(name), text)?;
        index.add_path(Path::new(name))?;
    }
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<_> = parent.iter().collect();
    let sig = signature()?;
    Ok(repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?)
}

/// A source with one commit holding this `slipway.toml`.
fn source_with_config(config: &str) -> Result<Source> {
    source_with(&[&[("slipway.toml", config)]])
}

struct Workspaces {
    _dir: TempDir,
    rt: Runtime,
}

fn runtime() -> Result<Workspaces> {
    let dir = tempfile::tempdir()?;
    let rt = Runtime { workspaces: dir.path().join("workspaces"), logs: dir.path().join("logs"), registry: None, pull_base_images: false };
    Ok(Workspaces { _dir: dir, rt })
}

/// A command as the engine would send it. Built from JSON so that fields the
/// proto gains later take their serde defaults here too.
fn command(step: Step, repository: &str, git_ref: &str) -> RunStep {
    let context = serde_json::json!({
        "deployment_id": Uuid::now_v7(),
        "project": "app",
        "environment": "test",
        "repository": repository,
        "git_ref": git_ref,
    });
    let context: DeploymentContext = serde_json::from_value(context).expect("a valid deployment context");
    RunStep { step, attempt: 1, context }
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
}

fn checked_out(event: Event) -> Result<CheckedOut> {
    match event {
        Event::CheckedOut(done) => Ok(done),
        other => bail!("expected CheckedOut, got {other:?}"),
    }
}

fn step_failed(event: Event, step: Step) -> Result<StepFailed> {
    match event {
        Event::StepFailed(failed) if failed.step == step => Ok(failed),
        other => bail!("expected StepFailed for {step}, got {other:?}"),
    }
}

fn services_checked(event: Event) -> Result<ServicesChecked> {
    match event {
        Event::ServicesChecked(done) => Ok(done),
        other => bail!("expected ServicesChecked, got {other:?}"),
    }
}

async fn run_checkout(repository: &str, git_ref: &str, rt: &Runtime) -> Event {
    checkout::run(&command(Step::Checkout, repository, git_ref), &Settings::new(), rt).await
}

/// Checks out `git_ref` and checks the commit, the file on disk and the recorded config.
async fn assert_checks_out(git_ref: &str, commit: &str, app_txt: &str, port: u16) -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let git_ref = git_ref.replace("{first}", &source.first).replace("{second}", &source.second);
    let done = checked_out(run_checkout(&source.location(), &git_ref, &ws.rt).await)?;
    let expected = if commit == "first" { &source.first } else { &source.second };
    assert_eq!(&done.commit, expected, "ref `{git_ref}`");
    let workspace = Path::new(&done.workspace);
    assert!(workspace.starts_with(&ws.rt.workspaces), "{}", done.workspace);
    assert_eq!(std::fs::read_to_string(workspace.join("app.txt"))?, app_txt);
    let head = Repository::open(workspace)?;
    assert!(head.head_detached()?, "HEAD is detached on the commit");
    assert_eq!(head.head()?.target().map(|o| o.to_string()).as_deref(), Some(expected.as_str()));
    assert_eq!(AppConfig::from_value(&done.config).map_err(anyhow::Error::msg)?.web.port, port);
    Ok(())
}

// ---------------------------------------------------------------- checkout

#[tokio::test]
async fn checkout_by_branch() -> Result<()> {
    assert_checks_out("main", "second", "two\n", 8001).await
}

#[tokio::test]
async fn checkout_by_qualified_branch() -> Result<()> {
    assert_checks_out("refs/heads/main", "second", "two\n", 8001).await
}

#[tokio::test]
async fn checkout_by_annotated_tag() -> Result<()> {
    assert_checks_out("v1", "first", "one\n", 8000).await
}

#[tokio::test]
async fn checkout_by_full_sha() -> Result<()> {
    assert_checks_out("{first}", "first", "one\n", 8000).await
}

#[tokio::test]
async fn checkout_by_short_sha() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let done = checked_out(run_checkout(&source.location(), &source.first[..7], &ws.rt).await)?;
    assert_eq!(done.commit, source.first);
    Ok(())
}

#[tokio::test]
async fn checkout_head() -> Result<()> {
    assert_checks_out("HEAD", "second", "two\n", 8001).await
}

#[tokio::test]
async fn checkout_by_file_url() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let url = format!("file://{}", source.location());
    let done = checked_out(run_checkout(&url, "v1", &ws.rt).await)?;
    assert_eq!(done.commit, source.first);
    Ok(())
}

#[tokio::test]
async fn checkout_records_the_whole_config() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let done = checked_out(run_checkout(&source.location(), "main", &ws.rt).await)?;
    let config = AppConfig::from_value(&done.config).map_err(anyhow::Error::msg)?;
    let expected = AppConfig::parse("[web]\nport = 8001\nhealth_path = \"/healthz\"\n", "slipway.toml")?;
    assert_eq!(config, expected);
    Ok(())
}

#[tokio::test]
async fn checkout_without_slipway_toml_records_the_defaults() -> Result<()> {
    let source = source_with(&[&[("app.txt", "plain\n")]])?;
    let ws = runtime()?;
    let done = checked_out(run_checkout(&source.location(), "main", &ws.rt).await)?;
    assert_eq!(AppConfig::from_value(&done.config).map_err(anyhow::Error::msg)?, AppConfig::default());
    Ok(())
}

#[tokio::test]
async fn a_redelivered_checkout_reuses_the_workspace() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let command = command(Step::Checkout, &source.location(), "main");
    let first = checkout::run(&command, &Settings::new(), &ws.rt).await;
    checked_out(first.clone())?;
    // With the source gone, only the re-use path can succeed.
    std::fs::rename(&source.path, source.path.with_extension("moved"))?;
    let second = checkout::run(&command, &Settings::new(), &ws.rt).await;
    assert_eq!(second, first);
    assert_no_staging_left(&ws.rt)?;
    Ok(())
}

#[tokio::test]
async fn a_touched_workspace_is_replaced_by_a_fresh_checkout() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let command = command(Step::Checkout, &source.location(), "main");
    let first = checked_out(checkout::run(&command, &Settings::new(), &ws.rt).await)?;
    let workspace = Path::new(&first.workspace);
    std::fs::write(workspace.join("stray.txt"), "left by an earlier attempt")?;
    std::fs::write(workspace.join("app.txt"), "edited")?;
    let second = checked_out(checkout::run(&command, &Settings::new(), &ws.rt).await)?;
    assert_eq!(second, first);
    assert!(!workspace.join("stray.txt").exists());
    assert_eq!(std::fs::read_to_string(workspace.join("app.txt"))?, "two\n");
    assert_no_staging_left(&ws.rt)?;
    Ok(())
}

fn assert_no_staging_left(rt: &Runtime) -> Result<()> {
    let staging = rt.workspaces.join(".staging");
    let left: Vec<_> = std::fs::read_dir(&staging)?.collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    Ok(())
}

#[tokio::test]
async fn an_unknown_ref_fails_checkout() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let failed = step_failed(run_checkout(&source.location(), "nope", &ws.rt).await, Step::Checkout)?;
    assert!(failed.reason.starts_with(&format!("ref `nope` not found in {}: deploy a branch", source.location())), "{}", failed.reason);
    assert_eq!(failed.attempt, 1);
    Ok(())
}

#[tokio::test]
async fn an_unknown_sha_fails_checkout() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let failed = step_failed(run_checkout(&source.location(), "deadbeef", &ws.rt).await, Step::Checkout)?;
    assert!(failed.reason.contains("ref `deadbeef` not found"), "{}", failed.reason);
    Ok(())
}

#[tokio::test]
async fn a_ref_that_looks_like_an_option_is_refused_before_git() -> Result<()> {
    let ws = runtime()?;
    // The repository does not exist: the ref must be refused before it is looked at.
    let failed = step_failed(run_checkout("/nonexistent/repo", "--upload-pack=x", &ws.rt).await, Step::Checkout)?;
    assert_eq!(failed.reason, "ref `--upload-pack=x` looks like an option");
    assert!(!ws.rt.workspaces.exists(), "nothing was created");
    Ok(())
}

#[tokio::test]
async fn ranges_whitespace_and_control_characters_are_refused() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    for (git_ref, needle) in [
        ("main..v1", "ref `main..v1` is refused: it contains `..`"),
        ("ma in", "ref `ma in` is refused: it contains whitespace"),
        ("main\nforged line", "ref `main\\nforged line` is refused: it contains a control character"),
        ("", "no ref given"),
    ] {
        let failed = step_failed(run_checkout(&source.location(), git_ref, &ws.rt).await, Step::Checkout)?;
        assert!(failed.reason.starts_with(needle), "{git_ref:?}: {}", failed.reason);
        assert!(!failed.reason.contains('\n'), "{}", failed.reason);
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_repository_fails_checkout() -> Result<()> {
    let ws = runtime()?;
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-repo").display().to_string();
    let failed = step_failed(run_checkout(&missing, "main", &ws.rt).await, Step::Checkout)?;
    assert!(failed.reason.starts_with(&format!("cannot open repository {missing}: ")), "{}", failed.reason);
    // A directory that exists but is no repository.
    let plain = dir.path().display().to_string();
    let failed = step_failed(run_checkout(&plain, "main", &ws.rt).await, Step::Checkout)?;
    assert!(failed.reason.starts_with(&format!("cannot open repository {plain}: ")), "{}", failed.reason);
    Ok(())
}

#[tokio::test]
async fn network_failures_name_the_repository_without_its_credentials() -> Result<()> {
    let ws = runtime()?;
    for (repository, shown) in [
        ("https://no-such-host.invalid/example/app.git", "https://no-such-host.invalid/example/app.git"),
        ("https://x-token:S3cret-token@no-such-host.invalid/example/app.git", "https://***@no-such-host.invalid/example/app.git"),
        ("ssh://git@no-such-host.invalid/example/app.git", "ssh://git@no-such-host.invalid/example/app.git"),
        ("ssh://git:pw@no-such-host.invalid/example/app.git", "ssh://***@no-such-host.invalid/example/app.git"),
        ("git@no-such-host.invalid:example/app.git", "git@no-such-host.invalid:example/app.git"),
    ] {
        let failed = step_failed(run_checkout(repository, "main", &ws.rt).await, Step::Checkout)?;
        assert_eq!(
            failed.reason,
            format!("cannot fetch ref `main` from {shown}: host `no-such-host.invalid` is unknown (DNS); check the repository address")
        );
    }
    // file:// names a local path; another host is refused, not guessed at.
    let failed = step_failed(run_checkout("file://otherhost/srv/app", "main", &ws.rt).await, Step::Checkout)?;
    assert_eq!(
        failed.reason,
        "repository `file://otherhost/srv/app`: file:// URLs name a local path; use https:// or ssh:// for another host"
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_slipway_toml_fails_checkout_naming_the_key() -> Result<()> {
    let source = source_with_config("[web]\nprot = 80\n")?;
    let ws = runtime()?;
    let failed = step_failed(run_checkout(&source.location(), "main", &ws.rt).await, Step::Checkout)?;
    assert!(failed.reason.starts_with("slipway.toml: web.prot: unknown field `prot`"), "{}", failed.reason);
    Ok(())
}

// ---------------------------------------------------------- check_services

async fn run_check(source: &Source, git_ref: &str, env: &Settings) -> Result<Event> {
    let ws = runtime()?;
    Ok(check_services::run(&command(Step::CheckServices, &source.location(), git_ref), env, &ws.rt).await)
}

fn service_config(kind: &str, setting: &str) -> String {
    format!("[services]\nbackend = {{ type = \"{kind}\", env = \"{setting}\", timeout = \"3s\" }}\n")
}

#[tokio::test]
async fn no_services_pass_with_an_empty_list() -> Result<()> {
    let source = source()?;
    let done = services_checked(run_check(&source, "main", &Settings::new()).await?)?;
    assert!(done.services.is_empty());
    Ok(())
}

#[tokio::test]
async fn services_are_read_at_the_requested_ref() -> Result<()> {
    // v1 declares a service whose setting is missing; main declares none.
    let source = source_with(&[&[("slipway.toml", &service_config("tcp", "QUEUE_ADDR"))], &[("slipway.toml", "")]])?;
    services_checked(run_check(&source, "main", &Settings::new()).await?)?;
    let failed = step_failed(run_check(&source, "v1", &Settings::new()).await?, Step::CheckServices)?;
    assert!(failed.reason.contains("QUEUE_ADDR"), "{}", failed.reason);
    Ok(())
}

#[tokio::test]
async fn check_services_fails_on_an_unknown_ref_like_checkout() -> Result<()> {
    let source = source()?;
    let failed = step_failed(run_check(&source, "nope", &Settings::new()).await?, Step::CheckServices)?;
    assert!(failed.reason.starts_with(&format!("ref `nope` not found in {}: deploy a branch", source.location())), "{}", failed.reason);
    let failed = step_failed(run_check(&source, "-x", &Settings::new()).await?, Step::CheckServices)?;
    assert_eq!(failed.reason, "ref `-x` looks like an option");
    Ok(())
}

#[tokio::test]
async fn check_services_fails_on_an_invalid_slipway_toml() -> Result<()> {
    let source = source_with_config("[services]\ndb = { type = \"mysql\", env = \"DB\" }\n")?;
    let failed = step_failed(run_check(&source, "main", &Settings::new()).await?, Step::CheckServices)?;
    assert!(failed.reason.starts_with("slipway.toml: services.db.type: unknown variant `mysql`"), "{}", failed.reason);
    Ok(())
}

#[tokio::test]
async fn a_missing_setting_is_named() -> Result<()> {
    let source = source_with_config("[services]\ndatabase = { type = \"postgres\", env = \"DATABASE_URL\" }\n")?;
    let failed = step_failed(run_check(&source, "main", &Settings::new()).await?, Step::CheckServices)?;
    assert_eq!(failed.reason, "service `database` needs setting DATABASE_URL, which is not set for this environment");
    Ok(())
}

#[tokio::test]
async fn a_listening_tcp_service_passes() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let source = source_with_config(&service_config("tcp", "QUEUE_ADDR"))?;
    let done = services_checked(run_check(&source, "main", &settings(&[("QUEUE_ADDR", &address)])).await?)?;
    assert_eq!(done.services.len(), 1);
    assert_eq!((done.services[0].name.as_str(), done.services[0].kind.as_str()), ("backend", "tcp"));
    Ok(())
}

#[tokio::test]
async fn a_closed_tcp_port_fails_naming_the_service() -> Result<()> {
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?.to_string()
    }; // dropped: nothing listens there now
    let source = source_with_config(&service_config("tcp", "QUEUE_ADDR"))?;
    let failed = step_failed(run_check(&source, "main", &settings(&[("QUEUE_ADDR", &address)])).await?, Step::CheckServices)?;
    assert!(failed.reason.starts_with("service `backend` (tcp) unreachable: "), "{}", failed.reason);
    assert!(failed.reason.contains(&address), "{}", failed.reason);
    assert_eq!(failed.details, vec![failed.reason.clone()]);
    Ok(())
}

/// Serves every connection one canned HTTP response with `status`.
async fn http_server(status: &'static str) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

#[tokio::test]
async fn an_answering_http_service_passes() -> Result<()> {
    let url = http_server("200 OK").await?;
    let source = source_with_config(&service_config("http", "STORAGE_URL"))?;
    let done = services_checked(run_check(&source, "main", &settings(&[("STORAGE_URL", &url)])).await?)?;
    assert_eq!(done.services[0].kind, "http");
    Ok(())
}

#[tokio::test]
async fn an_http_service_answering_500_fails() -> Result<()> {
    let url = http_server("503 Service Unavailable").await?;
    let source = source_with_config(&service_config("http", "STORAGE_URL"))?;
    let failed = step_failed(run_check(&source, "main", &settings(&[("STORAGE_URL", &url)])).await?, Step::CheckServices)?;
    assert!(failed.reason.contains("service `backend` (http) unreachable"), "{}", failed.reason);
    assert!(failed.reason.contains("HTTP 503"), "{}", failed.reason);
    Ok(())
}

use slipway_support::pg_url;

/// `url` with its password replaced.
fn with_password(url: &str, password: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("SLIPWAY_PG_URL is not a URL")?;
    let (userinfo, host) = rest.split_once('@').context("SLIPWAY_PG_URL has no user")?;
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    Ok(format!("{scheme}://{user}:{password}@{host}"))
}

const PG_HINT: &str = "PostgreSQL must run locally for this test: start it with `bash scripts/services` \
                       (or point SLIPWAY_PG_URL at one)";

#[tokio::test]
async fn a_reachable_postgres_passes() -> Result<()> {
    let source = source_with_config("[services]\ndatabase = { type = \"postgres\", env = \"DATABASE_URL\" }\n")?;
    match run_check(&source, "main", &settings(&[("DATABASE_URL", &pg_url())])).await? {
        Event::ServicesChecked(done) => {
            assert_eq!((done.services[0].name.as_str(), done.services[0].kind.as_str()), ("database", "postgres"));
            Ok(())
        }
        other => bail!("{PG_HINT}; the check answered {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_postgres_password_fails_without_leaking_it() -> Result<()> {
    let sentinel = "S3ntinel-pw";
    let url = with_password(&pg_url(), sentinel)?;
    let source = source_with_config("[services]\ndatabase = { type = \"postgres\", env = \"DATABASE_URL\" }\n")?;
    let event = run_check(&source, "main", &settings(&[("DATABASE_URL", &url)])).await?;
    let json = serde_json::to_string(&event.payload()?)?;
    assert!(!json.contains(sentinel), "the password leaked: {json}");
    let failed = step_failed(event, Step::CheckServices)?;
    assert!(failed.reason.starts_with("service `database` (postgres) unreachable: "), "{}", failed.reason);
    assert!(failed.reason.contains(":***@"), "the URL is shown redacted: {}", failed.reason);
    assert!(failed.reason.contains("password authentication failed"), "{PG_HINT}; got: {}", failed.reason);
    Ok(())
}

#[tokio::test]
async fn a_malformed_postgres_url_does_not_leak_its_password() -> Result<()> {
    let sentinel = "S3ntinel-pw";
    let source = source_with_config("[services]\ndatabase = { type = \"postgres\", env = \"DATABASE_URL\" }\n")?;
    for url in [
        format!("postgres://slipway:{sentinel}@127.0.0.1:notaport/slipway"),
        format!("postgres://127.0.0.1:1/slipway?user=slipway&password={sentinel}"),
        "postgres://slipway:S3ntinel%2Dpw@127.0.0.1:1/slipway".to_string(),
    ] {
        let event = run_check(&source, "main", &settings(&[("DATABASE_URL", &url)])).await?;
        let json = serde_json::to_string(&event.payload()?)?;
        assert!(!json.contains(sentinel) && !json.contains("S3ntinel%2Dpw"), "the password leaked: {json}");
        step_failed(event, Step::CheckServices)?;
    }
    Ok(())
}

#[test]
fn urls_are_redacted() {
    use check_services::{redact_secrets, redact_url};
    assert_eq!(redact_url("postgres://user:pw@host/db"), "postgres://user:***@host/db");
    assert_eq!(redact_url("postgres://user@host/db"), "postgres://user@host/db");
    assert_eq!(redact_url("postgres://h/db?user=u&password=pw&x=1"), "postgres://h/db?user=u&password=***&x=1");
    assert_eq!(redact_url("127.0.0.1:5432"), "127.0.0.1:5432");
    assert_eq!(redact_secrets("auth failed for pw and p%40w", "postgres://u:p%40w@h/db"), "auth failed for pw and ***");
    assert_eq!(redact_secrets("echo: p@w", "postgres://u:p%40w@h/db"), "echo: ***");
}

/// Every failure above is an event; none of the helpers may leave a
/// half-made workspace behind when the step fails.
#[tokio::test]
async fn a_failed_checkout_leaves_no_workspace() -> Result<()> {
    let source = source()?;
    let ws = runtime()?;
    let command = command(Step::Checkout, &source.location(), "nope");
    step_failed(checkout::run(&command, &Settings::new(), &ws.rt).await, Step::Checkout)?;
    assert!(!checkout::workspace_of(&ws.rt.workspaces, command.context.deployment_id).exists());
    assert_no_staging_left(&ws.rt)?;
    Ok(())
}

#[tokio::test]
async fn a_bare_repository_checks_out() -> Result<()> {
    let source = source()?;
    let dir = tempfile::tempdir()?;
    let bare_path = dir.path().join("app.git");
    let bare = Repository::init_bare(&bare_path)?;
    let url = bare_path.to_str().context("temp path is not UTF-8")?;
    Repository::open(&source.path)?.remote_anonymous(url)?.push(&["refs/heads/main:refs/heads/main"], None)?;
    bare.set_head("refs/heads/main")?;
    let ws = runtime()?;
    let done = checked_out(run_checkout(url, "HEAD", &ws.rt).await)?;
    assert_eq!(done.commit, source.second);
    Ok(())
}

#[tokio::test]
async fn an_empty_repository_has_no_head() -> Result<()> {
    let dir = tempfile::tempdir()?;
    Repository::init(dir.path())?;
    let ws = runtime()?;
    let location = dir.path().display().to_string();
    let failed = step_failed(run_checkout(&location, "HEAD", &ws.rt).await, Step::Checkout)?;
    assert!(failed.reason.starts_with(&format!("ref `HEAD` not found in {location}: ")), "{}", failed.reason);
    Ok(())
}

#[tokio::test]
async fn a_silent_service_fails_within_its_timeout() -> Result<()> {
    // The kernel accepts the connection; nobody ever answers the request.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let source = source_with_config("[services]\nslow = { type = \"http\", env = \"SLOW_URL\", timeout = \"300ms\" }\n")?;
    let started = std::time::Instant::now();
    let failed = step_failed(run_check(&source, "main", &settings(&[("SLOW_URL", &url)])).await?, Step::CheckServices)?;
    assert_eq!(failed.reason, "service `slow` (http) unreachable: no answer within 300 ms");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}", started.elapsed());
    drop(listener);
    Ok(())
}
