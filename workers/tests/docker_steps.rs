//! The container steps (build, deploy, release, processes, health check,
//! cleanup) against the real Docker engine. Nothing is pulled: one base
//! image (busybox httpd) is built `FROM scratch` with the host's static
//! busybox, once per run, by the build step itself; the other tests run it,
//! and the build tests build `FROM` it. Each test works under its own
//! deployment id, so container names never collide, and a guard removes
//! the test's containers (by the deployment label) even when an assertion
//! fails. Build tests remove their image; the base image is removed by a
//! later run's sweep (there is no hook after the last test).
//!
//! Without a reachable Docker engine these tests fail, naming Docker and
//! `scripts/services`; they never skip.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;
use sha2::{Digest, Sha256};
use slipway_proto::command::{DeploymentContext, RemoveContainers, RetireRelease, RunStep};
use slipway_proto::config::AppConfig;
use slipway_proto::event::{BuildMode, ImageBuilt, StepFailed, WebContainerStarted};
use slipway_proto::{Event, Step};
use slipway_workers::http::get_status;
use slipway_workers::steps::docker::{self as dock, Role};
use slipway_workers::steps::{build, cleanup, deploy, health_check, processes, release, Runtime, Settings};
use tempfile::TempDir;
use uuid::Uuid;

/// Every project these tests create is named `dst-<run>`; a run sweeps what
/// earlier runs under this prefix left behind.
const PREFIX: &str = "dst-";
/// Older than this, a `dst-` leftover cannot belong to a run still going.
const STALE_AFTER_SECS: i64 = 300;

const BASE_DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
COPY www /www
COPY start.sh /start.sh
CMD ["/bin/sh","/start.sh"]
"#;

/// The base app: busybox httpd as PID 1 (which ignores SIGTERM), unless
/// - `CRASH` is set: it says so on stderr and exits 3 after a second;
/// - `EXIT_AFTER` is set: httpd answers (in the background) for that many
///   seconds, then the shell says goodbye with `$TOKEN` on stderr and exits 5;
/// - `HOG` is set: httpd answers, and after a second the shell allocates
///   200 MB (a small memory limit gets it OOM-killed).
const START_SH: &str = r#"if [ -n "$CRASH" ]; then echo "$CRASH" >&2; sleep 1; exit 3; fi
if [ -n "$EXIT_AFTER" ]; then httpd -p 80 -h /www; sleep "$EXIT_AFTER"; echo "giving up, token $TOKEN" >&2; exit 5; fi
if [ -n "$HOG" ]; then httpd -p 80 -h /www; sleep 1; x=$(head -c 200000000 /dev/zero | tr '\0' a); fi
exec httpd -f -p 80 -h /www
"#;

// ---------------------------------------------------------------- harness --

fn project() -> &'static str {
    static PROJECT: OnceLock<String> = OnceLock::new();
    // The random tail of a v7 id (its head is the clock, shared by runs close in time).
    PROJECT.get_or_init(|| format!("{PREFIX}{}", &Uuid::now_v7().simple().to_string()[24..]))
}

async fn docker() -> Docker {
    dock::connect()
        .await
        .unwrap_or_else(|e| panic!("{e}\nthese tests need the Docker engine: start it with `bash scripts/services` (as root)"))
}

/// Runs `make()` to completion on a runtime of its own, in a thread of its
/// own: for set-up shared by tests and for clean-up in `Drop`, where the
/// test's runtime is not available.
fn on_own_runtime<F: Future + Send>(make: impl FnOnce() -> F + Send) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            rt.block_on(make())
        })
        .join()
        .expect("the helper thread panicked")
    })
}

use slipway_support::eventually;

/// A context as the engine hands it to the build step. Built from JSON so
/// that fields added later (with serde defaults) need no change here.
fn context(deployment_id: Uuid, config: &str) -> DeploymentContext {
    let config = AppConfig::parse(config, "slipway.toml").expect("a valid slipway.toml").to_value();
    serde_json::from_value(serde_json::json!({
        "deployment_id": deployment_id,
        "project": project(),
        "environment": "test",
        "repository": "file:///nowhere",
        "git_ref": "main",
        "mode": "local",
        "commit": format!("{:040x}", deployment_id.as_u128()),
        "config": config,
    }))
    .expect("a valid deployment context")
}

fn step(step: Step, context: &DeploymentContext) -> RunStep {
    RunStep { step, attempt: 1, context: context.clone() }
}

/// A checkout for one deployment, under `rt.workspaces`.
fn workspace(rt: &Runtime, deployment_id: Uuid, files: &[(&str, &str)]) -> PathBuf {
    let root = rt.workspaces.join(deployment_id.to_string());
    std::fs::create_dir_all(&root).expect("workspace dir");
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        std::fs::write(path, text).expect("write fixture");
    }
    root
}

