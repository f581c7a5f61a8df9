//! The API's listener. `axum::serve` has no header timeout and no cap on
//! connections, so a client trickling a request a byte at a time
//! (slowloris), or opening connections in a loop and leaving them idle,
//! could hold every file descriptor and task the server has. Here each
//! connection is admitted under two caps (in all, and per client address:
//! the router's [`ConnLimits`]) and closed at once when over either, before
//! anything is read from it; hyper's header timer then bounds both how long
//! a request's headers may take and how long a kept-alive connection may
//! sit idle before its next request. A live stream, once answered, is not
//! cut by these: it ends with the server (`live::closing`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use slipway_router::limits::ConnLimits;
use tower::ServiceExt;

use super::live;

/// How much of the server one client, and all of them, may hold.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64 counts as one).
    pub max_connections_per_client: usize,
    /// A request's headers must arrive whole within this, and a kept-alive
    /// connection may wait this long for its next request.
    pub header_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits { max_connections: 1024, max_connections_per_client: 128, header_timeout: Duration::from_secs(10) }
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves,
/// then stops accepting, ends live streams and waits for the requests in
/// flight.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing, app) = live::closing(app);
    let caps = ConnLimits::new(limits.max_connections, limits.max_connections_per_client);
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: browsers and the CLI speak it in the clear, and
    // telling it from h2 would read a first byte before any timer runs.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: pass over it rather than stop serving.
                    tracing::warn!(error = %e, "api: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(over) => {
                tracing::debug!(peer = %peer.ip(), cap = over.reason(), "api: connection refused over its cap");
                continue;
            }
        };
        // The client's address reaches the guard (refused tokens are counted per address).
        let service = app.clone().map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            request
        });
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer.ip(), error = %e, "api: connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    closing.close();
    graceful.shutdown().await;
    Ok(())
}
