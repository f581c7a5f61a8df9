//! Slipway as real processes for the binary's tests: `slipway server`,
//! two `slipway worker` processes and a `slipway router`, on PostgreSQL
//! (own schema), RabbitMQ (own queue namespace) and Docker.

#![allow(dead_code)] // each test binary uses part of it

use std::process::{Child, Command, Stdio};

use slipway_tests::*;

/// A test's own PostgreSQL schema, queue namespace and project name (from
/// a fresh tag, each starting with `prefix`), and the store in that schema.
pub async fn isolated(prefix: &str) -> (String, String, String, std::sync::Arc<dyn slipway_store::EventStore>) {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (schema, namespace, project) = (format!("{prefix}_{tag}"), format!("{prefix}{}", &tag[20..]), format!("{prefix}-{}", &tag[24..]));
    let options = slipway_store::postgres::PgOptions { schema: Some(schema.clone()), ..Default::default() };
    let store = slipway_store::PgStore::connect(&pg_url(), options).await.expect("PostgreSQL (run scripts/services)");
    (schema, namespace, project, std::sync::Arc::new(store))
}

pub struct Cluster {
    pub env: Vec<(&'static str, String)>,
    pub data: tempfile::TempDir,
    pub server: Option<Child>,
    pub workers: Vec<Child>,
    pub router: Option<Child>,
    pub router_addr: std::net::SocketAddr,
    /// More processes a test started (stopped with the rest).
    pub extra: Vec<Child>,
}

impl Cluster {
    fn setting(&self, key: &str) -> String {
        self.env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// Stops every process cleanly, then removes what the cluster left:
    /// `project`'s containers, its queues (quorum queues are heavyweight on
    /// the broker) and its schema.
    pub async fn remove(self, project: &str) {
        let (schema, namespace) = (self.setting("SLIPWAY_PG_SCHEMA"), self.setting("SLIPWAY_QUEUE_NAMESPACE"));
        drop(self);
        remove_containers_with_label(&format!("slipway.project={project}"));
        let rabbit = slipway_store::queue::rabbitmq::RabbitQueue::connect(&amqp_url(), Default::default()).await.unwrap();
        let queues = slipway_store::queue::namespaced::Namespaced::new(std::sync::Arc::new(rabbit), namespace);
        for step in slipway_proto::Step::ALL {
            let _ = slipway_store::queue::Queue::delete(&queues, &step.queue()).await;
        }
        if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await;
        }
    }

    /// Server, two workers and a router.
    pub fn start(schema: &str, namespace: &str) -> Cluster {
        let mut c = Cluster::empty(schema, namespace);
        c.start_server();
        c.start_workers();
        c.router = Some(c.spawn("router", &["router", "--router", &c.router_addr.to_string(), "--router-id", "trial-router"]));
        c
    }

    /// The environment and data directory of a cluster, with no process
    /// started yet (a test that starts its own).
    pub fn empty(schema: &str, namespace: &str) -> Cluster {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = vec![
            ("SLIPWAY_DATABASE", pg_app_url()),
            ("SLIPWAY_PG_SCHEMA", schema.to_string()),
            ("SLIPWAY_QUEUE", amqp_url()),
            ("SLIPWAY_QUEUE_NAMESPACE", namespace.to_string()),
            ("SLIPWAY_DATA_DIR", data.path().display().to_string()),
            ("SLIPWAY_LOG", "warn".to_string()),
        ];
        Cluster {
            env,
            data,
            server: None,
            workers: vec![],
            router: None,
            extra: vec![],
            router_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    pub fn spawn(&self, name: &str, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data.path().join(format!("{name}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn start_server(&mut self) {
        let args = ["server", "--listen", "127.0.0.1:0", "--drain", "1", "--step-timeout", "20", "--switch-timeout", "10"];
        self.server = Some(self.spawn("server", &args));
    }

    pub fn start_workers(&mut self) {
        for n in 0..2 {
            let w = self.spawn(&format!("worker{n}"), &["worker"]);
            self.workers.push(w);
        }
    }

    pub fn kill_workers(&mut self) {
        for mut w in self.workers.drain(..) {
            let _ = w.kill(); // SIGKILL
            let _ = w.wait();
        }
    }

    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.data.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {}\n{}\n", entry.path().display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Clean stops: the router deregisters, workers mark themselves stopped.
        let children = self.server.iter_mut().chain(self.workers.iter_mut()).chain(self.router.iter_mut()).chain(self.extra.iter_mut());
        for child in children {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            // A test may have stopped a process (SIGSTOP); it must wake to end.
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
        }
        let children = self.server.iter_mut().chain(self.workers.iter_mut()).chain(self.router.iter_mut()).chain(self.extra.iter_mut());
        for child in children {
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request to the API at `addr`, by hand (to send the token
/// and a body exactly as given): the status and the body.
pub async fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the API");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let content = body.map(|b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len())).unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Connection: close\r\n\r\n{}", body.unwrap_or_default());
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read the response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}
