//! The forwarding layer: accepts HTTP/1.1 connections, asks the route table
//! where each request goes, and streams it to that upstream over a pool of
//! keep-alive connections. It exists apart from `table.rs` so that the
//! routing decisions stay pure and tested without sockets, while this file
//! owns only what needs them: sockets, the upstream pool, header rewriting,
//! protocol upgrades (WebSocket) and graceful shutdown.
//!
//! Routes change by swapping a whole [`RouteTable`] ([`RouteHandle::replace`]);
//! each request reads the table once, when it starts, so it is served wholly
//! by the table it started with.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::table::{Resolution, RouteTable};

/// The body of every response the proxy sends: the upstream's, streamed, or
/// a short text of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A shared, atomically replaceable route table. Cloning is cheap; every
/// clone sees the same table. Reading it takes no lock.
#[derive(Clone, Debug)]
pub struct RouteHandle {
    table: Arc<ArcSwap<RouteTable>>,
}

impl RouteHandle {
    pub fn new(table: RouteTable) -> Self {
        RouteHandle { table: Arc::new(ArcSwap::from_pointee(table)) }
    }

    /// Swaps in a new table. Requests already started finish on the table
    /// they started with; every request that starts afterwards sees this one.
    pub fn replace(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }
}

/// How long the proxy waits for things.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connecting to an upstream; past it the request fails with 502.
    pub connect_timeout: Duration,
    /// After shutdown, how long in-flight requests may take to finish before
    /// their connections are closed.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long an idle upstream connection stays in the pool.
    pub upstream_idle_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(60),
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
/// response.
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
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NoUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::MissingHost | ProxyError::BadHost => Fault::Client,
            ProxyError::UnknownHost(_) | ProxyError::NoUpstream { .. } => Fault::Routes,
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => Fault::Upstream,
        }
    }

    /// Whether the request surely never reached an application, so sending
    /// it again cannot repeat a side effect.
    pub fn retry_safe(&self) -> bool {
        !matches!(self, ProxyError::Upstream { .. })
    }

    fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!("{self}\n")))));
        *response.status_mut() = self.status();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

/// Serves the proxy on `listener` with the default [`ServeOptions`] until
/// `shutdown` completes.
pub async fn serve(listener: TcpListener, routes: RouteHandle, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    serve_with(listener, routes, ServeOptions::default(), shutdown).await
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
    // Connections hold `drain` receivers: a change asks them to finish, and
    // the sender sees when the last is gone. Dropping `force` closes
    // whatever is left, upgraded tunnels included.
    let (drain_tx, drain_rx) = watch::channel(false);
    let (force_tx, force_rx) = watch::channel(());
    let shared = Arc::new(Shared::new(routes, &options, force_rx));
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = AtomicUsize::new(0);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning; the listener itself stays usable.
                tracing::warn!(error = %e, "router: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let seed = connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(shared.clone(), stream, peer, seed, drain_rx.clone()));
    }
    drop(listener);
    drop(drain_rx);
    let _ = drain_tx.send(true);
    let open = drain_tx.receiver_count();
    if open > 0 {
        tracing::debug!(open, "router: draining connections");
        if tokio::time::timeout(options.drain_timeout, drain_tx.closed()).await.is_err() {
            tracing::warn!(
                open = drain_tx.receiver_count(),
                "router: connections still busy after the drain timeout; closing them"
            );
        }
    }
    drop(force_tx);
    Ok(())
}

/// What every connection of one `serve` shares.
struct Shared {
    routes: RouteHandle,
    client: Client<HttpConnector, Incoming>,
    http: hyper::server::conn::http1::Builder,
    force: watch::Receiver<()>,
}

impl Shared {
    fn new(routes: RouteHandle, options: &ServeOptions, force: watch::Receiver<()>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(options.upstream_idle_timeout)
            .pool_max_idle_per_host(1024)
            // The application sees the Host the client sent.
            .set_host(false)
            .build(connector);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout).keep_alive(true);
        Shared { routes, client, http, force }
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, seed: usize, mut drain: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let force = shared.force.clone();
    let state = ConnState::new(shared.clone(), peer, seed);
    let service = hyper::service::service_fn(move |req| state.call(req));
    let conn = shared.http.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        _ = drain.wait_for(|draining| *draining) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            let mut force = force;
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

/// One client connection's part of the proxy: per-connection values are
/// computed once here instead of once per request.
struct ConnState {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The client's address as an `X-Forwarded-For` entry.
    forwarded_for: HeaderValue,
    /// Round-robin position, seeded per connection so that short
    /// connections do not all start on the first upstream.
    pick: std::cell::Cell<usize>,
    /// The last upstream's authority, so a run of requests to the same
    /// upstream does not format and parse it again.
    last_authority: std::cell::RefCell<Option<(SocketAddr, Authority)>>,
}

impl ConnState {
    fn new(shared: Arc<Shared>, peer: SocketAddr, seed: usize) -> Self {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let forwarded_for = HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ConnState {
            shared,
            peer,
            forwarded_for,
            pick: std::cell::Cell::new(seed),
            last_authority: std::cell::RefCell::new(None),
        }
    }

    /// Routes and rewrites the request now (synchronously), and returns the
    /// future of the upstream's answer.
    fn call(&self, req: Request<Incoming>) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let prepared = self.prepare(req);
        let peer = self.peer;
        async move {
            let response = match prepared {
                Ok(forward) => forward.send(peer).await,
                Err(e) => Err(e),
            };
            Ok(response.unwrap_or_else(|e| {
                match e.fault() {
                    Fault::Upstream => tracing::warn!(%peer, error = %e, "router: upstream failed"),
                    Fault::Client | Fault::Routes => tracing::debug!(%peer, error = %e, "router: refused"),
                }
                e.into_response()
            }))
        }
    }

