//! API tokens: the pure projection of the `tokens` stream (name -> scope,
//! SHA-256 of the value, who issued it, revoked or not) and the checks the
//! HTTP API makes with it. Values are `slw_` and 64 lowercase hex characters
//! (32 random bytes); only their SHA-256 is ever recorded, so the log (and
//! an export of it) cannot be used to call the API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use slipway_proto::event::TokenScope;
use slipway_proto::Event;

/// What every token value starts with (so a leaked one is easy to grep for).
pub const PREFIX: &str = "slw_";

/// One token as the log describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub scope: TokenScope,
    pub sha256: String,
    pub issued_by: String,
    pub issued_at: DateTime<Utc>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

impl Token {
    /// Whether it has expired at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Every token ever issued, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub by_name: BTreeMap<String, Token>,
    /// The stream's version folded (for an append at exactly this version).
    pub version: u64,
}

/// Why a presented token is refused (all are 401s: the caller must fix the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no token: send `Authorization: Bearer <token>` (create one with `slipway token create NAME --scope read|deploy|admin`)")]
    Missing,
    #[error("the Authorization header must be `Bearer slw_<64 hex characters>`")]
    Malformed,
    #[error("the token is not known to this installation")]
    Unknown,
    #[error("token `{0}` was revoked; ask an admin for a new one")]
    Revoked(String),
    #[error("token `{0}` expired at {1}; ask an admin for a new one")]
    Expired(String, String),
}

impl Tokens {
    /// Folds the tokens stream's events (with their recorded times) in order.
    /// A second `TokenIssued` for a name never happens (`requests` refuses
    /// it); should one appear, the first stays, so an old actor name keeps
    /// meaning the token it meant.
    pub fn fold<'a>(events: impl IntoIterator<Item = (&'a Event, DateTime<Utc>)>) -> Tokens {
        let mut tokens = Tokens::default();
        for (event, at) in events {
            tokens.version += 1;
            match event {
                Event::TokenIssued(t) => {
                    tokens.by_name.entry(t.name.clone()).or_insert_with(|| Token {
                        name: t.name.clone(),
                        scope: t.scope,
                        sha256: t.sha256.clone(),
                        issued_by: t.issued_by.clone(),
                        issued_at: at,
                        expires_at: t.expires_at,
                        revoked: false,
                    });
                }
                Event::TokenRevoked(r) => {
                    if let Some(t) = tokens.by_name.get_mut(&r.name) {
                        t.revoked = true;
                    }
                }
                _ => {}
            }
        }
        tokens
    }

    /// Tokens that still work at `now`.
    pub fn active(&self, now: DateTime<Utc>) -> usize {
        self.by_name.values().filter(|t| !t.revoked && !t.expired(now)).count()
    }

    /// The token whose value is `presented`, if it is known, not revoked
    /// and not expired at `now`.
    pub fn authenticate(&self, presented: &str, now: DateTime<Utc>) -> Result<&Token, Refused> {
        if !is_well_formed(presented) {
            return Err(Refused::Malformed);
        }
        let digest = hash(presented);
        // Compare every hash in full so the time taken says nothing about
        // which (or how much of one) matched.
        let mut found = None;
        for token in self.by_name.values() {
            if constant_time_eq(token.sha256.as_bytes(), digest.as_bytes()) {
                found = Some(token);
            }
        }
        match found {
            None => Err(Refused::Unknown),
            Some(t) if t.revoked => Err(Refused::Revoked(t.name.clone())),
            Some(t) if t.expired(now) => {
                Err(Refused::Expired(t.name.clone(), t.expires_at.unwrap_or(now).format("%Y-%m-%d %H:%M:%S UTC").to_string()))
            }
            Some(t) => Ok(t),
        }
    }
}

/// The token in an `Authorization` header value (`Bearer <token>`).
pub fn bearer(header: Option<&str>) -> Result<&str, Refused> {
    let header = header.ok_or(Refused::Missing)?;
    let (scheme, token) = header.trim().split_once(' ').ok_or(Refused::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refused::Malformed);
    }
    Ok(token.trim())
}

/// A new token value: the prefix and 32 random bytes in hex.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// SHA-256 of a token value, lowercase hex: what the log records.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn is_well_formed(token: &str) -> bool {
    token.strip_prefix(PREFIX).is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// A token name: 1-64 lowercase letters, digits, '-', '_' or '.', starting
