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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::forwarded::{set_forwarded, unmapped, Cidr};
use crate::limits::{ConnLimits, Slot};
use crate::stats::Stats;
use crate::table::{Fallback, Resolution, RouteTable};
use crate::timeouts::{BodyTimedOut, ClientBody, ClientClock, ClientTimer, Counted, StreamsOpen, WatchedIo};
use crate::tls::{challenge_token, Edge};

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

/// Whose fault a failed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself: fixing it is the client's job.
    Client,
    /// The routes: no release serves the host.
    Routes,
    /// The upstream application.
    Upstream,
}

/// Why the proxy answered a request itself instead of with an upstream's
/// response. The text (`Display`) is for the log and names the upstream;
/// the client gets [`ProxyError::page`], which names nothing internal.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request names no host: send a Host header")]
    MissingHost,
    #[error("the request's Host header is not valid (more than one, or not visible ASCII)")]
    BadHost,
    #[error("no route for host \"{0}\"")]
    UnknownHost(String),
    #[error("no upstream serves host \"{host}\" right now ({label})")]
    NoUpstream { host: String, label: String },
    #[error("upstream {upstream} for host \"{host}\" could not be reached: {reason}")]
    UpstreamConnect { upstream: SocketAddr, host: String, reason: String },
    #[error("upstream {upstream} for host \"{host}\" failed: {reason}")]
    Upstream { upstream: SocketAddr, host: String, reason: String },
    #[error("upstream {upstream} for host \"{host}\" did not answer within {} ms", after.as_millis())]
    Timeout { upstream: SocketAddr, host: String, after: Duration },
    #[error("the client sent too little of the request body for host \"{host}\": {reason}")]
    ClientBody { host: String, reason: String },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NoUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The body the client gets: what went wrong in the client's terms,
    /// with no address, port, container or deployment in it.
    pub fn page(&self) -> &'static str {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost => "Bad request: send one valid Host header.\n",
            ProxyError::UnknownHost(_) => "Not found: no application is served at this host name.\n",
            ProxyError::NoUpstream { .. } => "Service unavailable: this application is not serving right now; try again shortly.\n",
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => "Bad gateway: the application did not answer.\n",
            ProxyError::Timeout { .. } => "Gateway timeout: the application did not answer in time.\n",
            ProxyError::ClientBody { .. } => "Request timeout: the request body did not arrive in time.\n",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost | ProxyError::ClientBody { .. } => Fault::Client,
            ProxyError::UnknownHost(_) | ProxyError::NoUpstream { .. } => Fault::Routes,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } | ProxyError::Timeout { .. } => Fault::Upstream,
        }
    }

    /// For `slipway_router_upstream_errors_total`: `connect` (never reached
    /// the upstream), `response` (it failed mid-way) or `timeout` (no answer
    /// within the request timeout); `None` if not the upstream's fault.
    pub fn upstream_error_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::UpstreamConnect { .. } => Some("connect"),
            ProxyError::Upstream { .. } => Some("response"),
            ProxyError::Timeout { .. } => Some("timeout"),
            _ => None,
        }
    }

    /// Whether the request surely never reached an application, so sending
    /// it again cannot repeat a side effect.
    pub fn retry_safe(&self) -> bool {
        !matches!(self, ProxyError::Upstream { .. } | ProxyError::Timeout { .. } | ProxyError::ClientBody { .. })
    }

    fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(self.page().as_bytes()))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        if let ProxyError::ClientBody { .. } = self {
            // The rest of the body may still come: the connection cannot
            // carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
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
    let mut workers = Vec::new();
    for i in 0..threads.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (routes, options) = (routes.clone(), options.clone());
        let (handoff, handed) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let (done, finished) = oneshot::channel();
        let source = Source::Handoff { handed, open: open.clone() };
        std::thread::Builder::new().name(format!("router-{i}")).spawn(move || {
            let _ = done.send(runtime.block_on(run(source, routes, options, std::future::pending())));
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
    run(Source::Listener { listener, limits }, routes, options, shutdown).await
}

async fn run(mut source: Source, routes: RouteHandle, options: ServeOptions, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    // Each connection task holds a `live` receiver (never polled: the
    // sender sees when the last is gone) and a oneshot that asks it to
    // finish. Dropping `force` closes whatever is left, upgraded tunnels
    // included.
    let (live_tx, live_rx) = watch::channel(());
    let (force_tx, force_rx) = watch::channel(());
    let tls = match (&options.edge, options.terminate_tls) {
        (Some(edge), true) => Some(tokio_rustls::TlsAcceptor::from(edge.server_config().map_err(std::io::Error::other)?)),
        (None, true) => return Err(std::io::Error::other("a TLS listener needs certificates (ServeOptions::edge)")),
        (_, false) => None,
    };
    let shared = Arc::new(Shared::new(routes, &options, force_rx, tls));
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
    ejections: crate::eject::Ejections,
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
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Idle upstream connections that no client connection holds, by
    /// upstream. Locked when a client connection ends or needs an upstream
    /// connection it does not hold, never for a request on a warm one.
    pool: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    force: watch::Receiver<()>,
}

/// Idle upstream connections kept per upstream, like nginx's `keepalive`.
const POOL_PER_UPSTREAM: usize = 256;
/// Upstream connections one client connection keeps between its requests.
const HELD_PER_CLIENT: usize = 4;

struct Idle {
    upstream: UpstreamConn,
    since: Instant,
}

impl Shared {
    fn new(routes: RouteHandle, options: &ServeOptions, force: watch::Receiver<()>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        // Each connection sets its own timer (`ClientTimer`), which keeps
        // the header and idle timeouts; hyper arms it only if it has a
        // header read timeout.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout).keep_alive(true);
        Shared {
            routes,
            http,
            client: hyper::client::conn::http1::Builder::new(),
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
            ejections: Default::default(),
        }
    }

    /// A new connection to `addr`, which also tells the ejections how it
    /// went: one still connecting after `eject_after` ejects `addr` then
    /// (once). With somewhere else to go (`fallback`) the request gives up
    /// on `addr` there and then, since nothing was sent yet; without, it
    /// waits on up to `connect_timeout`.
    async fn connect(&self, addr: SocketAddr, fallback: bool) -> Result<UpstreamConn, String> {
        let connecting = TcpStream::connect(addr);
        tokio::pin!(connecting);
        let (outcome, ejected) = match tokio::time::timeout(self.eject_after, &mut connecting).await {
            Ok(outcome) => (Some(outcome), false),
            Err(_) => {
                self.ejections.failed(addr, Instant::now());
                if fallback {
                    return Err(format!("no connection within {} ms", self.eject_after.as_millis()));
                }
                let rest = self.connect_timeout.saturating_sub(self.eject_after);
                (tokio::time::timeout(rest, connecting).await.ok(), true)
            }
        };
        match &outcome {
            Some(Ok(_)) => self.ejections.connected(addr),
            _ if !ejected => self.ejections.failed(addr, Instant::now()),
            _ => {}
        }
        let stream = match outcome {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => return Err(format!("connecting failed: {e}")),
            None => return Err(format!("no connection within {} ms", self.connect_timeout.as_millis())),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = self.client.handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP/1.1 handshake failed: {e}"))?;
        Ok(UpstreamConn { addr, sender, conn: Box::pin(conn.with_upgrades()), done: false })
    }

    /// An idle pooled connection to `addr`, newest first (the likeliest to
    /// be open still).
    fn take_pooled(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = pool.get_mut(&addr)?;
        while let Some(Idle { upstream, since }) = idle.pop() {
            if since.elapsed() < self.idle_timeout && upstream.reusable() {
                return Some(upstream);
            }
        }
        None
    }

    fn put_pooled(&self, upstreams: Vec<UpstreamConn>) {
        let now = Instant::now();
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired connections go now, so an upstream no route names any
        // more does not keep its connections open.
        pool.retain(|_, idle| {
            idle.retain(|i| now.duration_since(i.since) < self.idle_timeout);
            !idle.is_empty()
        });
        for upstream in upstreams.into_iter().filter(UpstreamConn::reusable) {
            let idle = pool.entry(upstream.addr).or_default();
            if idle.len() >= POOL_PER_UPSTREAM {
                idle.remove(0);
            }
            idle.push(Idle { upstream, since: now });
        }
    }
}

/// A client connection's upstream connections between its requests. The
/// requests of one client connection come one after another, so a warm
/// client connection keeps using the same upstream connection, driven from
/// its own task: no other task, no shared pool, no lock held by anyone else.
struct Held {
    shared: Arc<Shared>,
    upstreams: Mutex<Vec<UpstreamConn>>,
}

impl Held {
    fn take(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut held = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(i) = held.iter().position(|u| u.addr == addr) {
            let upstream = held.swap_remove(i);
            if upstream.reusable() {
                return Some(upstream);
            }
        }
        drop(held);
        self.shared.take_pooled(addr)
    }

    fn put(&self, upstream: UpstreamConn) {
        if !upstream.reusable() {
            return;
        }
        let mut held = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= HELD_PER_CLIENT {
            let oldest = held.remove(0);
            drop(held);
            self.shared.put_pooled(vec![oldest]);
            held = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        }
        held.push(upstream);
    }
}

impl Drop for Held {
    /// The client connection is gone: its upstream connections serve others.
    fn drop(&mut self) {
        let held = std::mem::take(self.upstreams.get_mut().unwrap_or_else(PoisonError::into_inner));
        if !held.is_empty() {
            self.shared.put_pooled(held);
        }
    }
}

/// One HTTP/1.1 connection to an upstream: the handle requests are sent on,
/// and the connection future that does its I/O, polled by whichever request
/// or response body is using it.
struct UpstreamConn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<UpstreamRequestBody>,
    conn: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The connection future has completed: closed, failed or upgraded.
    done: bool,
}

impl UpstreamConn {
    fn reusable(&self) -> bool {
        !self.done && !self.sender.is_closed()
    }

    /// Lets the connection do whatever I/O it can.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.done {
            return;
        }
        if let Poll::Ready(result) = self.conn.as_mut().poll(cx) {
            self.done = true;
            if let Err(e) = result {
                tracing::debug!(upstream = %self.addr, error = %e, "router: upstream connection failed");
            }
        }
    }

    /// Waits until the connection takes a request; `false` if it closed.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await
        .is_ok()
    }

    async fn send(
        &mut self,
        req: Request<UpstreamRequestBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamRequestBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// An upstream's response body on its way to the client. It drives the
/// upstream connection while it streams, and once it has streamed whole it
/// hands the connection back for the client connection's next request; a
/// body dropped half-way closes the connection instead (its state is
/// unknown).
struct UpstreamBody {
    inner: Incoming,
    upstream: Option<(UpstreamConn, Arc<Held>)>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some((upstream, held)) = self.upstream.take() {
            held.put(upstream);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some((upstream, _)) = &mut this.upstream {
            upstream.drive(cx);
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended.
        if self.inner.is_end_stream() {
            self.release();
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
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
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
    // reading). Re-armed only when the deadline changes; polled after the
    // connection on every wake-up.
    let mut watchdog = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut watched = None;
    let overdue = std::future::poll_fn(|cx| {
        let Some(deadline) = clock.deadline() else { return Poll::Pending };
        if watched != Some(deadline) {
            watched = Some(deadline);
            watchdog.as_mut().reset((deadline + DEADLINE_GRACE).into());
        }
        watchdog.as_mut().poll(cx)
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
            held: Arc::new(Held { shared, upstreams: Mutex::new(Vec::new()) }),
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

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A request on its way to an upstream.
struct Forward {
    req: Request<Incoming>,
    upstream: SocketAddr,
    /// Where to go once if `upstream` fails the request before it could
    /// have done anything (see `send`).
    fallback: Option<Fallback>,
    host: HeaderValue,
    upgrade: Option<Upgrade>,
    /// The route's counters: what its own upstreams answered, or how they
    /// failed (the standby's answers are not its upstreams').
    stats: Option<Stats>,
    /// The client connection's clock (is the request body still coming?).
    clock: Arc<ClientClock>,
}

/// What an upgrade request (WebSocket) needs once upgraded.
struct Upgrade {
    /// The client side of the connection once it is upgraded.
    client_side: hyper::upgrade::OnUpgrade,
    /// Closes the tunnel at shutdown.
    force: watch::Receiver<()>,
    /// The connection's place under the caps, held as long as the tunnel.
    slot: Arc<Slot>,
}

/// Attempts on held or pooled connections that turn out closed before a
/// request is sent on a new one.
const STALE_ATTEMPTS: usize = 2;

/// Methods whose request, bodiless, may be sent again after an upstream
/// dropped it unanswered (RFC 9110 §9.2.2's idempotent methods, less TRACE).
fn replayable(method: &hyper::Method) -> bool {
    matches!(*method, hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS | hyper::Method::PUT | hyper::Method::DELETE)
}

impl Forward {
    /// Sends the request and returns the upstream's answer, going once to
    /// the route's fallback (its standby, else another of its upstreams)
    /// when the upstream
    /// - refuses the connection, does not accept it within the connect
    ///   timeout, or closes it at once: nothing was sent, so any request
    ///   may go (its body is still unread);
    /// - drops a bodiless GET, HEAD, OPTIONS, PUT or DELETE unanswered (as
    ///   nginx's `proxy_next_upstream error` does for idempotent requests):
    ///   a crashing release behind a port that still accepts (Docker's
    ///   proxy) then fails no such request.
    ///
    /// Past `deadline`, the client gets a 504.
    async fn send(self, held: Arc<Held>, peer: SocketAddr, deadline: Option<Instant>) -> Result<Response<ProxyBody>, ProxyError> {
        let Forward { req, upstream: mut addr, mut fallback, host, upgrade, stats, clock } = self;
        // Named by a timeout (the attempts hold `addr` until they end).
        let first = addr;
        // What the route's counters learn: an answer of its own upstreams
        // (not the standby's), or a failure the client gets as a 502 or 504.
        // A request the fallback rescued is not counted as an error: the
        // client saw none, and a dying release is Docker's signal to give.
        let mut on_primary = true;
        let upstream_failed = |e: ProxyError| {
            if let Some(stats) = &stats {
                stats.upstream_error();
            }
            e
        };
        let again = (fallback.is_some() && replayable(req.method()) && req.body().is_end_stream() && upgrade.is_none()).then(|| {
            let mut copy = Request::new(());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            copy
        });
        let body_timeout = held.shared.body_timeout;
        let mut req = req.map(|body| Either::Left(ClientBody::new(body, body_timeout, &clock)));
        let failed = |addr: SocketAddr, reason: String, connect: bool| {
            let (upstream, host) = (addr, lossy(&host));
            if connect {
                ProxyError::UpstreamConnect { upstream, host, reason }
            } else {
                ProxyError::Upstream { upstream, host, reason }
            }
        };
        // The fallback's answers count for the route only if it is one of
        // the route's own upstreams.
        let go_on = |addr: &mut SocketAddr, on_primary: &mut bool, next: Fallback| {
            *addr = next.addr();
            *on_primary = matches!(next, Fallback::Upstream(_));
        };
        let attempts = async {
            let mut stale = 0;
            loop {
                let reused = if stale < STALE_ATTEMPTS { held.take(addr) } else { None };
                let fresh = reused.is_none();
                let connected = match reused {
                    Some(upstream) => Ok(upstream),
                    None => held.shared.connect(addr, fallback.is_some()).await,
                };
                // Refused before anything was sent: the fallback takes it.
                let mut upstream = match connected {
                    Ok(upstream) => upstream,
                    Err(reason) => match fallback.take() {
                        Some(next) => {
                            tracing::debug!(upstream = %addr, fallback = %next.addr(), %reason, "router: upstream refused; trying the fallback");
                            go_on(&mut addr, &mut on_primary, next);
                            continue;
                        }
                        None => return Err(failed(addr, reason, true)),
                    },
                };
                if !upstream.ready().await {
                    if fresh {
                        held.shared.ejections.failed(addr, Instant::now());
                        match fallback.take() {
                            Some(next) => {
                                go_on(&mut addr, &mut on_primary, next);
                                continue;
                            }
                            None => return Err(failed(addr, "it closed the connection at once".into(), true)),
                        }
                    }
                    stale += 1;
                    continue;
                }
                match upstream.send(req).await {
                    Ok(response) => return Ok((response, upstream)),
                    Err(mut e) => match (e.take_message(), &again, fallback) {
                        // Not sent: a kept-alive connection the upstream had
                        // closed. Safe to send again, whatever the method.
                        (Some(unsent), _, _) if !fresh => {
                            req = unsent;
                            stale += 1;
                        }
                        (_, _, _) if BodyTimedOut::caused(e.error()) => {
                            let reason = error_chain(e.error());
                            return Err(ProxyError::ClientBody { host: lossy(&host), reason });
                        }
                        (_, Some(copy), Some(next)) => {
                            tracing::debug!(upstream = %addr, fallback = %next.addr(), "router: upstream dropped an idempotent request; sending it to the fallback");
                            req = copy.clone().map(|()| Either::Right(http_body_util::Empty::new()));
                            fallback = None;
                            go_on(&mut addr, &mut on_primary, next);
                        }
                        _ => return Err(failed(addr, error_chain(e.error()), false)),
                    },
                }
            }
        };
        let attempted = match deadline {
            Some(deadline) => {
                // `attempts` stays alive in the timeout's branch, so the
                // request body it holds still says whether it is complete.
                let mut attempts = std::pin::pin!(attempts);
                tokio::select! {
                    biased;
                    attempted = &mut attempts => attempted,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        let after = held.shared.request_timeout.unwrap_or_default();
                        // Still waiting for the client's body: the client is
                        // late, not the upstream (a trickled upload must not
                        // count against a watched release).
                        Err(if clock.body_pending() {
                            let reason = format!("the request body was not in within {} ms", after.as_millis());
                            ProxyError::ClientBody { host: lossy(&host), reason }
                        } else {
                            ProxyError::Timeout { upstream: first, host: lossy(&host), after }
                        })
                    }
                }
            }
            None => attempts.await,
        };
        let (mut response, upstream) = attempted.map_err(|e| match e {
            ProxyError::ClientBody { .. } => e,
            e => upstream_failed(e),
        })?;
        if on_primary {
            if let Some(stats) = &stats {
                stats.answered(response.status().as_u16());
            }
        }
        tracing::debug!(%peer, upstream = %addr, status = response.status().as_u16(), "router: proxied");
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(Upgrade { client_side, force, slot }) = upgrade else {
                return Err(failed(addr, "it switched protocols though the client did not ask to".into(), false));
            };
            let protocol = response.headers().get(header::UPGRADE).cloned();
            let upstream_side = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_side, upstream_side, upstream, force, peer, slot));
            let headers = response.headers_mut();
            strip_hop_by_hop(headers);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                headers.insert(header::UPGRADE, protocol);
            }
            return Ok(response.map(|inner| Either::Left(UpstreamBody { inner, upstream: None })));
        }
        strip_hop_by_hop(response.headers_mut());
        Ok(response.map(|inner| Either::Left(UpstreamBody { inner, upstream: Some((upstream, held)) })))
    }
}

/// Copies bytes both ways between an upgraded client connection and its
/// upgraded upstream connection until either closes or the server stops.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream_side: hyper::upgrade::OnUpgrade,
    mut upstream: UpstreamConn,
    mut force: watch::Receiver<()>,
    peer: SocketAddr,
    _slot: Arc<Slot>,
) {
    let addr = upstream.addr;
    let copy = async {
        // The upstream side is handed over when its connection future
        // completes on the 101.
        std::future::poll_fn(|cx| {
            upstream.drive(cx);
            if upstream.done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        let (client, upstream) = tokio::try_join!(client, upstream_side)?;
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        result = copy => if let Err(e) = result {
            tracing::debug!(%peer, upstream = %addr, error = %e, "router: upgraded connection ended with an error");
        },
        _ = force.changed() => {}
    }
}

/// The host a request is for: the authority of an absolute-form target, or
/// else its one `Host` header.
fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, ProxyError> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadHost);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => Ok(host.clone()),
        (None, _) => Err(ProxyError::MissingHost),
        (Some(_), Some(_)) => Err(ProxyError::BadHost),
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and
/// an `Upgrade` header), as a WebSocket handshake does.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that describe one connection rather than the message
/// (RFC 9110 §7.6.1): `Connection` and every header it names, and the
/// standard hop-by-hop ones. Framing (`Transfer-Encoding`) is hyper's to set
/// on each side.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the (few) headers is
    // cheaper than a lookup for each name.
    let any = headers.keys().any(|name| {
        name == header::CONNECTION
            || name == KEEP_ALIVE
            || name == header::PROXY_AUTHENTICATE
            || name == header::PROXY_AUTHORIZATION
            || name == PROXY_CONNECTION
            || name == header::TE
            || name == header::TRAILER
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
    });
    if !any {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers).filter_map(|t| HeaderName::try_from(t).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// An error and its causes: `a: b: c`.
fn error_chain(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarded::headers;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "close, X-Trace"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "x"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(wants_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn errors_say_whose_fault_and_whether_retrying_is_safe() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 9));
        let connect = ProxyError::UpstreamConnect { upstream, host: "a".into(), reason: "refused".into() };
        assert_eq!((connect.status(), connect.fault(), connect.retry_safe()), (StatusCode::BAD_GATEWAY, Fault::Upstream, true));
        let failed = ProxyError::Upstream { upstream, host: "a".into(), reason: "reset".into() };
        assert!(!failed.retry_safe());
        assert_eq!(ProxyError::UnknownHost("x".into()).to_string(), "no route for host \"x\"");
        assert_eq!(ProxyError::MissingHost.fault(), Fault::Client);
        let kinds = [connect.upstream_error_kind(), failed.upstream_error_kind(), ProxyError::MissingHost.upstream_error_kind()];
        assert_eq!(kinds, [Some("connect"), Some("response"), None]);
    }
}