fn runtime(dir: &Path) -> Runtime {
    Runtime { workspaces: dir.join("workspaces"), logs: dir.join("logs"), registry: None, pull_base_images: false }
}

/// The shared httpd image: its id, and its tag (for `FROM`).
#[derive(Debug, Clone)]
struct Base {
    id: String,
    tag: String,
}

/// The base image, built (with the layer cache) once per run. The build
/// tests start `FROM` it, so their layers never share a cache chain with
/// each other (one test removing its image while another builds on the
/// same chain would strand a dangling layer).
fn base_image() -> &'static Base {
    static BASE: OnceLock<Result<Base, String>> = OnceLock::new();
    BASE.get_or_init(|| on_own_runtime(build_base)).as_ref().unwrap_or_else(|e| panic!("{e}"))
}

async fn build_base() -> Result<Base, String> {
    let docker = docker().await;
    sweep_stale(&docker).await;
    let dir = TempDir::new().map_err(|e| e.to_string())?;
    let rt = runtime(dir.path());
    let ctx = context(Uuid::now_v7(), "");
    let root = workspace(
        &rt,
        ctx.deployment_id,
        &[("Dockerfile", BASE_DOCKERFILE), ("start.sh", START_SH), ("www/index.html", "hello\n"), ("www/healthz", "ok\n")],
    );
    std::fs::copy("/bin/busybox", root.join("busybox")).expect("/bin/busybox (package busybox-static) is installed");
    match build::run(&step(Step::Build, &ctx), &Settings::new(), &rt).await {
        Event::ImageBuilt(built) => Ok(Base { id: built.image_id, tag: built.tag }),
        other => Err(format!("the base image did not build: {other:?}")),
    }
}

/// Removes containers and images of earlier runs (projects `dst-*` other than
/// this run's, older than `STALE_AFTER_SECS`).
async fn sweep_stale(docker: &Docker) {
    let now = chrono::Utc::now().timestamp();
    let stale = |labels: Option<&HashMap<String, String>>, created: i64| {
        let owner = labels.and_then(|l| l.get(dock::LABEL_PROJECT)).map(String::as_str).unwrap_or("");
        owner.starts_with(PREFIX) && owner != project() && now - created > STALE_AFTER_SECS
    };
    let filters = HashMap::from([("label", vec![dock::LABEL_PROJECT.to_string()])]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    for c in docker.list_containers(Some(options)).await.expect("list containers") {
        if let (true, Some(id)) = (stale(c.labels.as_ref(), c.created.unwrap_or(now)), c.id) {
            let _ = dock::remove_container(docker, &id).await;
        }
    }
    // Images carry no labels (see build.rs); their tag names the project.
    for image in docker.list_images(None::<bollard::query_parameters::ListImagesOptions>).await.expect("list images") {
        let owner = image.repo_tags.iter().find_map(|t| t.strip_prefix("slipway/")?.split(':').next()).unwrap_or("");
        let owner_labels = HashMap::from([(dock::LABEL_PROJECT.to_string(), owner.to_string())]);
        if stale(Some(&owner_labels), image.created) {
            let _ = docker.remove_image(&image.id, Some(RemoveImageOptionsBuilder::new().force(true).build()), None).await;
        }
    }
}

/// One test's deployment: its context (on the base image), a temp runtime,
/// and on drop the removal of every container labelled with it.
struct Fixture {
    ctx: DeploymentContext,
    rt: Runtime,
    _dir: TempDir,
}

impl Fixture {
    async fn new(config: &str) -> Fixture {
        docker().await;
        let dir = TempDir::new().expect("tempdir");
        let mut ctx = context(Uuid::now_v7(), config);
        ctx.image_id = Some(base_image().id.clone());
        Fixture { rt: runtime(dir.path()), ctx, _dir: dir }
    }

    async fn run(&self, which: Step, env: &Settings) -> Event {
        let command = step(which, &self.ctx);
        match which {
            Step::Build => build::run(&command, env, &self.rt).await,
            Step::Deploy => deploy::run(&command, env, &self.rt).await,
            Step::Release => release::run(&command, env, &self.rt).await,
            Step::Processes => processes::run(&command, env, &self.rt).await,
            Step::HealthCheck => health_check::run(&command, env, &self.rt).await,
            other => panic!("no executor for {other} here"),
        }
    }

    /// Deploys the web container and records its name and port in the context.
    async fn deploy(&mut self, env: &Settings) -> WebContainerStarted {
        let started = match self.run(Step::Deploy, env).await {
            Event::WebContainerStarted(s) => s,
            other => panic!("deploy: {other:?}"),
        };
        self.ctx.web_container = Some(started.container.clone());
        self.ctx.web_port = Some(started.host_port);
        started
    }

    /// Creates (not starts) release one-off `index` as the release step
    /// would, running `command`: what a worker that died mid-step leaves.
    async fn create_one_off(&self, index: usize, command: &str) -> String {
        let role = Role::Release(index);
        let spec = dock::ContainerSpec {
            name: self.name(&role),
            image: &base_image().id,
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), command.into()]),
            env: &Settings::new(),
            labels: dock::labels(&self.ctx, &role.to_string()),
            publish: None,
            limits: Default::default(),
            lifetime: dock::Lifetime::OneOff,
        };
        dock::ensure_container(&docker().await, &spec).await.expect("create a one-off");
        spec.name
    }

    fn name(&self, role: &Role) -> String {
        dock::container_name(&self.ctx, role)
    }

    /// Names of the containers labelled with this deployment, asked of the engine directly.
    async fn containers(&self) -> Vec<String> {
        let filters = HashMap::from([("label", vec![format!("{}={}", dock::LABEL_DEPLOYMENT, self.ctx.deployment_id)])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = docker().await.list_containers(Some(options)).await.expect("list containers");
        list.into_iter().filter_map(|c| c.names?.first().map(|n| n.trim_start_matches('/').to_string())).collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let command = RemoveContainers { deployment_id: self.ctx.deployment_id, containers: Vec::new() };
        on_own_runtime(|| async move { cleanup::remove_containers(&command).await });
    }
}

/// Removes a test's image on drop, pass or fail.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let tag = self.0.clone();
        on_own_runtime(|| async move {
            let options = RemoveImageOptionsBuilder::new().force(true).build();
            let _ = docker().await.remove_image(&tag, Some(options), None).await;
        });
    }
}

