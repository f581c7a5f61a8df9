//! The command's exit statuses, in one place: what each number means, how an
//! error becomes one, and the text `slipway --help` shows. Scripts branch on
//! these (retry on 5, create the project on 3, give up on 2), so a number
//! never changes meaning once released.
//!
//! An error carries its status by being (or wrapping) a [`Coded`] or an
//! engine `Rejection`, whose kind has its status in [`of_rejection`] (the one
//! place); through `--server`, the API's error code or HTTP status decides
//! (`client::exit_for`). Anything else is classified by type in [`code_of`]:
//! a connection that could not be made is unavailable, the rest a failure.
//! No status is ever read from an error's words.

use std::fmt;
use std::process::ExitCode;

use slipway_engine::rejection::Rejection;
use slipway_store::StoreError;

/// Why the command stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The operation ran and failed: a deployment failed, a verification
    /// found tampering, something broke that retrying will not fix.
    Failed = 1,
    /// Bad arguments or input (clap's own usage errors are 2 as well).
    Usage = 2,
    /// A project, environment, deployment or stream that does not exist.
    NotFound = 3,
    /// The request clashes with what exists: a name taken, a deployment
    /// still running or already serving, nothing to roll back to.
    Conflict = 4,
    /// The database, queue, Docker engine or server could not be reached:
    /// retrying later may work.
    Unavailable = 5,
    /// Following a deployment gave up at `--timeout`; it goes on (cancelled
    /// when embedded: its workers stop with the command).
    TimedOut = 6,
    /// The server refused the token (missing, unknown, revoked, or its
    /// scope is too small).
    Unauthorized = 7,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// The exit statuses as `slipway --help` lists them.
pub const HELP: &str = "\
Exit status:
  0  success
  1  the operation failed (a deployment failed, tampering found, an internal error)
  2  bad arguments or input
  3  not found (project, environment, deployment, stream)
  4  conflict (name taken, deployment still running or already serving, nothing to roll back to)
  5  unavailable (database, queue, Docker or server unreachable): retry later
  6  timed out following a deployment (it goes on; embedded, it is cancelled)
  7  not authorized (the server refused the token)";

/// An error that knows its exit status.
#[derive(Debug)]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

pub fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded { exit, message: message.into() })
}

pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    coded(Exit::NotFound, message)
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    coded(Exit::Usage, message)
}

/// A request the engine refused, as an error that keeps its kind.
pub fn rejected(rejection: Rejection) -> anyhow::Error {
    anyhow::Error::new(rejection)
}

/// Each kind of refusal has its status, here and nowhere else.
pub fn of_rejection(rejection: &Rejection) -> Exit {
    match rejection {
        Rejection::NotFound(_) => Exit::NotFound,
        Rejection::Conflict(_) => Exit::Conflict,
        Rejection::Invalid(_) => Exit::Usage,
        Rejection::Forbidden(_) => Exit::Unauthorized,
        Rejection::Unavailable(_) => Exit::Unavailable,
    }
}

/// The status for an error that reached `main`.
pub fn code_of(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.exit;
        }
        if let Some(rejection) = cause.downcast_ref::<Rejection>() {
            return of_rejection(rejection);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if unreachable_io(io.kind()) {
                return Exit::Unavailable;
            }
        }
        // sqlx's pool gives up without an io::Error beneath it.
        if cause.downcast_ref::<StoreError>().is_some_and(StoreError::is_unreachable) {
            return Exit::Unavailable;
        }
    }
    Exit::Failed
}

fn unreachable_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | TimedOut
            | AddrNotAvailable
            | BrokenPipe
            | HostUnreachable
            | NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_kind_of_refusal_has_its_status_whatever_its_words() {
        // The same words under every kind: only the kind decides.
        let words = "project `shop` already exists";
        let cases = [
            (Rejection::not_found(words), Exit::NotFound, 3),
            (Rejection::conflict(words), Exit::Conflict, 4),
            (Rejection::invalid(words), Exit::Usage, 2),
            (Rejection::forbidden(words), Exit::Unauthorized, 7),
            (Rejection::unavailable(words), Exit::Unavailable, 5),
        ];
        for (rejection, exit, number) in cases {
            assert_eq!(of_rejection(&rejection), exit, "{rejection:?}");
            assert_eq!(code_of(&rejected(rejection)), exit);
            assert_eq!(exit as u8, number);
        }
    }

    #[test]
    fn a_coded_error_or_a_refusal_keeps_its_status_under_context() {
        let e = Err::<(), _>(not_found("no deployment x")).context("reading the history").unwrap_err();
        assert_eq!(code_of(&e), Exit::NotFound);
        let e = Err::<(), _>(Rejection::conflict("project `a` already exists")).context("creating").unwrap_err();
        assert_eq!(code_of(&e), Exit::Conflict);
        let e = Err::<(), _>(rejected(Rejection::invalid("no project `a`"))).context("creating").unwrap_err();
        assert_eq!(code_of(&e), Exit::Usage, "words that sound like `not found` change nothing");
    }

    #[test]
    fn a_refused_connection_is_unavailable_and_anything_else_a_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = anyhow::Error::new(io).context("connecting to PostgreSQL at postgres://x");
        assert_eq!(code_of(&e), Exit::Unavailable);
        assert_eq!(code_of(&anyhow::anyhow!("the engine panicked")), Exit::Failed);
        assert_eq!(code_of(&anyhow::anyhow!("pool timed out while waiting for an open connection")), Exit::Failed, "words decide nothing");
        let timed_out = StoreError::Database { backend: "PostgreSQL", context: "reading".into(), source: sqlx::Error::PoolTimedOut };
        assert_eq!(code_of(&anyhow::Error::new(timed_out).context("status")), Exit::Unavailable);
        assert_eq!(ExitCode::from(Exit::Conflict), ExitCode::from(4));
    }
}
