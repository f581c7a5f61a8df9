//! A request on its way to an upstream: sent on a held, pooled or new
//! connection, sent again once to the route's fallback when that is safe
//! (nothing reached the application, or the request is bodiless and
//! idempotent — then also when its upstream is ejected while it waits for
//! the answer), and, for an upgrade, tunnelled both ways once both sides
//! have switched protocols.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use http_body_util::Either;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::headers::{lossy, strip_hop_by_hop};
use super::{Held, ProxyBody, ProxyError, UpstreamBody, UpstreamConn};
use crate::limits::Slot;
use crate::stats::Stats;
use crate::table::Fallback;
use crate::timeouts::{BodyTimedOut, ClientBody, ClientClock};

/// A request on its way to an upstream.
pub(super) struct Forward {
    pub(super) req: Request<Incoming>,
    pub(super) upstream: SocketAddr,
    /// Where to go once if `upstream` fails the request before it could
    /// have done anything (see `send`).
    pub(super) fallback: Option<Fallback>,
    pub(super) host: HeaderValue,
    pub(super) upgrade: Option<Upgrade>,
    /// The route's counters: what its own upstreams answered, or how they
    /// failed (the standby's answers are not its upstreams').
    pub(super) stats: Option<Stats>,
    /// The client connection's clock (is the request body still coming?).
    pub(super) clock: Arc<ClientClock>,
}

/// What an upgrade request (WebSocket) needs once upgraded.
pub(super) struct Upgrade {
    /// The client side of the connection once it is upgraded.
    pub(super) client_side: hyper::upgrade::OnUpgrade,
    /// Closes the tunnel at shutdown.
    pub(super) force: watch::Receiver<()>,
    /// The connection's place under the caps, held as long as the tunnel.
    pub(super) slot: Arc<Slot>,
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
    ///   proxy) then fails no such request;
    /// - is ejected (another request found it unreachable) while such a
    ///   bodiless idempotent request waits for its answer: a host that lost
    ///   power answers nothing on connections already open, and the route
    ///   moves off it only seconds later.
    ///
    /// Past `deadline`, the client gets a 504.
    pub(super) async fn send(
        self,
        held: Arc<Held>,
        peer: SocketAddr,
        deadline: Option<Instant>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
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
        // The copy, sent again with an empty body.
        let resend = |copy: &Request<()>| copy.clone().map(|()| Either::Right(http_body_util::Empty::new()));
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
                // A replayable request with somewhere else to go is sent
                // there too if its upstream is ejected while it waits for
                // an answer (a lost host answers nothing, and its route
                // moves only seconds later).
                let sent = match (&again, fallback.take()) {
                    (Some(copy), Some(next)) if !held.shared.ejections.is_out(addr, Instant::now()) => {
                        tokio::select! {
                            biased;
                            sent = upstream.send(req) => {
                                fallback = Some(next);
                                sent
                            }
                            () = held.shared.until_out(addr, &clock.deadline_alarm) => {
                                tracing::debug!(upstream = %addr, fallback = %next.addr(), "router: upstream ejected while a request waited on it; sending it to the fallback");
                                // Its connection, with the request in flight
                                // on it, is dropped with this attempt.
                                req = resend(copy);
                                go_on(&mut addr, &mut on_primary, next);
                                continue;
                            }
                        }
                    }
                    (_, next) => {
                        fallback = next;
                        upstream.send(req).await
                    }
                };
                match sent {
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
                            req = resend(copy);
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
                    () = clock.deadline_alarm.until(deadline) => {
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
