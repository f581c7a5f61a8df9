//! Why a request was refused, typed. A refusal is the caller's to act on
//! (a name to fix, a thing to create first, a state to wait for), kept apart
//! from an operational failure (`StoreError`): `Result<Result<T, Rejection>,
//! StoreError>`. Its kind is decided here, by the code that refuses, so
//! the API's statuses (`api::error`) and the command's exit statuses
//! (`cli/src/exit.rs`) each map the kind once and never read the words.
//!
//! Pure: no I/O, so the pure modules (`preview`, `domains`) refuse with it too.

/// A refused request, with what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A project, environment, deployment, token, rule or domain that does
    /// not exist (HTTP 404, exit 3).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with what exists: a name taken, a deployment
    /// still running or already finished, nothing to roll back to (HTTP
    /// 409, exit 4). Retrying the same request will not help.
    #[error("{0}")]
    Conflict(String),
    /// Bad input: a malformed name, ref, glob, certificate (HTTP 400, exit 2).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (HTTP 403, exit 7).
    #[error("{0}")]
    Forbidden(String),
    /// Not now: the thing kept changing under the request; the same request
    /// may succeed later (HTTP 503, exit 5).
    #[error("{0}")]
    Unavailable(String),
}

impl Rejection {
    pub fn not_found(message: impl Into<String>) -> Rejection {
        Rejection::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Rejection {
        Rejection::Conflict(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> Rejection {
        Rejection::Invalid(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Rejection {
        Rejection::Forbidden(message.into())
    }

    pub fn unavailable(message: impl Into<String>) -> Rejection {
        Rejection::Unavailable(message.into())
    }

    /// What to tell the user.
    pub fn message(&self) -> &str {
        match self {
            Rejection::NotFound(m)
            | Rejection::Conflict(m)
            | Rejection::Invalid(m)
            | Rejection::Forbidden(m)
            | Rejection::Unavailable(m) => m,
        }
    }

    /// The kind as a word (`not_found`, `conflict`, `invalid`, `forbidden`,
    /// `unavailable`), for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NotFound(_) => "not_found",
            Rejection::Conflict(_) => "conflict",
            Rejection::Invalid(_) => "invalid",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::Unavailable(_) => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rejection;

    #[test]
    fn a_rejection_shows_its_message_and_names_its_kind() {
        let r = Rejection::not_found("no project `shop`");
        assert_eq!((r.to_string().as_str(), r.message(), r.kind()), ("no project `shop`", "no project `shop`", "not_found"));
        assert_eq!(Rejection::unavailable("later").kind(), "unavailable");
    }
}
