//! Simulated hosts joined into one Docker Swarm, for the swarm runtime's
//! tests: a "switch" network namespace holding a
//! bridge, one network namespace per host plugged into it, each with its
//! own dockerd (`nsenter --net`), the first the swarm's manager, the others
//! workers; the root namespace is plugged into the bridge too, so the
//! router and the load client reach every node's address. The main Docker
//! daemon is never touched: the manager is a namespace's daemon.
//!
//! Nothing can be pulled here, so the test runs an image registry of its
//! own (`docker-registry`) on the root namespace's address on the bridge;
//! every node's dockerd trusts it (`--insecure-registry`), the build runs
//! on the manager and pushes there, and each node pulls the release by
//! digest, as a real installation's nodes would.
//!
//! `Drop` takes it all down — every node leaves the swarm, the dockerds
//! and the registry stop, the namespaces and data go — also when the test
//! panics. Needs root, like `scripts/services`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One simulated host.
pub struct Node {
    pub name: String,
    /// Its address on the bridge (what Swarm advertises, what routers reach).
    pub address: String,
    pub socket: String,
    data_root: PathBuf,
    exec_root: PathBuf,
    dockerd: Option<Child>,
}

impl Node {
    /// `docker -H <its socket> args...`, its output; panics on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        docker_at(&self.socket, args).unwrap_or_else(|e| panic!("docker {args:?} on {}: {e}", self.name))
    }

    /// Kills its dockerd at once (SIGKILL), as a lost host: the node goes
    /// down in the swarm; its containers stay behind until `Drop`.
    pub fn kill_dockerd(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts its dockerd in its namespace (again, after `lose`: it joins
    /// the swarm again as the same node, with its data).
    fn start_dockerd(&mut self, logs: &std::path::Path, net: &str) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(logs.join(format!("{}.log", self.name))).expect("log file");
        let dockerd = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.name))
            .args(["dockerd", "--data-root"])
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .args(["-H", &format!("unix://{}", self.socket), "--pidfile", &format!("/run/{}.pid", self.name)])
            .args(["--insecure-registry", &format!("{net}.0/24")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (root needed)");
        self.dockerd = Some(dockerd);
    }

    /// Waits up to 30 s until its dockerd answers. When it exits first, or
    /// does not answer in time, the panic quotes the end of its log (the
    /// log is in a temporary directory, gone once the test ends).
    fn wait_dockerd(&mut self, logs: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = logs.join(format!("{}.log", self.name));
        let tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        while docker_at(&self.socket, &["version"]).is_err() {
            if let Some(status) = self.dockerd.as_mut().and_then(|d| d.try_wait().ok().flatten()) {
                panic!("dockerd of {} exited ({status}) before it answered; its log ends:\n{}", self.name, tail());
            }
            assert!(Instant::now() < deadline, "dockerd of {} not ready within 30s; its log ends:\n{}", self.name, tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Loses the host's Docker: its dockerd and everything running in its
    /// network namespace (containerd, the shims) killed at once (SIGKILL),
    /// so Swarm sees the node down and reschedules. The replicas' own
    /// processes live in their containers' namespaces and survive, still
    /// answering on the published port until the route moves off them
    /// (`slipway-bench-swarm` measured no request failed or held up, and
    /// no router ejection): this is a lost Docker, not a power cut.
    pub fn lose(&mut self) {
        self.kill_dockerd();
        kill_all_in(&self.name);
    }

    /// Cuts the host off as a power cut would, on top of `lose`: every
    /// packet to it dropped (its own addresses and what it forwards to its
    /// containers), so a connection to a replica there gets no answer at
    /// all rather than a refusal. `SimulatedSwarm::revive` connects it again.
    pub fn cut_off(&self) {
        for chain in ["INPUT", "FORWARD"] {
            let _ = run("ip", &["netns", "exec", &self.name, "iptables", "-I", chain, "1", "-j", "DROP"]);
        }
    }

    /// Puts the README's firewall rule on the host: a new connection to a
    /// port Swarm publishes in host mode (Docker's ephemeral range) is
    /// dropped unless it comes from `routers` (an address or a CIDR).
    pub fn firewall_published_ports(&self, routers: &str) {
        let rule = ["-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "--ctorigdstport", "32768:60999", "!", "-s", routers, "-j", "DROP"];
        let mut args = vec!["netns", "exec", &self.name, "iptables", "-I", "DOCKER-USER"];
        args.extend_from_slice(&rule);
        must("ip", &args);
    }

    /// Whether a TCP connection made from this host to `address`
    /// (`IP:PORT`) is accepted within 2 s.
    pub fn can_connect(&self, address: &str) -> bool {
        let (ip, port) = address.rsplit_once(':').expect("IP:PORT");
        let open = format!("exec 3<>/dev/tcp/{ip}/{port}");
        run("ip", &["netns", "exec", &self.name, "timeout", "2", "bash", "-c", &open]).is_ok()
    }

    /// Undoes `cut_off` (nothing when it was not cut off).
    fn reconnect(&self) {
        for chain in ["INPUT", "FORWARD"] {
            while run("ip", &["netns", "exec", &self.name, "iptables", "-D", chain, "-j", "DROP"]).is_ok() {}
        }
    }
}

/// SIGKILLs every process in network namespace `name`.
fn kill_all_in(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

pub struct SimulatedSwarm {
    prefix: String,
    pub nodes: Vec<Node>,
    /// `ADDRESS:PORT` of the test's registry, reachable from every node.
    pub registry: String,
    registry_process: Option<Child>,
    registry_dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

pub fn docker_at(socket: &str, args: &[&str]) -> Result<String, String> {
    let host = format!("unix://{socket}");
    let mut all = vec!["-H", host.as_str()];
    all.extend_from_slice(args);
    run("docker", &all)
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl SimulatedSwarm {
    /// `hosts` simulated hosts in one swarm, all Ready.
    pub fn start(hosts: usize) -> SimulatedSwarm {
        assert!((1..=8).contains(&hosts));
        // Names and a subnet of this process's own: tests of other
        // processes may do the same at once.
        let pid = std::process::id();
        let prefix = format!("sw{}", pid % 100_000);
        let net = format!("10.241.{}", 20 + pid % 200);
        let registry_dir = tempfile::tempdir().expect("temp dir");
        let mut swarm = SimulatedSwarm {
            prefix: prefix.clone(),
            nodes: Vec::new(),
            registry: format!("{net}.1:5001"),
            registry_process: None,
            registry_dir,
        };
        let switch = format!("{prefix}-sw");
        must("ip", &["netns", "add", &switch]);
        must("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        let root = format!("{prefix}-r");
        must("ip", &["link", "add", &root, "type", "veth", "peer", "name", "r0", "netns", &switch]);
        must("ip", &["addr", "add", &format!("{net}.1/24"), "dev", &root]);
        must("ip", &["link", "set", &root, "up"]);
        must("ip", &["-n", &switch, "link", "set", "r0", "master", "br0", "up"]);
        for i in 1..=hosts {
            let name = format!("{prefix}-n{i}");
            let address = format!("{net}.{}", i + 1);
            let veth = format!("{prefix}-v{i}");
            must("ip", &["netns", "add", &name]);
            must("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name]);
            must("ip", &["link", "set", &veth, "netns", &switch]);
            must("ip", &["-n", &switch, "link", "set", &veth, "master", "br0", "up"]);
            must("ip", &["-n", &name, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
            must("ip", &["-n", &name, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &name, "link", "set", "lo", "up"]);
            let data_root = PathBuf::from(format!("/var/lib/{name}"));
            let exec_root = PathBuf::from(format!("/run/{name}"));
            let socket = format!("/run/{name}.sock");
            let mut node = Node { name, address, socket, data_root, exec_root, dockerd: None };
            node.start_dockerd(swarm.registry_dir.path(), &net);
            swarm.nodes.push(node);
        }
        swarm.start_registry(&net);
        let logs = swarm.registry_dir.path().to_path_buf();
        for node in &mut swarm.nodes {
            node.wait_dockerd(&logs);
        }
        let manager = &swarm.nodes[0];
        // Nodes report every second (5 s by default), so a lost one is
        // marked down, and its replicas placed again, within seconds.
        manager.docker(&["swarm", "init", "--advertise-addr", &manager.address, "--dispatcher-heartbeat", "1s"]);
        let token = manager.docker(&["swarm", "join-token", "-q", "worker"]);
        let join = format!("{}:2377", manager.address);
        for node in &swarm.nodes[1..] {
            node.docker(&["swarm", "join", "--token", &token, "--advertise-addr", &node.address, &join]);
        }
        wait_for("every node Ready", Duration::from_secs(30), || {
            let states = swarm.manager().docker(&["node", "ls", "--format", "{{.Status}}"]);
            states.lines().filter(|s| *s == "Ready").count() == hosts
        });
        swarm
    }

    fn start_registry(&mut self, net: &str) {
        let dir = self.registry_dir.path();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
            dir.join("storage").display(),
            self.registry
        );
        std::fs::write(dir.join("registry.yml"), config).expect("registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (scripts/services installs it)");
        self.registry_process = Some(child);
        let addr: std::net::SocketAddr = self.registry.parse().expect("registry address");
        wait_for(&format!("registry on {net}.1"), Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
    }

    /// Brings node `i` back after `lose`: its dockerd starts again and the
    /// node is Ready in the swarm again.
    pub fn revive(&mut self, i: usize) {
        let net = self.registry.rsplit_once('.').map(|(net, _)| net.to_string()).expect("the registry's address");
        let logs = self.registry_dir.path().to_path_buf();
        self.nodes[i].reconnect();
        self.nodes[i].start_dockerd(&logs, &net);
        self.nodes[i].wait_dockerd(&logs);
        let node = &self.nodes[i];
        let id = node.docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
        wait_for(&format!("{} Ready again", node.name), Duration::from_secs(60), || {
            docker_at(&self.nodes[0].socket, &["node", "inspect", "--format", "{{.Status.State}}", &id]).is_ok_and(|s| s == "ready")
        });
    }

    /// The root namespace's address on the bridge: where the routers (and
    /// the load client) connect from.
    pub fn root_address(&self) -> &str {
        self.registry.rsplit_once(':').map_or(self.registry.as_str(), |(ip, _)| ip)
    }

    pub fn manager(&self) -> &Node {
        &self.nodes[0]
    }

    /// Sets a label on node `i` (as `docker node update --label-add`).
    pub fn label(&self, i: usize, label: &str) {
        let id = self.node_id(i);
        self.manager().docker(&["node", "update", "--label-add", label, &id]);
    }

    /// Swarm's id of node `i`.
    pub fn node_id(&self, i: usize) -> String {
        self.nodes[i].docker(&["info", "--format", "{{.Swarm.NodeID}}"])
    }
}

impl Drop for SimulatedSwarm {
    fn drop(&mut self) {
        // Workers first, the manager last: nobody waits for a lost quorum.
        for node in self.nodes.iter().rev() {
            if node.dockerd.is_some() {
                let _ = docker_at(&node.socket, &["swarm", "leave", "--force"]);
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.dockerd.take() {
                // SIGTERM: dockerd stops its containers and unmounts.
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut child) = self.registry_process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &self.nodes {
            // What still runs in the namespace (a killed dockerd's
            // containerd, shims and containers): these processes only.
            kill_all_in(&node.name);
            // A killed dockerd leaves its containers' shims and mounts behind.
            let _ = run(
                "sh",
                &["-c", &format!("grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", node.data_root.display())],
            );
            let _ = run(
                "sh",
                &["-c", &format!("grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", node.exec_root.display())],
            );
            let _ = std::fs::remove_dir_all(&node.data_root);
            let _ = std::fs::remove_dir_all(&node.exec_root);
            let _ = std::fs::remove_file(&node.socket);
            let _ = run("ip", &["netns", "del", &node.name]);
        }
        let _ = run("ip", &["netns", "del", &format!("{}-sw", self.prefix)]);
        let _ = run("ip", &["link", "del", &format!("{}-r", self.prefix)]);
    }
}
