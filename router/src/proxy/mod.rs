//! The forwarding layer: accepts HTTP/1.1 connections, asks the route table
//! where each request goes, and streams it to that upstream over a
//! kept-alive connection. It exists apart from `table.rs` so that the
//! routing decisions stay pure and tested without sockets, while this file
//! owns only what needs them: sockets, upstream connections, header
//! rewriting, protocol upgrades (WebSocket) and graceful shutdown.
//!
//! Routes change by swapping a whole [`RouteTable`] ([`RouteHandle::replace`]);
//! each request reads the table once, when it starts, so it is served wholly
//! by the table it started with.
//!
//! Upstream connections are hyper's low-level HTTP/1.1 client connections,
//! driven from the task of the client connection that uses them: a client
//! connection's requests come one after another, so it keeps its upstream
//! connection between them ([`Held`]) and only goes to the shared pool when
//! it has none for that upstream, or gives its connections back when it
//! closes. A request thus never leaves its task or thread, takes no shared
//! lock, and spawns nothing. (hyper-util's pooled `Client` was the first
//! version: a task per upstream connection and a shared pool per request
//! cost more CPU per request.)
//!
//! Slow and greedy clients are held to the caps of `limits.rs` (open
//! connections in all and per client) and the clocks of `timeouts.rs`
//! (header, idle, body and whole-request timeouts); what an upstream is told
//! about the client is `forwarded.rs`'s to say. The pages the router answers
//! with itself name no upstream address, port, container or deployment:
//! those go to the log.
//!
//! The parts: this file has the listeners and the client connections;
//! `forward.rs` sends a request up (and once more to the fallback when
//! that is safe), `upstream.rs` holds and pools the upstream connections,
//! `headers.rs` reads and strips headers, `error.rs` says what the client
//! gets when the proxy answers itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::forwarded::{set_forwarded, unmapped, Cidr};
use crate::limits::{ConnLimits, Slot};
use crate::table::{Resolution, RouteTable};
use crate::timeouts::{ClientBody, ClientClock, ClientTimer, Counted, StreamsOpen, WatchedIo};
use crate::tls::{challenge_token, Edge, Terminator};

mod error;
mod forward;
mod headers;
mod upstream;

pub use error::{Fault, ProxyError};
use forward::{Forward, Upgrade};
use headers::{request_host, strip_hop_by_hop, wants_upgrade};
use upstream::{Held, Idle, UpstreamBody, UpstreamConn};

/// The body of every response the proxy sends: the upstream's, streamed, or
/// a short text of its own.
type ProxyBody = Either<UpstreamBody, Full<Bytes>>;
/// A request's body on its way upstream: the client's, or none (a bodiless
/// idempotent request sent again to another upstream).
type UpstreamRequestBody = Either<ClientBody, http_body_util::Empty<Bytes>>;

/// A shared, atomically replaceable table (the routes, the certificates).
/// Cloning is cheap; every clone sees the same table. Reading it takes no lock.
#[derive(Clone, Debug, Default)]
pub struct Swapped<T> {
    table: Arc<ArcSwap<T>>,
}

impl<T> Swapped<T> {
    pub fn new(table: T) -> Self {
        Swapped { table: Arc::new(ArcSwap::from_pointee(table)) }
    }