#[track_caller]
fn failed(event: Event, step: Step) -> StepFailed {
    match event {
        Event::StepFailed(f) if f.step == step => f,
        other => panic!("expected {step} to fail, got {other:?}"),
    }
}

fn env(pairs: &[(&str, &str)]) -> Settings {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

// ------------------------------------------------------------------ build --

#[tokio::test]
async fn a_cloud_build_streams_its_log_honours_dockerignore_and_is_not_repeated() {
    let mut f = Fixture::new("").await;
    f.ctx.mode = BuildMode::Cloud;
    f.ctx.image_id = None;
    let dockerfile = format!(
        "FROM {}\nCOPY . /ctx/\n\
         RUN test -e /ctx/keep.txt && test -e /ctx/sub/secret.txt && test ! -e /ctx/secret.txt && test ! -e /ctx/debug.log\n",
        base_image().tag
    );
    let files = [
        ("Dockerfile", dockerfile.as_str()),
        (".dockerignore", "# root-anchored, as Docker reads it\nsecret.txt\n*.log\n"),
        ("secret.txt", "s3cret"),
        ("sub/secret.txt", "not at the root, so not excluded"),
        ("debug.log", "noise"),
        ("keep.txt", "kept"),
    ];
    workspace(&f.rt, f.ctx.deployment_id, &files);
    let tag = dock::image_tag(&f.ctx).expect("a tag");
    let _image = ImageGuard(tag.clone());

    let built = match f.run(Step::Build, &Settings::new()).await {
        Event::ImageBuilt(b) => b,
        other => panic!("build: {other:?}"),
    };
    assert_eq!(built.tag, tag);
    assert!(!built.cache_used, "cloud mode builds without the layer cache");
    assert_eq!(built.base_images, vec![format!("{}@{}", base_image().tag, base_image().id)], "the base image, by id");
    let log_ref = built.log_ref.clone().expect("a log_ref");
    assert_eq!(PathBuf::from(&log_ref), f.rt.logs.join(f.ctx.deployment_id.to_string()).join("build.log"));
    let log = std::fs::read(&log_ref).expect("the build log exists");
    assert_eq!(built.log_digest.as_deref(), Some(hex::encode(Sha256::digest(&log)).as_str()));
    assert!(String::from_utf8_lossy(&log).contains("COPY . /ctx/"), "the log holds the build steps");
    let image = docker().await.inspect_image(&tag).await.expect("the image exists");
    assert_eq!(image.id.as_deref(), Some(built.image_id.as_str()));
    assert!(image.repo_tags.unwrap_or_default().contains(&tag), "the image carries its tag");

    // A redelivery reports the image it finds instead of building again.
    let again = f.run(Step::Build, &Settings::new()).await;
    assert_eq!(again, Event::ImageBuilt(ImageBuilt { duration_ms: 0, ..built }));
}

#[tokio::test]
async fn a_failing_run_instruction_fails_the_build_with_the_docker_error() {
    let mut f = Fixture::new("").await;
    f.ctx.image_id = None;
    // No step before the failing one: a layer committed before it would be left dangling.
    let dockerfile = format!("FROM {}\nRUN exit 3\n", base_image().tag);
    workspace(&f.rt, f.ctx.deployment_id, &[("Dockerfile", &dockerfile)]);
    let tag = dock::image_tag(&f.ctx).expect("a tag");
    let _image = ImageGuard(tag.clone());

    let failure = failed(f.run(Step::Build, &Settings::new()).await, Step::Build);
    assert_eq!(failure.reason, "The command '/bin/sh -c exit 3' returned a non-zero code: 3");
    assert!(failure.details.iter().any(|l| l.contains("RUN exit 3")), "{:?}", failure.details);
    assert!(failure.details.len() <= dock::LOG_TAIL);
    assert!(docker().await.inspect_image(&tag).await.is_err(), "a failed build tags nothing");
    let log = std::fs::read_to_string(f.rt.logs.join(f.ctx.deployment_id.to_string()).join("build.log")).expect("log");
    assert!(log.contains("returned a non-zero code: 3"));
}

#[tokio::test]
async fn pulling_base_images_when_asked_fails_clearly_without_a_registry() {
    let mut f = Fixture::new("").await;
    f.ctx.image_id = None;
    f.rt.pull_base_images = true;
    // A loopback port where no registry listens: the pull fails at once.
    workspace(&f.rt, f.ctx.deployment_id, &[("Dockerfile", "FROM 127.0.0.1:5999/nothing:1\n")]);
    let started = std::time::Instant::now();
    let failure = failed(f.run(Step::Build, &Settings::new()).await, Step::Build);
    assert!(started.elapsed() < Duration::from_secs(30), "the pull hung");
    assert!(failure.reason.contains("127.0.0.1:5999"), "{}", failure.reason);
}

#[tokio::test]
async fn a_checkout_without_dockerfile_fails_the_build() {
    let mut f = Fixture::new("").await;
    f.ctx.image_id = None;
    workspace(&f.rt, f.ctx.deployment_id, &[("README", "no Dockerfile here")]);
    let failure = failed(f.run(Step::Build, &Settings::new()).await, Step::Build);
    assert!(failure.reason.contains("no Dockerfile at the repository root"), "{}", failure.reason);
}

#[tokio::test]
async fn with_a_registry_the_build_is_pushed_and_a_host_without_it_pulls_it_by_digest() {
    let registry = std::env::var("SLIPWAY_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let mut f = Fixture::new("[web]\nport = 80\n").await;
    f.rt.registry = Some(registry.clone());
    f.ctx.image_id = None;
    let dockerfile = format!("FROM {}\nCOPY www /www\n", base_image().tag);
    workspace(&f.rt, f.ctx.deployment_id, &[("Dockerfile", &dockerfile), ("www/index.html", "pulled\n")]);
    let tag = dock::image_tag(&f.ctx).expect("a tag");
    let _image = ImageGuard(tag.clone());
    let built = match f.run(Step::Build, &Settings::new()).await {
        Event::ImageBuilt(b) => b,
        other => panic!("build (is the registry at {registry} up? scripts/services starts it): {other:?}"),
    };
    let pushed = built.pushed.clone().expect("pushed to the registry");
    assert!(pushed.starts_with(&format!("{registry}/{}@sha256:", project())), "{pushed}");

    // Another host: the image is not here; the deploy step pulls it by digest.
    let options = RemoveImageOptionsBuilder::new().force(true).build();
    docker().await.remove_image(&built.image_id, Some(options), None).await.expect("remove the local image");
    assert!(docker().await.inspect_image(&built.image_id).await.is_err());
    f.ctx.image_id = Some(built.image_id.clone());
    f.ctx.image_ref = Some(pushed);
    let started = f.deploy(&Settings::new()).await;
    let _pulled = ImageGuard(built.image_id.clone());
    let url = format!("http://127.0.0.1:{}/", started.host_port);
    let page = eventually("the pulled image serves", Duration::from_secs(5), || async {
        slipway_workers::http::get_text(&url, Duration::from_secs(1)).await.ok()
    })
    .await;
    assert_eq!(page, (200, "pulled\n".to_string()));

    // Without a reference to pull, a missing image is a clear failure.
    let mut g = Fixture::new("[web]\nport = 80\n").await;
    g.ctx.image_id = Some("sha256:0000000000000000000000000000000000000000000000000000000000000000".into());
    let failure = failed(g.run(Step::Deploy, &Settings::new()).await, Step::Deploy);
    assert!(failure.reason.contains("not on this host") && failure.reason.contains("--registry"), "{}", failure.reason);
}

// ----------------------------------------------------------------- deploy --

#[tokio::test]
async fn deploy_publishes_on_loopback_and_a_redelivery_reuses_the_container() {
    let mut f = Fixture::new("[web]\nport = 80\n").await;
    let started = f.deploy(&Settings::new()).await;
    assert_eq!(started.container, f.name(&Role::Web));

    let info = docker().await.inspect_container(&started.container, None).await.expect("inspect");
    let bindings = info.host_config.and_then(|h| h.port_bindings).expect("port bindings");
    let binding = &bindings["80/tcp"].as_ref().expect("80/tcp is published")[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"), "published on loopback only");

    let url = format!("http://127.0.0.1:{}/", started.host_port);
    let status =
        eventually("busybox httpd answers", Duration::from_secs(5), || async { get_status(&url, Duration::from_secs(1)).await.ok() }).await;
    assert_eq!(status, 200);

    let again = f.run(Step::Deploy, &Settings::new()).await;
    assert!(started.warnings.is_empty(), "{:?}", started.warnings);
    assert_eq!(again, Event::WebContainerStarted(started));
    assert_eq!(f.containers().await, vec![f.name(&Role::Web)], "one container, not two");
}

/// The single engine runs one web container; a release that asks for
/// replicas is told so with the outcome, not served by fewer than it thinks.
#[tokio::test]
async fn web_replicas_on_the_single_engine_run_one_container_and_say_so() {
    let mut f = Fixture::new("[web]\nport = 80\nreplicas = 3\nhosts = [\"node.labels.region==eu\"]\n").await;
    let started = f.deploy(&Settings::new()).await;
    assert_eq!(f.containers().await, vec![f.name(&Role::Web)]);
    let [replicas, hosts] = started.warnings.as_slice() else { panic!("two warnings: {:?}", started.warnings) };
    assert!(replicas.contains("3 web replicas (web.replicas)") && replicas.contains("--runtime swarm"), "{replicas}");
    assert!(hosts.contains("(web.hosts)") && hosts.contains("only the swarm runtime"), "{hosts}");
}

// ----------------------------------------------------------- health check --

#[tokio::test]
async fn a_healthy_app_passes_only_after_min_ready() {
    let config = "[web]\nhealth_path = \"/healthz\"\nhealth_timeout = \"10s\"\nmin_ready = \"1s\"\n";
    let mut f = Fixture::new(config).await;
    let started = f.deploy(&Settings::new()).await;
    let url = format!("http://127.0.0.1:{}/healthz", started.host_port);
    eventually("httpd is up", Duration::from_secs(5), || async { get_status(&url, Duration::from_secs(1)).await.ok() }).await;

    match f.run(Step::HealthCheck, &Settings::new()).await {
        Event::HealthCheckPassed(p) => {
            assert_eq!((p.path.as_str(), p.status), ("/healthz", 200));
            assert!(p.elapsed_ms >= 1000, "passed after {} ms, before min_ready (1s)", p.elapsed_ms);
            assert!(p.elapsed_ms < 2500, "settling took {} ms for a 1 s min_ready", p.elapsed_ms);
            assert!(p.attempts >= health_check::MIN_SUCCESSES, "attempts: {}", p.attempts);
        }
        other => panic!("health check: {other:?}"),
    }
}

/// Deploys with `config` (whose `min_ready` is 5 s) and `settings`, and runs
/// the health check, which must fail well before the settling period ends.
async fn fails_while_settling(config: &str, settings: &Settings) -> StepFailed {
    let mut f = Fixture::new(&format!("[web]\nhealth_timeout = \"20s\"\nmin_ready = \"5s\"\n{config}")).await;
    f.deploy(settings).await;
    let started = Instant::now();
    let failure = failed(f.run(Step::HealthCheck, settings).await, Step::HealthCheck);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}: not at once", started.elapsed());
    failure
}

#[tokio::test]
async fn a_web_container_that_exits_while_settling_fails_the_check_naming_the_exit_code() {
    let failure = fails_while_settling("", &env(&[("EXIT_AFTER", "1"), ("TOKEN", "tok-5ecret-42")])).await;
    assert!(failure.reason.contains("exited with code 5"), "{}", failure.reason);
    assert!(failure.reason.contains("had answered healthily for"), "{}", failure.reason);
    assert!(failure.details.iter().any(|l| l == "giving up, token ***"), "{:?}", failure.details);
    assert!(!failure.details.iter().any(|l| l.contains("tok-5ecret-42")), "{:?}", failure.details);
}

#[tokio::test]
async fn a_web_container_oom_killed_while_settling_fails_the_check_naming_oom() {
    let failure = fails_while_settling("memory = \"16m\"\n", &env(&[("HOG", "1")])).await;
    assert!(failure.reason.contains("OOM-killed"), "{}", failure.reason);
    assert!(failure.reason.contains("137 (SIGKILL)"), "{}", failure.reason);
}

#[tokio::test]
async fn a_health_check_fails_early_when_the_web_container_exits() {
    let mut f = Fixture::new("[web]\nhealth_timeout = \"30s\"\n").await;
    f.deploy(&env(&[("CRASH", "fatal: DATABASE_URL is not set")])).await;

    let started = Instant::now();
    let failure = failed(f.run(Step::HealthCheck, &Settings::new()).await, Step::HealthCheck);
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?} of a 30 s timeout", started.elapsed());
    assert!(failure.reason.contains("exited with code 3"), "{}", failure.reason);
    assert!(failure.details.iter().any(|l| l.contains("fatal: DATABASE_URL is not set")), "{:?}", failure.details);
}

// ----------------------------------------------------------------- limits --

#[tokio::test]
async fn limits_restart_policy_and_log_rotation_show_in_docker_inspect() {
    let config = "[web]\nmemory = \"64m\"\ncpus = 0.5\npids = 50\n\
                  [processes.worker]\ncommand = [\"sleep\", \"3600\"]\nmemory = \"32m\"\ncpus = \"0.25\"\npids = 20\n";
    let mut f = Fixture::new(config).await;
    let web = f.deploy(&Settings::new()).await.container;
    let event = f.run(Step::Processes, &Settings::new()).await;
    assert!(matches!(event, Event::ProcessesStarted(_)), "processes: {event:?}");
    let worker = f.name(&Role::Process { name: "worker".into(), replica: 1 });

    for (name, memory, nano_cpus, pids) in [(web, 64 << 20, 500_000_000, 50), (worker, 32 << 20, 250_000_000, 20)] {
        let host = docker().await.inspect_container(&name, None).await.expect("inspect").host_config.expect("host config");
        assert_eq!((host.memory, host.memory_swap), (Some(memory), Some(memory)), "{name}: memory, no swap past it");
        assert_eq!((host.nano_cpus, host.pids_limit), (Some(nano_cpus), Some(pids)), "{name}: cpus and pids");
        let restart = host.restart_policy.and_then(|r| r.name).map(|n| n.to_string());
        assert_eq!(restart.as_deref(), Some("unless-stopped"), "{name}");
        let log = host.log_config.expect("a log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"), "{name}");
        let options = log.config.expect("log options");
        assert_eq!((options["max-size"].as_str(), options["max-file"].as_str()), ("10m", "3"), "{name}");
    }
}