/// with a letter or digit (it becomes the actor `token:<name>`).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The actor recorded for requests made with the token `name`.
pub fn actor(name: &str) -> String {
    format!("token:{name}")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use slipway_proto::event::{TokenIssued, TokenRevoked};

    fn issued(name: &str, scope: TokenScope, value: &str) -> Event {
        Event::TokenIssued(TokenIssued { name: name.into(), scope, sha256: hash(value), issued_by: "cli:root".into(), expires_at: None })
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn revoked(name: &str) -> Event {
        Event::TokenRevoked(TokenRevoked { name: name.into() })
    }

    fn fold(events: &[Event]) -> Tokens {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Tokens::fold(events.iter().map(|e| (e, at)))
    }

    #[test]
    fn issued_tokens_authenticate_and_revoked_ones_do_not() {
        let (ci, audit) = (generate(), generate());
        let tokens = fold(&[issued("ci", TokenScope::Deploy, &ci), issued("audit", TokenScope::Read, &audit), revoked("audit")]);
        assert_eq!(tokens.version, 3);
        assert_eq!(tokens.active(at(0)), 1);
        let t = tokens.authenticate(&ci, at(0)).unwrap();
        assert_eq!((t.name.as_str(), t.scope, t.issued_by.as_str()), ("ci", TokenScope::Deploy, "cli:root"));
        assert_eq!(tokens.authenticate(&audit, at(0)), Err(Refused::Revoked("audit".into())));
        assert_eq!(tokens.authenticate(&generate(), at(0)), Err(Refused::Unknown));
        assert_eq!(tokens.authenticate("slw_short", at(0)), Err(Refused::Malformed));
        assert_eq!(tokens.authenticate(&ci.to_uppercase(), at(0)), Err(Refused::Malformed));
    }

    #[test]
    fn a_token_issued_to_expire_works_until_then() {
        let value = generate();
        let expiring = Event::TokenIssued(TokenIssued {
            name: "contractor".into(),
            scope: TokenScope::Deploy,
            sha256: hash(&value),
            issued_by: "cli:root".into(),
            expires_at: Some(at(3600)),
        });
        let tokens = fold(&[expiring]);
        assert_eq!(tokens.authenticate(&value, at(3599)).map(|t| t.name.as_str()), Ok("contractor"));
        assert_eq!(tokens.active(at(3599)), 1);
        let refused = tokens.authenticate(&value, at(3600)).unwrap_err();
        assert_eq!(refused, Refused::Expired("contractor".into(), "2027-01-15 09:00:00 UTC".into()));
        assert!(refused.to_string().contains("expired at 2027-01-15 09:00:00 UTC"), "{refused}");
        assert_eq!(tokens.active(at(3600)), 0);
    }

    #[test]
    fn a_second_issue_of_a_name_does_not_replace_the_first() {
        let (first, second) = (generate(), generate());
        let tokens = fold(&[issued("ci", TokenScope::Read, &first), revoked("ci"), issued("ci", TokenScope::Admin, &second)]);
        assert_eq!(tokens.by_name["ci"].scope, TokenScope::Read);
        assert!(tokens.by_name["ci"].revoked);
        assert_eq!(tokens.authenticate(&second, at(0)), Err(Refused::Unknown));
        // Revoking an unknown name changes nothing.
        assert_eq!(fold(&[revoked("ghost")]).by_name.len(), 0);
    }

    #[test]
    fn values_have_the_documented_form_and_only_hashes_are_kept() {
        let value = generate();
        assert!(is_well_formed(&value), "{value}");
        assert_eq!(value.len(), 4 + 64);
        assert_ne!(generate(), value);
        assert_eq!(hash("slw_x"), hex::encode(Sha256::digest(b"slw_x")));
        let tokens = fold(&[issued("ci", TokenScope::Read, &value)]);
        assert!(!tokens.by_name["ci"].sha256.contains(&value[4..]));
    }

    #[test]
    fn bearer_headers_and_names() {
        assert_eq!(bearer(Some("Bearer slw_abc")), Ok("slw_abc"));
        assert_eq!(bearer(Some("bearer   slw_abc ")), Ok("slw_abc"));
        assert_eq!(bearer(None), Err(Refused::Missing));
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), Err(Refused::Malformed));
        assert_eq!(bearer(Some("slw_abc")), Err(Refused::Malformed));
        for good in ["ci", "ci-bot", "a.b_c", "7"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "CI", "-ci", "ci bot", "ci:x", &"a".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert_eq!(actor("ci"), "token:ci");
    }
}
