//! `slipway-bench-deploy`: the cost of Slipway's machinery around the Docker
//! work of a deployment. It deploys a busybox web app with one release
//! command through Slipway (PostgreSQL store, RabbitMQ queues, outbox relay,
//! engine and workers in this process, cloud mode: no layer cache) and, in
//! the same run and alternating with it, does the same Docker work with a
//! plain shell script (docker build --no-cache, docker run, the release
//! command in docker run --rm, a curl loop until the app answers). It prints
//! both times, their ratio and difference. Goal: Slipway at most 1.10x the
//! script, and at most 300 ms slower.
//!
//! Then the watch after the switch (`[web] watch`), through a router in
//! this process: what a healthy deployment's reported time grows by with a
//! 2 s watch against none, side by side (goal: the window plus under 50 ms),
//! and over `--watch-trials` releases that crash while watched, the time
//! from the crash to the router serving the old release again (goal: p99
//! under 2 s with one router), beside the forward switch of the same
//! deployments (health check passed -> every router switched). And over
//! `--error-trials` releases that stay up and healthy but answer 500 on
//! `/`, the time from the first 5xx a client gets through the router to
//! the old release answering again (the routers' counts roll them back).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use slipway_engine::driver::DriverOptions;
use slipway_engine::lease::DEFAULT_LEASE;
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_node::{Parts, RouterOptions, RouterPart};
use slipway_proto::event::{deployment_stream, BuildMode};
use slipway_store::postgres::{redact_url, PgOptions};
use slipway_store::queue::memory::MemoryQueue;
use slipway_store::queue::namespaced::Namespaced;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_store::{EventStore, PgStore};
use slipway_workers::steps::pipeline::Pipeline;
use slipway_workers::steps::Runtime;
use slipway_workers::WorkerOptions;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Deploy through Slipway vs the same Docker work as a shell script, side by side")]
struct Args {
    /// Rounds of each (alternating); the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, env = "SLIPWAY_PG_URL", default_value = "postgres://slipway:slipway@127.0.0.1:5432/slipway")]
    pg_url: String,
    #[arg(long, env = "SLIPWAY_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Releases that crash while watched (crash -> route back, p50/p99).
    #[arg(long, default_value_t = 20)]
    watch_trials: usize,
    /// Releases that stay up but answer 500 while watched (first 5xx
    /// through the router -> route back, p50/p99).
    #[arg(long, default_value_t = 10)]
    error_trials: usize,
}

const RELEASE: &str = "echo migrating && test -f /www/index.html";

fn app_files() -> anyhow::Result<BTreeMap<&'static str, Vec<u8>>> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (apt-get install busybox-static)")?;
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
        COPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n";
    // No settling period and no watch: the figure is Slipway's own cost
    // against a script that has neither (the watch is measured on its own below).
    let toml =
        format!("[web]\nport = 80\nhealth_timeout = \"30s\"\nmin_ready = \"0s\"\nwatch = 0\n\n[release]\ncommands = [\"{RELEASE}\"]\n");
    Ok(BTreeMap::from([
        ("busybox", busybox),
        ("Dockerfile", dockerfile.as_bytes().to_vec()),
        (".dockerignore", b".git\nslipway.toml\n".to_vec()),
        ("www/index.html", b"bench\n".to_vec()),
        ("slipway.toml", toml.into_bytes()),
    ]))
}

/// Writes the app into `dir` and commits it, so Slipway can check it out.
fn make_repo(dir: &Path) -> anyhow::Result<()> {
    for (path, contents) in app_files()? {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().context("parent")?)?;
        std::fs::write(&full, contents)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("busybox"), std::fs::Permissions::from_mode(0o755))?;
    let repo = git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("bench", "bench@localhost")?;
    repo.commit(Some("HEAD"), &sig, &sig, "bench app", &tree, &[])?;
    Ok(())
}

/// Commits a change to the app's page, so the next deployment has a commit
/// no image was built from.
fn commit_change(dir: &Path, n: usize) -> anyhow::Result<()> {
    let page = format!("bench {n} {}\n", Uuid::now_v7());
    commit_files(dir, &[("www/index.html", &page)], &format!("change {n}"))?;
    Ok(())
}

/// Writes `files` over the app in `dir` and commits them; returns the commit.
fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> anyhow::Result<String> {
    for (path, text) in files {
        std::fs::write(dir.join(path), text)?;
    }
    let repo = git2::Repository::open(dir)?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("bench", "bench@localhost")?;
    let parent = repo.head()?.peel_to_commit()?;
    Ok(repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])?.to_string())
}

