//! The end-to-end harness: Slipway's machinery (driver, relay, workers with
//! the real pipeline) on real services, an app repository made with git2,
//! and helpers to deploy, fetch pages and list containers. Every test gets
//! its own schema, queue namespace, data directory and project name, and a
//! missing service fails the test with its name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use slipway_engine::driver::DriverOptions;
use slipway_engine::lease::DEFAULT_LEASE;
use slipway_engine::requests::{self, DeployRequest, NewProject, SettingValue};
use slipway_engine::{Deployment, Status};
use slipway_node::{Parts, RouterOptions, RouterPart};
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_proto::Event;
use slipway_router::ServeOptions;
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::{Consumer, DeadLetter, Queue, QueueError, QueueMessage};
use slipway_store::relay::RelayOptions;
use slipway_store::{EventStore, PgStore, SqliteStore};
use slipway_workers::steps::pipeline::Pipeline;
use slipway_workers::steps::Runtime;
use slipway_workers::WorkerOptions;
use uuid::Uuid;

pub mod edge;
pub mod git_servers;
pub mod load;
pub mod swarm;
#[path = "../../router/tests/support/tls.rs"]
pub mod tls;
pub mod webdriver;

pub use slipway_support::{amqp_url, eventually, pg_app_url, pg_url, pg_worker_url};

/// Fails the test unless a Docker engine answers.
pub fn require_docker() {
    let ok = std::process::Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "Docker is not reachable (docker info failed); run `scripts/services` first");
}

/// Which backends a harness runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    PostgresRabbit,
    Embedded,
}

pub struct Harness {
    pub store: Arc<dyn EventStore>,
    pub queue: Arc<dyn Queue>,
    pub data: tempfile::TempDir,
    pub project: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    schema: Option<String>,
    router: Option<RouterTask>,
    router_addr: std::net::SocketAddr,
    /// The router's HTTPS listener, once `serve_https` gave it one.
    https_addr: Option<std::net::SocketAddr>,
}

pub(crate) type RouterTask = (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), slipway_node::serve::NodeError>>);

impl Harness {
    pub async fn start(backends: Backends) -> Harness {
        Self::start_with(backends, |q| q).await
    }

    /// Starts with the queue wrapped by `wrap` (e.g. to duplicate deliveries).
    pub async fn start_with(backends: Backends, wrap: impl FnOnce(Arc<dyn Queue>) -> Arc<dyn Queue>) -> Harness {
        Self::start_full(backends, wrap, DriverOptions { drain_seconds: 0, switch_timeout: Duration::from_secs(10), ..Default::default() })
            .await
    }

    /// Starts with the engine's drain and switch timeout given.
    pub async fn start_engine(backends: Backends, engine: DriverOptions) -> Harness {
        Self::start_full(backends, |q| q, engine).await
    }

    /// Starts with the queue wrapped by `wrap` and the engine's options given.
    pub async fn start_full(backends: Backends, wrap: impl FnOnce(Arc<dyn Queue>) -> Arc<dyn Queue>, engine: DriverOptions) -> Harness {
        Self::start_with_agent(backends, wrap, engine, Some(slipway_workers::host::AgentOptions::default())).await
    }

    /// Starts with the host agent's options given (`None`: no agent).
    pub async fn start_with_agent(
        backends: Backends,
        wrap: impl FnOnce(Arc<dyn Queue>) -> Arc<dyn Queue>,
        engine: DriverOptions,
        agent: Option<slipway_workers::host::AgentOptions>,
    ) -> Harness {
        Harness::start_on(backends, wrap, engine, agent, false, Pipeline::new).await
    }

    /// A harness whose workers run the apps on the swarm their engine
    /// (DOCKER_HOST) manages, pushing builds to `registry`; no host agent,
    /// the swarm watcher instead.
    pub async fn start_swarm(registry: &str) -> Harness {
        let registry = registry.to_string();
        Harness::start_on(
            Backends::Embedded,
            |q| q,
            DriverOptions::default(),
            None,
            true,
            move |runtime| {
                Pipeline::on(Runtime { registry: Some(registry), ..runtime }, slipway_workers::steps::runtime::RuntimeKind::Swarm)
            },
        )
        .await
    }

