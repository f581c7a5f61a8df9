//! The clocks that cut slow clients off, so that a client sending a byte a
//! second (slowloris), an upload that stalls, or a connection left open and
//! idle cannot hold a connection (a file descriptor, a task) for long:
//!
//! - **header**: a request's headers must arrive whole within the header
//!   timeout of their first byte (of the connection's start, for its first
//!   request);
//! - **idle**: a kept-alive connection may wait that long for its next
//!   request's first byte; an HTTP/2 connection, that long with no stream
//!   open ([`StreamsOpen`]: from a request's headers until its answer is
//!   sent or reset), then it gets a GOAWAY and is closed;
//! - **body**: a request body may pause that long between two pieces;
//! - **request**: a request that does not upgrade has, from its headers on,
//!   that long to be answered and its answer sent whole (504 when the
//!   upstream has not answered by then; the connection is closed when the
//!   answer is still being sent a second later).
//!
//! hyper has one timer for a connection between requests (its
//! `header_read_timeout`, armed when the connection goes idle and cleared
//! when a request's headers are in). [`ClientTimer`] is that timer: it knows
//! from [`WatchedIo`] whether the client has sent anything since it was
//! armed, so the same timer is the idle timeout before the first byte and
//! the header timeout after it. Being armed is also hyper's sign that the
//! previous answer has been sent, which ends the request's deadline.
//! Everything here is per connection; a request costs hyper's boxed timer
//! and an uncontended lock, never a tokio timer of its own (see
//! [`ClientSleep`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Milliseconds since the clock's start; `NONE` when unset.
const NONE: u64 = u64::MAX;

/// One client connection's clock.
#[derive(Debug)]
pub(crate) struct ClientClock {
    start: Instant,
    header: Duration,
    idle: Duration,
    /// When the client sent its first byte since the timer was armed.
    first_read: AtomicU64,
    /// The timer has been armed before: later arms wait for another request.
    armed: AtomicBool,
    /// The request in progress must be done by then (`NONE`: no deadline).
    deadline: AtomicU64,
    /// The request in progress still has body to come from the client.
    body_pending: AtomicBool,
    /// The one timer behind every arming of [`ClientTimer`].
    alarm: Alarm,
    /// The one timer behind every request's deadline: its 504, and the
    /// watchdog a second later.
    pub(crate) deadline_alarm: Alarm,
}

impl ClientClock {
    pub(crate) fn new(header: Duration, idle: Duration) -> Arc<Self> {
        Arc::new(ClientClock {
            start: Instant::now(),
            header,
            idle,
            first_read: AtomicU64::new(NONE),
            armed: AtomicBool::new(false),
            deadline: AtomicU64::new(NONE),
            body_pending: AtomicBool::new(false),
            alarm: Alarm::default(),
            deadline_alarm: Alarm::default(),
        })
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    /// The request now starting must be done by `deadline` (`None`: it may
    /// take as long as it likes, as an upgraded connection does).
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) {
        self.deadline.store(deadline.map_or(NONE, |d| self.millis(d).max(1)), Ordering::Relaxed);
    }

    /// The deadline of the request in progress, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Relaxed) {
            NONE => None,
            millis => Some(self.at(millis)),
        }
    }

    /// Whether the request in progress still waits for body from the
    /// client: a request timeout is then the client's fault.
    pub(crate) fn body_pending(&self) -> bool {
        self.body_pending.load(Ordering::Relaxed)
    }

    fn arm(&self) -> (Instant, bool) {
        let now = Instant::now();
        self.first_read.store(NONE, Ordering::Relaxed);
        // Armed again: the previous answer went out whole.
        self.deadline.store(NONE, Ordering::Relaxed);
        (now, !self.armed.swap(true, Ordering::Relaxed))
    }

    fn read_something(&self) {
        if self.first_read.load(Ordering::Relaxed) == NONE {
            self.first_read.store(self.millis(Instant::now()), Ordering::Relaxed);
        }
    }
}

