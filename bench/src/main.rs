//! `slipway-bench`: Slipway's performance figures, each printed beside a
//! baseline measured in the same run on the same machine, with the ratio and
//! the goal it must meet. Absolute numbers vary with the machine; the ratio
//! to what the same machine does without Slipway's guarantees is what the
//! goals are about.
//!
//! Rows: append throughput on PostgreSQL (vs a bare insert), dispatch
//! latency from commit to a RabbitMQ consumer through the outbox relay (vs
//! publishing straight to RabbitMQ), and replay of the whole log into a
//! projection (vs a bare streaming SELECT and vs decoding from memory).
//! Indented rows split a figure into its parts, to show where a miss comes
//! from.
//!
//! Every run works in fresh PostgreSQL schemas (one per section), dropped at
//! the end, and on randomly named queues, deleted at the end.

mod append;
mod decode_profile;
mod dispatch;
mod fixtures;
mod replay;
mod report;
mod services;
mod timed_queue;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::fixtures::Factory;
use crate::report::{thousands, Row};
use crate::services::BenchDbs;

#[derive(Debug, Parser)]
#[command(about = "Slipway's throughput and latency, each beside a baseline measured in the same run")]
struct Args {
    /// Events written and then replayed [default: 1,000,000; 20,000 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    events: Option<u64>,
    /// A short run for CI smoke tests: fewer events, shorter phases.
    #[arg(long)]
    quick: bool,
    /// PostgreSQL to measure against (fresh schemas are created and dropped).
    #[arg(long, env = "SLIPWAY_PG_URL", hide_env_values = true, default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
    /// RabbitMQ to measure against (random queue names, deleted at the end).
    #[arg(long, env = "SLIPWAY_AMQP_URL", hide_env_values = true, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
}

/// How big and how long each phase is.
#[derive(Debug, Clone, Copy)]
struct Plan {
    replay_events: usize,
    /// Rounds of each replay read (the best counts).
    replay_rounds: usize,
    append: append::Timing,
    dispatch_phase: Duration,
}

impl Plan {
    fn from(args: &Args) -> Self {
        let second = Duration::from_secs(1);
        // Quick replays are short enough to afford more rounds than appends.
        let (events, replay_rounds, append_rounds, dispatch) = if args.quick { (20_000, 3, 1, 3) } else { (1_000_000, 3, 3, 10) };
        Plan {
            replay_events: args.events.map_or(events, |n| n as usize),
            replay_rounds,
            append: append::Timing { round: second, rounds: append_rounds },
            dispatch_phase: Duration::from_secs(dispatch),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("slipway-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the services, runs every section and prints the table. Returns
/// whether every section ran (a missed goal is not a failure of the run).
async fn run(args: &Args) -> anyhow::Result<bool> {
    let pg_version = services::check_postgres(&args.pg_url).await?;
    services::check_rabbitmq(&args.amqp_url).await?;
    let plan = Plan::from(args);
    let factory = Factory::new()?;
    let dbs = BenchDbs::create(&args.pg_url).await?;
    print_header(&plan, &factory, &pg_version, &dbs.pattern);

    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = sections(&dbs, &factory, args, plan) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    let cleanup = dbs.drop_all().await;
    let Some((rows, all_ran)) = outcome else {
        anyhow::bail!("interrupted; the bench schemas were dropped");
    };
    println!();
    print!("{}", report::render(&rows));
    println!("\ntook {:.1} s", started.elapsed().as_secs_f64());
    cleanup?;
    Ok(all_ran)
}

/// Runs each section; a failing section is reported and the others still run.
async fn sections(dbs: &BenchDbs, factory: &Factory, args: &Args, plan: Plan) -> (Vec<Row>, bool) {
    let mut rows = Vec::new();
    let mut all_ran = true;
    let mut keep = |name: &str, outcome: anyhow::Result<Vec<Row>>| match outcome {
        Ok(new) => rows.extend(new),
        Err(e) => {
            eprintln!("slipway-bench: the {name} section failed: {e:#}");
            all_ran = false;
        }
    };
    // Replay last: filling its log is the heaviest write of the run.
    keep("append", append::measure(&dbs.append.store, factory, plan.append).await);
    let dispatch = dispatch::measure(&dbs.dispatch.store, factory, &args.amqp_url, plan.dispatch_phase).await;
    keep("dispatch", dispatch);
    keep("replay", replay::measure(&dbs.replay.store, factory, plan.replay_events, plan.replay_rounds).await);
    (rows, all_ran)
}

fn print_header(plan: &Plan, factory: &Factory, pg_version: &str, schemas: &str) {
    let command: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("slipway-bench: each figure beside a baseline measured in this run");
    println!("command:  {}", command.join(" "));
    println!("machine:  {cores} cores ({}), PostgreSQL {pg_version}", cpu_model());
    println!(
        "plan:     replay {} events (best of {} reads); append {} x {} s per side; dispatch {} s at {}/s; \
         mean event body {} bytes; schemas {schemas}",
        thousands(plan.replay_events as f64),
        plan.replay_rounds,
        plan.append.rounds,
        plan.append.round.as_secs(),
        plan.dispatch_phase.as_secs(),
        dispatch::RATE,
        factory.mean_event_bytes(),
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,%@".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