    /// Swaps in a new table. Requests already started finish on the table
    /// they started with; every request that starts afterwards sees this one.
    pub fn replace(&self, table: T) {
        self.table.store(Arc::new(table));
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<T> {
        self.table.load_full()
    }

    /// The table in force now, for a short look (no reference count taken:
    /// cheaper on a hot path, not to be held across awaits).
    pub fn peek(&self) -> arc_swap::Guard<Arc<T>> {
        self.table.load()
    }
}

/// The route table a router serves from.
pub type RouteHandle = Swapped<RouteTable>;

/// How long the proxy waits for things, and how much it takes from whom.
/// The router's configuration file sets these (`[router]` in README).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connecting to an upstream; past it the request fails with 502.
    pub connect_timeout: Duration,
    /// An upstream that has not accepted a connection within this long is
    /// ejected then (`eject.rs`): the next requests go to the route's other
    /// upstreams, and the request that was connecting goes to its fallback
    /// (nothing was sent), or without one waits on up to `connect_timeout`.
    /// A lost host answers nothing, so this, not the connect timeout, is how
    /// soon its replicas stop getting requests.
    pub eject_after: Duration,
    /// After shutdown, how long in-flight requests may take to finish before
    /// their connections are closed.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers, from their
    /// first byte (from the connection's start, for its first request).
    pub header_read_timeout: Duration,
    /// How long a kept-alive client connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a request body may pause between two pieces.
    pub body_timeout: Duration,
    /// How long a request that does not upgrade may take, from its headers
    /// to the last byte of its answer (504 if the upstream has not answered
    /// by then); `None`: no limit.
    pub request_timeout: Option<Duration>,
    /// Client connections open at once, in all; more are closed at once.
    pub max_connections: usize,
    /// Client connections open at once from one client (an IPv4 address or
    /// an IPv6 /64); more are closed at once.
    pub max_connections_per_ip: usize,
    /// Peers whose `X-Forwarded-*` headers are believed (load balancers in
    /// front of the router); every other client's are replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// How long an idle upstream connection stays in the shared pool. (A
    /// connection a client connection holds between its requests stays as
    /// long as that client connection, unless the upstream closes it.)
    pub upstream_idle_timeout: Duration,
    /// Certificates, ACME answers, redirects to HTTPS and HSTS (`tls.rs`);
    /// `None`: plain HTTP only.
    pub edge: Option<Edge>,
    /// This listener terminates TLS with `edge`'s certificates (HTTP/2 and
    /// HTTP/1.1 by ALPN).
    pub terminate_tls: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            connect_timeout: Duration::from_secs(2),
            eject_after: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            request_timeout: Some(Duration::from_secs(300)),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            upstream_idle_timeout: Duration::from_secs(60),
            edge: None,
            terminate_tls: false,
        }
    }
}

/// Serves the proxy on `listener` with the default [`ServeOptions`] until
/// `shutdown` completes.
pub async fn serve(listener: TcpListener, routes: RouteHandle, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    serve_with(listener, routes, ServeOptions::default(), shutdown).await
}

/// Serves the proxy on `threads` threads of its own, each running the
/// proxy on a single-threaded tokio runtime, until `shutdown` completes;
/// then shuts each down as [`serve_with`] does and returns. This is nginx's
/// model of workers that share nothing: a request's work (client side,
/// upstream connection, response body) stays on one thread, where on a
/// multi-thread runtime tokio's one I/O driver hands it between threads.
/// Measured with `slipway-bench-router --router-runtime threads|multi`:
/// more requests per second and less CPU per request than `serve` on a
/// multi-thread runtime.
///
/// This task accepts the connections and hands each to the thread with the
/// fewest open, so that a burst of connections (a load balancer's pool, a
/// benchmark's) is spread evenly, which threads taking turns to accept from
/// one socket do not do. It also holds the connection caps, for all the
/// threads at once.
pub async fn serve_threads(
    listener: TcpListener,
    routes: RouteHandle,
    options: ServeOptions,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    struct Worker {
        handoff: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr, Slot)>,
        open: Arc<AtomicUsize>,
        finished: oneshot::Receiver<std::io::Result<()>>,
    }
    let limits = ConnLimits::new(options.max_connections, options.max_connections_per_ip);
    // One TLS configuration for all the threads, so that a session one
    // thread issued resumes on another.
    let tls = acceptor(&options)?;
    // One set of ejections for all the threads: an upstream one thread
    // found unreachable is passed over by the others too, and the requests
    // they have waiting on it may go elsewhere at once.
    let ejections = Arc::new(crate::eject::Ejections::default());
    let mut workers = Vec::new();
    for i in 0..threads.max(1) {
        // Sockets and timers only: with `enable_all` each thread's driver
        // also checks for exited child processes whenever it parks (about
        // 1% of a thread's CPU under load), and a proxy thread has none.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        let (routes, options, tls, ejections) = (routes.clone(), options.clone(), tls.clone(), ejections.clone());
        let (handoff, handed) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let (done, finished) = oneshot::channel();
        let source = Source::Handoff { handed, open: open.clone() };
        std::thread::Builder::new().name(format!("router-{i}")).spawn(move || {
            let _ = done.send(runtime.block_on(run(source, routes, options, tls, ejections, std::future::pending())));
        })?;
        workers.push(Worker { handoff, open, finished });
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "router: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(slot) = admit(&limits, peer) else { continue };
        let Some(worker) = workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed)) else { break };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "router: handing a connection over failed");
                continue;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if worker.handoff.send((stream, peer, slot)).is_err() {
            return Err(std::io::Error::other("a router thread stopped"));
        }
    }
    drop(listener);
    // A closed hand-off is each thread's shutdown signal.
    let finished: Vec<_> = workers.into_iter().map(|w| w.finished).collect();
    let mut result = Ok(());
    for finished in finished {
        match finished.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(std::io::Error::other("a router thread panicked")),
        }
    }
    result
}

