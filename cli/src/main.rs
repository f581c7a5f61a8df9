//! The `slipway` command: the entry point and the dispatch of each verb to
//! the file of its group. The command line itself is `args.rs`; the long-
//! running modes are `processes.rs`, the deployment verbs `deploying.rs`,
//! the project verbs `projects.rs`, the reads `verbs.rs` and `history.rs`,
//! and `--server` goes through `remote.rs`.

mod actor;
mod args;
mod audit;
mod certs;
mod client;
mod connect;
mod deploying;
mod domains;
mod exit;
mod follow;
mod history;
mod machinery;
mod notifications;
mod processes;
mod progress;
mod projects;
mod remote;
mod render;
mod report;
mod secrets;
mod source_args;
mod tokens;
mod verbs;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use args::{Cli, Command, DbCmd, ImagesCmd, ProjectionsCmd};

#[tokio::main]
async fn main() -> ExitCode {
    quiet_when_the_reader_is_gone();
    let cli = Cli::parse();
    // Logs (SLIPWAY_LOG, SLIPWAY_LOG_FORMAT) and traces (OTEL_EXPORTER_OTLP_ENDPOINT);
    // the guard flushes finished spans when main returns.
    let (service, serves) = process_kind(&cli.command);
    let _telemetry = match slipway_telemetry::init(service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("slipway: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(listen), true) = (cli.metrics_listen, serves) {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                eprintln!("slipway: metrics on http://{}/metrics", listener.local_addr().unwrap_or(listen));
                tokio::spawn(slipway_telemetry::serve::serve(listener, std::future::pending()));
            }
            Err(e) => {
                eprintln!("slipway: binding the metrics listener to {listen}: {e}; choose another address with --metrics-listen");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slipway: {}", error_text(&e));
            exit::code_of(&e).into()
        }
    }
}

/// The service name traces give this process, and whether it is a
/// long-running mode (which serves `--metrics-listen`).
fn process_kind(command: &Command) -> (&'static str, bool) {
    match command {
        Command::Server(_) => ("slipway-server", true),
        Command::Worker { .. } => ("slipway-worker", true),
        Command::Router(_) => ("slipway-router", true),
        Command::AllInOne { .. } => ("slipway", true),
        _ => ("slipway-cli", false),
    }
}