/// An HTTP/2 connection's open streams, for its idle timeout: counted from
/// a request's headers until its answer's body is dropped (sent whole or
/// reset). hyper's keep-alive pings keep a connection alive, so they
/// cannot be the idle signal; streams are.
#[derive(Debug)]
pub(crate) struct StreamsOpen {
    start: Instant,
    open: AtomicUsize,
    /// When the last stream ended (ms since `start`).
    idle_since: AtomicU64,
    /// Told when the last open stream ends.
    ended: tokio::sync::Notify,
}

impl StreamsOpen {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(StreamsOpen {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            ended: tokio::sync::Notify::new(),
        })
    }

    /// A stream opens; it is open until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// Since when the connection has had no stream open; `None` while one is.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.start + Duration::from_millis(self.idle_since.load(Ordering::Relaxed)))
    }

    /// Resolves once the connection has had no stream open for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            match self.idle_since() {
                // A stream that ends meanwhile leaves a permit: no wake-up is lost.
                None => self.ended.notified().await,
                Some(since) => {
                    tokio::time::sleep_until((since + idle).into()).await;
                    if self.idle_since() == Some(since) {
                        return;
                    }
                }
            }
        }
    }
}

/// One open HTTP/2 stream (see [`StreamsOpen`]).
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<StreamsOpen>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        let millis = u64::try_from(streams.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        streams.idle_since.store(millis, Ordering::Relaxed);
        if streams.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            streams.ended.notify_one();
        }
    }
}

/// An answer's body that keeps its HTTP/2 stream counted as open until it
/// is dropped.
pub(crate) struct Counted<B> {
    pub(crate) inner: B,
    pub(crate) _stream: StreamGuard,
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A timer for deadlines that keep moving later, as a connection's do
/// (each request's is later than the last's): a tokio timer that moves
/// only when it must. Registering a tokio timer costs the timer wheel's
/// lock and, when its thread's driver had no earlier timer, a write to the
/// driver's eventfd to wake it (measured before: 0.15 such writes per
/// request through the router, each a syscall and a wasted turn of the
/// event loop). An `Alarm` keeps one, set when first needed: asked for a
/// later deadline it stays as it is and may ring early (it is then set
/// again); only an earlier deadline, or one after it rang, moves it. So a
/// kept-alive connection's alarm moves about once per timeout, however
/// many requests it serves. Polled from one task (a connection's).
#[derive(Default)]
pub(crate) struct Alarm(Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alarm")
    }
}

impl Alarm {
    /// Ready once `at` has passed.
    pub(crate) fn poll_at(&self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let mut alarm = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let at_tokio = tokio::time::Instant::from_std(at);
        loop {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            let alarm = alarm.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at_tokio)));
            if alarm.deadline() > at_tokio || alarm.is_elapsed() {
                alarm.as_mut().reset(at_tokio);
            }
            ready!(alarm.as_mut().poll(cx));
        }
    }

    /// Completes once `at` has passed.
    pub(crate) async fn until(&self, at: Instant) {
        std::future::poll_fn(|cx| self.poll_at(cx, at)).await;
    }
}

/// hyper's header read timer for one connection (see the module's text).
#[derive(Debug, Clone)]
pub(crate) struct ClientTimer(pub(crate) Arc<ClientClock>);

impl hyper::rt::Timer for ClientTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    /// Arms the timer; hyper's own deadline (now + its header timeout) is
    /// replaced by the clock's rules.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let clock = self.0.clone();
        let (armed_at, first) = clock.arm();
        Box::pin(ClientSleep { clock, armed_at, first })
    }
}

/// One arming of the connection's timer: hyper arms it for every request,
/// so it shares the clock's one [`Alarm`] rather than taking a tokio timer
/// of its own.
struct ClientSleep {
    clock: Arc<ClientClock>,
    armed_at: Instant,
    /// Armed for the connection's first request: no idle time before it.
    first: bool,
}

