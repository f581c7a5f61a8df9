//! The Docker daemon restarts while two environments serve through a
//! router: both answer through the router again with nobody running a
//! command, the ports their web containers publish changed, and the
//! history says what happened (containers down and back, the release
//! observed at its new port, the route moved with reason `reconcile`).
//!
//! The test restarts a Docker daemon of its own (own socket, data root and
//! bridge, started the way `scripts/services` starts the main one), so the
//! other tests and developers on the main daemon lose nothing. It is
//! `#[ignore]`d and run by the serial phase of `scripts/test`: it needs
//! root (a bridge, a second dockerd), and it fails, never skips, without them.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway_engine::driver::DriverOptions;
use slipway_engine::Status;
use slipway_proto::event::{environment_stream, ContainerAction, RouteReason, ROUTES_STREAM};
use slipway_proto::Event;
use slipway_tests::*;
use slipway_workers::host::AgentOptions;

const WEB: &str = r#"
[web]
port = 80
health_timeout = "20s"

[processes.worker]
command = ["sh", "-c", "while true; do sleep 5; done"]
"#;

/// The bridge the private daemon's containers attach to.
const BRIDGE: &str = "slwtestbr0";
const BRIDGE_IP: &str = "10.213.9.1/24";

/// A dockerd of the test's own, at `<dir>/docker.sock`.
struct PrivateDocker {
    dir: PathBuf,
}

impl PrivateDocker {
    fn start() -> PrivateDocker {
        let dockerd = Command::new("sh").args(["-c", "command -v dockerd"]).output().unwrap();
        assert!(dockerd.status.success(), "dockerd is not installed; run `scripts/services` (as root)");
        let dir = PathBuf::from(format!("/tmp/slipway-docker-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // An existing bridge is fine (a run before this one made it).
        let _ = Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]).output();
        let _ = Command::new("ip").args(["addr", "add", BRIDGE_IP, "dev", BRIDGE]).output();
        let up = Command::new("ip").args(["link", "set", BRIDGE, "up"]).output().unwrap();
        assert!(up.status.success(), "cannot bring up bridge {BRIDGE} (root needed): {}", String::from_utf8_lossy(&up.stderr));
        let docker = PrivateDocker { dir };
        docker.launch();
        docker
    }

    fn socket(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("docker.pid")
    }