/// A slot under the caps for a connection from `peer`, or `None` (counted,
/// logged) when it is over one: the caller drops the connection at once.
fn admit(limits: &Arc<ConnLimits>, peer: SocketAddr) -> Option<Slot> {
    match limits.admit(peer.ip()) {
        Ok(slot) => Some(slot),
        Err(refused) => {
            tracing::debug!(%peer, cap = refused.reason(), "router: too many connections; closing this one");
            slipway_telemetry::metrics::global().router_refused(refused.reason());
            None
        }
    }
}

/// Where a proxy loop gets its client connections, admitted under the caps.
enum Source {
    Listener {
        listener: TcpListener,
        limits: Arc<ConnLimits>,
    },
    /// From [`serve_threads`]' accepting task; `open` counts the
    /// connections this loop has open, for it to pick the least busy.
    Handoff {
        handed: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr, Slot)>,
        open: Arc<AtomicUsize>,
    },
}

impl Source {
    /// The next connection; `None` when the hand-off has closed.
    async fn next(&mut self) -> std::io::Result<Option<(TcpStream, SocketAddr, Slot)>> {
        match self {
            Source::Listener { listener, limits } => loop {
                let (stream, peer) = listener.accept().await?;
                if let Some(slot) = admit(limits, peer) {
                    return Ok(Some((stream, peer, slot)));
                }
            },
            Source::Handoff { handed, open } => match handed.recv().await {
                Some((stream, peer, slot)) => match TcpStream::from_std(stream) {
                    Ok(stream) => Ok(Some((stream, peer, slot))),
                    Err(e) => {
                        open.fetch_sub(1, Ordering::Relaxed);
                        Err(e)
                    }
                },
                None => Ok(None),
            },
        }
    }

