//! The command line: every verb, option and flag `slipway` takes, as clap
//! types. Their doc comments are the `--help` text (and the completions),
//! so they are documentation users read; `main.rs` dispatches on them and
//! the verb files do the work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use slipway_engine::driver::DriverOptions;
use slipway_proto::Step;
use uuid::Uuid;

use crate::{audit, certs, domains, exit, secrets, source_args, tokens, verbs};

/// `slipway --version`: the crate's version and the commit it was built
/// from (`build.rs`; `unknown commit` for a build without `.git`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SLIPWAY_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "slipway",
    version = VERSION,
    about = "Slipway: a self-hosted deployment control panel built on an event log",
    long_about = "Slipway deploys an application's Git repository: it checks the backing services, checks out \
the code, builds the Docker image, starts the containers, runs the release commands, starts the extra \
processes and checks that the app answers, keeping the old release serving if anything fails. Every fact \
is an event in an append-only, hash-chained log.\n\nWith no options everything runs in this process on \
the embedded default: SQLite at .slipway/slipway.db and an in-process queue.",
    after_help = exit::HELP
)]
pub struct Cli {
    /// The event store: sqlite://PATH (embedded default) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, global = true, env = "SLIPWAY_DATABASE", hide_env_values = true, default_value = "sqlite://.slipway/slipway.db")]
    pub database: String,
    /// The command queue: `memory` (in-process, embedded default) or amqp://USER:PASSWORD@HOST:PORT/VHOST.
    #[arg(long, global = true, env = "SLIPWAY_QUEUE", hide_env_values = true, default_value = "memory")]
    pub queue: String,
    /// The build farm's image registry (HOST:PORT): workers push each build
    /// there and pull a missing image by digest, so builds and containers
    /// may run on different hosts. Without it everything stays on one Docker engine.
    #[arg(long, global = true, env = "SLIPWAY_REGISTRY", hide_env_values = true)]
    pub registry: Option<String>,
    /// Workers pull each build's base images first (off by default: with no
    /// reachable registry the build then fails with the registry's error).
    #[arg(long, global = true, env = "SLIPWAY_PULL_BASE_IMAGES")]
    pub pull_base_images: bool,
    /// PostgreSQL schema for Slipway's tables (several installations can share a database).
    #[arg(long, global = true, env = "SLIPWAY_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// Prefix for RabbitMQ queue names (several installations can share a vhost).
    #[arg(long, global = true, env = "SLIPWAY_QUEUE_NAMESPACE")]
    pub queue_namespace: Option<String>,
    /// Where workers keep checkouts and build/release logs.
    #[arg(long, global = true, env = "SLIPWAY_DATA_DIR", default_value = ".slipway")]
    pub data_dir: PathBuf,
    /// The key setting values are sealed with at rest (64 hex characters in
    /// a file only its owner may read; `slipway secrets keygen FILE`). The
    /// server and the workers that run containers need the same file; the
    /// embedded store defaults to DATA_DIR/secrets.key.
    #[arg(long, global = true, env = "SLIPWAY_SECRETS_KEY_FILE", value_name = "FILE")]
    pub secrets_key: Option<PathBuf>,
    /// An earlier key that still opens values sealed before a rotation (repeatable).
    #[arg(long, global = true, value_name = "FILE")]
    pub old_secrets_key: Vec<PathBuf>,
    /// Print JSON instead of text: one document for the read verbs (status,
    /// releases, deployments, history, diff, logs, events, workers, routers,
    /// project list/show, env list, images prune, audit verify), JSON Lines
    /// (`{"kind": "requested"|"event"|"log"|"note"|"result", ...}`) while following a deployment.
    #[arg(long, global = true)]
    pub json: bool,
    /// A Slipway server's HTTP API (https://HOST[:PORT], or http://HOST:PORT
    /// on loopback when a token is sent): deploy, status,
    /// deployments, releases, history, rollback, replay, cancel, approve,
    /// reject, domain, cert, project, env and preview then go through it
    /// instead of the database and queue.
    #[arg(long, global = true, env = "SLIPWAY_SERVER", hide_env_values = true, value_name = "URL")]
    pub server: Option<String>,
    /// A PEM file with the CA certificate that signed an https:// --server's
    /// certificate (a private CA), trusted besides the system's roots.
    #[arg(long, global = true, env = "SLIPWAY_SERVER_CA", value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// The API token sent to --server (`slipway token create` on the server).
    #[arg(long, global = true, env = "SLIPWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (server, all-in-one,
    /// worker and router; unauthenticated: keep it on loopback or a private network).
    #[arg(long, global = true, env = "SLIPWAY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// and the commands each is running. Workers that stopped over a day
    /// ago are left out unless --all; those an embedded command ran for
    /// its own deployment are gone once it ends.
    Workers {
        /// Also the workers that stopped over a day ago.
        #[arg(long)]
        all: bool,
    },
    /// The Docker Swarm's nodes (ask a manager's engine: DOCKER_HOST):
    /// address, state, availability, role, labels and the tasks each runs;
    /// `drain` and `activate` take a node out of service and back.
    Hosts {
        #[command(subcommand)]
        cmd: Option<HostsCmd>,
    },
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
        /// or raise this for steps that mostly wait (watches and
        /// retirements always run up to 256 at once).
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
    /// ENV now: a new deployment of its commit, image and settings (the
    /// image re-used, nothing built) with release commands on, in new
    /// containers, health-checked and cut over with no downtime.
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
    /// A deployment's events with its build and release logs. Through
    /// --server: the build, release and failure output the server holds.
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
    /// TLS certificates the routers serve: add (uploaded), remove, list.
    #[command(subcommand)]
    Cert(certs::CertCmd),
    /// Notifications of deployments to webhooks, Slack and Discord: add,
    /// list, remove, deliveries, redeliver, replay. The server sends them.
    #[command(subcommand)]
    Notifications(crate::notifications::NotificationsCmd),
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
pub struct AgentArgs {
    /// Seconds between the host agent's reconciliations of what Docker runs
    /// with what is recorded (it also reconciles at start and when the
    /// Docker daemon comes back); 0 runs no host agent (no reconciliation,
    /// no supervision).
    #[arg(long, default_value_t = 30)]
    pub reconcile_every: u64,
    /// Seconds an environment must have been settled (no deployment
    /// finished) before the host agent removes containers of releases that
    /// should not run. Keep it above the engine's --drain plus a stop.
    #[arg(long, default_value_t = 120)]
    pub stray_grace: u64,
}

impl AgentArgs {
    pub fn options(&self) -> Option<slipway_workers::host::AgentOptions> {
        (self.reconcile_every > 0).then(|| slipway_workers::host::AgentOptions {
            every: Duration::from_secs(self.reconcile_every),
            grace: Duration::from_secs(self.stray_grace),
        })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Seconds a retired release keeps serving in-flight requests before it is stopped.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Seconds a traffic switch waits for every registered router to
    /// acknowledge; past it the deployment fails and the route goes back.
    #[arg(long, default_value_t = 15)]
    pub switch_timeout: u64,
    /// Seconds the engine waits for a step's outcome (a lost command, a
    /// worker that died) before dispatching it again, up to 3 attempts.
    #[arg(long, default_value_t = 900)]
    pub step_timeout: u64,
    /// The same for builds.
    #[arg(long, default_value_t = 3600)]
    pub build_timeout: u64,
    /// Seconds a started build may go without its worker's heartbeat (one
    /// every 5 s) before it is dispatched again under the same command id:
    /// a hung worker or a vanished host is noticed long before --build-timeout.
    /// Run builders with `--prefetch 1`: a hung builder holding spare credit
    /// would be handed the re-dispatch as well.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_timeout: u64,
    /// Seconds between the engine's sweeps for preview environments past
    /// their time to live (no push for the rule's --ttl): each is removed.
    #[arg(long, default_value_t = 60)]
    pub preview_sweep: u64,
    /// Where the HTTP API listens. Every request needs a token (`slipway token create`); off loopback
    /// the API refuses to start until one is issued. It speaks plain HTTP: put TLS in front of it.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: std::net::SocketAddr,
    /// An ACME directory URL: the engine then obtains and renews a
    /// certificate for every custom domain over HTTP-01 (or --acme-challenge), answered by the
    /// routers (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory).
    #[arg(long = "acme-directory", env = "SLIPWAY_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// How the routers prove a domain to the CA: http-01 (a request to their HTTP port, 80) or
    /// tls-alpn-01 (a TLS handshake on their HTTPS port, 443, for installations where port 80 is shut)
    #[arg(long = "acme-challenge", env = "SLIPWAY_ACME_CHALLENGE", value_enum, default_value_t = AcmeChallenge::Http01)]
    pub acme_challenge: AcmeChallenge,
    /// The ACME account's contact e-mail.
    #[arg(long = "acme-email", env = "SLIPWAY_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// A PEM CA certificate trusted for the ACME directory's own TLS (a
    /// private or test CA such as pebble's).
    #[arg(long = "acme-ca-bundle", env = "SLIPWAY_ACME_CA_BUNDLE")]
    pub acme_ca_bundle: Option<std::path::PathBuf>,
    /// Seconds between looks for certificates due (a new domain is seen at once).
    #[arg(long = "acme-check-every", default_value_t = 60)]
    pub acme_check_every: u64,
    /// Seconds after a failed ACME order before the domain is tried again.
    #[arg(long = "acme-retry", default_value_t = 600)]
    pub acme_retry: u64,
    /// A program that publishes DNS-01 TXT records, run as `PROGRAM set|clear
    /// _acme-challenge.NAME VALUE`: wildcard domains then get certificates
    /// over ACME too (HTTP-01 cannot prove a wildcard)
    #[arg(long = "acme-dns-hook", env = "SLIPWAY_ACME_DNS_HOOK", value_name = "PROGRAM")]
    pub acme_dns_hook: Option<std::path::PathBuf>,
    /// Seconds to wait after the DNS hook's `set` before the CA is asked to
    /// look (DNS propagation)
    #[arg(long = "acme-dns-propagation", default_value_t = 10)]
    pub acme_dns_propagation: u64,
}

/// `--acme-challenge`: the ACME challenge exact names are proved with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AcmeChallenge {
    #[value(name = "http-01")]
    Http01,
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

impl ServeArgs {
    pub fn acme(&self) -> Option<slipway_engine::acme::AcmeOptions> {
        let mut options = slipway_engine::acme::AcmeOptions::new(self.acme_directory.clone()?);
        options.method = match self.acme_challenge {
            AcmeChallenge::Http01 => slipway_proto::event::ChallengeMethod::Http01,
            AcmeChallenge::TlsAlpn01 => slipway_proto::event::ChallengeMethod::TlsAlpn01,
        };
        options.email = self.acme_email.clone();
        options.ca_bundle = self.acme_ca_bundle.clone();
        options.check_every = Duration::from_secs(self.acme_check_every.max(1));
        options.retry_after = Duration::from_secs(self.acme_retry.max(1));
        options.dns_hook = self.acme_dns_hook.clone();
        options.dns_propagation = Duration::from_secs(self.acme_dns_propagation);
        Some(options)
    }