    /// Starts dockerd (as `scripts/services` does: nohup, log to a file) and
    /// waits until it answers.
    fn launch(&self) {
        let d = self.dir.display();
        let script = format!(
            "nohup dockerd --host {} --data-root {d}/data --exec-root {d}/exec --pidfile {d}/docker.pid \
             --bridge {BRIDGE} --iptables=false --ip-masq=false --ip6tables=false >>{d}/dockerd.log 2>&1 3>&- </dev/null &",
            self.socket()
        );
        assert!(Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).status().unwrap().success());
        self.wait_until(true, Duration::from_secs(60));
    }

    fn answers(&self) -> bool {
        Command::new("docker").args(["-H", &self.socket(), "info"]).output().map(|o| o.status.success()).unwrap_or(false)
    }

    #[track_caller]
    fn wait_until(&self, answering: bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.answers() != answering {
            assert!(
                Instant::now() < deadline,
                "dockerd at {} did not {} within {limit:?}",
                self.socket(),
                if answering { "answer" } else { "stop" }
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to the daemon (it stops its containers), wait for it to go,
    /// start it again.
    fn restart(&self) {
        self.stop();
        self.launch();
    }

    fn stop(&self) {
        let Ok(pid) = std::fs::read_to_string(self.pidfile()) else { return };
        let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::path::Path::new(&format!("/proc/{}", pid.trim())).exists() {
            assert!(Instant::now() < deadline, "dockerd {pid} did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker").arg("-H").arg(self.socket()).args(args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        if self.answers() {
            let ids = self.docker(&["ps", "-aq"]);
            if !ids.is_empty() {
                let _ = Command::new("docker").arg("-H").arg(self.socket()).args(["rm", "-f"]).args(ids.lines()).output();
            }
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn web_port(docker: &PrivateDocker, container: &str) -> u16 {
    docker.docker(&["inspect", "-f", "{{(index (index .NetworkSettings.Ports \"80/tcp\") 0).HostPort}}", container]).parse().unwrap()
}

/// The page an environment serves through the router, if it answers 200.
async fn body(h: &Harness, env: &str) -> Option<String> {
    match h.routed_page(env).await {
        Ok((200, body)) => Some(body.trim().to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts a Docker daemon; run by the serial phase of scripts/test"]
async fn after_a_docker_daemon_restart_both_environments_answer_again_through_the_router() {
    let docker = PrivateDocker::start();
    // Everything in this process (workers, agent, docker CLI calls) talks to it.
    std::env::set_var("DOCKER_HOST", docker.socket());
    // Two throwaway containers take the first ports, so the releases' web
    // containers publish others than the ones they get after the restart.
    let image_dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", image_dir.path().join("busybox")).unwrap();
    std::fs::write(
        image_dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sleep\", \"3600\"]\n",
    )
    .unwrap();
    docker.docker(&["build", "-q", "-t", "slipway-port-filler", image_dir.path().to_str().unwrap()]);
    for n in 0..2 {
        docker.docker(&["run", "-d", "--name", &format!("filler-{n}"), "-p", "127.0.0.1::80", "slipway-port-filler"]);
    }
    docker.docker(&["rm", "-f", "filler-0", "filler-1"]);

    let engine = DriverOptions { drain_seconds: 0, switch_timeout: Duration::from_secs(10), ..Default::default() };
    // Reconciling every 10 minutes: what brings the releases back is the
    // agent noticing that Docker came back, not its periodic pass.
    let agent = AgentOptions { every: Duration::from_secs(600), ..Default::default() };
    let h = Harness::start_with_agent(Backends::PostgresRabbit, |q| q, engine, Some(agent)).await;
    let repo = AppRepo::new();
    let test_commit = repo.commit(&busybox_app("the test release", WEB, ""), "test");
    let live_commit = repo.commit(&busybox_app("the live release", WEB, ""), "live");
    h.create_project(&repo.path()).await;
    let test = h.deploy("test", &test_commit).await;
    let live = h.deploy("live", &live_commit).await;
    for d in [&test, &live] {
        assert_eq!(d.status, Status::Succeeded, "{:?}", failure(d));
    }
    assert_eq!(body(&h, "test").await.as_deref(), Some("the test release"));
    assert_eq!(body(&h, "live").await.as_deref(), Some("the live release"));
    let webs = [test.context.web_container.clone().unwrap(), live.context.web_container.clone().unwrap()];
    let before: Vec<u16> = webs.iter().map(|w| web_port(&docker, w)).collect();

    // When the Docker daemon restarts (its containers stop with it),
    let restarted = Instant::now();
    docker.restart();
    let daemon_back = restarted.elapsed();

    // then both environments answer through the router again, by themselves.
    eventually("both environments to answer through the router again", Duration::from_secs(90), || async {
        (body(&h, "test").await.as_deref() == Some("the test release") && body(&h, "live").await.as_deref() == Some("the live release"))
            .then_some(())
    })
    .await;
    let answering = restarted.elapsed();
    let after: Vec<u16> = webs.iter().map(|w| web_port(&docker, w)).collect();
    assert_ne!(before, after, "the web containers publish other ports after the restart");

    // The history says what happened, per environment.
    let routes: Vec<Event> = h.store.read_stream(ROUTES_STREAM, 1).await.unwrap().iter().map(|r| r.envelope.decode().unwrap()).collect();
    for (env, web, port) in [("test", &webs[0], after[0]), ("live", &webs[1], after[1])] {
        let events: Vec<Event> = h
            .store
            .read_stream(&environment_stream(&h.project, env), 1)
            .await
            .unwrap()
            .iter()
            .map(|r| r.envelope.decode().unwrap())
            .collect();
        // Docker's restart policy (`unless-stopped`) or the agent brings it
        // back, whichever comes first; either way the history shows it went down.
        assert!(
            events.iter().any(|e| match e {
                Event::ContainerReconciled(s) => s.container == *web && s.action == ContainerAction::Started,
                Event::ContainerSupervised(s) => s.container == *web,
                _ => false,
            }),
            "{env}: the history says the web container went down or was started again: {events:?}"
        );
        let upstream = format!("127.0.0.1:{port}");
        assert!(
            events.iter().any(|e| matches!(e, Event::ReleaseUpstreamsObserved(o) if o.upstreams == [upstream.clone()])),
            "{env}: the release was seen at {upstream}: {events:?}"
        );
        assert!(
            routes.iter().any(|e| matches!(e, Event::RouteChanged(r)
                if r.environment == env && r.reason == RouteReason::Reconcile && r.upstreams == [upstream.clone()])),
            "{env}: the route moved to {upstream}: {routes:?}"
        );
        // through an acknowledged switch: every router acknowledged the move.
        let stream = environment_stream(&h.project, env);
        let settled = eventually("the reroute to be acknowledged", Duration::from_secs(30), || async {
            let events = h.store.read_stream(&stream, 1).await.unwrap();
            events.iter().rev().find_map(|r| match r.envelope.decode::<Event>() {
                Ok(Event::RerouteSettled(s)) => Some(s),
                _ => None,
            })
        })
        .await;
        assert!(settled.missing.is_empty() && !settled.acknowledged.is_empty(), "{env}: {settled:?}");
    }
    eprintln!("daemon back after {daemon_back:?}; both environments answer through the router {answering:?} after the restart began (ports {before:?} -> {after:?})");
    h.shutdown().await;
    drop(docker);
}