// ---------------------------------------------------------------- release --

#[tokio::test]
async fn release_commands_run_in_order_with_the_settings_and_keep_their_logs() {
    let f = Fixture::new("[release]\ncommands = [\"echo migrated\", \"echo seeded >&2; test \\\"$GREETING\\\" = hello\"]\n").await;
    let ran = match f.run(Step::Release, &env(&[("GREETING", "hello")])).await {
        Event::ReleaseCommandsRan(r) => r,
        other => panic!("release: {other:?}"),
    };
    assert!(!ran.skipped);
    let codes: Vec<(&str, i64)> = ran.results.iter().map(|r| (r.command.as_str(), r.exit_code)).collect();
    assert_eq!(codes, vec![("echo migrated", 0), ("echo seeded >&2; test \"$GREETING\" = hello", 0)]);
    let log = |i: usize| std::fs::read_to_string(ran.results[i].log_ref.as_deref().expect("log_ref")).expect("log");
    assert_eq!(log(0), "migrated\n");
    assert_eq!(log(1), "seeded\n");
    assert_eq!(f.containers().await, Vec::<String>::new(), "one-off containers are removed");
}

#[tokio::test]
async fn a_failing_release_command_fails_the_step_naming_it() {
    let f = Fixture::new("[release]\ncommands = [\"echo first\", \"echo boom >&2; exit 7\", \"echo never\"]\n").await;
    let failure = failed(f.run(Step::Release, &Settings::new()).await, Step::Release);
    assert!(failure.reason.contains("`echo boom >&2; exit 7`"), "{}", failure.reason);
    assert!(failure.reason.contains("exited with code 7"), "{}", failure.reason);
    // The output of every command that ran: the first's, then the failing one's.
    let details =
        ["== release.commands[0] `echo first` (exit 0)", "first", "== release.commands[1] `echo boom >&2; exit 7` (exit 7)", "boom"];
    assert_eq!(failure.details, details);
    let logs = f.rt.logs.join(f.ctx.deployment_id.to_string());
    assert!(logs.join("release-1.log").exists() && !logs.join("release-2.log").exists(), "stops at the failure");
    assert_eq!(f.containers().await, Vec::<String>::new(), "one-off containers are removed");
}