    fn open_count(&self) -> Option<Arc<AtomicUsize>> {
        match self {
            Source::Listener { .. } => None,
            Source::Handoff { open, .. } => Some(open.clone()),
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish (up to
/// `options.drain_timeout`), closes what is left and returns.
pub async fn serve_with(
    listener: TcpListener,
    routes: RouteHandle,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limits = ConnLimits::new(options.max_connections, options.max_connections_per_ip);
    let tls = acceptor(&options)?;
    run(Source::Listener { listener, limits }, routes, options, tls, Default::default(), shutdown).await
}

/// The TLS side of a listener that terminates TLS, built once per
/// listener: its session tickets are what let a returning client resume.
fn acceptor(options: &ServeOptions) -> std::io::Result<Option<Terminator>> {
    match (&options.edge, options.terminate_tls) {
        (Some(edge), true) => Ok(Some(Terminator::new(edge).map_err(std::io::Error::other)?)),
        (None, true) => Err(std::io::Error::other("a TLS listener needs certificates (ServeOptions::edge)")),
        (_, false) => Ok(None),
    }
}

async fn run(
    mut source: Source,
    routes: RouteHandle,
    options: ServeOptions,
    tls: Option<Terminator>,
    ejections: Arc<crate::eject::Ejections>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Each connection task holds a `live` receiver (never polled: the
    // sender sees when the last is gone) and a oneshot that asks it to
    // finish. Dropping `force` closes whatever is left, upgraded tunnels
    // included.
    let (live_tx, live_rx) = watch::channel(());
    let (force_tx, force_rx) = watch::channel(());
    let shared = Arc::new(Shared::new(routes, &options, force_rx, tls, ejections));
    let open = Arc::new(Mutex::new(Open::default()));
    let count = source.open_count();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut seed = 0usize;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = source.next() => accepted,
        };
        let (stream, peer, slot) = match accepted {
            Ok(Some(accepted)) => accepted,
            Ok(None) => break,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning; the listener itself stays usable.
                tracing::warn!(error = %e, "router: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        seed = seed.wrapping_add(1);
        let drain = Open::register(&open, live_rx.clone(), count.clone());
        tokio::spawn(connection(shared.clone(), stream, peer, seed, drain, slot));
    }
    drop(source);
    drop(live_rx);
    let asked = Open::drain_all(&open);
    if asked > 0 {
        tracing::debug!(open = asked, "router: draining connections");
        if tokio::time::timeout(options.drain_timeout, live_tx.closed()).await.is_err() {
            tracing::warn!(open = live_tx.receiver_count(), "router: connections still busy after the drain timeout; closing them");
        }
    }
    drop(force_tx);
    Ok(())
}

/// The client connections being served, so that shutdown can ask each to
/// finish. Locked when a connection opens or closes, never per request.
#[derive(Default)]
struct Open {
    next: u64,
    connections: HashMap<u64, oneshot::Sender<()>>,
}

impl Open {
    fn register(open: &Arc<Mutex<Open>>, live: watch::Receiver<()>, count: Option<Arc<AtomicUsize>>) -> Drain {
        let (ask, asked) = oneshot::channel();
        let mut guard = open.lock().unwrap_or_else(PoisonError::into_inner);
        let id = guard.next;
        guard.next += 1;
        guard.connections.insert(id, ask);
        Drain { asked, id, open: open.clone(), count, _live: live }
    }

    /// Asks every open connection to finish; returns how many there were.
    fn drain_all(open: &Mutex<Open>) -> usize {
        let asks: Vec<_> = open.lock().unwrap_or_else(PoisonError::into_inner).connections.drain().collect();
        let count = asks.len();
        for (_, ask) in asks {
            let _ = ask.send(());
        }
        count
    }
}

/// A connection's part of shutdown: the request to finish, and its entry in
/// [`Open`], removed when the connection ends.
struct Drain {
    asked: oneshot::Receiver<()>,
    id: u64,
    open: Arc<Mutex<Open>>,
    /// The thread's count of open connections, for [`serve_threads`].
    count: Option<Arc<AtomicUsize>>,
    _live: watch::Receiver<()>,
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some(count) = &self.count {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        self.open.lock().unwrap_or_else(PoisonError::into_inner).connections.remove(&self.id);
    }
}

/// What every connection of one `serve` shares.
struct Shared {
    routes: RouteHandle,
    /// Upstreams that refused connections, passed over for a while (`eject.rs`).
    ejections: Arc<crate::eject::Ejections>,
    http: hyper::server::conn::http1::Builder,
    client: hyper::client::conn::http1::Builder,
    connect_timeout: Duration,
    eject_after: Duration,
    idle_timeout: Duration,
    /// The client side's timeouts (see `timeouts.rs`).
    client_header_timeout: Duration,
    client_idle_timeout: Duration,
    body_timeout: Duration,
    request_timeout: Option<Duration>,
    trusted_proxies: Vec<Cidr>,
    edge: Option<Edge>,
    /// Set on the HTTPS listener.
    tls: Option<Terminator>,
    /// Idle upstream connections that no client connection holds, by
    /// upstream. Locked when a client connection ends or needs an upstream
    /// connection it does not hold, never for a request on a warm one.
    pool: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    force: watch::Receiver<()>,
}

impl Shared {
    fn new(
        routes: RouteHandle,
        options: &ServeOptions,
        force: watch::Receiver<()>,
        tls: Option<Terminator>,
        ejections: Arc<crate::eject::Ejections>,
    ) -> Self {
        // Each connection sets its own timer (`ClientTimer`), which keeps
        // the header and idle timeouts; hyper arms it only if it has a
        // header read timeout.
        // Both sides write a message's head and body as one buffer
        // (`writev(false)`: hyper copies the body in) rather than a writev
        // of the two: measured with slipway-bench-router, about 5% less
        // CPU per request and 5% more requests/s over HTTP, as good or
        // better over HTTPS.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout).keep_alive(true).writev(false);
        let mut client = hyper::client::conn::http1::Builder::new();
        client.writev(false);
        Shared {
            routes,
            http,
            client,
            connect_timeout: options.connect_timeout,
            eject_after: options.eject_after.min(options.connect_timeout),
            idle_timeout: options.upstream_idle_timeout,
            client_header_timeout: options.header_read_timeout,
            client_idle_timeout: options.idle_timeout,
            body_timeout: options.body_timeout,
            request_timeout: options.request_timeout.filter(|t| !t.is_zero()),
            trusted_proxies: options.trusted_proxies.clone(),
            edge: options.edge.clone(),
            tls,
            pool: Mutex::new(HashMap::new()),
            force,
            ejections,
        }
    }
}

/// How long after a request's deadline its connection is closed if the
/// answer is still going out: time for the 504 sent at the deadline.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, seed: usize, mut drain: Drain, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = shared.tls.clone() else {
        return serve_http1(shared, stream, peer, seed, drain, slot, false).await;
    };
    // The handshake has the header timeout: a client that opens a
    // connection and says nothing is cut off as on plain HTTP.
    let handshake = tokio::time::timeout(shared.client_header_timeout, acceptor.accept(stream));
    let stream = tokio::select! {
        biased;
        _ = &mut drain.asked => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "router: TLS handshake failed");
                slipway_telemetry::metrics::global().router_tls_handshake_failed();
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "router: no TLS handshake within the header timeout; closing");
                slipway_telemetry::metrics::global().router_timeout("handshake");
                return;
            }
        },
    };
    let alpn = stream.get_ref().1.alpn_protocol();
    if alpn == Some(crate::tls::ACME_TLS_ALPN) {
        // A CA's TLS-ALPN-01 validation: the handshake was the answer, and
        // no request follows one (RFC 8737 §3).
        tracing::debug!(%peer, "router: answered a TLS-ALPN-01 validation");
        return;
    }
    if alpn == Some(b"h2") {
        serve_http2(shared, stream, peer, seed, drain, slot).await
    } else {
        serve_http1(shared, stream, peer, seed, drain, slot, true).await
    }
}