    fn prepare(&self, mut req: Request<Incoming>) -> Result<Forward, ProxyError> {
        let host = request_host(&req)?;
        let pick = self.pick.get();
        self.pick.set(pick.wrapping_add(1));
        let upstream = {
            let table = self.shared.routes.table.load();
            let host_str = host.to_str().map_err(|_| ProxyError::BadHost)?;
            match table.resolve(Some(host_str), pick) {
                Resolution::Upstream(upstream) => upstream,
                Resolution::MissingHost => return Err(ProxyError::MissingHost),
                Resolution::UnknownHost(host) => return Err(ProxyError::UnknownHost(host)),
                Resolution::NoUpstream(host) => {
                    let label = table.get(&host).map(|r| r.label.clone()).unwrap_or_default();
                    return Err(ProxyError::NoUpstream { host, label });
                }
            }
        };

        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority(upstream));
        parts.path_and_query = Some(req.uri().path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/")));
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::Upstream {
            upstream,
            host: lossy(&host),
            reason: format!("no valid URI for it: {e}"),
        })?;
        // HTTP/1.1 to upstreams whatever the client spoke, so their
        // connections stay pooled.
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
        append_forwarded_for(headers, &self.forwarded_for);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        headers.insert(X_FORWARDED_HOST, host.clone());
        // The absolute form's authority wins over Host (RFC 9112 §3.2.2);
        // the application must see the host that was routed.
        headers.insert(header::HOST, host.clone());

        let response = self.shared.client.request(req);
        let upgrade = upgrade.map(|(client_side, _)| (client_side, self.shared.force.clone()));
        Ok(Forward { response, upstream, host, upgrade })
    }

    fn authority(&self, upstream: SocketAddr) -> Authority {
        let mut last = self.last_authority.borrow_mut();
        if let Some((addr, authority)) = last.as_ref() {
            if *addr == upstream {
                return authority.clone();
            }
        }
        // A socket address always formats as a valid authority.
        let authority = Authority::try_from(upstream.to_string()).unwrap_or(Authority::from_static("invalid"));
        *last = Some((upstream, authority.clone()));
        authority
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A request on its way to an upstream.
struct Forward {
    response: hyper_util::client::legacy::ResponseFuture,
    upstream: SocketAddr,
    host: HeaderValue,
    /// For an upgrade request: the client side of the connection once it is
    /// upgraded, and the signal that closes the tunnel at shutdown.
    upgrade: Option<(hyper::upgrade::OnUpgrade, watch::Receiver<()>)>,
}

impl Forward {
    async fn send(self, peer: SocketAddr) -> Result<Response<ProxyBody>, ProxyError> {
        let Forward { response, upstream, host, upgrade } = self;
        let mut response = response.await.map_err(|e| {
            let reason = error_chain(&e);
            let host = lossy(&host);
            if e.is_connect() {
                ProxyError::UpstreamConnect { upstream, host, reason }
            } else {
                ProxyError::Upstream { upstream, host, reason }
            }
        })?;
        tracing::debug!(%peer, %upstream, status = response.status().as_u16(), "router: proxied");
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some((client_side, force)) = upgrade else {
                return Err(ProxyError::Upstream {
                    upstream,
                    host: lossy(&host),
                    reason: "it switched protocols though the client did not ask to".into(),
                });
            };
            let protocol = response.headers().get(header::UPGRADE).cloned();
            let upstream_side = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_side, upstream_side, force, peer, upstream));
            let headers = response.headers_mut();
            strip_hop_by_hop(headers);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                headers.insert(header::UPGRADE, protocol);
            }
        } else {
            strip_hop_by_hop(response.headers_mut());
        }
        Ok(response.map(Either::Left))
    }
}

/// Copies bytes both ways between an upgraded client connection and its
/// upgraded upstream connection until either closes or the server stops.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut force: watch::Receiver<()>,
    peer: SocketAddr,
    upstream_addr: SocketAddr,
) {
    let copy = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        result = copy => if let Err(e) = result {
            tracing::debug!(%peer, upstream = %upstream_addr, error = %e, "router: upgraded connection ended with an error");
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

/// Appends the client's address to `X-Forwarded-For`, keeping what earlier
/// proxies recorded.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let mut earlier = headers.get_all(X_FORWARDED_FOR).iter().peekable();
    if earlier.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    }
    let mut joined = Vec::new();
    for value in earlier {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client.as_bytes());
    let value = HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or_else(|_| client.clone());
    headers.insert(X_FORWARDED_FOR, value);
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// An error and its causes, `a: b: c`, without the client's generic
/// outermost "client error (Connect)".
fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::try_from(*name).unwrap(), HeaderValue::try_from(*value).unwrap());
        }
        map
    }

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
    fn forwarded_for_appends_to_earlier_proxies() {
        let client = HeaderValue::from_static("127.0.0.1");
        let mut map = headers(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2")]);
        append_forwarded_for(&mut map, &client);
        assert_eq!(map.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["10.0.0.1, 10.0.0.2, 127.0.0.1"]);
        let mut map = HeaderMap::new();
        append_forwarded_for(&mut map, &client);
        assert_eq!(map[X_FORWARDED_FOR], "127.0.0.1");
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
    }
}
