//! What every test suite in the workspace shares, in a crate that depends on
//! nothing of Slipway's own, so that the store's and the workers' tests can
//! use it as well as the end-to-end `slipway-tests` (which re-exports it).
//!
//! - [`eventually`] is the one way a test waits: on a condition, polled,
//!   with a limit that names what was awaited when it runs out. Tests never
//!   sleep for a fixed time and hope.
//! - The service URLs read the variables `scripts/services` prints, with the
//!   defaults it sets up, so a test and a hand-run `cargo test` agree.

use std::future::Future;
use std::time::Duration;

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `check` yields `Some`, polling, and panics naming `what`
/// after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`eventually`] for a check that can fail: its first error ends the
/// wait and is returned, and running out of time is an error too.
pub async fn try_eventually<T, E, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: From<TimedOut>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(E::from(TimedOut(format!("timed out after {limit:?} waiting for {what}"))));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A [`try_eventually`] that ran out of time, saying what it waited for.
#[derive(Debug)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// PostgreSQL as the schema's owner: it migrates, and tests that run the
/// store in-process connect with it.
pub fn pg_url() -> String {
    var_or("SLIPWAY_PG_URL", "postgres://slipway:slipway@127.0.0.1:5432/slipway")
}

/// PostgreSQL as the runtime login (writer grants only): what the `slipway`
/// processes a test starts log in as, once `pg_url` migrated the schema.
pub fn pg_app_url() -> String {
    var_or("SLIPWAY_PG_APP_URL", "postgres://slipway_app:slipway_app@127.0.0.1:5432/slipway")
}

/// PostgreSQL as a worker host's login: the writer grants, but not a
/// token issuer (`slipway db migrate --grant-worker`).
pub fn pg_worker_url() -> String {
    var_or("SLIPWAY_PG_WORKER_URL", "postgres://slipway_worker:slipway_worker@127.0.0.1:5432/slipway")
}

/// RabbitMQ.
pub fn amqp_url() -> String {
    var_or("SLIPWAY_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// A loopback port that refuses connections for as long as this value
/// lives: bound, never listening. A port bound and freed at once would do
/// the same until some other socket of the test (a listener of its own,
/// the router's) is given it, and then answers.
pub struct RefusingPort {
    pub addr: std::net::SocketAddr,
    _socket: tokio::net::TcpSocket,
}

/// A [`RefusingPort`] on 127.0.0.1.
pub fn refusing_port() -> RefusingPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("binding a loopback port");
    let addr = socket.local_addr().expect("a bound socket has an address");
    RefusingPort { addr, _socket: socket }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_condition_that_comes_true_is_returned_and_one_that_fails_ends_the_wait() {
        let mut calls = 0;
        let value = eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(value, 3);
        type Failure = Box<dyn std::error::Error>;
        let failed: Result<(), Failure> =
            try_eventually("never", Duration::from_secs(5), || async { Err::<Option<()>, Failure>("broken".into()) }).await;
        assert_eq!(failed.map_err(|e| e.to_string()), Err("broken".to_string()));
        let late: Result<(), Failure> = try_eventually("never", Duration::from_millis(50), || async { Ok(None) }).await;
        assert!(matches!(late, Err(e) if e.to_string().contains("waiting for never")));
    }
}