impl ClientSleep {
    /// When this arming runs out, and which timeout that is.
    fn target(&self) -> (Instant, &'static str) {
        match self.clock.first_read.load(Ordering::Relaxed) {
            NONE if self.first => (self.armed_at + self.clock.header, "header"),
            NONE => (self.armed_at + self.clock.idle, "idle"),
            first_read => (self.clock.at(first_read) + self.clock.header, "header"),
        }
    }
}

impl hyper::rt::Sleep for ClientSleep {}

impl Future for ClientSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let (target, kind) = self.target();
            let now = Instant::now();
            if now >= target {
                slipway_telemetry::metrics::global().router_timeout(kind);
                return Poll::Ready(());
            }
            // Look again by the target, and before it by a header timeout
            // from the arming: a first byte coming meanwhile brings the
            // target forward, to a header timeout after it.
            let first_look = self.armed_at + if self.first { self.clock.header } else { self.clock.header.min(self.clock.idle) };
            let look = if now < first_look { target.min(first_look) } else { target };
            ready!(self.clock.alarm.poll_at(cx, look));
        }
    }
}

/// A client connection's socket, telling its clock when the client sends.
pub(crate) struct WatchedIo<T> {
    pub(crate) inner: T,
    pub(crate) clock: Arc<ClientClock>,
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.read_something();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?}")]
pub(crate) struct BodyTimedOut(pub(crate) Duration);

impl BodyTimedOut {
    /// Whether `e` (an upstream request that failed) failed because its
    /// body timed out: the client's fault, not the upstream's.
    pub(crate) fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut source = Some(e);
        while let Some(e) = source {
            if e.is::<BodyTimedOut>() {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// A client's request body on its way upstream, cut off when the client
/// sends none of it for the body timeout. The clock runs only while the
/// router waits for the client: an upstream that reads slowly (and so
/// stops asking for more) does not make the client late.
pub(crate) struct ClientBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    /// Told whether body is still to come (`None` for a bodiless request).
    clock: Option<Arc<ClientClock>>,
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, timeout: Duration, clock: &Arc<ClientClock>) -> Self {
        let clock = (!inner.is_end_stream()).then(|| clock.clone());
        if let Some(clock) = &clock {
            clock.body_pending.store(true, Ordering::Relaxed);
        }
        ClientBody { inner, timeout, sleep: None, waiting: false, clock }
    }

    fn ended(&mut self) {
        if let Some(clock) = self.clock.take() {
            clock.body_pending.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if frame.is_none() || this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = tokio::time::Instant::now() + this.timeout;
                    match &mut this.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let expired = this.sleep.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if expired {
                    slipway_telemetry::metrics::global().router_timeout("body");
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `alarm` once for `at` (as a connection's earlier request
    /// would), leaving it set, then drops that poll.
    fn set_for(alarm: &Alarm, at: Instant) {
        let waker = std::task::Waker::noop();
        assert!(alarm.poll_at(&mut Context::from_waker(waker), at).is_pending());
    }

    async fn took(alarm: &Alarm, after: Duration) -> Duration {
        let started = Instant::now();
        alarm.until(started + after).await;
        started.elapsed()
    }

    #[tokio::test]
    async fn an_alarm_rings_at_the_deadline_asked_whatever_it_was_set_for() {
        let alarm = Alarm::default();
        let first = took(&alarm, Duration::from_millis(50)).await;
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(250), "{first:?}");
        // Set for later than asked next: it is moved sooner.
        set_for(&alarm, Instant::now() + Duration::from_secs(5));
        let sooner = took(&alarm, Duration::from_millis(50)).await;
        assert!(sooner >= Duration::from_millis(50) && sooner < Duration::from_millis(250), "{sooner:?}");
        // Set for sooner than asked next: it rings early and is set again,
        // and the wait still lasts until the deadline asked.
        set_for(&alarm, Instant::now() + Duration::from_millis(20));
        let later = took(&alarm, Duration::from_millis(150)).await;
        assert!(later >= Duration::from_millis(150) && later < Duration::from_millis(400), "{later:?}");
    }
}