/// The same Docker work, as an operator would script it.
fn script_round(dir: &Path, tag: &str) -> anyhow::Result<Duration> {
    let script = format!(
        r#"set -e
docker build --no-cache -q -t {tag} {dir} >/dev/null
cid=$(docker run -d -p 127.0.0.1::80 --label slipway-bench=script {tag})
docker run --rm --label slipway-bench=script {tag} /bin/sh -c '{RELEASE}' >/dev/null
port=$(docker port "$cid" 80/tcp | head -n1 | sed 's/.*://')
until curl -fs -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.02; done
"#,
        dir = dir.display()
    );
    let started = Instant::now();
    let out = Command::new("bash").arg("-c").arg(&script).output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("the script failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn remove_labelled(label: &str) {
    let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label={label}")]).output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
    }
}

struct Machinery {
    store: Arc<dyn EventStore>,
    queue: Arc<dyn Queue>,
    stop: tokio::sync::oneshot::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    schema: String,
}

async fn start(args: &Args, data: &Path) -> anyhow::Result<Machinery> {
    let schema = format!("slipway_bench_deploy_{}", Uuid::now_v7().simple());
    let store = PgStore::connect(&args.pg_url, PgOptions { schema: Some(schema.clone()), ..Default::default() })
        .await
        .with_context(|| format!("PostgreSQL at {} (run scripts/services)", redact_url(&args.pg_url)))?;
    let rabbit = RabbitQueue::connect(&args.amqp_url, RabbitOptions::default())
        .await
        .with_context(|| format!("RabbitMQ at {} (run scripts/services)", redact_url(&args.amqp_url)))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let queue: Arc<dyn Queue> = Arc::new(Namespaced::new(Arc::new(rabbit), format!("bench{}", Uuid::now_v7().simple())));
    let (stop, shutdown) = slipway_node::manual();
    let runtime = Runtime { workspaces: data.join("workspaces"), logs: data.join("logs"), registry: None, pull_base_images: false };
    let parts = Parts {
        engine: Some(DriverOptions { drain_seconds: 0, ..Default::default() }),
        workers: Some((WorkerOptions { actor: "worker:bench".into(), ..Default::default() }, Arc::new(Pipeline::new(runtime)))),
        ..Default::default()
    };
    let node = slipway_node::serve(store.clone(), queue.clone(), parts, shutdown);
    let tasks = vec![tokio::spawn(async move {
        if let Err(e) = node.await {
            eprintln!("slipway stopped: {e}");
        }
    })];
    Ok(Machinery { store, queue, stop, tasks, schema })
}

/// One deployment through Slipway, from request to `DeploymentSucceeded`.
async fn slipway_round(m: &Machinery, project: &str, env: &str) -> anyhow::Result<(Duration, Uuid)> {
    deploy_timed(m, project, env, true).await
}

/// One deployment (cloud mode), from request to `DeploymentSucceeded`;
/// `no_cache` also rules out re-using an image of the same commit.
async fn deploy_timed(m: &Machinery, project: &str, env: &str, no_cache: bool) -> anyhow::Result<(Duration, Uuid)> {
    let req = DeployRequest {
        project: project.into(),
        environment: env.into(),
        git_ref: None,
        mode: BuildMode::Cloud,
        no_cache,
        run_release: true,
        dry_run: false,
    };
    let mut wake = m.store.wakeups();
    let started = Instant::now();
    let id = match requests::request_deployment(&*m.store, "bench", req).await? {
        Ok(id) => id,
        Err(r) => bail!("{r}"),
    };
    let stream = deployment_stream(id);
    loop {
        let recorded = m.store.read_stream(&stream, 1).await?;
        if let Some(last) = recorded.iter().find(|r| r.envelope.message_type.starts_with("Deployment") && r.version > 1) {
            let took = started.elapsed();
            if last.envelope.message_type != "DeploymentSucceeded" {
                bail!("deployment {id} failed: {}", last.envelope.to_json());
            }
            print_timeline(&recorded);
            return Ok((took, id));
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("deployment {id} did not finish in 120 s");
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(5)).await;
    }
}