#[tokio::test]
async fn a_redelivered_release_reuses_a_command_that_already_ran() {
    let f = Fixture::new("[release]\ncommands = [\"echo migrating\", \"echo second\"]\n").await;
    // The first delivery ran command 0 to the end, then its worker died.
    let docker = docker().await;
    let first = f.create_one_off(0, "echo ran by the first delivery").await;
    dock::start(&docker, &first).await.expect("start");
    eventually("the first run exits", Duration::from_secs(5), || async {
        let info = dock::inspect(&docker, &first).await.expect("inspect");
        matches!(dock::run_state(&info), dock::RunState::Exited(0)).then_some(())
    })
    .await;

    let ran = match f.run(Step::Release, &Settings::new()).await {
        Event::ReleaseCommandsRan(r) => r,
        other => panic!("release: {other:?}"),
    };
    let log = |i: usize| std::fs::read_to_string(ran.results[i].log_ref.as_deref().expect("log_ref")).expect("log");
    assert_eq!(log(0), "ran by the first delivery\n", "command 0 is not run again");
    assert_eq!(log(1), "second\n");
}

#[tokio::test]
async fn a_release_command_past_its_timeout_is_killed() {
    let f = Fixture::new("[release]\ncommands = [\"echo waiting; sleep 30\"]\ntimeout = \"1s\"\n").await;
    let started = Instant::now();
    let failure = failed(f.run(Step::Release, &Settings::new()).await, Step::Release);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(failure.reason.contains("timed out after 1s"), "{}", failure.reason);
    assert_eq!(failure.details, vec!["== release.commands[0] `echo waiting; sleep 30` (timed out)", "waiting"]);
}

