//! One shutdown future shared by every long-running loop of a process.

use futures::future::{BoxFuture, FutureExt, Shared};

pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Resolves on ctrl-c or SIGTERM.
pub fn on_signal() -> Shutdown {
    async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::mem::drop(ctrl_c.await),
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    .boxed()
    .shared()
}

/// A shutdown that resolves when the returned sender is used or dropped.
pub fn manual() -> (tokio::sync::oneshot::Sender<()>, Shutdown) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    (
        stop,
        async move {
            let _ = stopped.await;
        }
        .boxed()
        .shared(),
    )
}