/// Serves one HTTP/2 connection (over TLS): its requests run side by side,
/// each on a task of its own with a clock of its own (the request and body
/// timeouts); hyper's keep-alive pings close a connection whose client is
/// gone, and one with no stream open for the idle timeout is told GOAWAY
/// and closed (`StreamsOpen`), as an idle HTTP/1.1 connection is.
async fn serve_http2<I>(shared: Arc<Shared>, io: I, peer: SocketAddr, seed: usize, mut drain: Drain, slot: Slot)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let force = shared.force.clone();
    let clock = ClientClock::new(shared.client_header_timeout, shared.client_idle_timeout);
    let mut http = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http.timer(TokioTimer::new())
        .keep_alive_interval(Some(shared.client_idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(H2_STREAMS);
    let state = ConnState::new(shared.clone(), peer, seed, clock, slot, Scheme::Https { multiplexed: true });
    let streams = StreamsOpen::new();
    let counted = streams.clone();
    let service = hyper::service::service_fn(move |req| {
        let stream = counted.begin();
        let answer = state.call(req);
        async move {
            let response = answer.await?;
            Ok::<_, Infallible>(response.map(|inner| Counted { inner, _stream: stream }))
        }
    });
    let conn = http.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let idle = streams.idle_for(shared.client_idle_timeout);
    let finished = tokio::select! {
        biased;
        result = conn.as_mut() => Some(result),
        _ = &mut drain.asked => None,
        () = idle => {
            tracing::debug!(%peer, "router: HTTP/2 connection idle past the idle timeout; closing");
            slipway_telemetry::metrics::global().router_timeout("idle");
            None
        }
    };
    wind_down(conn, finished, |c| c.graceful_shutdown(), force, peer).await;
}

/// Streams one HTTP/2 client connection may have open at once.
const H2_STREAMS: u32 = 128;

/// Serves one HTTP/1.1 connection, plain or over TLS (`https`).
async fn serve_http1<I>(shared: Arc<Shared>, stream: I, peer: SocketAddr, seed: usize, mut drain: Drain, slot: Slot, https: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let force = shared.force.clone();
    let clock = ClientClock::new(shared.client_header_timeout, shared.client_idle_timeout);
    let mut http = shared.http.clone();
    http.timer(ClientTimer(clock.clone()));
    let scheme = if https { Scheme::Https { multiplexed: false } } else { Scheme::Http };
    let state = ConnState::new(shared.clone(), peer, seed, clock.clone(), slot, scheme);
    let service = hyper::service::service_fn(move |req| state.call(req));
    let io = WatchedIo { inner: stream, clock: clock.clone() };
    let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // The request deadline's watchdog: closes the connection when an
    // answer is still going out past its deadline (a client that stopped
    // reading). Polled after the connection on every wake-up.
    let overdue = std::future::poll_fn(|cx| match clock.deadline() {
        Some(deadline) => clock.deadline_alarm.poll_at(cx, deadline + DEADLINE_GRACE),
        None => Poll::Pending,
    });
    // Polled on every wake-up of the connection: the oneshot's check is one
    // atomic load.
    let finished = tokio::select! {
        biased;
        result = conn.as_mut() => Some(result),
        _ = &mut drain.asked => None,
        () = overdue => {
            tracing::debug!(%peer, "router: the request timeout passed while the answer was still going out; closing");
            slipway_telemetry::metrics::global().router_timeout("request");
            return;
        }
    };
    wind_down(conn, finished, |c| c.graceful_shutdown(), force, peer).await;
}

/// The end of a client connection: `finished` is how it ended, or `None`
/// when shutdown asked it to finish; it then gets to finish its requests
/// (`graceful`) until the drain timeout forces it closed.
async fn wind_down<C>(
    mut conn: Pin<&mut C>,
    finished: Option<hyper::Result<()>>,
    graceful: impl FnOnce(Pin<&mut C>),
    mut force: watch::Receiver<()>,
    peer: SocketAddr,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let result = match finished {
        Some(result) => result,
        None => {
            graceful(conn.as_mut());
            tokio::select! {
                result = conn => result,
                _ = force.changed() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "router: client connection ended with an error");
    }
}

/// What a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    /// `multiplexed`: HTTP/2, whose requests run side by side.
    Https {
        multiplexed: bool,
    },
}

/// One client connection's part of the proxy: per-connection values are
/// computed once here instead of once per request.
struct ConnState {
    scheme: Scheme,
    /// `Strict-Transport-Security` for every answer (HTTPS, when configured).
    hsts: Option<HeaderValue>,
    held: Arc<Held>,
    peer: SocketAddr,
    /// The client's address as an `X-Forwarded-For` entry.
    forwarded_for: HeaderValue,
    /// The peer is a trusted proxy: its `X-Forwarded-*` headers are kept.
    trusted: bool,
    clock: Arc<ClientClock>,
    /// The connection's place under the caps, held by its tunnel too once
    /// it upgrades.
    slot: Arc<Slot>,
    /// Round-robin position, seeded per connection so that short
    /// connections do not all start on the first upstream.
    pick: std::cell::Cell<usize>,
}

impl ConnState {
    fn new(shared: Arc<Shared>, peer: SocketAddr, seed: usize, clock: Arc<ClientClock>, slot: Slot, scheme: Scheme) -> Self {
        let hsts = match (scheme, shared.edge.as_ref().and_then(|e| e.hsts)) {
            (Scheme::Https { .. }, Some(age)) => HeaderValue::try_from(format!("max-age={}", age.as_secs())).ok(),
            _ => None,
        };
        let ip = unmapped(peer.ip());
        let forwarded_for = HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        let trusted = shared.trusted_proxies.iter().any(|net| net.contains(ip));
        ConnState {
            scheme,
            hsts,
            held: Arc::new(Held::new(shared)),
            peer,
            forwarded_for,
            trusted,
            clock,
            slot: Arc::new(slot),
            pick: std::cell::Cell::new(seed),
        }
    }

    /// Routes and rewrites the request now (synchronously), and returns the
    /// future of the upstream's answer.
    fn call(&self, req: Request<Incoming>) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        // HTTP/2's requests run side by side: each has a clock of its own
        // (HTTP/1.1's come one after another on the connection's).
        let clock = match self.scheme {
            Scheme::Https { multiplexed: true } => {
                ClientClock::new(self.held.shared.client_header_timeout, self.held.shared.client_idle_timeout)
            }
            _ => self.clock.clone(),
        };
        // An ACME challenge or a redirect to HTTPS is answered here;
        // anything else is routed.
        let prepared = match self.answer_at_edge(&req) {
            Some(answer) => Err(Ok(answer)),
            None => self.prepare(req, &clock).map_err(Err),
        };
        // Upgrades (WebSocket) may last as long as they like.
        let deadline = match &prepared {
            Ok(forward) if forward.upgrade.is_some() => None,
            _ => self.held.shared.request_timeout.map(|t| Instant::now() + t),
        };
        clock.set_deadline(deadline);
        let peer = self.peer;
        let held = self.held.clone();
        let hsts = self.hsts.clone();
        async move {
            let response = match prepared {
                Ok(forward) => forward.send(held, peer, deadline).await,
                Err(early) => early,
            };
            let metrics = slipway_telemetry::metrics::global();
            let response = response.unwrap_or_else(|e| {
                match e.fault() {
                    Fault::Upstream => tracing::warn!(%peer, error = %e, "router: upstream failed"),
                    Fault::Client | Fault::Routes => tracing::debug!(%peer, error = %e, "router: refused"),
                }
                if let Some(kind) = e.upstream_error_kind() {
                    metrics.router_upstream_error(kind);
                }
                e.into_response()
            });
            metrics.router_response(response.status().as_u16());
            let mut response = response;
            if let Some(hsts) = hsts {
                response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
            }
            Ok(response)
        }
    }

    /// The router's own answer to a request, if it gives one: the key
    /// authorization of an ACME HTTP-01 challenge it knows (on either
    /// listener), or, on plain HTTP, a 308 to HTTPS for a host that has a
    /// certificate.
    fn answer_at_edge(&self, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
        let edge = self.held.shared.edge.as_ref()?;
        if let Some(token) = challenge_token(req.uri().path()) {
            if let Some(answer) = edge.certificates.current().challenge(token) {
                let mut response = Response::new(Either::Right(Full::new(Bytes::from(answer.to_string()))));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                return Some(response);
            }
        }
        if self.scheme != Scheme::Http || edge.https_port.is_none() || !edge.redirect {
            return None;
        }
        let host = request_host(req).ok()?;
        let host = crate::table::normalize_host(host.to_str().ok()?)?;
        let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let location = HeaderValue::try_from(edge.redirect_to(&host, path)?).ok()?;
        let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(b"Moved to HTTPS.\n"))));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        response.headers_mut().insert(header::LOCATION, location);
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        Some(response)
    }

    fn prepare(&self, mut req: Request<Incoming>, clock: &Arc<ClientClock>) -> Result<Forward, ProxyError> {
        let host = request_host(&req)?;
        let pick = self.pick.get();
        self.pick.set(pick.wrapping_add(1));
        let (upstream, standby, stats) = {
            let table = self.held.shared.routes.table.load();
            let host_str = host.to_str().map_err(|_| ProxyError::BadHost)?;
            match table.resolve(Some(host_str), pick) {
                Resolution::Upstream(upstream) => {
                    let route = table.get(host_str);
                    let stats = route.map(|r| r.stats.clone());
                    if let Some(stats) = &stats {
                        stats.request();
                    }
                    let ejections = &self.held.shared.ejections;
                    match route {
                        // Only while something is ejected does the choice look at the clock.
                        Some(r) if ejections.any() && r.upstreams.len() > 1 => {
                            let now = Instant::now();
                            let (chosen, fallback) = r.choose(pick, |a| ejections.is_out(a, now)).unwrap_or((upstream, None));
                            (chosen, fallback, stats)
                        }
                        _ => (upstream, route.and_then(|r| r.fallback(pick)), stats),
                    }
                }
                Resolution::MissingHost => return Err(ProxyError::MissingHost),
                Resolution::UnknownHost(host) => return Err(ProxyError::UnknownHost(host)),
                Resolution::NoUpstream(host) => {
                    let label = table.get(&host).map(|r| r.label.clone()).unwrap_or_default();
                    return Err(ProxyError::NoUpstream { host, label });
                }
            }
        };

        // Upstreams get the origin form (`/path?query`), as from a client.
        if req.uri().authority().is_some() {
            let path = req.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        // HTTP/1.1 to upstreams whatever the client spoke, so their
        // connections are kept alive.
        *req.version_mut() = Version::HTTP_11;

        let upgrade = wants_upgrade(req.headers()).then(|| {
            let protocol = req.headers().get(header::UPGRADE).cloned();
            (hyper::upgrade::on(&mut req), protocol)
        });
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some((_, Some(protocol))) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        let proto = if self.scheme == Scheme::Http { "http" } else { "https" };
        set_forwarded(headers, &self.forwarded_for, &host, self.trusted, proto);
        // The absolute form's authority wins over Host (RFC 9112 §3.2.2);
        // the application must see the host that was routed.
        headers.insert(header::HOST, host.clone());

        let upgrade =
            upgrade.map(|(client_side, _)| Upgrade { client_side, force: self.held.shared.force.clone(), slot: self.slot.clone() });
        Ok(Forward { req, upstream, fallback: standby, host, upgrade, stats, clock: clock.clone() })
    }
}