/// Runs the release step, which must succeed; the first command's stored log.
async fn first_release_log(f: &Fixture) -> String {
    let ran = match f.run(Step::Release, &Settings::new()).await {
        Event::ReleaseCommandsRan(r) => r,
        other => panic!("release: {other:?}"),
    };
    std::fs::read_to_string(ran.results[0].log_ref.as_deref().expect("log_ref")).expect("the release log")
}

#[tokio::test]
async fn a_release_command_runs_under_the_web_memory_limit() {
    // The container's own view of its memory cgroup (v2, else v1).
    let command = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
    let f = Fixture::new(&format!("[web]\nmemory = \"64m\"\n[release]\ncommands = [{command:?}]\n")).await;
    let log = first_release_log(&f).await;
    assert_eq!(log.trim(), (64u64 << 20).to_string());
}

#[tokio::test]
async fn a_chatty_release_command_keeps_a_capped_log_saying_what_was_cut() {
    // About 6 MB in lines of 1001 bytes; the stored log keeps 5 MiB of it.
    let command = "line=$(head -c 1000 /dev/zero | tr '\\0' x); yes \"$line\" | head -n 6000; echo the end";
    let f = Fixture::new(&format!("[release]\ncommands = [{command:?}]\n")).await;
    let log = first_release_log(&f).await;
    assert!(log.len() <= slipway_workers::steps::log_cap::LOG_CAP + 200, "{} bytes stored", log.len());
    assert!(log.contains(" cut here; a stored log keeps its first 4 MiB and last 1 MiB]\n"), "no marker");
    assert!(log.ends_with("the end\n"), "the tail is kept");
}

