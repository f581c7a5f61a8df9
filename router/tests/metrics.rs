#![allow(clippy::unwrap_used)]
//! The router's counters over real sockets: one answered request, one
//! unknown host, one upstream that is down (and ejected). Its own test binary, so no
//! other test moves the process's counters meanwhile.

use std::net::SocketAddr;
use std::time::Duration;

use slipway_router::{serve_with, Route, RouteHandle, RouteTable, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every connection with one `200 ok`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
            });
        }
    });
    addr
}

async fn status(proxy: SocketAddr, host: &str) -> u16 {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn series(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test]
async fn requests_are_counted_by_status_class_and_upstream_errors_by_kind() {
    let up = upstream().await;
    // Not a port freed at once: the router's own listener could be given
    // it, and would then proxy to itself.
    let refusing = slipway_support::refusing_port();
    let down = refusing.addr;
    let route = |addr: SocketAddr| Route {
        upstreams: vec![addr],
        standby: vec![],
        route_version: 1,
        label: "v1".into(),
        stats: Default::default(),
    };
    let table = RouteTable::new([("up.test".to_string(), route(up)), ("down.test".to_string(), route(down))]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = ServeOptions { drain_timeout: Duration::from_secs(1), ..Default::default() };
    tokio::spawn(serve_with(listener, RouteHandle::new(table), options, std::future::pending()));

    assert_eq!(status(addr, "up.test").await, 200);
    assert_eq!(status(addr, "up.test").await, 200);
    assert_eq!(status(addr, "nowhere.test").await, 404);
    assert_eq!(status(addr, "down.test").await, 502);

    let text = slipway_telemetry::metrics::render();
    assert_eq!(series(&text, "slipway_router_requests_total{class=\"2xx\"}"), 2, "{text}");
    assert_eq!(series(&text, "slipway_router_requests_total{class=\"4xx\"}"), 1, "{text}");
    assert_eq!(series(&text, "slipway_router_requests_total{class=\"5xx\"}"), 1, "{text}");
    assert_eq!(series(&text, "slipway_router_upstream_errors_total{kind=\"connect\"}"), 1, "{text}");
    assert_eq!(series(&text, "slipway_router_upstream_errors_total{kind=\"response\"}"), 0, "{text}");
    // The failed connection took the upstream out of rotation, once: a
    // second failure while it is out makes it longer, not another ejection.
    assert_eq!(series(&text, "slipway_router_upstream_ejections_total"), 1, "{text}");
    assert_eq!(status(addr, "down.test").await, 502);
    let text = slipway_telemetry::metrics::render();
    assert_eq!(series(&text, "slipway_router_upstream_errors_total{kind=\"connect\"}"), 2, "{text}");
    assert_eq!(series(&text, "slipway_router_upstream_ejections_total"), 1, "{text}");
}
