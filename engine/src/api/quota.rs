//! Per-token caps on the requests that hold a database connection or a
//! task for long: live streams, exports and chain verifications. Without
//! them one token (a leaked read token, a runaway script) could open
//! streams or exports until the pool had nothing left for anyone else.
//! A request over its token's cap is a 429 naming the cap; the place is
//! given back when the request ends (the stream closes, the export is
//! sent or abandoned), whatever way it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::error::ApiError;

/// A kind of long request, each with its own cap per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Long {
    Stream,
    Export,
    Verify,
}

impl Long {
    /// At most this many at once per token.
    pub fn cap(self) -> usize {
        match self {
            Long::Stream => 16,
            Long::Export => 2,
            Long::Verify => 1,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Long::Stream => "live streams",
            Long::Export => "exports",
            Long::Verify => "chain verifications",
        }
    }
}

/// The long requests each token holds now.
#[derive(Debug, Default)]
pub struct Quotas {
    held: Mutex<HashMap<(String, Long), usize>>,
}

/// A long request's place under its token's cap, given back when dropped.
#[derive(Debug)]
pub struct Held {
    quotas: Arc<Quotas>,
    key: (String, Long),
}

impl Quotas {
    /// A place for `token`'s next request of `kind`, or a 429.
    pub fn take(self: &Arc<Self>, token: &str, kind: Long) -> Result<Held, ApiError> {
        let key = (token.to_string(), kind);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= kind.cap() {
            return Err(ApiError::TooManyRequests(format!(
                "token `{token}` already holds {} {} (the most at once); wait for one to end",
                count,
                kind.what()
            )));
        }
        *count += 1;
        Ok(Held { quotas: self.clone(), key })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.quotas.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_over_its_cap_is_refused_until_one_ends_and_others_are_not_held_back() {
        let quotas = Arc::new(Quotas::default());
        let first = quotas.take("ci", Long::Export).ok();
        let second = quotas.take("ci", Long::Export).ok();
        assert!(first.is_some() && second.is_some());
        let refused = quotas.take("ci", Long::Export).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("token `ci` already holds 2 exports"), "{refused}");
        assert!(quotas.take("ops", Long::Export).is_ok(), "another token has its own cap");
        assert!(quotas.take("ci", Long::Stream).is_ok(), "each kind has its own cap");
        drop(first);
        assert!(quotas.take("ci", Long::Export).is_ok(), "a place is given back when a request ends");
        drop(second);
        assert!(quotas.held.lock().unwrap_or_else(PoisonError::into_inner).is_empty(), "nothing is kept for idle tokens");
    }
}