/// Whether `command` may make the embedded store where there is none: the
/// processes, and the verbs that record something needing nothing before.
fn creates_the_store(command: &Command) -> bool {
    matches!(
        command,
        Command::Demo { .. }
            | Command::AllInOne { .. }
            | Command::Server(_)
            | Command::Worker { .. }
            | Command::Router(_)
            | Command::Project(args::ProjectCmd::Create { .. })
            | Command::Token(tokens::TokenCmd::Create { .. })
            | Command::Notifications(_)
            | Command::Cert(certs::CertCmd::Add { .. })
    )
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The log's own readers would read the local --database, not the server's.
    let reads_the_log = match &cli.command {
        Command::Export(_) | Command::Audit(audit::AuditCmd::Checkpoint { .. }) => true,
        Command::Audit(audit::AuditCmd::Verify { file, .. }) => file.is_none(),
        _ => false,
    };
    if reads_the_log && cli.server.is_some() {
        return Err(exit::usage(
            "this verb reads the event log from --database and does not go through --server (over the API: GET /api/export, \
             then `slipway audit verify --file`); unset --server/SLIPWAY_SERVER to use --database",
        ));
    }
    // The audit verbs open the store themselves (`audit verify --file` none).
    match cli.command {
        // A new key needs none loaded (SLIPWAY_SECRETS_KEY_FILE may name
        // the very file it is about to write).
        Command::Secrets(secrets::SecretsCmd::Keygen { file }) => return secrets::keygen(&file),
        Command::Secrets(cmd) => {
            let sealing = connect::sealing(&cli.database, cli.secrets_key.as_deref(), &cli.old_secrets_key, &cli.data_dir)?;
            return secrets::run(cmd, &cli.database, cli.pg_schema.as_deref(), sealing).await;
        }
        Command::Db(DbCmd::Migrate { grant_to, grant_worker }) => {
            let level = connect::migrate(&cli.database, cli.pg_schema.as_deref(), grant_to.as_deref(), &grant_worker).await?;
            match (&grant_to, level) {
                (_, 0) => println!("the embedded store is migrated when it is opened; nothing to do"),
                (Some(role), level) => println!("migrated to {level}; run Slipway as `{role}` (it may act as slipway_writer)"),
                (None, level) => println!("migrated to {level}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Audit(cmd) => return audit::audit(cmd, &cli.database, cli.pg_schema.as_deref(), cli.json).await,
        Command::Export(args) => return audit::export(args, &cli.database, cli.pg_schema.as_deref()).await,
        Command::Hosts { cmd: None } => return verbs::hosts(cli.json).await.map(|_| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "slipway", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let json = cli.json;
    if let Some(server) = &cli.server {
        if let Some(code) = remote::through_server(server, cli.token.clone(), cli.server_ca.as_deref(), &cli.command, json).await? {
            return Ok(code);
        }
    }
    // A verb that only reads or changes what is there, run where no
    // embedded store is (another directory), says so instead of leaving an
    // empty store and key behind.
    if let Some(path) = cli.database.strip_prefix("sqlite://") {
        if !std::path::Path::new(path).exists() && !creates_the_store(&cli.command) {
            return Err(exit::not_found(format!(
                "no Slipway store at {path}: run where your projects were created (the embedded store is \
                 .slipway/slipway.db under the working directory), or pass --database (SLIPWAY_DATABASE); \
                 `slipway project create` makes one"
            )));
        }
    }
    let sealing = connect::sealing(&cli.database, cli.secrets_key.as_deref(), &cli.old_secrets_key, &cli.data_dir)?;
    let store = connect::store(&cli.database, cli.pg_schema.as_deref(), sealing.clone()).await?;
    let options = processes::Options {
        queue: cli.queue.clone(),
        queue_namespace: cli.queue_namespace.clone(),
        data_dir: cli.data_dir.clone(),
        registry: cli.registry.clone(),
        pull_base_images: cli.pull_base_images,
    };
    let here = deploying::Here {
        store: store.clone(),
        embedded: cli.queue == "memory",
        queue_url: cli.queue,
        data_dir: cli.data_dir,
        registry: cli.registry,
        json,
    };
    let done = |r: anyhow::Result<()>| r.map(|_| ExitCode::SUCCESS);
    match cli.command {
        Command::Demo { timeout } => {
            let queue = connect::queue(&options.queue, options.queue_namespace.as_deref()).await?;
            processes::demo(store, queue, &options.data_dir, Duration::from_secs(timeout)).await
        }
        Command::AllInOne { serve, router, no_router, agent } => {
            let api = connect::api_store(&cli.database, cli.pg_schema.as_deref(), sealing, &store).await?;
            processes::all_in_one(store, api, &options, serve, router, no_router, agent).await
        }
        Command::Server(args) => {
            let api = connect::api_store(&cli.database, cli.pg_schema.as_deref(), sealing, &store).await?;
            processes::server(store, api, &options, args).await
        }
        Command::Router(args) => processes::router(store, args).await,
        Command::Worker { steps, prefetch, concurrency, stand_in_ms, agent, runtime } => {
            processes::worker(store, &options, processes::WorkerArgs { steps, prefetch, concurrency, stand_in_ms, agent, runtime }).await
        }
        Command::Routers => done(verbs::routers(&*store, json).await),
        Command::Projections(ProjectionsCmd::Rebuild) => processes::rebuild(&*store).await,
        Command::Images(ImagesCmd::Prune { keep, dry_run }) => done(verbs::images_prune(&*store, keep, dry_run, json).await),
        Command::Workers { all } => done(verbs::workers(&*store, all, json).await),
        Command::Hosts { cmd: Some(cmd) } => done(verbs::hosts_change(&store, cmd, json).await),
        Command::Project(cmd) => projects::run(&projects::Local(&*store), cmd, json).await,
        Command::Preview(cmd) => projects::previews(&projects::Local(&*store), cmd, json).await,
        Command::Env(cmd) => projects::env(&projects::Local(&*store), cmd, json).await,
        Command::Deploy(args) => deploying::deploy(&here, args).await,
        Command::Promote { project, from, to, local, cloud, migrate, follow } => {
            deploying::promote(&here, project, from, to, here.mode(local, cloud), migrate, follow).await
        }
        Command::Replay { deployment, from_step, follow } => deploying::replay(&here, deployment, from_step, follow).await,
        Command::Cancel { deployment, reason } => deploying::cancel(&*store, deployment, &reason).await,
        Command::Approve { deployment, reason } => deploying::approve(&*store, deployment, &reason).await,
        Command::Reject { deployment, reason } => deploying::reject(&*store, deployment, &reason).await,
        Command::Migrate { project, env, follow } => deploying::migrate(&here, project, env, follow).await,
        Command::Rollback { project, env, to, follow } => deploying::rollback(&here, project, env, to, follow).await,
        Command::Status { project, env, at: None } => done(verbs::status(&*store, &project, &env, json).await),
        Command::Status { project, env, at: Some(at) } => done(history::status_at(&*store, &project, &env, &at, json).await),
        Command::History { deployment } => done(history::history(&*store, deployment, json).await),
        Command::Diff { a, b } => done(history::diff(&*store, a, b, json).await),
        Command::Releases { project, env } => done(verbs::releases(&*store, &project, &env, json).await),
        Command::Deployments { project, page } => done(verbs::deployments(&*store, &project, &page, json).await),
        Command::Logs { deployment } => done(verbs::logs(&*store, deployment, &options.data_dir, json).await),
        Command::Events { stream } => done(verbs::events(&*store, &stream, json).await),
        Command::Token(cmd) => tokens::run(&*store, cmd).await,
        Command::Domain(cmd) => domains::run(&*store, cmd, json).await,
        Command::Cert(cmd) => certs::run(&*store, cmd, json).await,
        Command::Notifications(cmd) => notifications::run(&*store, cmd, json).await,
        Command::Audit(_)
        | Command::Export(_)
        | Command::Completions { .. }
        | Command::Db(_)
        | Command::Secrets(_)
        | Command::Hosts { cmd: None } => {
            unreachable!("handled before the store is opened")
        }
    }
}

/// `slipway logs ID | head`: once the reader has gone, writing to standard
/// output fails with a broken pipe, and `println!` (or a library writing
/// there) panics with a backtrace. Exit quietly instead, with the status a
/// command killed by SIGPIPE has (141). Rust ignores SIGPIPE, which the
/// server modes need (a client gone must not kill them), so the signal is
/// left alone and the panic is caught here.
fn quiet_when_the_reader_is_gone() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.contains("Broken pipe") || m.contains("BrokenPipe")) {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// An error and its causes, `a: b: c`, leaving out a cause whose words the
/// text already has (many errors print their source in their own message,
/// and `{:#}` then said it twice: `pool timed out ...: pool timed out ...`).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