/// Where one deployment's time went: each event's offset from the request.
fn print_timeline(recorded: &[slipway_store::RecordedEvent]) {
    let Some(first) = recorded.first() else { return };
    let line: Vec<String> = recorded
        .iter()
        .skip(1)
        .map(|r| {
            let ms = (r.recorded_at - first.recorded_at).num_milliseconds();
            let what = match r.envelope.decode::<slipway_proto::Event>() {
                Ok(slipway_proto::Event::StepDispatched(d)) => format!("->{}", d.step),
                _ => r.envelope.message_type.clone(),
            };
            format!("{what}@{ms}")
        })
        .collect();
    println!("  timeline (ms): {}", line.join(" "));
}

/// Waits (untimed, up to 30 s) until the project has one container left.
async fn wait_for_single_container(project: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=slipway.project={project}")]).output();
        if out.map(|o| String::from_utf8_lossy(&o.stdout).lines().count() <= 1).unwrap_or(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests a local-mode deployment of `git_ref` and waits for its verdict;
/// also waits, when asked, for the moment its watch starts (for a crash cue).
async fn request_local(m: &Machinery, project: &str, env: &str, git_ref: &str) -> anyhow::Result<(Instant, Uuid)> {
    let req = DeployRequest {
        project: project.into(),
        environment: env.into(),
        git_ref: Some(git_ref.into()),
        mode: BuildMode::Local,
        no_cache: false,
        run_release: false,
        dry_run: false,
    };
    let started = Instant::now();
    match requests::request_deployment(&*m.store, "bench", req).await? {
        Ok(id) => Ok((started, id)),
        Err(r) => bail!("{r}"),
    }
}

/// Waits until deployment `id`'s stream holds an event of type `what` (or a
/// verdict, which ends the wait); returns the stream read then.
async fn wait_for(m: &Machinery, id: Uuid, what: &str) -> anyhow::Result<Vec<slipway_store::RecordedEvent>> {
    let mut wake = m.store.wakeups();
    let started = Instant::now();
    loop {
        let recorded = m.store.read_stream(&deployment_stream(id), 1).await?;
        let verdict = |t: &str| t == "DeploymentSucceeded" || t == "DeploymentFailed";
        if recorded.iter().any(|r| r.envelope.message_type == what || verdict(&r.envelope.message_type)) {
            return Ok(recorded);
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("deployment {id}: no {what} within 180 s");
        }
        slipway_store::subscription::wait_for_wakeup(&mut wake, Duration::from_millis(2)).await;
    }
}

fn recorded_at(recorded: &[slipway_store::RecordedEvent], what: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    recorded.iter().find(|r| r.envelope.message_type == what).map(|r| r.recorded_at)
}

/// GET / with `Host: host` through the router at `addr`: the body of a 2xx.
async fn routed_body(addr: std::net::SocketAddr, host: &str) -> Option<String> {
    routed(addr, host).await.filter(|(status, _)| (200..300).contains(status)).map(|(_, body)| body)
}

/// GET / with `Host: host` through the router at `addr`: status and body.
async fn routed(addr: std::net::SocketAddr, host: &str) -> Option<(u16, String)> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request =
        hyper::Request::get(format!("http://{addr}/")).header(hyper::header::HOST, host).body(http_body_util::Empty::new()).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).trim().to_string()))
}