    async fn start_on(
        backends: Backends,
        wrap: impl FnOnce(Arc<dyn Queue>) -> Arc<dyn Queue>,
        engine: DriverOptions,
        agent: Option<slipway_workers::host::AgentOptions>,
        swarm_watch: bool,
        pipeline: impl FnOnce(Runtime) -> Pipeline,
    ) -> Harness {
        require_docker();
        let data = tempfile::tempdir().expect("temp dir");
        let tag = Uuid::now_v7().simple().to_string();
        let (store, queue, schema): (Arc<dyn EventStore>, Arc<dyn Queue>, _) = match backends {
            Backends::PostgresRabbit => {
                let schema = format!("e2e_{tag}");
                let url = pg_url();
                let store = PgStore::connect(&url, PgOptions { schema: Some(schema.clone()), ..Default::default() })
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {} ({e}); run `scripts/services`", redact_url(&url)));
                let rabbit = RabbitQueue::connect(&amqp_url(), RabbitOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("RabbitMQ is not reachable ({e}); run `scripts/services`"));
                (Arc::new(store), Arc::new(Namespaced::new(Arc::new(rabbit), format!("t{tag}"))), Some(schema))
            }
            Backends::Embedded => {
                let store = SqliteStore::open(&data.path().join("slipway.db")).await.expect("SQLite store");
                (Arc::new(store), Arc::new(MemoryQueue::default()), None)
            }
        };
        let queue = wrap(queue);
        let (stop, shutdown) = slipway_node::manual();
        let runtime =
            Runtime { workspaces: data.path().join("workspaces"), logs: data.path().join("logs"), registry: None, pull_base_images: false };
        let parts = Parts {
            engine: Some(engine),
            relay: RelayOptions { poll: Duration::from_millis(100), ..Default::default() },
            workers: Some((
                WorkerOptions { actor: "worker:test".into(), swarm_watch, agent, ..Default::default() },
                Arc::new(pipeline(runtime)),
            )),
            router: None,
            poller: None,
            acme: None,
            // The notifier runs beside every e2e deployment: nothing it does may slow one.
            notifier: Some(Default::default()),
        };
        let node = tokio::spawn(slipway_node::serve(store.clone(), queue.clone(), parts, shutdown));
        let mut harness = Harness {
            store,
            queue,
            data,
            project: format!("e2e-{}", &tag[tag.len() - 10..]),
            stop: Some(stop),
            tasks: vec![tokio::spawn(async move { node.await.expect("node task").expect("node") })],
            schema,
            router: None,
            router_addr: "127.0.0.1:0".parse().expect("address"),
            https_addr: None,
        };
        harness.start_router().await;
        harness
    }

