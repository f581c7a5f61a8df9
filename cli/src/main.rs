//! The `slipway` command: wires the store, the queue, the engine and the
//! workers together for each way of running Slipway, and the client verbs.

mod audit;
mod certs;
mod client;
mod connect;
mod domains;
mod exit;
mod follow;
mod history;
mod machinery;
mod notifications;
mod progress;
mod remote;
mod render;
mod report;
mod secrets;
mod source_args;
mod tokens;
mod verbs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::{Event, Step};
use slipway_store::chain;
use slipway_store::EventStore;
use slipway_workers::WorkerOptions;
use uuid::Uuid;

use slipway_engine::driver::DriverOptions;
use slipway_node::Parts;

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Slipway: a self-hosted deployment control panel built on an event log",
    long_about = "Slipway deploys an application's Git repository: it checks the backing services, checks out \
the code, builds the Docker image, starts the containers, runs the release commands, starts the extra \
processes and checks that the app answers, keeping the old release serving if anything fails. Every fact \
is an event in an append-only, hash-chained log.\n\nWith no options everything runs in this process on \
the embedded default: SQLite at .slipway/slipway.db and an in-process queue.",
    after_help = exit::HELP
)]
struct Cli {
    /// The event store: sqlite://PATH (embedded default) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, global = true, env = "SLIPWAY_DATABASE", default_value = "sqlite://.slipway/slipway.db")]
    database: String,
    /// The command queue: `memory` (in-process, embedded default) or amqp://USER:PASSWORD@HOST:PORT/VHOST.
    #[arg(long, global = true, env = "SLIPWAY_QUEUE", default_value = "memory")]
    queue: String,
    /// The build farm's image registry (HOST:PORT): workers push each build
    /// there and pull a missing image by digest, so builds and containers
    /// may run on different hosts. Without it everything stays on one Docker engine.
    #[arg(long, global = true, env = "SLIPWAY_REGISTRY")]
    registry: Option<String>,
    /// Workers pull each build's base images first (off by default: with no
    /// reachable registry the build then fails with the registry's error).
    #[arg(long, global = true, env = "SLIPWAY_PULL_BASE_IMAGES")]
    pull_base_images: bool,
    /// PostgreSQL schema for Slipway's tables (several installations can share a database).
    #[arg(long, global = true, env = "SLIPWAY_PG_SCHEMA")]
    pg_schema: Option<String>,
    /// Prefix for RabbitMQ queue names (several installations can share a vhost).
    #[arg(long, global = true, env = "SLIPWAY_QUEUE_NAMESPACE")]
    queue_namespace: Option<String>,
    /// Where workers keep checkouts and build/release logs.
    #[arg(long, global = true, env = "SLIPWAY_DATA_DIR", default_value = ".slipway")]
    data_dir: PathBuf,
    /// The key setting values are sealed with at rest (64 hex characters in
    /// a file only its owner may read; `slipway secrets keygen FILE`). The
    /// server and the workers that run containers need the same file; the
    /// embedded store defaults to DATA_DIR/secrets.key.
    #[arg(long, global = true, env = "SLIPWAY_SECRETS_KEY_FILE", value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// An earlier key that still opens values sealed before a rotation (repeatable).
    #[arg(long, global = true, value_name = "FILE")]
    old_secrets_key: Vec<PathBuf>,
    /// Print JSON instead of text: one document for the read verbs (status,
    /// releases, deployments, history, diff, logs, events, workers, routers,
    /// project list/show, env list, images prune, audit verify), JSON Lines
    /// (`{"kind": "requested"|"event"|"log"|"note"|"result", ...}`) while following a deployment.
    #[arg(long, global = true)]
    json: bool,
    /// A Slipway server's HTTP API (http://HOST:PORT): deploy, status,
    /// deployments, history, rollback, replay, cancel and domain then go through it
    /// instead of the database and queue.
    #[arg(long, global = true, env = "SLIPWAY_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The API token sent to --server (`slipway token create` on the server).
    #[arg(long, global = true, env = "SLIPWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (server, all-in-one,
    /// worker and router; unauthenticated: keep it on loopback or a private network).
    #[arg(long, global = true, env = "SLIPWAY_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Walk a dry-run deployment through the whole machinery (store, outbox,
    /// relay, queue, decider, workers) in this process and show every event.
    Demo {
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Run the engine, the outbox relay, the HTTP API, the step workers and a router in one process.
    AllInOne {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        router: RouterArgs,
        /// Run without the router (traffic switches then wait for no router).
        #[arg(long)]
        no_router: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Run the engine, the outbox relay and the HTTP API (no step workers, no router).
    Server(ServeArgs),
    /// Run a router: an HTTP reverse proxy that sends <project>-<env>.<domain>
    /// to the environment's serving release. It reads every route at start,
    /// registers, and acknowledges each route version it applies; every
    /// traffic switch waits for every registered router. A clean stop
    /// (ctrl-c, SIGTERM) deregisters it; one silent past its --lease (killed,
    /// hung, cut off from the database) is expired and no longer waited for.
    Router(RouterArgs),
    /// The registered routers (not those stopped or expired), each with its
    /// lease and the route version it has applied.
    Routers,
    /// Images Slipway built.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// The projections (deployments, environments, projects, routes).
    #[command(subcommand)]
    Projections(ProjectionsCmd),
    /// Worker processes from their heartbeats: alive, missing or stopped,
    /// and the commands each is running.
    Workers,
    /// The Docker Swarm's nodes (ask a manager's engine: DOCKER_HOST):
    /// address, state, availability, role, labels and the tasks each runs.
    Hosts,
    /// Run step workers that compete for the step queues.
    Worker {
        /// Where the apps' containers run: `single-engine` (this worker's
        /// Docker engine, published on 127.0.0.1) or `swarm` (a Swarm
        /// service per release on the swarm this worker's engine manages;
        /// needs --registry, which every node can pull from). Swarm
        /// supervises its services, so no host agent runs with it.
        #[arg(long, env = "SLIPWAY_RUNTIME", default_value = "single-engine")]
        runtime: slipway_workers::steps::runtime::RuntimeKind,
        /// Steps to serve, comma-separated (default: all): check_services,
        /// checkout, build, deploy, release, processes, health_check, watch,
        /// retire, cleanup. Serve `watch` wherever `deploy` is served: a
        /// release is watched on the host that runs it.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<Step>,
        /// Unacknowledged commands per step queue (raised to --concurrency).
        #[arg(long, default_value_t = 4)]
        prefetch: u16,
        /// Commands run at once per step queue. 1 runs one build, one
        /// deploy, ... at a time; add capacity with more worker processes,
        /// or raise this for steps that mostly wait.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Benchmarks only: answer every step after this many milliseconds
        /// without doing anything (no Docker, no Git).
        #[arg(long, hide = true)]
        stand_in_ms: Option<u64>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Create, list and show projects.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Set, unset and list an environment's settings (environment variables).
    #[command(subcommand)]
    Env(EnvCmd),
    /// Preview environments: approve a fork's pull request, remove a preview
    /// (the rules are `slipway project preview`).
    #[command(subcommand)]
    Preview(PreviewsCmd),
    /// Deploy a project's environment and follow it: a line per pipeline
    /// step (a spinner and the elapsed time on a terminal, then ✓/✗ and its
    /// duration), then where it is served. Exit status 1 if it fails.
    Deploy(DeployArgs),
    /// Deploy to TO exactly the image FROM serves now (same commit and
    /// slipway.toml, no checkout, no build), with TO's settings; release
    /// commands run as for any deployment.
    Promote {
        project: String,
        from: String,
        to: String,
        /// Local mode: release commands only with --migrate (the default in-process).
        #[arg(long, conflicts_with = "cloud")]
        local: bool,
        /// Cloud mode: release commands always run (the default with a shared server).
        #[arg(long)]
        cloud: bool,
        /// Run the release commands in local mode too.
        #[arg(long)]
        migrate: bool,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Re-run a finished deployment with exactly its recorded inputs (commit,
    /// so the same slipway.toml; settings snapshot; mode) as a new deployment
    /// linked to it. It resumes at the step that failed (or --from-step):
    /// the build re-uses the original's image while Docker has it, release
    /// commands before that step are not run again; history is never rewritten.
    Replay {
        deployment: Uuid,
        /// Resume at this pipeline step (default: the one that failed).
        #[arg(long)]
        from_step: Option<Step>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Stop a deployment that has not finished (queued or running): it fails
    /// at the step it is at, the containers it started are removed, and if
    /// its traffic switch had begun the route goes back. The release serving
    /// before keeps serving. A finished deployment cannot be cancelled: roll
    /// back instead.
    Cancel {
        deployment: Uuid,
        /// Why, recorded with the cancellation.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Approve a deployment waiting for approval (a protected environment).
    /// Whoever requested it cannot approve it.
    Approve {
        deployment: Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a deployment waiting for approval: it is cancelled, naming who and why.
    Reject {
        deployment: Uuid,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Run the release commands (migrations) against the release serving
    /// ENV now: it is deployed again from the release step with release
    /// commands on, then health-checked and cut over with no downtime.
    Migrate {
        project: String,
        env: String,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Serve an earlier release again (by default the one before the release
    /// serving now): its image, commit, slipway.toml and settings, through
    /// the service check, containers, health check and traffic switch,
    /// without building and without running release commands.
    Rollback {
        project: String,
        env: String,
        /// The deployment to go back to (one that served this environment).
        #[arg(long)]
        to: Option<Uuid>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// What an environment serves now, and what is running or queued.
    Status {
        project: String,
        env: String,
        /// Time travel: what served at this RFC 3339 time (2025-03-01T12:00:00Z):
        /// the deployment, its commit, image and settings fingerprints.
        #[arg(long, value_name = "TIMESTAMP")]
        at: Option<String>,
    },
    /// An environment's releases (successful deployments), newest first; `*` serves now.
    Releases { project: String, env: String },
    /// A project's deployments: the newest --limit of them (older pages
    /// with --before), printed oldest first. Read from the deployments read
    /// model, which catches up with the log first.
    Deployments {
        project: String,
        #[command(flatten)]
        page: verbs::DeploymentPage,
    },
    /// A deployment's events with its build and release logs.
    Logs { deployment: Uuid },
    /// A deployment's timeline: each event's time, step, actor and outcome,
    /// each step's duration, and Dockerfile pinning warnings.
    /// With --json: one document (summary, steps, entries).
    History { deployment: Uuid },
    /// What changed from deployment A to B: commit, image, settings keys
    /// (by fingerprint), release commands, step durations.
    Diff { a: Uuid, b: Uuid },
    /// Print a stream's events (a deployment's is `deployment-<ID>`).
    Events { stream: String },
    /// Export the event log as JSON Lines (one event per line, in global
    /// order, bodies exactly as stored) for offline verification.
    Export(audit::ExportArgs),
    /// Audit the event log: verify chains and exports, sign checkpoints.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// API tokens: create (prints the value once), list, revoke.
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// Custom domains an environment is served under: add, remove, list.
    #[command(subcommand)]
    Domain(domains::DomainCmd),
    /// TLS certificates the routers serve: add (uploaded), list.
    #[command(subcommand)]
    Cert(certs::CertCmd),
    /// Notifications of deployments to webhooks, Slack and Discord: add,
    /// list, remove, deliveries, redeliver, replay. The server sends them.
    #[command(subcommand)]
    Notifications(notifications::NotificationsCmd),
    /// The database: `migrate` applies this version's migrations.
    #[command(subcommand)]
    Db(DbCmd),
    /// The key setting values are sealed with: keygen, rotate-key.
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    /// Print a shell completion script: `slipway completions bash >
    /// /etc/bash_completion.d/slipway`, or `source <(slipway completions zsh)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The host agent that runs beside workers serving the deploy step.
#[derive(Args)]
struct AgentArgs {
    /// Seconds between the host agent's reconciliations of what Docker runs
    /// with what is recorded (it also reconciles at start and when the
    /// Docker daemon comes back); 0 runs no host agent (no reconciliation,
    /// no supervision).
    #[arg(long, default_value_t = 30)]
    reconcile_every: u64,
    /// Seconds an environment must have been settled (no deployment
    /// finished) before the host agent removes containers of releases that
    /// should not run. Keep it above the engine's --drain plus a stop.
    #[arg(long, default_value_t = 120)]
    stray_grace: u64,
}

impl AgentArgs {
    fn options(&self) -> Option<slipway_workers::host::AgentOptions> {
        (self.reconcile_every > 0).then(|| slipway_workers::host::AgentOptions {
            every: Duration::from_secs(self.reconcile_every),
            grace: Duration::from_secs(self.stray_grace),
        })
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Seconds a retired release keeps serving in-flight requests before it is stopped.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Seconds a traffic switch waits for every registered router to
    /// acknowledge; past it the deployment fails and the route goes back.
    #[arg(long, default_value_t = 15)]
    switch_timeout: u64,
    /// Seconds the engine waits for a step's outcome (a lost command, a
    /// worker that died) before dispatching it again, up to 3 attempts.
    #[arg(long, default_value_t = 900)]
    step_timeout: u64,
    /// The same for builds.
    #[arg(long, default_value_t = 3600)]
    build_timeout: u64,
    /// Seconds a started build may go without its worker's heartbeat (one
    /// every 5 s) before it is dispatched again under the same command id:
    /// a hung worker or a vanished host is noticed long before --build-timeout.
    /// Run builders with `--prefetch 1`: a hung builder holding spare credit
    /// would be handed the re-dispatch as well.
    #[arg(long, default_value_t = 60)]
    heartbeat_timeout: u64,
    /// Seconds between the engine's sweeps for preview environments past
    /// their time to live (no push for the rule's --ttl): each is removed.
    #[arg(long, default_value_t = 60)]
    preview_sweep: u64,
    /// Where the HTTP API listens. Every request needs a token (`slipway token create`); off loopback
    /// the API refuses to start until one is issued. It speaks plain HTTP: put TLS in front of it.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7878")]
    listen: std::net::SocketAddr,
    /// An ACME directory URL: the engine then obtains and renews a
    /// certificate for every custom domain over HTTP-01, answered by the
    /// routers (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory).
    #[arg(long = "acme-directory", env = "SLIPWAY_ACME_DIRECTORY")]
    acme_directory: Option<String>,
    /// The ACME account's contact e-mail.
    #[arg(long = "acme-email", env = "SLIPWAY_ACME_EMAIL")]
    acme_email: Option<String>,
    /// A PEM CA certificate trusted for the ACME directory's own TLS (a
    /// private or test CA such as pebble's).
    #[arg(long = "acme-ca-bundle", env = "SLIPWAY_ACME_CA_BUNDLE")]
    acme_ca_bundle: Option<std::path::PathBuf>,
    /// Seconds between looks for certificates due (a new domain is seen at once).
    #[arg(long = "acme-check-every", default_value_t = 60)]
    acme_check_every: u64,
    /// Seconds after a failed ACME order before the domain is tried again.
    #[arg(long = "acme-retry", default_value_t = 600)]
    acme_retry: u64,
}

impl ServeArgs {
    fn acme(&self) -> Option<slipway_engine::acme::AcmeOptions> {
        let mut options = slipway_engine::acme::AcmeOptions::new(self.acme_directory.clone()?);
        options.email = self.acme_email.clone();
        options.ca_bundle = self.acme_ca_bundle.clone();
        options.check_every = Duration::from_secs(self.acme_check_every.max(1));
        options.retry_after = Duration::from_secs(self.acme_retry.max(1));
        Some(options)
    }

    fn driver(&self) -> DriverOptions {
        DriverOptions {
            drain_seconds: self.drain,
            switch_timeout: Duration::from_secs(self.switch_timeout),
            step_timeout: Duration::from_secs(self.step_timeout),
            build_timeout: Duration::from_secs(self.build_timeout),
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout),
            preview_sweep: Duration::from_secs(self.preview_sweep.max(1)),
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct RouterArgs {
    /// Where the router listens for HTTP.
    #[arg(long = "router", env = "SLIPWAY_ROUTER_LISTEN", default_value = "127.0.0.1:7880")]
    router_listen: std::net::SocketAddr,
    /// Where the router listens for HTTPS (off by default; also the
    /// [router] https_listen key). Certificates come from `slipway cert`
    /// and ACME.
    #[arg(long = "https-listen", env = "SLIPWAY_ROUTER_HTTPS_LISTEN")]
    https_listen: Option<std::net::SocketAddr>,
    /// Host names are <project>-<env>.<domain>.
    #[arg(long, env = "SLIPWAY_DOMAIN", default_value = "localhost")]
    domain: String,
    /// The router's id, stable across restarts (default: <hostname>-<port>).
    #[arg(long = "router-id", env = "SLIPWAY_ROUTER_ID")]
    router_id: Option<String>,
    /// A TOML file whose [router] section sets the router's connection caps,
    /// timeouts and trusted proxies (README: "The router's configuration").
    #[arg(long = "router-config", env = "SLIPWAY_ROUTER_CONFIG")]
    router_config: Option<std::path::PathBuf>,
    /// Seconds the router may write nothing to the database before the
    /// engine expires it and traffic switches stop waiting for it (it writes
    /// a heartbeat every third of it). Back, it reads every route and
    /// registers again.
    #[arg(long, env = "SLIPWAY_ROUTER_LEASE", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease: u64,
}

#[derive(Args)]
struct FollowArgs {
    /// Stop following after this many seconds (the deployment goes on; exit status 6).
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Also show the build log as it is written and each release command's log.
    #[arg(long)]
    logs: bool,
    /// No progress: only the result (where it is served, or why it failed).
    #[arg(long, short)]
    quiet: bool,
    /// Seconds the replaced release keeps serving before it is stopped
    /// (in-process runs only; a server has its own --drain).
    #[arg(long, default_value_t = 0)]
    drain: u64,
}

#[derive(Subcommand)]
enum ProjectCmd {
    /// Create a project from a Git repository: a local path or file:// URL,
    /// https://HOST/PATH (with --token-file), or ssh://USER@HOST[:PORT]/PATH
    /// or USER@HOST:PATH (with --ssh-key or --generate-ssh-key).
    Create {
        name: String,
        /// The Git repository: a local path, file://, https:// or ssh:// URL, or USER@HOST:PATH
        /// (a mirror takes its original's). Never put a credential in it: addresses are recorded and shown
        #[arg(long, required_unless_present = "mirror_of")]
        repo: Option<String>,
        #[command(flatten)]
        source: source_args::SourceArgs,
        /// Make this project a mirror of ORIGINAL: it deploys the original's
        /// image for the same commit, with its own settings, environments and routes.
        #[arg(long, value_name = "ORIGINAL")]
        mirror_of: Option<String>,
        /// The ref deployed when `deploy` is given none.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Environments (default: test and live).
        #[arg(long = "env", default_values_t = ["test".to_string(), "live".to_string()])]
        environments: Vec<String>,
    },
    /// Projects by name, a page at a time (from the projects read model).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only projects whose name sorts after this one (the last of the page before).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
    },
    /// A project: its repository and how workers reach it (credential
    /// names, never values; trusted host keys), its environments with their
    /// settings count, and its auto-deploy and preview rules.
    Show { name: String },
    /// Change how workers reach a project's repository: credentials (kept as
    /// secrets, recorded by fingerprint), trusted SSH host keys, submodules.
    /// Deployments requested from now on use the new access.
    Source {
        name: String,
        #[command(flatten)]
        source: source_args::SourceArgs,
        #[command(flatten)]
        forget: source_args::SourceForgetArgs,
    },
    /// The project's push webhook secret: `rotate` generates a new one and
    /// prints it (only it, on standard output) this once; it is shown
    /// nowhere else, and the old one stops verifying. Give it to the git
    /// host as the webhook's secret, with the URL
    /// http://SERVER/api/hooks/PROVIDER/PROJECT (PROVIDER: github, gitlab,
    /// gitea for Gitea and Forgejo, or generic).
    Webhook {
        project: String,
        #[command(subcommand)]
        action: WebhookCmd,
    },
    /// Auto-deploy rules: a push (webhook) to a branch matching BRANCH_GLOB
    /// deploys the pushed commit to ENV. Globs: `main`, `release/*` (`*`
    /// within one path segment), `release/**` (any depth). A head commit
    /// with `[skip deploy]` or `[deploy skip]` in its message deploys nothing.
    AutoDeploy {
        project: String,
        #[command(subcommand)]
        action: AutoDeployCmd,
    },
    /// Preview rules: every pull request (GitLab: merge request), or every
    /// branch matching a glob, gets its own environment — `pr-42`, or a
    /// DNS-safe slug of the branch — served at <project>-<env>.<domain>,
    /// with the settings of the environment given to --inherit plus its
    /// own (`slipway env set PROJECT pr-42 ...`). Pull request webhooks
    /// (GitHub and Gitea `pull_request`, GitLab `Merge Request Hook`) add and
    /// deploy it; closing or merging, deleting the branch, or no push for
    /// --ttl removes it (deployments cancelled, containers retired, route
    /// removed). A fork's pull request waits for `slipway preview approve`.
    Preview {
        project: String,
        #[command(subcommand)]
        action: PreviewCmd,
    },
}

#[derive(Subcommand)]
enum PreviewCmd {
    /// Set the rule for pull requests or for branches matching GLOB
    /// (setting a trigger again replaces its rule).
    Set {
        #[command(flatten)]
        trigger: PreviewTriggerArgs,
        /// The named environment whose settings previews take.
        #[arg(long, value_name = "ENV")]
        inherit: String,
        /// Remove a preview after this long without a push: 7d (default), 12h, 30m, 2s.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Remove the rule (existing previews stay until closed, deleted or expired).
    Remove {
        #[command(flatten)]
        trigger: PreviewTriggerArgs,
    },
    /// The rules (`--json` for a JSON array).
    List,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PreviewTriggerArgs {
    /// Every pull request (merge request) gets `pr-<number>`.
    #[arg(long)]
    pull_requests: bool,
    /// Branches matching GLOB (`feature/*`) get an environment named after the branch.
    #[arg(long, value_name = "GLOB")]
    branches: Option<String>,
}

impl PreviewTriggerArgs {
    fn trigger(self) -> slipway_proto::event::PreviewTrigger {
        match self.branches {
            Some(glob) => slipway_proto::event::PreviewTrigger::Branches(glob),
            None => slipway_proto::event::PreviewTrigger::PullRequests,
        }
    }
}

#[derive(Subcommand)]
enum PreviewsCmd {
    /// Approve the head commit of a fork's pull request preview (ENV, e.g.
    /// pr-42) and deploy it. Recorded with who approved it; each new head
    /// commit of the pull request needs its own approval.
    Approve { project: String, env: String },
    /// Remove a preview now: its deployments are cancelled, its containers
    /// retired and its route removed.
    Remove { project: String, env: String },
}

#[derive(Subcommand)]
enum WebhookCmd {
    /// Generate a new webhook secret and print it once.
    Rotate,
}

#[derive(Subcommand)]
enum AutoDeployCmd {
    /// Pushes to branches matching BRANCH_GLOB deploy to ENV (a glob set
    /// again gets the new environment).
    Set {
        #[arg(value_name = "BRANCH_GLOB")]
        branch: String,
        #[arg(value_name = "ENV")]
        env: String,
        /// Also poll the repository's matching branches this often (e.g. 60s,
        /// at least 5s), for git hosts that cannot send webhooks: the server
        /// (or all-in-one) deploys a branch's new head as a push would
        #[arg(long, value_name = "INTERVAL")]
        poll: Option<String>,
    },
    /// Remove the rule for BRANCH_GLOB (as it was set).
    Remove {
        #[arg(value_name = "BRANCH_GLOB")]
        branch: String,
    },
    /// The rules, in the order they were set (`--json` for a JSON array).
    List,
}

#[derive(Subcommand)]
enum ProjectionsCmd {
    /// Fold every stream again from the log, report any history that cannot
    /// be read or followed, print a digest of the state, and move the
    /// engine's subscription checkpoint to the start: the next engine to
    /// start (restart running ones) decides again over the whole log, and
    /// appends nothing (decisions are idempotent). The read models
    /// (projects, environments, deployments) are emptied and refilled from the log.
    Rebuild,
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Remove the images Slipway built that none of the last --keep releases
    /// of any environment uses (what serves now, what rollback can go back
    /// to, what a mirror or a promoted environment runs are kept).
    Prune {
        /// Releases per environment whose images stay.
        #[arg(long, default_value_t = 5)]
        keep: usize,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum EnvCmd {
    /// Set KEY=VALUE settings; with --secret the values are never shown.
    /// `KEY=-` reads the value from standard input and `KEY=@FILE` from a
    /// file, so a secret stays out of `ps` and the shell's history (a value
    /// that starts with `@` is given as `@@...`).
    Set {
        project: String,
        env: String,
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(long)]
        secret: bool,
    },
    Unset {
        project: String,
        env: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    List {
        project: String,
        env: String,
    },
    /// Require approvals: a deployment to ENV waits (`awaiting approval`)
    /// until this many people with deploy scope, other than its requester,
    /// approve it (`slipway approve`); `--approvals 0` lifts it.
    Protect {
        project: String,
        env: String,
        #[arg(long)]
        approvals: u32,
    },
    /// A freeze window: from each time SCHEDULE matches (cron, in UTC;
    /// `0 18 * * FRI` is Fridays at 18:00), for --for, deployments to ENV
    /// are refused naming the window, unless an admin deploys with
    /// --override-freeze REASON. Rollbacks are not refused. --remove drops it.
    Freeze {
        project: String,
        env: String,
        schedule: String,
        /// How long each window lasts: 64h, 90m, 2d, 3600s.
        #[arg(long = "for", required_unless_present = "remove")]
        duration: Option<String>,
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Args)]
struct DeployArgs {
    project: String,
    env: String,
    /// Branch, tag or commit (default: the project's branch).
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Local mode: layer cache on, release commands only with --migrate
    /// (the default when everything runs in this process).
    #[arg(long, conflicts_with = "cloud")]
    local: bool,
    /// Cloud mode: no layer cache, release commands always run
    /// (the default with a shared server and workers).
    #[arg(long)]
    cloud: bool,
    /// Build without the layer cache, and build even if a release already
    /// has an image of this commit.
    #[arg(long)]
    no_cache: bool,
    /// Run the release commands in local mode too.
    #[arg(long)]
    migrate: bool,
    /// Walk the pipeline without side effects.
    #[arg(long)]
    dry_run: bool,
    /// Deploy inside a freeze window anyway (admins), recording why.
    #[arg(long, value_name = "REASON")]
    override_freeze: Option<String>,
    #[command(flatten)]
    follow: FollowArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
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
            eprintln!("slipway: {e:#}");
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

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "local".into())
}

fn all_workers(actor: String) -> WorkerOptions {
    WorkerOptions { steps: Step::ALL.to_vec(), prefetch: 4, actor, ..Default::default() }
}

#[derive(Subcommand)]
enum DbCmd {
    /// Apply this version's migrations, with the owner's credentials in
    /// --database: the only step that uses them. Every other command logs
    /// in as a role that owns nothing and has the writer grants, and refuses
    /// a superuser, the owner, or a database at another migration.
    Migrate {
        /// Let this login role (created by you: CREATE ROLE NAME LOGIN
        /// PASSWORD '...') act as the writer role: the role to run Slipway as.
        #[arg(long, value_name = "ROLE")]
        grant_to: Option<String>,
    },
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The audit verbs open the store themselves (`audit verify --file` none).
    match cli.command {
        Command::Secrets(cmd) => {
            let sealing = connect::sealing(&cli.database, cli.secrets_key.as_deref(), &cli.old_secrets_key, &cli.data_dir)?;
            return secrets::run(cmd, &cli.database, cli.pg_schema.as_deref(), sealing).await;
        }
        Command::Db(DbCmd::Migrate { grant_to }) => {
            let level = connect::migrate(&cli.database, cli.pg_schema.as_deref(), grant_to.as_deref()).await?;
            match (&grant_to, level) {
                (_, 0) => println!("the embedded store is migrated when it is opened; nothing to do"),
                (Some(role), level) => println!("migrated to {level}; run Slipway as `{role}` (it may act as slipway_writer)"),
                (None, level) => println!("migrated to {level}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Audit(cmd) => return audit::audit(cmd, &cli.database, cli.pg_schema.as_deref(), cli.json).await,
        Command::Export(args) => return audit::export(args, &cli.database, cli.pg_schema.as_deref()).await,
        Command::Hosts => return verbs::hosts(cli.json).await.map(|_| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "slipway", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let json = cli.json;
    if let Some(server) = &cli.server {
        if let Some(code) = through_server(server, cli.token.clone(), &cli.command, json).await? {
            return Ok(code);
        }
    }
    let sealing = connect::sealing(&cli.database, cli.secrets_key.as_deref(), &cli.old_secrets_key, &cli.data_dir)?;
    let store = connect::store(&cli.database, cli.pg_schema.as_deref(), sealing).await?;
    let data_dir = cli.data_dir.clone();
    let embedded = cli.queue == "memory";
    match cli.command {
        Command::Demo { timeout } => {
            let queue = connect::queue(&cli.queue, cli.queue_namespace.as_deref()).await?;
            demo(store, queue, &data_dir, Duration::from_secs(timeout)).await
        }
        Command::AllInOne { serve, router, no_router, agent } => {
            let queue = connect::queue(&cli.queue, cli.queue_namespace.as_deref()).await?;
            let router = match no_router {
                true => None,
                false => Some(
                    machinery::router(
                        router.router_listen,
                        router.https_listen,
                        router.router_id,
                        router.domain,
                        router.router_config.as_deref(),
                        Duration::from_secs(router.lease),
                    )
                    .await?,
                ),
            };
            let workers = WorkerOptions { agent: agent.options(), ..all_workers(format!("worker:{}", hostname())) };
            let parts = Parts {
                engine: Some(serve.driver()),
                acme: serve.acme(),
                workers: Some((workers, machinery::pipeline(&data_dir, cli.registry.clone(), cli.pull_base_images))),
                router,
                poller: Some(slipway_node::poll::PollerOptions { workspaces: data_dir.join("workspaces") }),
                notifier: Some(Default::default()),
                ..Default::default()
            };
            machinery::serve(store, queue, parts, Some(machinery::Api { listen: serve.listen, data_dir }), machinery::on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(args) => {
            let queue = connect::queue(&cli.queue, cli.queue_namespace.as_deref()).await?;
            let poller = Some(slipway_node::poll::PollerOptions { workspaces: data_dir.join("workspaces") });
            let parts =
                Parts { engine: Some(args.driver()), poller, acme: args.acme(), notifier: Some(Default::default()), ..Default::default() };
            machinery::serve(store, queue, parts, Some(machinery::Api { listen: args.listen, data_dir }), machinery::on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Router(args) => {
            let lease = Duration::from_secs(args.lease);
            let router =
                machinery::router(args.router_listen, args.https_listen, args.router_id, args.domain, args.router_config.as_deref(), lease)
                    .await?;
            let parts = Parts { router: Some(router), ..Default::default() };
            let queue: Arc<dyn slipway_store::queue::Queue> = Arc::new(slipway_store::queue::memory::MemoryQueue::default());
            machinery::serve(store, queue, parts, None, machinery::on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Routers => verbs::routers(&*store, json).await.map(|_| ExitCode::SUCCESS),
        Command::Projections(ProjectionsCmd::Rebuild) => {
            let state = slipway_engine::rebuild::rebuild(&*store).await?;
            println!("{} stream(s) folded; state digest {}", state.streams.len(), state.digest());
            for (stream, why) in &state.broken {
                println!("BROKEN {stream}: {why}");
            }
            println!("the engine's checkpoint is back at the first event: restart running engines to re-read the log");
            println!("read models refilled from the log up to position {}", store.read_models().position().await?);
            Ok(if state.broken.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Images(ImagesCmd::Prune { keep, dry_run }) => {
            verbs::images_prune(&*store, keep, dry_run, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Workers => verbs::workers(&*store, json).await.map(|_| ExitCode::SUCCESS),
        Command::Worker { steps, prefetch, concurrency, stand_in_ms, agent, runtime } => {
            let swarm = runtime == slipway_workers::steps::runtime::RuntimeKind::Swarm;
            let queue = connect::queue(&cli.queue, cli.queue_namespace.as_deref()).await?;
            let options = WorkerOptions {
                steps: if steps.is_empty() { Step::ALL.to_vec() } else { steps },
                prefetch,
                concurrency: usize::from(concurrency),
                actor: format!("worker:{}", hostname()),
                // Stand-in workers start no containers: nothing to look after.
                // Nor do swarm workers: Swarm restarts and reschedules its services.
                agent: agent.options().filter(|_| stand_in_ms.is_none() && !swarm),
                ..Default::default()
            };
            let executor: Arc<dyn slipway_workers::Executor> = match stand_in_ms {
                Some(ms) => Arc::new(slipway_workers::steps::stand_in::StandIn { step_time: Duration::from_millis(ms) }),
                None => machinery::pipeline_on(&data_dir, cli.registry.clone(), cli.pull_base_images, runtime),
            };
            let parts = Parts { workers: Some((options, executor)), ..Default::default() };
            machinery::serve(store, queue, parts, None, machinery::on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCmd::Create { name, repo, mirror_of, branch, environments, source }) => {
            let (change, public_key) = source_args::change(&source, None, &name)?;
            let repository = repo.as_deref().map(absolute_repo).unwrap_or_default();
            let new = NewProject { name, repository, default_branch: branch, environments, mirror_of };
            verbs::project_create(&*store, new, change, public_key).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCmd::Source { name, source, forget }) => {
            let (change, public_key) = source_args::change(&source, Some(&forget), &name)?;
            verbs::project_source(&*store, &name, change, public_key).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Project(ProjectCmd::List { limit, after }) => {
            verbs::project_list(&*store, after.as_deref(), limit, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Project(ProjectCmd::Show { name }) => verbs::project_show(&*store, &name, json).await.map(|_| ExitCode::SUCCESS),
        Command::Project(ProjectCmd::Webhook { project, action: WebhookCmd::Rotate }) => {
            verbs::webhook_rotate(&*store, &project, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Project(ProjectCmd::AutoDeploy { project, action }) => {
            let rule = match action {
                AutoDeployCmd::Set { branch, env, poll } => {
                    let poll_seconds = match poll.as_deref().map(slipway_proto::config::Interval::parse) {
                        None => None,
                        Some(Ok(every)) => Some(every.0.as_secs()),
                        Some(Err(why)) => return Err(exit::usage(format!("--poll: {why}"))),
                    };
                    verbs::RuleChange::Set { branch, env, poll_seconds }
                }
                AutoDeployCmd::Remove { branch } => verbs::RuleChange::Remove { branch },
                AutoDeployCmd::List => verbs::RuleChange::List,
            };
            verbs::auto_deploy(&*store, &project, rule, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Project(ProjectCmd::Preview { project, action }) => {
            let change = match action {
                PreviewCmd::Set { trigger, inherit, ttl } => verbs::PreviewChange::Set { trigger: trigger.trigger(), inherit, ttl },
                PreviewCmd::Remove { trigger } => verbs::PreviewChange::Remove { trigger: trigger.trigger() },
                PreviewCmd::List => verbs::PreviewChange::List,
            };
            verbs::preview_rules(&*store, &project, change, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Preview(PreviewsCmd::Approve { project, env }) => {
            verbs::preview_approve(&*store, &project, &env, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Preview(PreviewsCmd::Remove { project, env }) => {
            verbs::preview_remove(&*store, &project, &env, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Env(EnvCmd::Set { project, env, pairs, secret }) => {
            let set = verbs::parse_assignments(&pairs, secret)?;
            verbs::env_set(&*store, &project, &env, set).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Env(EnvCmd::Unset { project, env, keys }) => {
            verbs::env_unset(&*store, &project, &env, keys).await.map(|_| ExitCode::SUCCESS)
        }
        Command::Env(EnvCmd::List { project, env }) => verbs::env_list(&*store, &project, &env, json).await.map(|_| ExitCode::SUCCESS),
        Command::Deploy(args) => deploy(store, &cli.queue, embedded, &data_dir, cli.registry.clone(), args, json).await,
        Command::Promote { project, from, to, local, cloud, migrate, follow } => {
            let mode = if local || (!cloud && embedded) { BuildMode::Local } else { BuildMode::Cloud };
            let running = start_embedded(&store, &cli.queue, embedded, &data_dir, cli.registry.clone(), follow.drain).await?;
            let run_release = mode == BuildMode::Cloud || migrate;
            let (id, source) = match requests::request_promotion(&*store, &verbs::actor(), &project, &from, &to, mode, run_release).await? {
                Ok(r) => r,
                Err(rejection) => return Err(exit::rejected(rejection)),
            };
            let target = Target {
                id,
                project: project.clone(),
                env: to.clone(),
                intro: format!("deployment {id}: {project} {to} gets the image of {from}'s release {source}"),
            };
            finish(&*store, running, target, &data_dir, &follow, json).await
        }
        Command::Replay { deployment, from_step, follow } => {
            let original = slipway_engine::load::deployment(&*store, deployment)
                .await?
                .ok_or_else(|| exit::not_found(format!("no deployment {deployment}")))?;
            let running = start_embedded(&store, &cli.queue, embedded, &data_dir, cli.registry.clone(), follow.drain).await?;
            let replay = match requests::request_replay(&*store, &verbs::actor(), deployment, from_step).await? {
                Ok(r) => r,
                Err(rejection) => return Err(exit::rejected(rejection)),
            };
            let intro = format!("deployment {}: replays {deployment} from {}", replay.deployment_id, replay.from_step);
            let (project, env) = (original.context.project, original.context.environment);
            let target = Target { id: replay.deployment_id, project, env, intro };
            finish(&*store, running, target, &data_dir, &follow, json).await
        }
        Command::Cancel { deployment, reason } => {
            match requests::request_cancel(&*store, &verbs::actor(), deployment, &reason).await? {
                Ok(()) => println!("deployment {deployment}: cancel requested; the engine stops it and removes its containers"),
                Err(rejection) => return Err(exit::rejected(rejection)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { deployment, reason } => {
            slipway_engine::protection::approve(&*store, &verbs::actor(), deployment, &reason).await?.map_err(protection_refusal)?;
            println!("deployment {deployment}: approved by {}", verbs::actor());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reject { deployment, reason } => {
            slipway_engine::protection::reject(&*store, &verbs::actor(), deployment, &reason).await?.map_err(protection_refusal)?;
            println!("deployment {deployment}: rejected by {}; the engine cancels it", verbs::actor());
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCmd::Protect { project, env, approvals }) => {
            slipway_engine::protection::protect(&*store, &verbs::actor(), &project, &env, approvals).await?.map_err(protection_refusal)?;
            match approvals {
                0 => println!("{project} {env}: deployments need no approval"),
                n => println!("{project} {env}: a deployment waits for {n} approval(s) by someone other than its requester"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCmd::Freeze { project, env, schedule, remove: true, .. }) => {
            slipway_engine::protection::remove_freeze(&*store, &verbs::actor(), &project, &env, &schedule)
                .await?
                .map_err(protection_refusal)?;
            println!("{project} {env}: the freeze window \"{schedule}\" is removed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Env(EnvCmd::Freeze { project, env, schedule, duration, remove: false }) => {
            let seconds = slipway_engine::protection::parse_duration(duration.as_deref().unwrap_or_default()).map_err(exit::usage)?;
            slipway_engine::protection::set_freeze(&*store, &verbs::actor(), &project, &env, &schedule, seconds)
                .await?
                .map_err(protection_refusal)?;
            println!("{project} {env}: frozen from each \"{schedule}\" (UTC) for {seconds}s");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { project, env, follow } => {
            let running = start_embedded(&store, &cli.queue, embedded, &data_dir, cli.registry.clone(), follow.drain).await?;
            let migrate = match requests::request_migrate(&*store, &verbs::actor(), &project, &env).await? {
                Ok(r) => r,
                Err(rejection) => return Err(exit::rejected(rejection)),
            };
            let target = Target {
                id: migrate.deployment_id,
                project: project.clone(),
                env: env.clone(),
                intro: format!("deployment {}: runs the release commands of {project} {env}", migrate.deployment_id),
            };
            finish(&*store, running, target, &data_dir, &follow, json).await
        }
        Command::Rollback { project, env, to, follow } => {
            let running = start_embedded(&store, &cli.queue, embedded, &data_dir, cli.registry.clone(), follow.drain).await?;
            let rollback = match requests::request_rollback(&*store, &verbs::actor(), &project, &env, to).await? {
                Ok(r) => r,
                Err(rejection) => return Err(exit::rejected(rejection)),
            };
            for warning in &rollback.warnings {
                eprintln!("warning: {warning}");
            }
            let target = Target {
                id: rollback.deployment_id,
                project: project.clone(),
                env: env.clone(),
                intro: format!("deployment {}: {project} {env} rolls back to deployment {}", rollback.deployment_id, rollback.target),
            };
            finish(&*store, running, target, &data_dir, &follow, json).await
        }
        Command::Status { project, env, at: None } => verbs::status(&*store, &project, &env, json).await.map(|_| ExitCode::SUCCESS),
        Command::Status { project, env, at: Some(at) } => {
            history::status_at(&*store, &project, &env, &at, json).await.map(|_| ExitCode::SUCCESS)
        }
        Command::History { deployment } => history::history(&*store, deployment, json).await.map(|_| ExitCode::SUCCESS),
        Command::Diff { a, b } => history::diff(&*store, a, b, json).await.map(|_| ExitCode::SUCCESS),
        Command::Releases { project, env } => verbs::releases(&*store, &project, &env, json).await.map(|_| ExitCode::SUCCESS),
        Command::Deployments { project, page } => verbs::deployments(&*store, &project, &page, json).await.map(|_| ExitCode::SUCCESS),
        Command::Logs { deployment } => verbs::logs(&*store, deployment, &data_dir, json).await.map(|_| ExitCode::SUCCESS),
        Command::Events { stream } => {
            let events = store.read_stream(&stream, 1).await?;
            if events.is_empty() {
                return Err(exit::not_found(format!("stream `{stream}` has no events")));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&events.iter().map(render::event_json).collect::<Vec<_>>())?);
            } else {
                events.iter().for_each(|e| println!("{}", render::line(e)));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(cmd) => tokens::run(&*store, cmd).await,
        Command::Domain(cmd) => domains::run(&*store, cmd).await,
        Command::Cert(cmd) => certs::run(&*store, cmd, json).await,
        Command::Notifications(cmd) => notifications::run(&*store, cmd, json).await,
        Command::Audit(_) | Command::Export(_) | Command::Completions { .. } | Command::Db(_) | Command::Secrets(_) | Command::Hosts => {
            unreachable!("handled before the store is opened")
        }
    }
}

/// Runs `command` through the server's API when it is one of the verbs the
/// client knows; `None` for the process modes, which ignore --server.
async fn through_server(server: &str, token: Option<String>, command: &Command, json: bool) -> anyhow::Result<Option<ExitCode>> {
    let client = || client::Client::new(server, token.clone());
    let follow = |f: &FollowArgs| remote::Follow { timeout: Duration::from_secs(f.timeout), quiet: f.quiet, logs: f.logs, json };
    let code = match command {
        Command::Deploy(args) => {
            let mode = match (args.local, args.cloud) {
                (true, _) => Some("local"),
                (_, true) => Some("cloud"),
                _ => None,
            };
            let body = remote::deploy_body(args.git_ref.as_deref(), mode, args.no_cache, args.migrate, args.dry_run);
            remote::deploy(&client()?, &args.project, &args.env, body, &follow(&args.follow)).await?
        }
        Command::Status { project, env, at: None } => remote::status(&client()?, project, env, json).await?,
        Command::Deployments { project, page } => remote::deployments(&client()?, project, page, json).await?,
        Command::History { deployment } => remote::history(&client()?, *deployment, json).await?,
        Command::Rollback { project, env, to, follow: f } => remote::rollback(&client()?, project, env, *to, &follow(f)).await?,
        Command::Replay { deployment, from_step, follow: f } => {
            remote::replay(&client()?, *deployment, from_step.map(|s| s.to_string()), &follow(f)).await?
        }
        Command::Cancel { deployment, reason } => {
            client()?.post(&format!("/api/deployments/{deployment}/cancel"), serde_json::json!({ "reason": reason })).await?;
            println!("deployment {deployment}: cancel requested; the engine stops it and removes its containers");
            ExitCode::SUCCESS
        }
        // Processes, and tokens (issued on the server's database).
        Command::Demo { .. }
        | Command::AllInOne { .. }
        | Command::Server(_)
        | Command::Router(_)
        | Command::Worker { .. }
        | Command::Token(_) => return Ok(None),
        Command::Domain(cmd) => domains::remote(&client()?, cmd).await?,
        _ => return Err(exit::usage(
            "this verb does not go through --server (only deploy, status, deployments, history, rollback, replay, cancel and domain do); \
                 unset --server/SLIPWAY_SERVER to use --database",
        )),
    };
    Ok(Some(code))
}

/// A refused approval, rejection, protection or freeze, with its exit status.
fn protection_refusal(refused: slipway_engine::protection::Refused) -> anyhow::Error {
    use slipway_engine::protection::Refused;
    match refused {
        Refused::Invalid(r) => exit::rejected(r),
        Refused::NotFound(r) => exit::not_found(r.0),
        Refused::Forbidden(r) => exit::coded(exit::Exit::Unauthorized, r.0),
        Refused::Frozen(r) => exit::coded(exit::Exit::Conflict, r.0),
    }
}

/// A relative repository path is made absolute: workers may run elsewhere.
fn absolute_repo(repo: &str) -> String {
    let path = std::path::Path::new(repo);
    if repo.contains("://") || path.is_absolute() {
        return repo.to_string();
    }
    std::fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or_else(|_| repo.to_string())
}

async fn deploy(
    store: Arc<dyn EventStore>,
    queue_url: &str,
    embedded: bool,
    data_dir: &std::path::Path,
    registry: Option<String>,
    args: DeployArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mode = if args.local || (!args.cloud && embedded) { BuildMode::Local } else { BuildMode::Cloud };
    let request = DeployRequest {
        project: args.project.clone(),
        environment: args.env.clone(),
        git_ref: args.git_ref,
        mode,
        no_cache: args.no_cache,
        run_release: mode == BuildMode::Cloud || args.migrate,
        dry_run: args.dry_run,
    };
    let running = start_embedded(&store, queue_url, embedded, data_dir, registry, args.follow.drain).await?;
    let id = match requests::request_deployment_overriding(&*store, &verbs::actor(), request, args.override_freeze.as_deref()).await? {
        Ok(id) => id,
        Err(rejection) => return Err(exit::rejected(rejection)),
    };
    let target = Target {
        id,
        project: args.project.clone(),
        env: args.env.clone(),
        intro: format!("deployment {id}: {} {} ({mode:?} mode)", args.project, args.env),
    };
    finish(&*store, running, target, data_dir, &args.follow, json).await
}

type Running = Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>;

/// In-process runs bring their own engine and workers (no router: it would
/// die with this process); otherwise a server and workers elsewhere pick the
/// request up.
async fn start_embedded(
    store: &Arc<dyn EventStore>,
    queue_url: &str,
    embedded: bool,
    data_dir: &std::path::Path,
    registry: Option<String>,
    drain: u64,
) -> anyhow::Result<Running> {
    if !embedded {
        return Ok(None);
    }
    // Only the in-process queue runs embedded: no namespace to apply.
    let queue = connect::queue(queue_url, None).await?;
    let (stop, shutdown) = machinery::manual();
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: drain, ..Default::default() }),
        workers: Some((all_workers(format!("worker:{}", hostname())), machinery::pipeline(data_dir, registry, false))),
        ..Default::default()
    };
    let task = tokio::spawn(machinery::serve(store.clone(), queue, parts, None, shutdown));
    Ok(Some((stop, task)))
}

/// The deployment a verb asked for, and the sentence that announces it.
struct Target {
    id: Uuid,
    project: String,
    env: String,
    intro: String,
}

/// Follows a deployment to its end, stops in-process machinery once the
/// clean-up it asked for is done, and says where the release is served.
async fn finish(
    store: &dyn EventStore,
    running: Running,
    target: Target,
    data_dir: &std::path::Path,
    args: &FollowArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Target { id, project, env, intro } = target;
    let mut reporter = report::Reporter::new(report::Style::choose(json, args.quiet));
    reporter.requested(id, &project, &env, &intro);
    let queue = slipway_engine::load::environment(store, &project, &env).await?.queue;
    if let Some(ahead) = queue.first().filter(|first| **first != id) {
        let n = queue.iter().position(|d| *d == id).unwrap_or(1);
        reporter.note(&format!("waiting for deployment {ahead} to finish ({n} ahead in {env})"));
    }
    let logs = args.logs.then(|| follow::Logs::new(data_dir));
    let mut source = follow::StoreSource::new(store, id);
    let ending = follow::follow(&mut source, &mut reporter, id, logs, Duration::from_secs(args.timeout)).await?;
    if let Some((stop, task)) = running {
        // The in-process queue dies with this process: let the clean-up
        // the deployment just asked for (retire or remove) finish first.
        wait_for_cleanup(store, id, ending.succeeded, Duration::from_secs(args.drain + 60)).await;
        let _ = stop.send(());
        task.await.context("the engine panicked")??;
    }
    let routes = verbs::router_urls(store, &project, &env).await?;
    Ok(conclude(&mut reporter, id, &project, &env, &ending, &routes))
}

/// The result of a followed deployment: where it is served, or why it
/// failed (exit status 1).
fn conclude(
    reporter: &mut report::Reporter,
    id: Uuid,
    project: &str,
    env: &str,
    ending: &progress::Ending,
    routes: &[verbs::RouterUrl],
) -> ExitCode {
    let urls: Vec<String> = routes.iter().map(|r| r.url.clone()).collect();
    let value = follow::result_json(id, ending, &urls);
    if ending.succeeded {
        let mut lines = vec![match ending.web_port {
            Some(port) => format!("\n{project} {env} is served at http://127.0.0.1:{port}/"),
            None => format!("\ndeployment {id} succeeded"),
        }];
        lines.extend(routes.iter().map(|r| format!("{project} {env} is routed at {} (router {})", r.url, r.router)));
        reporter.result(true, &lines, value);
        ExitCode::SUCCESS
    } else {
        let step = ending.failed_step.map(|s| s.to_string()).unwrap_or_default();
        let lines = [
            format!("\ndeployment {id} failed at {step}: {}", ending.reason),
            format!("the previous release (if any) keeps serving; details: slipway logs {id}"),
        ];
        reporter.result(false, &lines, value);
        exit::Exit::Failed.into()
    }
}

/// Waits until the commands a finished deployment dispatched have been
/// carried out: the previous release retired, or the failed one's
/// containers removed. Gives up quietly after `limit`.
async fn wait_for_cleanup(store: &dyn EventStore, id: Uuid, succeeded: bool, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut wake = store.wakeups();
    loop {
        let Ok(Some(d)) = slipway_engine::load::deployment(store, id).await else { return };
        let pending = if succeeded { previous_release_pending(store, &d).await } else { !d.containers.is_empty() };
        if !pending || tokio::time::Instant::now() > deadline {
            return;
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(200)).await;
    }
}

/// Is a retire of the release this deployment replaced still outstanding?
async fn previous_release_pending(store: &dyn EventStore, d: &slipway_engine::Deployment) -> bool {
    let env_stream = slipway_proto::event::environment_stream(&d.context.project, &d.context.environment);
    let Ok(recorded) = store.read_stream(&env_stream, 1).await else { return false };
    let finished = |r: &slipway_store::RecordedEvent| match r.envelope.decode::<Event>() {
        Ok(Event::DeploymentFinished(f)) if f.succeeded && !f.containers.is_empty() => Some(f.deployment_id),
        _ => None,
    };
    let Some(mine) = recorded.iter().position(|r| finished(r) == Some(d.id)) else { return false };
    // The release this one replaced: the success recorded just before it.
    let Some(previous) = recorded[..mine].iter().rev().find_map(finished) else { return false };
    let since = recorded[mine].recorded_at;
    let Ok(prev) = store.read_stream(&deployment_stream(previous), 1).await else { return false };
    !prev.iter().any(|r| r.envelope.message_type == "ContainersRemoved" && r.recorded_at >= since)
}

async fn demo(
    store: Arc<dyn EventStore>,
    queue: Arc<dyn slipway_store::queue::Queue>,
    data_dir: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if requests::load_project(&*store, "demo").await?.is_none() {
        let repo = std::env::current_dir()?.display().to_string();
        let new = NewProject {
            name: "demo".into(),
            repository: repo,
            default_branch: "HEAD".into(),
            environments: vec!["test".into()],
            mirror_of: None,
        };
        if let Err(rejection) = requests::create_project(&*store, &verbs::actor(), new).await? {
            bail!("{rejection}");
        }
    }
    let (stop, shutdown) = machinery::manual();
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: 0, ..Default::default() }),
        workers: Some((all_workers("worker".into()), machinery::pipeline(data_dir, None, false))),
        ..Default::default()
    };
    let machinery = tokio::spawn(machinery::serve(store.clone(), queue, parts, None, shutdown));
    let request = DeployRequest {
        project: "demo".into(),
        environment: "test".into(),
        git_ref: None,
        mode: BuildMode::Local,
        no_cache: false,
        run_release: true,
        dry_run: true,
    };
    let id = match requests::request_deployment(&*store, &verbs::actor(), request).await? {
        Ok(id) => id,
        Err(rejection) => return Err(exit::rejected(rejection)),
    };
    println!("deployment {id} (dry run) on the {} store\n", store.backend());
    let mut reporter = report::Reporter::new(report::Style::Events);
    let ending = follow::follow(&mut follow::StoreSource::new(&*store, id), &mut reporter, id, None, timeout).await?;
    let _ = stop.send(());
    machinery.await.context("the engine panicked")??;
    let report = chain::verify(&store.chain_rows().await?);
    println!(
        "\n{}; audit: {} events in {} streams, hash chains {}",
        if ending.succeeded { "deployment succeeded" } else { "deployment failed" },
        report.events,
        report.streams,
        if report.is_intact() { "intact" } else { "BROKEN" }
    );
    Ok(if ending.succeeded && report.is_intact() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
