//! Upstream connections: how a client connection gets one (held from its
//! last request, else the shared idle pool, else a new connection, which
//! also feeds the ejections), drives it from its own task, and gives it
//! back when the response has streamed whole. See the module above for why
//! connections are driven this way rather than by a pooled client.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Shared, UpstreamRequestBody};
use crate::timeouts::Alarm;

/// Idle upstream connections kept per upstream, like nginx's `keepalive`.
const POOL_PER_UPSTREAM: usize = 256;
/// Upstream connections one client connection keeps between its requests.
const HELD_PER_CLIENT: usize = 4;

pub(super) struct Idle {
    upstream: UpstreamConn,
    since: Instant,
}

impl Shared {
    /// A new connection to `addr`, which also tells the ejections how it
    /// went: one still connecting after `eject_after` ejects `addr` then
    /// (once). With somewhere else to go (`fallback`) the request gives up
    /// on `addr` there and then, since nothing was sent yet; without, it
    /// waits on up to `connect_timeout`.
    pub(super) async fn connect(&self, addr: SocketAddr, fallback: bool) -> Result<UpstreamConn, String> {
        let opened = self.ejections.epoch();
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
        Ok(UpstreamConn { addr, opened, sender, conn: Box::pin(conn.with_upgrades()), done: false })
    }

    /// Resolves once `addr` is ejected. Meanwhile, each `eject_after`, a
    /// new connection is tried there if no other request did so lately
    /// (`Ejections::may_probe`): refused or unanswered, it ejects `addr`
    /// (this is how a lost host is found when every request to it went on
    /// a connection already open); accepted, the upstream is only slow,
    /// and the connection joins the idle pool. The waits run on the client
    /// connection's `alarm`, not a timer per request.
    pub(super) async fn until_out(&self, addr: SocketAddr, alarm: &Alarm) {
        let probing = async {
            loop {
                alarm.until(Instant::now() + self.eject_after).await;
                if self.ejections.may_probe(addr, Instant::now(), self.eject_after) {
                    if let Ok(upstream) = self.connect(addr, true).await {
                        self.put_pooled(vec![upstream]);
                    }
                }
            }
        };
        tokio::select! {
            () = self.ejections.until_out(addr) => {}
            () = probing => {}
        }
    }

    /// An idle pooled connection to `addr`, newest first (the likeliest to
    /// be open still).
    fn take_pooled(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = pool.get_mut(&addr)?;
        while let Some(Idle { upstream, since }) = idle.pop() {
            if since.elapsed() < self.idle_timeout && self.reusable(&upstream) {
                return Some(upstream);
            }
        }
        None
    }

    /// Whether `upstream` may carry another request: open, and opened
    /// after its upstream's last ejection.
    fn reusable(&self, upstream: &UpstreamConn) -> bool {
        upstream.reusable() && !self.ejections.ejected_since(upstream.addr, upstream.opened)
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
pub(super) struct Held {
    pub(super) shared: Arc<Shared>,
    upstreams: Mutex<Vec<UpstreamConn>>,
}

impl Held {
    pub(super) fn new(shared: Arc<Shared>) -> Held {
        Held { shared, upstreams: Mutex::new(Vec::new()) }
    }

    pub(super) fn take(&self, addr: SocketAddr) -> Option<UpstreamConn> {
        let mut held = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(i) = held.iter().position(|u| u.addr == addr) {
            let upstream = held.swap_remove(i);
            if self.shared.reusable(&upstream) {
                return Some(upstream);
            }
        }
        drop(held);
        self.shared.take_pooled(addr)
    }

    pub(super) fn put(&self, upstream: UpstreamConn) {
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
pub(super) struct UpstreamConn {
    pub(super) addr: SocketAddr,
    /// The ejections' epoch when it was opened (`Ejections::ejected_since`).
    opened: u64,
    sender: hyper::client::conn::http1::SendRequest<UpstreamRequestBody>,
    conn: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The connection future has completed: closed, failed or upgraded.
    pub(super) done: bool,
}

impl UpstreamConn {
    fn reusable(&self) -> bool {
        !self.done && !self.sender.is_closed()
    }

    /// Lets the connection do whatever I/O it can.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
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
    pub(super) async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await
        .is_ok()
    }

    pub(super) async fn send(
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
pub(super) struct UpstreamBody {
    pub(super) inner: Incoming,
    pub(super) upstream: Option<(UpstreamConn, Arc<Held>)>,
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