    /// Starts the harness's router (id `test-router`) on its address (a
    /// free port the first time, the same one on a restart), and on its
    /// HTTPS address too once `serve_https` gave it one.
    pub async fn start_router(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.router_addr).await.expect("bind the router");
        self.router_addr = listener.local_addr().expect("router address");
        let https = match self.https_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.expect("bind the router's HTTPS listener")),
            None => None,
        };
        let options =
            RouterOptions { router_id: "test-router".into(), domain: "localhost".into(), listen: self.router_addr, lease: DEFAULT_LEASE };
        let part = RouterPart { listener, https, options, proxy: ServeOptions::default() };
        let (stop, shutdown) = slipway_node::manual();
        let parts = Parts { router: Some(part), ..Default::default() };
        let task = tokio::spawn(slipway_node::serve(self.store.clone(), self.queue.clone(), parts, shutdown));
        self.router = Some((stop, task));
    }

    /// Restarts the router with an HTTPS listener as well, on a free
    /// loopback port, and returns that port's address. It serves the
    /// certificates stored in the harness's store (`slipway cert add`).
    pub async fn serve_https(&mut self) -> std::net::SocketAddr {
        self.stop_router().await;
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = free.local_addr().expect("address");
        drop(free);
        self.https_addr = Some(addr);
        self.start_router().await;
        addr
    }

    /// Stops the router cleanly (it deregisters).
    pub async fn stop_router(&mut self) {
        if let Some((stop, task)) = self.router.take() {
            let _ = stop.send(());
            task.await.expect("router task").expect("router");
        }
    }

    /// Kills the router without letting it deregister, as `kill -9` would.
    pub async fn kill_router(&mut self) {
        if let Some((_stop, task)) = self.router.take() {
            task.abort();
            // Cancelled: its listener and connections are dropped with it.
            let _ = task.await;
        }
    }

    /// The PostgreSQL schema this harness's store lives in (`None`: SQLite).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The router's address, for requests with `Host: host(env)`.
    pub fn router_addr(&self) -> std::net::SocketAddr {
        self.router_addr
    }

    /// The host name the router serves an environment under.
    pub fn host(&self, env: &str) -> String {
        slipway_node::host_name(&self.project, env, "localhost")
    }

    /// GETs `/` of an environment through the router.
    pub async fn routed_page(&self, env: &str) -> Result<(u16, String), String> {
        get_via(self.router_addr, &self.host(env), "/", Duration::from_secs(10)).await
    }

    pub async fn create_project(&self, repo: &Path) {
        create_project(&*self.store, &self.project, &repo.display().to_string(), &["test", "live"]).await;
    }

    pub async fn set(&self, env: &str, key: &str, value: &str, secret: bool) {
        let set = vec![SettingValue { key: key.into(), value: value.into(), secret }];
        requests::change_settings(&*self.store, "test", &self.project, env, set, vec![]).await.expect("store").expect("settings");
    }

    /// Requests a deployment (local mode with release commands, so builds
    /// use the layer cache and tests stay quick) and waits for its end.
    pub async fn deploy(&self, env: &str, git_ref: &str) -> Deployment {
        self.deploy_with(env, git_ref, BuildMode::Local, true).await
    }

    pub async fn deploy_with(&self, env: &str, git_ref: &str, mode: BuildMode, run_release: bool) -> Deployment {
        let id = self.request(env, git_ref, mode, run_release).await;
        self.wait_finished(id, Duration::from_secs(120)).await
    }

    /// Requests a deployment of another project (a mirror) in cloud mode.
    pub async fn request_for(&self, project: &str, env: &str, git_ref: &str) -> Uuid {
        request_deployment(&*self.store, project, env, git_ref, BuildMode::Cloud, true).await
    }

    /// Requests a deployment without waiting for it.
    pub async fn request(&self, env: &str, git_ref: &str, mode: BuildMode, run_release: bool) -> Uuid {
        request_deployment(&*self.store, &self.project, env, git_ref, mode, run_release).await
    }

    /// Requests a rollback (to `to`, or the release before the serving one)
    /// and waits for its end; returns it with the warnings given.
    pub async fn rollback(&self, env: &str, to: Option<Uuid>) -> (Deployment, Vec<String>) {
        let r = requests::request_rollback(&*self.store, "test", &self.project, env, to).await.expect("store").expect("rollback requested");
        (self.wait_finished(r.deployment_id, Duration::from_secs(120)).await, r.warnings)
    }

    pub async fn deployment(&self, id: Uuid) -> Deployment {
        slipway_engine::load::deployment(&*self.store, id).await.expect("a readable, legal history").expect("a deployment")
    }

    pub async fn events(&self, id: Uuid) -> Vec<Event> {
        let recorded = self.store.read_stream(&deployment_stream(id), 1).await.expect("read");
        recorded.iter().map(|r| r.envelope.decode().expect("decodable")).collect()
    }

    pub async fn wait_finished(&self, id: Uuid, limit: Duration) -> Deployment {
        eventually(&format!("deployment {id} to finish"), limit, || async {
            let d = self.deployment(id).await;
            d.is_finished().then_some(d)
        })
        .await
    }

    /// Waits until no container of deployment `id` exists.
    pub async fn wait_no_containers(&self, id: Uuid) {
        eventually(&format!("deployment {id}'s containers to be removed"), Duration::from_secs(60), || async {
            containers_with_label(&format!("slipway.deployment={id}")).is_empty().then_some(())
        })
        .await
    }

    pub async fn shutdown(mut self) {
        self.stop_router().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        remove_containers_with_label(&format!("slipway.project={}", self.project));
        // Quorum queues are heavyweight on the broker: leave none behind.
        for step in slipway_proto::Step::ALL {
            let _ = self.queue.delete(&step.queue()).await;
        }
        if let Some(schema) = &self.schema {
            if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A failed test leaves no containers behind.
        remove_containers_with_label(&format!("slipway.project={}", self.project));
    }
}