#[tokio::test]
async fn release_is_skipped_without_run_release_and_empty_without_commands() {
    let mut f = Fixture::new("[release]\ncommands = [\"exit 1\"]\n").await;
    f.ctx.run_release = false;
    match f.run(Step::Release, &Settings::new()).await {
        Event::ReleaseCommandsRan(r) => assert!(r.skipped && r.results.is_empty(), "{r:?}"),
        other => panic!("{other:?}"),
    }
    let f = Fixture::new("").await;
    match f.run(Step::Release, &Settings::new()).await {
        Event::ReleaseCommandsRan(r) => assert!(!r.skipped && r.results.is_empty(), "{r:?}"),
        other => panic!("{other:?}"),
    }
}

// -------------------------------------------------------------- processes --

#[tokio::test]
async fn processes_that_keep_running_are_reported_per_replica() {
    let f = Fixture::new("[processes.worker]\ncommand = [\"sleep\", \"3600\"]\nreplicas = 2\n").await;
    let started = Instant::now();
    let event = f.run(Step::Processes, &Settings::new()).await;
    let containers = match event {
        Event::ProcessesStarted(p) => p.containers,
        other => panic!("processes: {other:?}"),
    };
    assert!(started.elapsed() >= processes::START_WINDOW, "watched for the start window");
    let names: Vec<(String, u32, String)> = containers.into_iter().map(|c| (c.process, c.replica, c.container)).collect();
    let worker = |replica| ("worker".to_string(), replica, f.name(&Role::Process { name: "worker".into(), replica }));
    assert_eq!(names, vec![worker(1), worker(2)]);
}