/// Releases that stay up and pass their health path but answer 500 on `/`:
/// the time from the first 5xx through the router to the old release
/// answering again, rolled back on the router's counts.
async fn error_trials(
    m: &Machinery,
    args: &Args,
    repo: &Path,
    project: &str,
    listen: std::net::SocketAddr,
    build: &str,
) -> anyhow::Result<()> {
    if args.error_trials == 0 {
        return Ok(());
    }
    let host = format!("{project}-live.localhost");
    let serving = routed_body(listen, &host).await.context("the router serves nothing before the error trials")?;
    std::fs::create_dir_all(repo.join("www/cgi-bin"))?;
    let cgi = "#!/bin/sh\necho 'Status: 500 Internal Server Error'\necho 'Content-Type: text/plain'\necho\necho broken\n";
    let dockerfile = format!(
        "{build}RUN [\"/bin/rm\", \"/www/index.html\"]\nRUN [\"/bin/chmod\", \"755\", \"/www/cgi-bin/index.cgi\"]\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n"
    );
    let toml = "[web]\nport = 80\nhealth_timeout = \"30s\"\nmin_ready = \"0s\"\nhealth_path = \"/health\"\nwatch = \"60s\"\n";
    let failing = commit_files(
        repo,
        &[("Dockerfile", &dockerfile), ("slipway.toml", toml), ("www/health", "ok\n"), ("www/cgi-bin/index.cgi", cgi)],
        "answers 500",
    )?;
    let mut back_ms = Vec::new();
    for trial in 0..args.error_trials {
        let (_, id) = request_local(m, project, "live", &failing).await?;
        let started = Instant::now();
        let mut first_5xx = None;
        loop {
            match routed(listen, &host).await {
                Some((status, _)) if status >= 500 && first_5xx.is_none() => first_5xx = Some(Instant::now()),
                Some((200, body)) if first_5xx.is_some() && body == serving => break,
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(120) {
                let recorded = m.store.read_stream(&deployment_stream(id), 1).await?;
                let seen: Vec<_> = recorded.iter().map(|r| r.envelope.message_type.clone()).collect();
                bail!(
                    "trial {trial}: {} within 120 s; deployment {id} recorded {}",
                    if first_5xx.is_none() { "no 5xx through the router" } else { "the old release did not answer again" },
                    seen.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        back_ms.push(first_5xx.map_or(0.0, |at| at.elapsed().as_secs_f64() * 1e3));
        let recorded = wait_for(m, id, "DeploymentFailed").await?;
        let rolled = recorded.iter().find_map(|r| match r.envelope.decode::<slipway_proto::Event>() {
            Ok(slipway_proto::Event::ReleaseRolledBack(r)) => Some(r.reason),
            _ => None,
        });
        match rolled {
            Some(reason) if reason.starts_with("router errors") => {}
            other => bail!("deployment {id} was not rolled back on the router's counts: {other:?}"),
        }
        wait_for_single_container(project).await;
    }
    let p = |q: f64| {
        let mut v = back_ms.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    println!(
        "first 5xx -> old release   p50 {:>5.0} ms  p99 {:>5.0} ms   ({} trials, one router, a client polling every 2 ms; the release stays up and healthy)",
        p(0.5),
        p(0.99),
        back_ms.len()
    );
    Ok(())
}

/// The watch, through one router: its cost on a healthy deployment, and
/// how fast a crash while watched puts the old release back.
async fn watch_section(m: &Machinery, args: &Args, repo: &Path, project: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let listen = listener.local_addr()?;
    let options =
        RouterOptions { router_id: format!("bench-{}", Uuid::now_v7().simple()), domain: "localhost".into(), listen, lease: DEFAULT_LEASE };
    let (stop_router, shutdown) = slipway_node::manual();
    let parts = Parts { router: Some(RouterPart { listener, https: None, options, proxy: Default::default() }), ..Default::default() };
    let router = tokio::spawn(slipway_node::serve(m.store.clone(), Arc::new(MemoryQueue::default()), parts, shutdown));
    let host = format!("{project}-live.localhost");

    let toml = |watch: &str| format!("[web]\nport = 80\nhealth_timeout = \"30s\"\nmin_ready = \"0s\"\nwatch = {watch}\n");
    let no_watch = commit_files(repo, &[("slipway.toml", &toml("0")), ("www/index.html", "unwatched\n")], "watch off")?;
    let watched = commit_files(repo, &[("slipway.toml", &toml("\"2s\"")), ("www/index.html", "watched\n")], "watch 2s")?;
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile"))?;
    let (build, _) = dockerfile.rsplit_once("CMD ").context("a CMD line")?;
    let crash_cmd = "CMD [\"sh\", \"-c\", \"httpd -p 80 -h /www; while [ ! -f /crash ]; do sleep 0.01; done; exit 3\"]\n";
    let crashing = commit_files(
        repo,
        &[("Dockerfile", &format!("{build}{crash_cmd}")), ("slipway.toml", &toml("\"60s\"")), ("www/index.html", "crashing\n")],
        "crashes on cue",
    )?;

    // A healthy deployment with a 2 s watch against none, alternating; both
    // commits are built once first, so every counted round re-uses its image.
    // Two figures: the whole deployment (request -> success; its Docker
    // steps vary by hundreds of ms between rounds), and, from the recorded
    // times, the part the watch decides: switched -> success, less the
    // window (without a watch the success is recorded with the switch).
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut off_tail, mut on_tail) = (Vec::new(), Vec::new());
    for round in 0..=args.rounds {
        for (commit, times, tail, window) in [(&no_watch, &mut off, &mut off_tail, 0.0), (&watched, &mut on, &mut on_tail, 2000.0)] {
            let (started, id) = request_local(m, project, "live", commit).await?;
            let recorded = wait_for(m, id, "DeploymentSucceeded").await?;
            let took = started.elapsed();
            let (Some(switched), Some(succeeded)) =
                (recorded_at(&recorded, "TrafficSwitched"), recorded_at(&recorded, "DeploymentSucceeded"))
            else {
                bail!("deployment {id} failed: {:?}", recorded.last().map(|r| r.envelope.to_json()));
            };
            if round > 0 {
                times.push(took);
                tail.push((succeeded - switched).num_microseconds().unwrap_or(0) as f64 / 1e3 - window);
            }
            wait_for_single_container(project).await;
        }
    }
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let (off, on) = (median(off), median(on));
    println!(
        "watch 2 s, healthy         {:>6.0} ms   {:>6.0} ms (watch = 0)             whole deployments, medians (Docker's steps vary)",
        on.as_secs_f64() * 1e3,
        off.as_secs_f64() * 1e3,
    );
    let overhead = p(&on_tail, 0.99);
    println!(
        "  switched -> success      p50 {:>5.1} ms p99 {:>5.1} ms beyond the window; without a watch p50 {:.2} ms p99 {:.2} ms   goal < 50 ms   {}",
        p(&on_tail, 0.5),
        overhead,
        p(&off_tail, 0.5),
        p(&off_tail, 0.99),
        if overhead < 50.0 { "yes" } else { "NO" }
    );

    // Releases that crash while watched; `no_watch` serves throughout.
    let serving = routed_body(listen, &host).await.context("the router serves nothing before the crash trials")?;
    let (mut back_ms, mut forward_ms) = (Vec::new(), Vec::new());
    for trial in 0..args.watch_trials {
        let (_, id) = request_local(m, project, "live", &crashing).await?;
        let recorded = wait_for(m, id, "ReleaseWatchStarted").await?;
        let web = recorded
            .iter()
            .find_map(|r| match r.envelope.decode::<slipway_proto::Event>() {
                Ok(slipway_proto::Event::WebContainerStarted(w)) => Some(w.container),
                _ => None,
            })
            .with_context(|| format!("deployment {id} was not watched: {:?}", recorded.last().map(|r| r.envelope.to_json())))?;
        if let (Some(passed), Some(switched)) = (recorded_at(&recorded, "HealthCheckPassed"), recorded_at(&recorded, "TrafficSwitched")) {
            forward_ms.push((switched - passed).num_microseconds().unwrap_or(0) as f64 / 1e3);
        }
        let crashed = Instant::now();
        let cue = Command::new("docker").args(["exec", &web, "/bin/touch", "/crash"]).output()?;
        if !cue.status.success() {
            bail!("could not make {web} crash: {}", String::from_utf8_lossy(&cue.stderr));
        }
        loop {
            if routed_body(listen, &host).await.as_deref() == Some(serving.as_str()) {
                break;
            }
            if crashed.elapsed() > Duration::from_secs(30) {
                bail!("trial {trial}: the route did not come back to the old release within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        back_ms.push(crashed.elapsed().as_secs_f64() * 1e3);
        let recorded = wait_for(m, id, "DeploymentFailed").await?;
        if recorded.iter().all(|r| r.envelope.message_type != "ReleaseRolledBack") {
            bail!("deployment {id} ended without a rollback");
        }
        wait_for_single_container(project).await;
    }
    println!(
        "crash -> old release back  p50 {:>5.0} ms  p99 {:>5.0} ms   switch forward p50 {:>4.0} ms p99 {:>4.0} ms   goal p99 < 2000 ms   {}",
        p(&back_ms, 0.5),
        p(&back_ms, 0.99),
        p(&forward_ms, 0.5),
        p(&forward_ms, 0.99),
        if p(&back_ms, 0.99) < 2000.0 { "yes" } else { "NO" }
    );
    println!(
        "  ({} trials, one router; the forward switch is health check passed -> every router switched, of the same deployments)",
        back_ms.len()
    );
    error_trials(m, args, repo, project, listen, build).await?;
    let _ = stop_router.send(());
    router.await?.context("router")?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = tempfile::tempdir()?;
    let repo = data.path().join("app");
    std::fs::create_dir_all(&repo)?;
    make_repo(&repo)?;
    let m = start(&args, data.path()).await?;
    let project = format!("bench-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let new = NewProject {
        name: project.clone(),
        repository: repo.display().to_string(),
        default_branch: "main".into(),
        environments: vec!["test".into(), "live".into()],
        mirror_of: None,
    };
    if let Err(r) = requests::create_project(&*m.store, "bench", new).await? {
        bail!("{r}");
    }
    println!("slipway-bench-deploy: a deployment through Slipway vs the same Docker work as a script");
    println!("command:  slipway-bench-deploy --rounds {}", args.rounds);
    println!(
        "machine:  {} cores; PostgreSQL + RabbitMQ + Docker on loopback; cloud mode (no layer cache)\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    let (mut ours, mut script) = (Vec::new(), Vec::new());
    // A warm-up of each, not counted: first-use costs (connections, page cache).
    let tag = format!("slipway-bench-script:{}", Uuid::now_v7().simple());
    script_round(&repo, &tag)?;
    remove_labelled("slipway-bench=script");
    slipway_round(&m, &project, "test").await?;
    for round in 0..args.rounds {
        let (took, id) = slipway_round(&m, &project, "test").await?;
        ours.push(took);
        // The replaced release retires in the background; let it finish so it
        // does not overlap the script's round.
        wait_for_single_container(&project).await;
        let s = script_round(&repo, &tag)?;
        script.push(s);
        remove_labelled("slipway-bench=script");
        println!("round {}: slipway {:>6.0} ms   script {:>6.0} ms   ({id})", round + 1, took.as_secs_f64() * 1e3, s.as_secs_f64() * 1e3);
    }
    let (o, s) = (median(ours), median(script));
    let ratio = o.as_secs_f64() / s.as_secs_f64();
    let diff_ms = (o.as_secs_f64() - s.as_secs_f64()) * 1e3;
    println!("\nwhat                      ours        baseline (what)                  ratio   goal                  met");
    println!(
        "deploy, median of {:<2}     {:>6.0} ms   {:>6.0} ms (shell script)         {ratio:>5.2}   <= 1.10 and < 300 ms   {}",
        args.rounds,
        o.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        if ratio <= 1.10 && diff_ms < 300.0 { "yes" } else { "NO" }
    );
    println!("difference                {diff_ms:>6.0} ms");

    // Test builds a new commit (cloud mode, fresh build), then live deploys
    // the same commit and re-uses test's image (seed: image re-use).
    let (mut tests, mut lives) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        commit_change(&repo, round)?;
        let (t, test_id) = deploy_timed(&m, &project, "test", false).await?;
        wait_for_single_container(&project).await;
        let (l, live_id) = deploy_timed(&m, &project, "live", false).await?;
        let reused = m.store.read_stream(&deployment_stream(live_id), 1).await?.iter().any(|r| r.envelope.message_type == "ImageReused");
        if !reused {
            bail!("live deployment {live_id} built instead of re-using test's image {test_id}");
        }
        println!(
            "re-use round {}: test (build) {:>6.0} ms   live (re-use) {:>6.0} ms",
            round + 1,
            t.as_secs_f64() * 1e3,
            l.as_secs_f64() * 1e3
        );
        tests.push(t);
        lives.push(l);
    }
    let (t, l) = (median(tests), median(lives));
    let ratio = l.as_secs_f64() / t.as_secs_f64();
    println!(
        "live re-using test image  {:>6.0} ms   {:>6.0} ms (test, with build)     {ratio:>5.2}   <= 0.10                {}",
        l.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3,
        if ratio <= 0.10 { "yes" } else { "NO" }
    );

    watch_section(&m, &args, &repo, &project).await?;

    let _ = m.stop.send(());
    for t in m.tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    remove_labelled(&format!("slipway.project={project}"));
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    let images = Command::new("docker").args(["images", "-q", &format!("slipway/{project}")]).output()?;
    let ids: Vec<String> = String::from_utf8_lossy(&images.stdout).lines().map(str::to_string).collect();
    if !ids.is_empty() {
        let _ = Command::new("docker").args(["rmi", "-f"]).args(&ids).output();
    }
    for step in slipway_proto::Step::ALL {
        let _ = m.queue.delete(&step.queue()).await;
    }
    if let Ok(pool) = sqlx::PgPool::connect(&args.pg_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", m.schema)).execute(&pool).await;
    }
    Ok(())
}