/// Creates project `name` from `repository` (branch main) with these environments.
pub async fn create_project(store: &dyn EventStore, name: &str, repository: &str, environments: &[&str]) {
    let new = NewProject {
        name: name.into(),
        repository: repository.into(),
        default_branch: "main".into(),
        environments: environments.iter().map(|e| e.to_string()).collect(),
        mirror_of: None,
    };
    requests::create_project(store, "test", new).await.expect("store").expect("project created");
}

/// Requests a deployment of `project`'s `env` at `git_ref` (the default
/// branch when empty), recorded by the actor "test".
pub async fn request_deployment(
    store: &dyn EventStore,
    project: &str,
    env: &str,
    git_ref: &str,
    mode: BuildMode,
    run_release: bool,
) -> Uuid {
    let req = DeployRequest {
        project: project.into(),
        environment: env.into(),
        git_ref: (!git_ref.is_empty()).then(|| git_ref.into()),
        mode,
        no_cache: false,
        run_release,
        dry_run: false,
    };
    requests::request_deployment(store, "test", req).await.expect("store").expect("deployment requested")
}

/// Every file under `dir` whose bytes contain `needle` (a secret that must not be there).
pub fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

/// The failure of a finished deployment, or a panic saying it succeeded.
pub fn failure(d: &Deployment) -> (slipway_proto::Step, String) {
    match &d.status {
        Status::Failed { step, reason } => (*step, reason.clone()),
        other => panic!("deployment {} did not fail: {other:?}", d.id),
    }
}

/// Names of containers (running or not) carrying `label` (`key=value`).
pub fn containers_with_label(label: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("label={label}"), "--format", "{{.Names}}"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

pub fn remove_containers_with_label(label: &str) {
    let names = containers_with_label(label);
    if !names.is_empty() {
        let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&names).output();
    }
}

/// GETs `path` from `addr` with a `Host` header: one request on its own
/// connection, status and body.
pub async fn get_via(addr: std::net::SocketAddr, host: &str, path: &str, limit: Duration) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(|e| format!("receive: {e}"))?;
        parse_response(&raw)
    };
    tokio::time::timeout(limit, exchange).await.map_err(|_| format!("no answer within {limit:?}"))?
}

/// Status and body of a raw HTTP/1.1 response read to the end (the body
/// de-chunked when it is chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| format!("no status line: {head:?}"))?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok((status, out))
}

/// GETs a page from a container's loopback port.
pub async fn page(port: u16) -> Result<(u16, String), String> {
    slipway_workers::http::get_text(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5)).await
}

/// An app's Git repository in a temp dir, committed with git2.
pub struct AppRepo {
    pub dir: tempfile::TempDir,
}

impl AppRepo {
    pub fn new() -> AppRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        git2::Repository::init_opts(dir.path(), git2::RepositoryInitOptions::new().initial_head("main")).expect("git init");
        AppRepo { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Writes `files` (path -> contents) and commits everything on main.
    pub fn commit(&self, files: &BTreeMap<String, Vec<u8>>, message: &str) -> String {
        for (path, contents) in files {
            let full = self.dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, contents).expect("write");
            if path == "busybox" || path.contains("cgi-bin/") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            }
        }
        let repo = git2::Repository::open(self.dir.path()).expect("open");
        let mut index = repo.index().expect("index");
        index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).expect("add");
        index.write().expect("write index");
        let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
        let sig = git2::Signature::now("test", "test@localhost").expect("signature");
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
        oid.to_string()
    }
}

impl Default for AppRepo {
    fn default() -> Self {
        Self::new()
    }
}

/// The `[web] min_ready` the test apps get unless their `slipway.toml` sets
/// one: busybox httpd is ready at once, and the default (3 s) would add
/// three seconds to every deployment of the suite without testing anything.
pub const TEST_MIN_READY: &str = "300ms";

