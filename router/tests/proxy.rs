#![allow(clippy::unwrap_used)]
//! The proxy over real sockets on 127.0.0.1: small hyper upstreams that
//! answer with their name, `serve` on port 0, and clients speaking HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use slipway_router::{serve_with, Route, RouteHandle, RouteTable, ServeOptions};
use slipway_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// An upstream application that answers every request with its name; on
/// `/slow` it first tells `slow_started` and waits a second.
struct Upstream {
    addr: SocketAddr,
    /// Connections it accepted.
    accepted: Arc<AtomicUsize>,
    /// The headers of every request it saw.
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    slow_started: Arc<Notify>,
}

async fn upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slow_started = Arc::new(Notify::new());
    let (a, s, n) = (accepted.clone(), seen.clone(), slow_started.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let (s, n) = (s.clone(), n.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (s, n) = (s.clone(), n.clone());
                async move {
                    s.lock().unwrap().push(req.headers().clone());
                    if req.uri().path() == "/slow" {
                        n.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let text = if body.is_empty() { name.to_string() } else { format!("{name} got {}", body.len()) };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Upstream { addr, accepted, seen, slow_started }
}

fn route(upstreams: &[SocketAddr], version: u64) -> Route {
    Route {
        upstreams: upstreams.to_vec(),
        standby: vec![],
        route_version: version,
        label: format!("test route v{version}"),
        stats: Default::default(),
    }
}

fn table(entries: &[(&str, Route)]) -> RouteTable {
    RouteTable::new(entries.iter().map(|(host, route)| (host.to_string(), route.clone())))
}

struct Proxy {
    addr: SocketAddr,
    routes: RouteHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn proxy(table: RouteTable) -> Proxy {
    proxy_with(table, ServeOptions { drain_timeout: Duration::from_secs(5), ..Default::default() }).await
}

async fn proxy_with(table: RouteTable, options: ServeOptions) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = RouteHandle::new(table);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, routes.clone(), options, async move {
        let _ = stopped.await;
    }));
    Proxy { addr, routes, stop: Some(stop), task }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(sender: &mut Sender, host: Option<&str>, path: &str) -> (StatusCode, String) {
    let mut req = Request::builder().uri(path);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    // Ready first: the connection's task may not have taken the last
    // response's end yet (on a multi-thread runtime).
    sender.ready().await.unwrap();
    let res = sender.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// One request on a new connection.
async fn get(addr: SocketAddr, host: Option<&str>, path: &str) -> (StatusCode, String) {
    send(&mut connect(addr).await, host, path).await
}

#[tokio::test]
async fn requests_go_to_the_upstream_of_their_host() {
    let (a, b) = (upstream("alpha").await, upstream("beta").await);
    let p = proxy(table(&[("alpha.test", route(&[a.addr], 1)), ("beta.test", route(&[b.addr], 1))])).await;
    assert_eq!(get(p.addr, Some("alpha.test"), "/").await, (StatusCode::OK, "alpha".into()));
    assert_eq!(get(p.addr, Some("BETA.test:8080"), "/x?y=1").await, (StatusCode::OK, "beta".into()));
}

#[tokio::test]
async fn several_upstreams_take_turns() {
    let (a, b) = (upstream("alpha").await, upstream("beta").await);
    let p = proxy(table(&[("app.test", route(&[a.addr, b.addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(send(&mut sender, Some("app.test"), "/").await.1);
    }
    names.sort();
    assert_eq!(names, ["alpha", "alpha", "beta", "beta"]);
}

#[tokio::test]
async fn an_unknown_host_is_404() {
    let p = proxy(RouteTable::default()).await;
    let (status, body) = get(p.addr, Some("Nope.Test"), "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "Not found: no application is served at this host name.\n");
}

#[tokio::test]
async fn a_missing_host_is_400() {
    let p = proxy(RouteTable::default()).await;
    let (status, body) = get(p.addr, None, "/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Host"), "{body}");
}

#[tokio::test]
async fn a_host_without_upstreams_is_503() {
    let p = proxy(table(&[("idle.test", route(&[], 3))])).await;
    let (status, body) = get(p.addr, Some("idle.test"), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("Service unavailable") && !body.contains("test route v3"), "{body}");
}

#[tokio::test]
async fn an_upstream_that_is_down_is_502_at_once() {
    let refusing = slipway_support::refusing_port();
    let down = refusing.addr;
    let p = proxy(table(&[("down.test", route(&[down], 1))])).await;
    let started = Instant::now();
    let (status, body) = get(p.addr, Some("down.test"), "/").await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "Bad gateway: the application did not answer.\n");
}

#[tokio::test]
async fn the_upstream_sees_forwarded_headers_and_no_hop_by_hop_ones() {
    let a = upstream("alpha").await;
    let p = proxy(table(&[("alpha.test", route(&[a.addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    let req = Request::builder()
        .uri("/")
        .header("host", "Alpha.test:80")
        .header("x-forwarded-for", "192.0.2.7")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-app", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), StatusCode::OK);
    let seen = a.seen.lock().unwrap()[0].clone();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "a client that is no trusted proxy cannot add entries");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "Alpha.test:80");
    assert_eq!(seen["host"], "Alpha.test:80");
    assert_eq!(seen["x-app"], "kept");
    for gone in ["x-private", "keep-alive"] {
        assert!(!seen.contains_key(gone), "{gone} was forwarded: {seen:?}");
    }
}

#[tokio::test]
async fn a_request_body_is_forwarded() {
    let a = upstream("alpha").await;
    let p = proxy(table(&[("alpha.test", route(&[a.addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    let req =
        Request::builder().method("POST").uri("/").header("host", "alpha.test").body(Full::new(Bytes::from(vec![7u8; 100_000]))).unwrap();
    let res = sender.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "alpha got 100000");
}

/// An upstream answering every request with `answer(request)`.
async fn answering_upstream<B>(answer: fn(Request<Incoming>) -> Response<B>) -> SocketAddr
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move { Ok::<_, Infallible>(answer(req)) });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// An upstream that answers each request with its own body, streamed
/// back as it comes.
async fn mirror_upstream() -> SocketAddr {
    answering_upstream(|req| Response::new(req.into_body())).await
}

#[tokio::test]
async fn large_bodies_go_through_whole_both_ways() {
    let p = proxy(table(&[("mirror.test", route(&[mirror_upstream().await], 1))])).await;
    let mut sender = connect(p.addr).await;
    // 8 MiB that no slice of repeats, twice on one connection.
    let sent: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect();
    for _ in 0..2 {
        sender.ready().await.unwrap();
        let req =
            Request::builder().method("PUT").uri("/").header("host", "mirror.test").body(Full::new(Bytes::from(sent.clone()))).unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), sent.len());
        assert!(body == sent, "the body came back changed");
    }
}

#[tokio::test]
async fn connections_are_kept_alive_on_both_sides() {
    let a = upstream("alpha").await;
    let p = proxy(table(&[("alpha.test", route(&[a.addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    for _ in 0..5 {
        assert_eq!(send(&mut sender, Some("alpha.test"), "/").await, (StatusCode::OK, "alpha".into()));
    }
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1, "the upstream connection was not reused");
}

#[tokio::test]
async fn a_request_finishes_on_the_table_it_started_with() {
    let (old, new) = (upstream("old").await, upstream("new").await);
    let p = proxy(table(&[("app.test", route(&[old.addr], 1))])).await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { get(addr, Some("app.test"), "/slow").await });
    old.slow_started.notified().await;

    p.routes.replace(table(&[("app.test", route(&[new.addr], 2))]));
    assert_eq!(p.routes.current().get("app.test").unwrap().route_version, 2);
    assert_eq!(get(p.addr, Some("app.test"), "/").await, (StatusCode::OK, "new".into()));
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "old".into()));
    assert_eq!(get(p.addr, Some("app.test"), "/").await, (StatusCode::OK, "new".into()));
}

/// An upstream that accepts any upgrade with 101 and then echoes bytes.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                let protocol = req.headers().get("upgrade").cloned();
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = io.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        io.write_all(&buf[..n]).await.unwrap();
                    }
                });
                let mut res = Response::new(Empty::<Bytes>::new());
                *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                res.headers_mut().insert("connection", "upgrade".parse().unwrap());
                res.headers_mut().insert("upgrade", protocol.unwrap());
                Ok::<_, Infallible>(res)
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::spawn(conn.with_upgrades());
        }
    });
    addr
}

/// Reads until the end of a response head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn an_upgraded_connection_carries_bytes_both_ways() {
    let echo = echo_upstream().await;
    let p = proxy(table(&[("ws.test", route(&[echo], 1))])).await;
    let mut stream = TcpStream::connect(p.addr).await.unwrap();
    stream.write_all(b"GET /socket HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo-test\r\n\r\n").await.unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo-test"), "{head}");
    for message in [&b"hello"[..], b"through the proxy"] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let a = upstream("alpha").await;
    let mut p = proxy(table(&[("alpha.test", route(&[a.addr], 1))])).await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { get(addr, Some("alpha.test"), "/slow").await });
    a.slow_started.notified().await;

    p.stop.take().unwrap().send(()).unwrap();
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "alpha".into()));
    let served = tokio::time::timeout(Duration::from_secs(5), p.task).await.expect("serve did not return");
    served.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let a = upstream("alpha").await;
    let mut p = proxy(table(&[("alpha.test", route(&[a.addr], 1))])).await;
    let mut idle = connect(p.addr).await;
    assert_eq!(send(&mut idle, Some("alpha.test"), "/").await.0, StatusCode::OK);
    let started = Instant::now();
    p.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), p.task).await.expect("serve did not return").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn serve_threads_routes_and_shuts_down() {
    let a = upstream("alpha").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = RouteHandle::new(table(&[("alpha.test", route(&[a.addr], 1))]));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(slipway_router::serve_threads(listener, routes, ServeOptions::default(), 2, async {
        let _ = stopped.await;
    }));
    for _ in 0..4 {
        assert_eq!(get(addr, Some("alpha.test"), "/").await, (StatusCode::OK, "alpha".into()));
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("serve_threads did not return").unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// An upstream that closes its connection after every response.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("closing"))))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.keep_alive(false);
            tokio::spawn(builder.serve_connection(TokioIo::new(stream), service));
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_gets_a_new_connection_each_time() {
    let (addr, accepted) = closing_upstream().await;
    let p = proxy(table(&[("close.test", route(&[addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    for _ in 0..3 {
        assert_eq!(send(&mut sender, Some("close.test"), "/").await, (StatusCode::OK, "closing".into()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_head_request_leaves_the_connections_usable() {
    let a = upstream("alpha").await;
    let p = proxy(table(&[("alpha.test", route(&[a.addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    let head = Request::builder().method("HEAD").uri("/").header("host", "alpha.test").body(Full::new(Bytes::new()));
    let res = sender.send_request(head.unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.into_body().collect().await.unwrap().to_bytes().is_empty());
    assert_eq!(send(&mut sender, Some("alpha.test"), "/").await, (StatusCode::OK, "alpha".into()));
    assert_eq!(a.accepted.load(Ordering::SeqCst), 1, "the upstream connection was not reused after HEAD");
}

/// An upstream that accepts connections and drops them unanswered, as
/// Docker's port proxy does for a container that has just died.
async fn dropping_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_refused_or_dropped_request_goes_to_the_standby_while_one_stands_by() {
    let old = upstream("old").await;
    let refusing = slipway_support::refusing_port();
    let refused = refusing.addr;
    let dropping = dropping_upstream().await;
    let watched = |new: SocketAddr| Route { standby: vec![old.addr], ..route(&[new], 2) };
    let p =
        proxy(table(&[("refused.test", watched(refused)), ("dropping.test", watched(dropping)), ("plain.test", route(&[dropping], 1))]))
            .await;
    assert_eq!(get(p.addr, Some("refused.test"), "/").await, (StatusCode::OK, "old".to_string()));
    assert_eq!(get(p.addr, Some("dropping.test"), "/").await, (StatusCode::OK, "old".to_string()), "a bodiless GET is sent again");
    // A request with a body is not sent twice, and without a standby nothing is.
    let mut sender = connect(p.addr).await;
    let req = Request::post("/").header("host", "dropping.test").body(Full::new(Bytes::from("order"))).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), StatusCode::BAD_GATEWAY);
    assert_eq!(get(p.addr, Some("plain.test"), "/").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(old.seen.lock().unwrap().len(), 2, "the standby took exactly the two retried requests");
}

/// An address that answers no connection attempt at all, as a host that
/// lost power: a listener that never accepts, its queue filled, so the
/// kernel drops every further SYN. The connections filling it are kept.
async fn silent_upstream() -> (SocketAddr, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::task::spawn_blocking(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))).await.unwrap() {
            Ok(stream) => queued.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling {addr}'s queue: {e}"),
        }
        assert!(queued.len() < 64, "{addr} kept accepting connections");
    }
    std::mem::forget(listener);
    (addr, queued)
}

#[tokio::test]
async fn an_upstream_that_answers_nothing_is_passed_over_after_eject_after_not_the_connect_timeout() {
    let good = upstream("alive").await;
    let (silent, _queued) = silent_upstream().await;
    let options = ServeOptions {
        connect_timeout: Duration::from_secs(10),
        eject_after: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let p = proxy_with(table(&[("pair.test", route(&[silent, good.addr], 1))]), options).await;
    // The first request that picks it goes to the other replica once
    // `eject_after` passed, and the next ones are not sent there at all.
    for i in 0..6 {
        let started = Instant::now();
        assert_eq!(get(p.addr, Some("pair.test"), "/").await, (StatusCode::OK, "alive".to_string()), "request {i}");
        assert!(started.elapsed() < Duration::from_secs(3), "request {i} took {:?}, the connect timeout is 10 s", started.elapsed());
    }
    // With nowhere else to go, a request waits out the whole connect timeout.
    let p = proxy_with(
        table(&[("alone.test", route(&[silent], 1))]),
        ServeOptions { connect_timeout: Duration::from_millis(1500), eject_after: Duration::from_millis(200), ..Default::default() },
    )
    .await;
    let started = Instant::now();
    assert_eq!(get(p.addr, Some("alone.test"), "/").await.0, StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() >= Duration::from_millis(1400), "gave up after {:?}", started.elapsed());
}

/// An upstream that answers every request with a 500.
async fn failing_upstream() -> SocketAddr {
    answering_upstream(|_req| {
        let mut response = Response::new(Full::new(Bytes::from("broken")));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
    .await
}

#[tokio::test]
async fn each_route_counts_its_own_upstreams_5xx_answers_and_the_502s_clients_get_not_what_the_standby_rescued() {
    let old = upstream("old").await;
    let failing = failing_upstream().await;
    let refusing = slipway_support::refusing_port();
    let refused = refusing.addr;
    let dropping = dropping_upstream().await;
    let watched = |new: SocketAddr| Route { standby: vec![old.addr], ..route(&[new], 2) };
    let (five, saved, plain, healthy) = (watched(failing), watched(refused), route(&[dropping], 1), route(&[old.addr], 1));
    let stats = [five.stats.clone(), saved.stats.clone(), plain.stats.clone(), healthy.stats.clone()];
    let p = proxy(table(&[("five.test", five), ("saved.test", saved), ("plain.test", plain), ("healthy.test", healthy)])).await;
    for _ in 0..3 {
        assert_eq!(get(p.addr, Some("five.test"), "/").await.0, StatusCode::INTERNAL_SERVER_ERROR, "a 500 is an answer: no standby");
        assert_eq!(get(p.addr, Some("saved.test"), "/").await, (StatusCode::OK, "old".to_string()));
        assert_eq!(get(p.addr, Some("healthy.test"), "/").await.0, StatusCode::OK);
    }
    assert_eq!(get(p.addr, Some("plain.test"), "/").await.0, StatusCode::BAD_GATEWAY);
    let counts = stats.map(|s| {
        let c = s.counts();
        (c.requests, c.errors_5xx, c.upstream_errors, c.first_error_ms.is_some())
    });
    // The refused requests the standby answered: no error the client saw.
    assert_eq!(counts, [(3, 3, 0, true), (3, 0, 0, false), (1, 0, 1, true), (3, 0, 0, false)]);
}

// Hardening: caps, timeouts, forwarded headers, error pages, retries.

/// Short timeouts, so that the tests cutting clients off take seconds.
fn short() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(1500),
        idle_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(1),
        request_timeout: Some(Duration::from_secs(3)),
        drain_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Reads until the router closes the connection (or 6 s pass); the bytes
/// read and how long it took.
async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(6), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 6 s; read {:?}", String::from_utf8_lossy(&seen)),
        }
    }
    (String::from_utf8_lossy(&seen).into_owned(), started.elapsed())
}

/// Sends `bytes` one at a time, `every` apart, until the router closes the
/// connection; how long that took.
async fn trickle(stream: &mut TcpStream, bytes: &[u8], every: Duration) -> Duration {
    let started = Instant::now();
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            return started.elapsed();
        }
        tokio::time::sleep(every).await;
    }
    started.elapsed() + until_closed(stream).await.1
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let a = upstream("alpha").await;
    let p = proxy_with(table(&[("alpha.test", route(&[a.addr], 1))]), short()).await;
    let started = Instant::now();
    // Normal clients, one request every 100 ms on a kept-alive connection
    // and one on a new connection each time, all the while.
    let normal = tokio::spawn(async move {
        let mut kept = connect(p.addr).await;
        let mut served = 0;
        while started.elapsed() < Duration::from_secs(5) {
            let at = Instant::now();
            assert_eq!(send(&mut kept, Some("alpha.test"), "/").await, (StatusCode::OK, "alpha".into()));
            assert_eq!(get(p.addr, Some("alpha.test"), "/").await, (StatusCode::OK, "alpha".into()));
            assert!(at.elapsed() < Duration::from_millis(500), "a normal client waited {:?}", at.elapsed());
            served += 2;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served
    });
    // Slowloris: headers at one byte a second; cut 1.5 s after the first.
    let slowloris = tokio::spawn(async move {
        let mut stream = TcpStream::connect(p.addr).await.unwrap();
        trickle(&mut stream, b"GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n", Duration::from_secs(1)).await
    });
    // A body that stops after a few bytes: cut 1 s later (408).
    let stalled = tokio::spawn(async move {
        let mut stream = TcpStream::connect(p.addr).await.unwrap();
        stream.write_all(b"POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 100\r\n\r\nsome").await.unwrap();
        until_closed(&mut stream).await
    });
    // A body trickled at a byte every 400 ms never pauses a whole second,
    // but cannot take longer than the request timeout (3 s): 408, the
    // client's fault, not a 504 the upstream would be blamed for.
    let trickled = tokio::spawn(async move {
        let mut stream = TcpStream::connect(p.addr).await.unwrap();
        stream.write_all(b"POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 100\r\n\r\n").await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writing = tokio::spawn(async move {
            for _ in 0..100 {
                if write.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let started = Instant::now();
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(8), read.read_to_end(&mut seen)).await;
        writing.abort();
        (String::from_utf8_lossy(&seen).into_owned(), started.elapsed())
    });
    // An idle kept-alive connection: closed after the idle timeout (2 s).
    let idle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(p.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n").await.unwrap();
        until_closed(&mut stream).await
    });

    let slow = slowloris.await.unwrap();
    assert!(slow > Duration::from_millis(1200) && slow < Duration::from_secs(4), "slowloris cut after {slow:?}");
    let (answer, took) = stalled.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took > Duration::from_millis(800) && took < Duration::from_secs(3), "stalled body cut after {took:?}");
    let (answer, took) = trickled.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took > Duration::from_millis(2500) && took < Duration::from_secs(5), "trickled body cut after {took:?}");
    let (answer, took) = idle.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("alpha"), "{answer}");
    assert!(took > Duration::from_millis(1800) && took < Duration::from_secs(4), "idle connection closed after {took:?}");
    let served = normal.await.unwrap();
    assert!(served >= 20, "only {served} normal requests were served");
}

#[tokio::test]
async fn a_client_over_its_connection_cap_is_refused_and_others_are_not() {
    let a = upstream("alpha").await;
    let options = ServeOptions { max_connections_per_ip: 3, ..short() };
    let p = proxy_with(table(&[("alpha.test", route(&[a.addr], 1))]), options).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut sender = connect(p.addr).await;
        assert_eq!(send(&mut sender, Some("alpha.test"), "/").await.0, StatusCode::OK);
        open.push(sender);
    }
    // The fourth from the same address is closed at once, unread.
    let mut fourth = TcpStream::connect(p.addr).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n").await;
    let (answer, took) = until_closed(&mut fourth).await;
    assert_eq!(answer, "", "the refused connection got an answer");
    assert!(took < Duration::from_millis(500), "refusing took {took:?}");
    // Another client address (127.0.0.2 is loopback too) is not capped by it.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = other.connect(p.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(send(&mut sender, Some("alpha.test"), "/").await.0, StatusCode::OK);
    // A slot given back is taken again.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(p.addr, Some("alpha.test"), "/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let a = upstream("alpha").await;
    let forged = |p: &Proxy| {
        let addr = p.addr;
        async move {
            let mut sender = connect(addr).await;
            let req = Request::builder()
                .uri("/")
                .header("host", "alpha.test")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "bank.test")
                .header("forwarded", "for=203.0.113.9")
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(sender.send_request(req).await.unwrap().status(), StatusCode::OK);
        }
    };
    let p = proxy_with(table(&[("alpha.test", route(&[a.addr], 1))]), short()).await;
    forged(&p).await;
    let seen = a.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["127.0.0.1"]);
    assert_eq!((&seen["x-forwarded-proto"], &seen["x-forwarded-host"]), (&"http".parse().unwrap(), &"alpha.test".parse().unwrap()));
    assert!(!seen.contains_key("forwarded"));
    let trusted = ServeOptions { trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()], ..short() };
    let p = proxy_with(table(&[("alpha.test", route(&[a.addr], 1))]), trusted).await;
    forged(&p).await;
    let seen = a.seen.lock().unwrap().pop().unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!((&seen["x-forwarded-proto"], &seen["x-forwarded-host"]), (&"https".parse().unwrap(), &"bank.test".parse().unwrap()));
}

#[tokio::test]
async fn error_pages_name_no_address_port_or_deployment() {
    let a = upstream("alpha").await;
    let refusing = slipway_support::refusing_port();
    let down = refusing.addr;
    let deployment = "0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f";
    let labelled = |upstreams: &[SocketAddr]| Route { label: format!("hello/live deployment {deployment}"), ..route(upstreams, 1) };
    let options = ServeOptions { request_timeout: Some(Duration::from_millis(300)), ..short() };
    let p =
        proxy_with(table(&[("down.test", labelled(&[down])), ("idle.test", labelled(&[])), ("slow.test", labelled(&[a.addr]))]), options)
            .await;
    let pages = [
        (get(p.addr, Some("down.test"), "/").await, StatusCode::BAD_GATEWAY),
        (get(p.addr, Some("idle.test"), "/").await, StatusCode::SERVICE_UNAVAILABLE),
        (get(p.addr, Some("slow.test"), "/slow").await, StatusCode::GATEWAY_TIMEOUT),
        (get(p.addr, Some("127.0.0.1:9"), "/").await, StatusCode::NOT_FOUND),
        (get(p.addr, None, "/").await, StatusCode::BAD_REQUEST),
    ];
    for ((status, body), expected) in pages {
        assert_eq!(status, expected, "{body}");
        for internal in ["127.0.0.1", &down.port().to_string(), &a.addr.port().to_string(), deployment, "hello/live", ".test"] {
            assert!(!body.contains(internal), "the {status} page names {internal}: {body}");
        }
    }
}

#[tokio::test]
async fn a_request_refused_by_one_upstream_goes_once_to_another_of_the_route() {
    let a = upstream("alpha").await;
    let refusing = slipway_support::refusing_port();
    let refused = refusing.addr;
    let dropping = dropping_upstream().await;
    let p = proxy(table(&[("refused.test", route(&[refused, a.addr], 1)), ("dropping.test", route(&[dropping, a.addr], 1))])).await;
    let mut sender = connect(p.addr).await;
    // Whichever upstream each request picks first, every one is answered.
    for _ in 0..4 {
        assert_eq!(send(&mut sender, Some("refused.test"), "/").await, (StatusCode::OK, "alpha".into()));
    }
    // A refused connection sent nothing: even a POST with a body goes on.
    for _ in 0..2 {
        let req = Request::post("/").header("host", "refused.test").body(Full::new(Bytes::from("order"))).unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "alpha got 5");
    }
    // Dropped unanswered: a bodiless PUT or DELETE is sent again, a POST
    // with a body is not.
    for method in ["PUT", "DELETE", "GET", "PUT"] {
        let req = Request::builder().method(method).uri("/").header("host", "dropping.test").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(connect(p.addr).await.send_request(req).await.unwrap().status(), StatusCode::OK, "{method}");
    }
    let mut failed = 0;
    for _ in 0..2 {
        let req = Request::post("/").header("host", "dropping.test").body(Full::new(Bytes::from("order"))).unwrap();
        if connect(p.addr).await.send_request(req).await.unwrap().status() == StatusCode::BAD_GATEWAY {
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "one of two POSTs picked the dropping upstream and was not sent again");
}

/// An upstream that accepts connections and answers nothing on them, as a
/// host that lost power looks to connections already open; `lose` then
/// closes its listener, so that new connections are refused (the router
/// ejects it), while the open ones stay silent.
async fn hanging_upstream() -> (SocketAddr, Arc<AtomicUsize>, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (lose, lost) = oneshot::channel::<()>();
    let a = accepted.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        let mut lost = std::pin::pin!(lost);
        loop {
            tokio::select! {
                _ = &mut lost => break,
                accepted = listener.accept() => {
                    open.push(accepted.unwrap().0);
                    a.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        drop(listener);
        std::future::pending::<()>().await;
        drop(open);
    });
    (addr, accepted, lose)
}

#[tokio::test]
async fn requests_waiting_on_an_upstream_that_gets_ejected_go_to_another_if_they_may() {
    let good = upstream("alive").await;
    let (hanging, accepted, lose) = hanging_upstream().await;
    let p = proxy(table(&[("lost.test", route(&[hanging, good.addr], 1))])).await;
    waiting_requests_go_elsewhere_once_ejected(p.addr, accepted, lose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_ejected_by_one_router_thread_is_ejected_for_the_others() {
    let good = upstream("alive").await;
    let (hanging, accepted, lose) = hanging_upstream().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = RouteHandle::new(table(&[("lost.test", route(&[hanging, good.addr], 1))]));
    let served = tokio::spawn(slipway_router::serve_threads(listener, routes, ServeOptions::default(), 2, std::future::pending()));
    // Connections go to the two threads in turn, so each has requests
    // waiting on the hanging upstream; one thread alone ejects it.
    waiting_requests_go_elsewhere_once_ejected(addr, accepted, lose).await;
    served.abort();
}

/// Sends GETs and POSTs, each on its own connection, until some wait on the
/// hanging upstream; loses it, and on one connection sends two GETs (one
/// of them to the lost upstream: refused, so ejected). Every waiting GET is
/// then answered by the other upstream; every waiting POST still waits.
async fn waiting_requests_go_elsewhere_once_ejected(addr: SocketAddr, accepted: Arc<AtomicUsize>, lose: oneshot::Sender<()>) {
    let request = |method: &'static str| {
        tokio::spawn(async move {
            let req = Request::builder().method(method).uri("/").header("host", "lost.test").body(Full::new(Bytes::new())).unwrap();
            let res = connect(addr).await.send_request(req).await.unwrap();
            (res.status(), res.into_body().collect().await.unwrap().to_bytes())
        })
    };
    // Requests take turns: of these, half wait on the hanging upstream.
    let gets: Vec<_> = (0..8).map(|_| request("GET")).collect();
    let posts: Vec<_> = (0..8).map(|_| request("POST")).collect();
    // Each either was answered or waits on a connection of its own there.
    eventually("every request answered or waiting on the hanging upstream", Duration::from_secs(10), || async {
        let answered = gets.iter().chain(&posts).filter(|r| r.is_finished()).count();
        (answered + accepted.load(Ordering::SeqCst) == 16).then_some(())
    })
    .await;
    let waiting_posts = posts.iter().filter(|p| !p.is_finished()).count();
    assert!(waiting_posts >= 1 && gets.iter().any(|g| !g.is_finished()), "no request waits on the hanging upstream");
    // Its host is lost: the next request that picks it is refused a
    // connection, which ejects it; those waiting on it may go elsewhere.
    let _ = lose.send(());
    let lost_at = Instant::now();
    let mut sender = connect(addr).await;
    for _ in 0..2 {
        assert_eq!(send(&mut sender, Some("lost.test"), "/").await, (StatusCode::OK, "alive".to_string()));
    }
    for get in gets {
        let answered = tokio::time::timeout(Duration::from_secs(5), get).await.expect("a waiting GET was not sent elsewhere").unwrap();
        assert_eq!(answered, (StatusCode::OK, Bytes::from("alive")));
    }
    assert!(lost_at.elapsed() < Duration::from_secs(2), "the waiting GETs took {:?}", lost_at.elapsed());
    // A POST is never sent twice: those waiting on the lost upstream still wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(posts.iter().filter(|p| !p.is_finished()).count(), waiting_posts, "a waiting POST was sent elsewhere");
    posts.iter().for_each(|p| p.abort());
}

/// An upstream that answers `name` until `lose` is sent; then, as a host
/// that lost power, it answers nothing on the connections already open and
/// refuses new ones (its listener closed).
async fn lost_later_upstream(name: &'static str) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (lose, lost) = oneshot::channel::<()>();
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        let mut lost = std::pin::pin!(lost);
        loop {
            let stream = tokio::select! {
                _ = &mut lost => break,
                accepted = listener.accept() => accepted.unwrap().0,
            };
            let silent = silent.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let silent = silent.clone();
                async move {
                    if silent.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
        silent.store(true, Ordering::SeqCst);
        drop(listener);
    });
    (addr, lose)
}

/// A client connection to `lost.test` at `addr`, answered by both its
/// upstreams, so that it holds a kept-alive connection to each.
async fn holding_both(addr: SocketAddr) -> Sender {
    let mut sender = connect(addr).await;
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..4 {
        answered.insert(send(&mut sender, Some("lost.test"), "/").await.1);
    }
    assert_eq!(answered, ["alive".to_string(), "doomed".to_string()].into(), "both upstreams answer this connection");
    sender
}

/// A client connection keeps its kept-alive connections to upstreams
/// between requests. Once one of those upstreams is ejected (its host
/// lost: new connections refused, open ones silent) and its ejection has
/// run out, the connections opened before it must not carry requests
/// again: a request sent on one would wait for an answer that never comes,
/// with nothing left to eject the upstream again. It connects anew, is
/// refused, and goes to the other upstream.
/// (`eject_after` is long here, so that a probe of the upstream by a
/// waiting request, which would also free it, comes too late to.)
#[tokio::test]
async fn connections_opened_before_an_upstream_was_ejected_carry_no_request_after() {
    let good = upstream("alive").await;
    let (doomed, lose) = lost_later_upstream("doomed").await;
    let options = ServeOptions { eject_after: Duration::from_secs(3), connect_timeout: Duration::from_secs(3), ..Default::default() };
    let p = proxy_with(table(&[("lost.test", route(&[doomed, good.addr], 1))]), options).await;
    let mut sender = holding_both(p.addr).await;
    let _ = lose.send(());
    // Another client connection, with no connection to it, is refused one: ejected.
    let mut other = connect(p.addr).await;
    for _ in 0..2 {
        assert_eq!(send(&mut other, Some("lost.test"), "/").await, (StatusCode::OK, "alive".to_string()));
    }
    // Past the ejection it gets requests again: on new connections only.
    tokio::time::sleep(slipway_router::eject::FIRST + Duration::from_millis(100)).await;
    for i in 0..4 {
        let answer = tokio::time::timeout(Duration::from_secs(1), send(&mut sender, Some("lost.test"), "/"))
            .await
            .unwrap_or_else(|_| panic!("request {i} was sent on a connection opened before the ejection, and waits"));
        assert_eq!(answer, (StatusCode::OK, "alive".to_string()));
    }
}

/// A host lost while its only client connection holds a kept-alive
/// connection to it: no request connects anew, so no refused connection
/// ejects it. A GET waiting on it past `eject_after` has the router try a
/// new connection there, which the lost host refuses (or leaves
/// unanswered): ejected, and the GET goes to the other upstream, rather
/// than waiting for the request timeout.
#[tokio::test]
async fn a_get_waiting_on_a_lost_upstream_is_rescued_though_nothing_else_connects_there() {
    let good = upstream("alive").await;
    let (doomed, lose) = lost_later_upstream("doomed").await;
    let options = ServeOptions { eject_after: Duration::from_millis(200), ..Default::default() };
    let p = proxy_with(table(&[("lost.test", route(&[doomed, good.addr], 1))]), options).await;
    let mut sender = holding_both(p.addr).await;
    let _ = lose.send(());
    let lost_at = Instant::now();
    for i in 0..4 {
        let answer = tokio::time::timeout(Duration::from_secs(3), send(&mut sender, Some("lost.test"), "/"))
            .await
            .unwrap_or_else(|_| panic!("request {i} still waits on the lost upstream"));
        assert_eq!(answer, (StatusCode::OK, "alive".to_string()));
    }
    assert!(lost_at.elapsed() < Duration::from_secs(2), "took {:?}", lost_at.elapsed());
}
