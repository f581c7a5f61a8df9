//! The command's exit statuses, in one place: what each number means, how an
//! error becomes one, and the text `slipway --help` shows. Scripts branch on
//! these (retry on 5, create the project on 3, give up on 2), so a number
//! never changes meaning once released.
//!
//! An error carries its status by being (or wrapping) a [`Coded`]; anything
//! else is classified by [`code_of`]: a refused request by its words (the
//! engine's `Rejection` is one string today), a connection that could not be
//! made as unavailable, the rest as a failure.

use std::fmt;
use std::process::ExitCode;

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
    /// Following a deployment gave up at `--timeout`; it goes on.
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
  6  timed out following a deployment (it goes on)
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

/// A request the engine refused, with the status its words imply.
pub fn rejected(rejection: impl fmt::Display) -> anyhow::Error {
    let message = rejection.to_string();
    coded(rejection_exit(&message), message)
}

/// The engine's refusals are plain sentences (`requests::Rejection`); their
/// openings are stable enough to tell a missing thing and a clash from bad
/// input. Anything unrecognised is bad input: the caller's to fix.
pub fn rejection_exit(message: &str) -> Exit {
    let not_found = message.starts_with("no project ")
        || message.starts_with("no deployment ")
        || message.contains(" has no environment ")
        || message.contains(" never served ")
        || message.contains(" has no auto-deploy rule ");
    let conflict = message.contains(" already exists")
        || message.contains(" already serves ")
        || message.contains(" is still running")
        || message.contains(" has no earlier release")
        || message.contains(" serves no release")
        || message.contains(" recorded no image")
        || message.contains("could not record")
        || message.contains(" is frozen by the window ");
    if not_found {
        Exit::NotFound
    } else if conflict {
        Exit::Conflict
    } else {
        Exit::Usage
    }
}

/// The status for an error that reached `main`.
pub fn code_of(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.exit;
        }
        if let Some(rejection) = cause.downcast_ref::<slipway_engine::requests::Rejection>() {
            return rejection_exit(&rejection.0);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if unreachable_io(io.kind()) {
                return Exit::Unavailable;
            }
        }
        // sqlx's pool gives up without an io::Error beneath it.
        if cause.to_string().contains("pool timed out") {
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
    fn the_engines_refusals_map_to_not_found_conflict_or_usage() {
        let cases = [
            ("no project `shop`; create it with `slipway project create`", Exit::NotFound),
            ("project `shop` has no environment `qa` (it has: test, live)", Exit::NotFound),
            ("no deployment 0190c3e2-7a4b-7c1d-9e2f-3a4b5c6d7e8f", Exit::NotFound),
            ("project `shop` already exists", Exit::Conflict),
            ("deployment 0190 is still running; replay it once it has finished", Exit::Conflict),
            ("shop live has no earlier release to roll back to", Exit::Conflict),
            ("deployment 0190 already serves shop live", Exit::Conflict),
            ("ref `--force` looks like an option, not a branch, tag or commit", Exit::Usage),
            ("setting name `1X` must be letters, digits and '_', not starting with a digit", Exit::Usage),
        ];
        for (message, exit) in cases {
            assert_eq!(rejection_exit(message), exit, "{message}");
        }
    }

    #[test]
    fn a_coded_error_keeps_its_status_under_context() {
        let e = Err::<(), _>(not_found("no deployment x")).context("reading the history").unwrap_err();
        assert_eq!(code_of(&e), Exit::NotFound);
        let e = Err::<(), _>(slipway_engine::requests::Rejection("project `a` already exists".into())).context("creating").unwrap_err();
        assert_eq!(code_of(&e), Exit::Conflict);
    }

    #[test]
    fn a_refused_connection_is_unavailable_and_anything_else_a_failure() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = anyhow::Error::new(io).context("connecting to PostgreSQL at postgres://x");
        assert_eq!(code_of(&e), Exit::Unavailable);
        assert_eq!(code_of(&anyhow::anyhow!("the engine panicked")), Exit::Failed);
        assert_eq!(ExitCode::from(Exit::Conflict), ExitCode::from(4));
    }
}