/// `slipway_toml` with `[web] watch = 0` and `min_ready = TEST_MIN_READY`
/// unless it sets them: most tests are about something else, and each
/// deployment would otherwise wait out a 60 s watch and a 3 s settling period.
pub fn quick_config(slipway_toml: &str) -> String {
    let mut defaults = String::new();
    if !slipway_toml.contains("watch") {
        defaults.push_str("watch = 0\n");
    }
    if !slipway_toml.contains("min_ready") {
        defaults.push_str(&format!("min_ready = \"{TEST_MIN_READY}\"\n"));
    }
    match slipway_toml.find("[web]\n") {
        Some(at) => {
            let end = at + "[web]\n".len();
            format!("{}{defaults}{}", &slipway_toml[..end], &slipway_toml[end..])
        }
        None => format!("[web]\n{defaults}\n{slipway_toml}"),
    }
}

/// The files of a busybox web app answering `body` on `/`, configured by
/// `slipway_toml` (through `quick_config`), optionally with extra Dockerfile lines.
pub fn busybox_app(body: &str, slipway_toml: &str, extra_dockerfile: &str) -> BTreeMap<String, Vec<u8>> {
    let slipway_toml = quick_config(slipway_toml);
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{extra_dockerfile}\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n"
    );
    BTreeMap::from([
        ("busybox".to_string(), busybox),
        ("Dockerfile".to_string(), dockerfile.into_bytes()),
        (".dockerignore".to_string(), b".git\n".to_vec()),
        ("www/index.html".to_string(), format!("{body}\n").into_bytes()),
        ("slipway.toml".to_string(), slipway_toml.into_bytes()),
    ])
}

/// A queue that publishes every message twice: each command is delivered
/// twice, as after a relay crash or a broker redelivery.
pub struct Duplicating(pub Arc<dyn Queue>);

#[async_trait]
impl Queue for Duplicating {
    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        self.0.declare(queue).await
    }
    async fn publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError> {
        self.0.publish(messages).await?;
        self.0.publish(messages).await
    }
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        self.0.consume(queue, prefetch).await
    }
    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.0.take_dead_letters(queue, max).await
    }
    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        self.0.delete(queue).await
    }
}

/// A queue that loses the first `n` messages published to one queue, as a
/// broker or an in-process queue might when a process dies.
pub struct Losing {
    pub inner: Arc<dyn Queue>,
    pub queue: String,
    pub remaining: std::sync::atomic::AtomicUsize,
}

impl Losing {
    pub fn new(inner: Arc<dyn Queue>, queue: String, n: usize) -> Losing {
        Losing { inner, queue, remaining: std::sync::atomic::AtomicUsize::new(n) }
    }
}

#[async_trait]
impl Queue for Losing {
    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        self.inner.declare(queue).await
    }
    async fn publish(&self, messages: &[QueueMessage]) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering;
        let kept: Vec<QueueMessage> = messages
            .iter()
            .filter(|m| {
                !(m.queue.ends_with(&self.queue)
                    && self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok())
            })
            .cloned()
            .collect();
        self.inner.publish(&kept).await
    }
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        self.inner.consume(queue, prefetch).await
    }
    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.take_dead_letters(queue, max).await
    }
    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        self.inner.delete(queue).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_config_adds_only_what_the_test_does_not_set() {
        assert_eq!(quick_config("[web]\nport = 80\n"), "[web]\nwatch = 0\nmin_ready = \"300ms\"\nport = 80\n");
        assert_eq!(quick_config("[web]\nwatch = \"5s\"\n"), "[web]\nmin_ready = \"300ms\"\nwatch = \"5s\"\n");
        assert_eq!(quick_config("[web]\nwatch = 0\nmin_ready = \"2s\"\n"), "[web]\nwatch = 0\nmin_ready = \"2s\"\n");
        assert_eq!(quick_config("[release]\ncommands = []\n"), "[web]\nwatch = 0\nmin_ready = \"300ms\"\n\n[release]\ncommands = []\n");
        slipway_proto::config::AppConfig::parse(&quick_config(""), "slipway.toml").expect("valid");
    }

    #[test]
    fn the_example_app_settles_for_a_second_under_limits_and_is_watched() {
        let text = include_str!("../../examples/hello/slipway.toml");
        let config = slipway_proto::config::AppConfig::parse(text, "examples/hello/slipway.toml").expect("valid");
        assert_eq!(config.web.min_ready.0, std::time::Duration::from_secs(1));
        assert_eq!(config.web.watch.0, std::time::Duration::from_secs(10));
        assert_eq!(config.web.limits().memory.map(|m| m.human()).as_deref(), Some("64m"));
    }
}
