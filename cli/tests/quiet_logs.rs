//! An operator's log shows errors only for errors: `slipway server` on
//! RabbitMQ, with step queues that no process has declared yet, samples
//! their depth (its gauges) without the broker closing channels over
//! missing queues, which lapin logs as `ERROR ... NOT_FOUND - no queue`.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use slipway_proto::Step;
use slipway_store::queue::rabbitmq::{RabbitOptions, RabbitQueue};
use slipway_store::queue::Queue;
use slipway_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn free_addr() -> String {
    format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// The body of `GET /metrics`, or None until it answers.
async fn metrics(addr: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    Some(String::from_utf8_lossy(&raw).split_once("\r\n\r\n")?.1.to_string())
}

#[tokio::test]
async fn a_server_on_fresh_queues_logs_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let namespace = format!("quiet{}", &Uuid::now_v7().simple().to_string()[20..]);
    let metrics_addr = free_addr();
    let mut server = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("slipway.db").display()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--queue", &amqp_url(), "--queue-namespace", &namespace, "--metrics-listen", &metrics_addr])
        .args(["server", "--listen", "127.0.0.1:0"])
        .env_remove("SLIPWAY_LOG")
        .env_remove("SLIPWAY_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The gauges sample at once and every 5 s: three rounds, the first two on
    // queues that did not exist before this server.
    // The gauge names the queue without the namespace.
    let depth = format!("slipway_queue_depth{{queue=\"{}\"}} 0", Step::Build.queue());
    let sampled = eventually("the queue depth gauge", Duration::from_secs(30), || async {
        metrics(&metrics_addr).await.filter(|m| m.lines().any(|l| l == depth))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let running = server.try_wait().unwrap().is_none();
    server.kill().unwrap();
    server.wait().unwrap();
    let mut log = String::new();
    server.stderr.take().unwrap().read_to_string(&mut log).unwrap();

    let queue = RabbitQueue::connect(&amqp_url(), RabbitOptions::default()).await.unwrap();
    for step in Step::ALL {
        queue.delete(&format!("{namespace}.{}", step.queue())).await.unwrap();
    }
    assert!(running, "the server stopped early:\n{log}");
    assert!(sampled.contains(&depth), "{sampled}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("NOT_FOUND")).collect();
    assert!(errors.is_empty(), "the server logged errors that are none:\n{}", errors.join("\n"));
}