    pub fn driver(&self) -> DriverOptions {
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
pub struct RouterArgs {
    /// Where the router listens for HTTP.
    #[arg(long = "router", visible_alias = "http-listen", env = "SLIPWAY_ROUTER_LISTEN", default_value = "127.0.0.1:7880")]
    pub router_listen: std::net::SocketAddr,
    /// Where the router listens for HTTPS (off by default; also the
    /// [router] https_listen key). Certificates come from `slipway cert`
    /// and ACME.
    #[arg(long = "https-listen", env = "SLIPWAY_ROUTER_HTTPS_LISTEN")]
    pub https_listen: Option<std::net::SocketAddr>,
    /// Host names are <project>-<env>.<domain>.
    #[arg(long, env = "SLIPWAY_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// The router's id, stable across restarts (default: <hostname>-<port>).
    #[arg(long = "router-id", env = "SLIPWAY_ROUTER_ID")]
    pub router_id: Option<String>,
    /// A TOML file whose [router] section sets the router's connection caps,
    /// timeouts and trusted proxies (README: "The router's configuration").
    #[arg(long = "router-config", env = "SLIPWAY_ROUTER_CONFIG")]
    pub router_config: Option<std::path::PathBuf>,
    /// Seconds the router may write nothing to the database before the
    /// engine expires it and traffic switches stop waiting for it (it writes
    /// a heartbeat every third of it). Back, it reads every route and
    /// registers again.
    #[arg(long, env = "SLIPWAY_ROUTER_LEASE", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease: u64,
}

#[derive(Args)]
pub struct FollowArgs {
    /// Stop following after this long (exit status 6): seconds, or with a
    /// unit (`90s`, `30m`, `2h`). The deployment goes on where a server
    /// runs it; embedded (no --queue), its workers run in this command, so
    /// it is cancelled.
    #[arg(long, default_value = "1800", value_parser = slipway_engine::protection::parse_duration)]
    pub timeout: u64,
    /// Also show the build log as it is written and each release command's log.
    #[arg(long)]
    pub logs: bool,
    /// No progress: only the result (where it is served, or why it failed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Seconds the replaced release keeps serving before it is stopped
    /// (in-process runs only; a server has its own --drain).
    #[arg(long, default_value_t = 0)]
    pub drain: u64,
}

#[derive(Subcommand, Clone)]
pub enum ProjectCmd {
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
        /// At most this many, 1 to 500 (as the API takes).
        #[arg(long, default_value_t = 50, value_parser = page_limit)]
        limit: usize,
        /// Only projects whose name sorts after this one (the last of the page before).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
    },
    /// A project: its repository and how workers reach it (credential
    /// names, never values; trusted host keys), its environments with their
    /// settings count, and its auto-deploy and preview rules.
    Show { name: String },
    /// Remove a project for good (admin): every environment's deployments
    /// are cancelled, containers retired and route removed. Its history
    /// stays in the log and its name is never created again. Refused while
    /// a mirror builds from it or a domain routes to it.
    Remove {
        name: String,
        /// Yes, take it down (without it nothing is done).
        #[arg(long)]
        yes: bool,
    },
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

#[derive(Subcommand, Clone)]
pub enum PreviewCmd {
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

#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct PreviewTriggerArgs {
    /// Every pull request (merge request) gets `pr-<number>`.
    #[arg(long)]
    pub pull_requests: bool,
    /// Branches matching GLOB (`feature/*`) get an environment named after the branch.
    #[arg(long, value_name = "GLOB")]
    pub branches: Option<String>,
}

impl PreviewTriggerArgs {
    pub fn trigger(self) -> slipway_proto::event::PreviewTrigger {
        match self.branches {
            Some(glob) => slipway_proto::event::PreviewTrigger::Branches(glob),
            None => slipway_proto::event::PreviewTrigger::PullRequests,
        }
    }
}

#[derive(Subcommand, Clone)]
pub enum PreviewsCmd {
    /// Approve the head commit of a fork's pull request preview (ENV, e.g.
    /// pr-42) and deploy it. Recorded with who approved it; each new head
    /// commit of the pull request needs its own approval.
    Approve { project: String, env: String },
    /// Remove a preview now: its deployments are cancelled, its containers
    /// retired and its route removed.
    Remove { project: String, env: String },
}

#[derive(Subcommand, Clone)]
pub enum WebhookCmd {
    /// Generate a new webhook secret and print it once.
    Rotate,
}

#[derive(Subcommand, Clone)]
pub enum AutoDeployCmd {
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
pub enum ProjectionsCmd {
    /// Fold every stream again from the log, report any history that cannot
    /// be read or followed, print a digest of the state, and move the
    /// engine's subscription checkpoint to the start: the next engine to
    /// start (restart running ones) decides again over the whole log, and
    /// appends nothing (decisions are idempotent). The read models
    /// (projects, environments, deployments) are emptied and refilled from the log.
    Rebuild,
}

#[derive(Subcommand)]
pub enum HostsCmd {
    /// Drain a swarm node (Swarm's `drain` availability): Swarm places its
    /// replicas on the other nodes. Waits until nothing of Slipway's runs
    /// there, every serving release runs all its replicas, and the routers
    /// acknowledged routes that no longer go there. Recorded with who asked.
    Drain {
        /// The node's host name, id (or a prefix of it) or address.
        name: String,
        /// How long to wait, in seconds, before giving up (the node stays draining).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Let Swarm place replicas on a drained node again (nothing moves
    /// back by itself; new replicas may go there). Recorded with who asked.
    Activate {
        /// The node's host name, id (or a prefix of it) or address.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ImagesCmd {
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

#[derive(Subcommand, Clone)]
pub enum EnvCmd {
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
    /// Add an environment to a project (admin): it starts with no settings
    /// and nothing deployed; `<project>-<env>` becomes its host name.
    Add {
        project: String,
        env: String,
    },
    /// Remove an environment for good (admin): its queued and running
    /// deployments are cancelled, its containers retired and its route
    /// removed. Refused while an auto-deploy rule deploys to it, a preview
    /// rule or preview inherits its settings, or a domain routes to it.
    /// Its protection and freeze windows stay, should it be added again.
    Remove {
        project: String,
        env: String,
        /// Yes, take it down (without it nothing is done).
        #[arg(long)]
        yes: bool,
    },
    /// Require approvals: a deployment to ENV waits (`awaiting approval`)
    /// until this many people with deploy scope, other than its requester,
    /// approve it (`slipway approve`); at most 10; `--approvals 0` lifts it.
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
pub struct DeployArgs {
    pub project: String,
    pub env: String,
    /// Branch, tag or commit (default: the project's branch).
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Local mode: layer cache on, release commands only with --migrate
    /// (the default when everything runs in this process).
    #[arg(long, conflicts_with = "cloud")]
    pub local: bool,
    /// Cloud mode: no layer cache, release commands always run
    /// (the default with a shared server and workers).
    #[arg(long)]
    pub cloud: bool,
    /// Build without the layer cache, and build even if a release already
    /// has an image of this commit.
    #[arg(long)]
    pub no_cache: bool,
    /// Run the release commands in local mode too.
    #[arg(long)]
    pub migrate: bool,
    /// Walk the pipeline without side effects.
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy inside a freeze window anyway (admins), recording why.
    #[arg(long, value_name = "REASON")]
    pub override_freeze: Option<String>,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Subcommand)]
pub enum DbCmd {
    /// Apply this version's migrations, with the owner's credentials in
    /// --database: the only step that uses them. Every other command logs
    /// in as a role that owns nothing and has the writer grants, and refuses
    /// a superuser, the owner, or a database at another migration.
    Migrate {
        /// Let this login role (created by you: CREATE ROLE NAME LOGIN
        /// PASSWORD '...') act as the writer role: the role to run Slipway as.
        /// It may also record API tokens: the server's login, an operator's.
        #[arg(long, value_name = "ROLE")]
        grant_to: Option<String>,
        /// Let this login role act as the writer role but never record API
        /// tokens: a worker host's own login (repeatable).
        #[arg(long, value_name = "ROLE")]
        grant_worker: Vec<String>,
    },
}

/// The most a page holds, as the API's `limit` allows.
pub const MAX_PAGE: usize = 500;

/// A `--limit`: 1 to `MAX_PAGE`, the same locally as through the API.
pub fn page_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {MAX_PAGE}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::{Cli, Command};

    /// The router's HTTP address, as `slipway router ARGS` parses it.
    fn router_listen(args: &[&str]) -> std::net::SocketAddr {
        match Cli::try_parse_from([&["slipway", "router"][..], args].concat()).unwrap().command {
            Command::Router(router) => router.router_listen,
            _ => unreachable!("parsed as the router verb"),
        }
    }

    #[test]
    fn the_routers_http_address_is_named_like_its_https_one_too() {
        assert_eq!(router_listen(&["--http-listen", "0.0.0.0:80"]), "0.0.0.0:80".parse().unwrap());
        assert_eq!(router_listen(&["--router", "127.0.0.1:81"]), "127.0.0.1:81".parse().unwrap());
    }
}