#[tokio::test]
async fn a_process_that_exits_at_once_fails_the_step() {
    let config = "[processes.broken]\ncommand = [\"sh\", \"-c\", \"echo cannot reach the queue >&2; exit 4\"]\n";
    let f = Fixture::new(config).await;
    let failure = failed(f.run(Step::Processes, &Settings::new()).await, Step::Processes);
    assert!(failure.reason.contains("process `broken`"), "{}", failure.reason);
    assert!(failure.reason.contains("exited with code 4"), "{}", failure.reason);
    // Docker may have restarted it (`unless-stopped`) before the step looked: one line per run.
    assert!(!failure.details.is_empty(), "no log lines");
    assert!(failure.details.iter().all(|l| l == "cannot reach the queue"), "{:?}", failure.details);
}

// ---------------------------------------------------------------- cleanup --

#[tokio::test]
async fn remove_containers_removes_everything_of_the_deployment() {
    let mut f = Fixture::new("").await;
    let web = f.deploy(&Settings::new()).await.container;
    // A one-off a crashed release step left behind: labelled, never reported.
    let leftover = f.create_one_off(0, "true").await;
    let missing = f.name(&Role::Process { name: "never-created".into(), replica: 1 });

    let command = RemoveContainers { deployment_id: f.ctx.deployment_id, containers: vec![web.clone(), missing.clone()] };
    let mut expected = vec![web, missing, leftover];
    expected.sort();
    match cleanup::remove_containers(&command).await {
        Event::ContainersRemoved(r) => assert_eq!(r.containers, expected),
        other => panic!("remove: {other:?}"),
    }
    assert_eq!(f.containers().await, Vec::<String>::new());
    // Idempotent: a redelivery finds nothing left and says so.
    assert!(matches!(cleanup::remove_containers(&command).await, Event::ContainersRemoved(_)));
}

#[tokio::test]
async fn a_named_container_without_the_deployments_label_is_not_removed() {
    let mut f = Fixture::new("").await;
    let web = f.deploy(&Settings::new()).await.container;
    // Someone else's container, named in a forged command.
    let foreign = format!("not-slipways-{}", Uuid::now_v7().simple());
    let image = std::process::Command::new("docker").args(["inspect", "-f", "{{.Image}}", &web]).output().unwrap();
    let image = String::from_utf8_lossy(&image.stdout).trim().to_string();
    let created = std::process::Command::new("docker").args(["create", "--name", &foreign, &image, "true"]).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let command = RemoveContainers { deployment_id: f.ctx.deployment_id, containers: vec![web.clone(), foreign.clone()] };
    match cleanup::remove_containers(&command).await {
        Event::ContainersRemoved(r) => assert_eq!(r.containers, vec![web]),
        other => panic!("remove: {other:?}"),
    }
    let still = std::process::Command::new("docker").args(["inspect", "-f", "{{.Name}}", &foreign]).output().unwrap();
    let _ = std::process::Command::new("docker").args(["rm", "-f", &foreign]).output();
    assert!(still.status.success(), "the foreign container was removed");
}

#[tokio::test]
async fn retire_stops_a_container_that_ignores_sigterm_within_the_grace() {
    let mut f = Fixture::new("").await;
    let web = f.deploy(&Settings::new()).await.container;
    let command = RetireRelease { deployment_id: f.ctx.deployment_id, containers: vec![web.clone()], drain_seconds: 0 };
    let started = Instant::now();
    match cleanup::retire(&command).await {
        Event::ContainersRemoved(r) => assert_eq!(r.containers, vec![web]),
        other => panic!("retire: {other:?}"),
    }
    assert!(started.elapsed() < cleanup::STOP_GRACE + Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(f.containers().await, Vec::<String>::new());
}

// ----------------------------------------------------------------- docker --

#[tokio::test]
async fn an_absent_engine_is_named_in_the_error() {
    let e = dock::connect_at("/nonexistent/docker.sock").await.expect_err("no engine there");
    assert!(e.to_string().starts_with("Docker engine not reachable at /nonexistent/docker.sock: "), "{e}");
}
