//! Signed checkpoints: the RFC 6962 Merkle root (`merkle`) of the first N
//! events in global order, signed with Ed25519 and kept outside the
//! database. The hash chains alone cannot show a removed or rewritten stream
//! tail (the shortened chain is still valid); a checkpoint can: if the log's
//! first N events no longer hash to the signed root, its beginning was
//! rewritten. Pure: the caller feeds the events in global order.
//!
//! A checkpoint also lists the head (last version and hash) of every stream
//! that moved since the checkpoint before it (`base` events), so a failed
//! check can name the stream and, where the rewritten events were appended
//! later, the first version that differs.
//!
//! The signed statement is the text of `statement()`: the format, position,
//! count, root, time, base and every head, one per line, so a signature
//! covers exactly what the file claims.
//!
//! Running it periodically: `slipway audit checkpoint` writes one file per
//! call and nothing when the log did not grow, so a timer is enough. With
//! cron (every 15 minutes):
//!
//! ```text
//! */15 * * * * slipway --database postgres://... audit checkpoint --key /etc/slipway/audit.key --out /var/lib/slipway-checkpoints
//! ```
//!
//! or a systemd `slipway-checkpoint.service` (`Type=oneshot`, that
//! `ExecStart=`) with a `slipway-checkpoint.timer` (`OnCalendar=*:0/15`).
//! Keep the directory (and the key) where the database's administrators
//! cannot write, e.g. copied to another host; `slipway audit verify
//! --checkpoints DIR --public-key audit.key.pub` checks them all.

use std::collections::HashMap;
use std::fmt::Write as _;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::merkle::{self, Frontier};
use crate::Position;

/// The `format` of checkpoint files this code writes and reads.
pub const FORMAT: &str = "slipway-checkpoint/1";

/// A checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    /// The global position of the last event covered.
    pub position: LogPosition,
    /// How many events it covers: the first `events` in global order.
    pub events: u64,
    /// The Merkle tree hash over their hashes, hex.
    pub root: String,
    /// When it was made (RFC 3339), as signed.
    pub created_at: String,
    /// The `events` of the checkpoint this one follows (0 for the first).
    pub base: u64,
    /// Every stream with an event after the first `base` events: its last
    /// version among the first `events` and that event's hash.
    pub heads: Vec<Head>,
    /// The Ed25519 key that signed it, hex.
    pub public_key: String,
    /// The signature over `statement()`, hex.
    pub signature: String,
}

/// `Position` as written in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPosition {
    pub tx: u64,
    pub seq: i64,
}

impl From<Position> for LogPosition {
    fn from(p: Position) -> Self {
        LogPosition { tx: p.tx, seq: p.seq }
    }
}

impl From<LogPosition> for Position {
    fn from(p: LogPosition) -> Self {
        Position { tx: p.tx, seq: p.seq }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub stream: String,
    pub version: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a Slipway checkpoint: {0}")]
    Malformed(String),
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("the signature does not match its contents (signed by {public_key})")]
    BadSignature { public_key: String },
    /// The key given is not printed: a secret key given by mistake must
    /// not end up on a terminal or in a CI log.
    #[error("signed by {found}, not by the key given")]
    WrongKey { found: String },
    #[error(
        "the key given as the public key is the secret key that signed this checkpoint: give its public key (the .pub \
         file `audit keygen` wrote), and keep the secret one where only the signer reads it"
    )]
    SecretKeyGiven,
}

/// What a secret key file says before its hex: the two key files must not
/// be mistaken for each other (a secret key given as the public one would be
/// printed in an error; a public key given as the secret one would sign
/// checkpoints anyone can forge).
pub const SECRET_LABEL: &str = "slipway-audit-secret-key:";
/// What a public key file says before its hex.
pub const PUBLIC_LABEL: &str = "slipway-audit-public-key:";

/// The hex of a key file: after `label`, or bare (files written before the
/// labels); a file with the other label is refused, naming what it is.
fn key_hex<'a>(text: &'a str, label: &str, other: &str, other_is: &str) -> Result<&'a str, CheckpointError> {
    let text = text.trim();
    if text.starts_with(other) {
        return Err(CheckpointError::BadKey(other_is.to_string()));
    }
    Ok(text.strip_prefix(label).unwrap_or(text).trim())
}

/// An Ed25519 signing key. Its file holds `SECRET_LABEL` and the 32-byte
/// seed as hex.
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public().to_hex())
    }
}

impl SecretKey {
    /// The key from 32 random bytes (the caller draws them from the OS).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// Reads a key file's text: `SECRET_LABEL` and 64 hex digits (or the
    /// digits alone, as files were written before the labels).
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let public = "this is a public key file: signing needs the secret key (the file `audit keygen` wrote without .pub)";
        Ok(SecretKey::from_seed(hex32(key_hex(text, SECRET_LABEL, PUBLIC_LABEL, public)?)?))
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_LABEL}{}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

/// An Ed25519 public key; its file holds `PUBLIC_LABEL` and 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads a key file's text: `PUBLIC_LABEL` and 64 hex digits (or the
    /// digits alone, as files were written before the labels).
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let secret = "this is the SECRET key file: verifying needs the public key (the .pub file); keep the secret one where only the signer reads it";
        let hex = key_hex(text, PUBLIC_LABEL, SECRET_LABEL, secret)?;
        VerifyingKey::from_bytes(&hex32(hex)?).map(PublicKey).map_err(|e| {
            CheckpointError::BadKey(format!("not an Ed25519 public key ({e}); the secret key file? verifying needs the .pub file"))
        })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_LABEL}{}\n", self.to_hex())
    }

    /// Whether these 32 bytes, read as a secret key's seed, sign as
    /// `signer`: a secret key file written before the labels, given where
    /// the public key belongs.
    pub fn is_seed_of(&self, signer: &PublicKey) -> bool {
        SecretKey::from_seed(*self.0.as_bytes()).public() == *signer
    }
}

fn hex32(text: &str) -> Result<[u8; 32], CheckpointError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|e| CheckpointError::BadKey(format!("expected 64 hex digits ({e})")))?;
    Ok(bytes)
}

impl Checkpoint {
    pub fn from_json(text: &str) -> Result<Self, CheckpointError> {
        let c: Checkpoint = serde_json::from_str(text).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        if c.format != FORMAT {
            return Err(CheckpointError::Malformed(format!("format `{}`, expected `{FORMAT}`", c.format)));
        }
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The exact text that is signed.
    pub fn statement(&self) -> String {
        let mut s = format!(
            "{}\nposition {}:{}\nevents {}\nroot {}\ncreated_at {}\nbase {}\n",
            self.format, self.position.tx, self.position.seq, self.events, self.root, self.created_at, self.base
        );
        for h in &self.heads {
            // Length-prefixed: a stream name may hold any character.
            let _ = writeln!(s, "head {}:{} {} {}", h.stream.len(), h.stream, h.version, h.hash);
        }
        s
    }

    /// Checks the signature against the key in the file and, if given, that
    /// this key is the expected one.
    pub fn check_signature(&self, expected: Option<&PublicKey>) -> Result<(), CheckpointError> {
        let key = PublicKey::parse(&self.public_key)?;
        if let Some(expected) = expected {
            if expected.is_seed_of(&key) {
                return Err(CheckpointError::SecretKeyGiven);
            }
            if *expected != key {
                return Err(CheckpointError::WrongKey { found: key.to_hex() });
            }
        }
        let bad = || CheckpointError::BadSignature { public_key: self.public_key.clone() };
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut bytes).map_err(|_| bad())?;
        key.0.verify(self.statement().as_bytes(), &Signature::from_bytes(&bytes)).map_err(|_| bad())
    }
}

/// Why a new checkpoint was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the log has {events} events but the previous checkpoint covers {previous}: events were removed; run `slipway audit verify --checkpoints`")]
    Shorter { previous: u64, events: u64 },
    #[error("the log's first {previous} events are not the ones the previous checkpoint signed (root {found}, signed {signed}); run `slipway audit verify --checkpoints`")]
    Diverged { previous: u64, signed: String, found: String },
}

/// Makes a checkpoint from the events in global order, continuing the
/// previous one: it refuses to sign a log whose beginning no longer matches
/// the previous checkpoint, so a rewrite cannot be laundered into a new one.
#[derive(Debug)]
pub struct Builder {
    frontier: Frontier,
    last: Position,
    base: u64,
    previous_root: Option<String>,
    diverged: Option<String>,
    heads: HashMap<String, (u64, String)>,
}

impl Builder {
    pub fn new(previous: Option<&Checkpoint>) -> Self {
        Builder {
            frontier: Frontier::new(),
            last: Position::START,
            base: previous.map_or(0, |p| p.events),
            previous_root: previous.map(|p| p.root.clone()),
            diverged: None,
            heads: HashMap::new(),
        }
    }

    /// Events so far.
    pub fn events(&self) -> u64 {
        self.frontier.size()
    }

    pub fn push(&mut self, position: Position, stream: &str, version: u64, hash: &str) {
        if self.frontier.size() >= self.base {
            match self.heads.get_mut(stream) {
                Some(head) if head.0 >= version => {}
                Some(head) => *head = (version, hash.to_owned()),
                None => {
                    self.heads.insert(stream.to_owned(), (version, hash.to_owned()));
                }
            }
        }
        self.frontier.push(merkle::event_leaf(hash));
        self.last = position;
        if self.frontier.size() == self.base {
            let root = hex::encode(self.frontier.root());
            if self.previous_root.as_ref() != Some(&root) {
                self.diverged = Some(root);
            }
        }
    }

    pub fn finish(self, created_at: String, key: &SecretKey) -> Result<Checkpoint, Refusal> {
        let events = self.frontier.size();
        if events < self.base {
            return Err(Refusal::Shorter { previous: self.base, events });
        }
        if let Some(found) = self.diverged {
            return Err(Refusal::Diverged { previous: self.base, signed: self.previous_root.unwrap_or_default(), found });
        }
        let mut heads: Vec<Head> = self.heads.into_iter().map(|(stream, (version, hash))| Head { stream, version, hash }).collect();
        heads.sort_by(|a, b| a.stream.cmp(&b.stream));
        let mut checkpoint = Checkpoint {
            format: FORMAT.into(),
            position: self.last.into(),
            events,
            root: hex::encode(self.frontier.root()),
            created_at,
            base: self.base,
            heads,
            public_key: key.public().to_hex(),
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(key.0.sign(checkpoint.statement().as_bytes()).to_bytes());
        Ok(checkpoint)
    }
}

/// How the current log disagrees with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The log holds fewer events than the checkpoint covers.
    Shorter { events: u64 },
    /// The checkpoint's last event is now at another global position.
    Moved { found: Position },
    /// The first `events` events hash to another root.
    Root { found: String },
    /// A stream's head as signed is gone or is another event now.
    Head {
        stream: String,
        version: u64,
        /// The hash of the event at that version now, if there is one.
        now: Option<String>,
        /// The stream's last version now.
        ends_at: u64,
        /// The first version appended after the checkpoint's position (a
        /// rewrite re-appends there); without one, the difference lies at or
        /// before `version`.
        first_differing: Option<u64>,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Shorter { events } => write!(f, "the log holds only {events} events: events were removed"),
            Problem::Moved { found } => write!(f, "its last event is now at position {found}: events were removed or inserted before it"),
            Problem::Root { found } => write!(f, "those events hash to root {found}: they are not the events that were signed"),
            Problem::Head { stream, version, now, ends_at, first_differing } => {
                match now {
                    Some(hash) => write!(f, "{stream}@{version} is not the event signed (its hash is now {hash})")?,
                    None => write!(f, "{stream}@{version} is gone (the stream ends at version {ends_at})")?,
                }
                match first_differing {
                    // The tail was cut, and nothing appended in its place.
                    Some(v) if now.is_none() && *v == ends_at + 1 => {
                        write!(f, "; versions from {v} on were removed since the checkpoint signed them")
                    }
                    Some(v) => write!(f, "; first differing: {stream}@{v}, appended after the checkpoint"),
                    None => write!(f, "; the first difference is at or before version {version}"),
                }
            }
        }
    }
}

/// A checkpoint with what the current log says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    pub checkpoint: Checkpoint,
    pub problems: Vec<Problem>,
}

impl CheckpointReport {
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One signed head to compare with the log.
#[derive(Debug)]
struct Watch {
    checkpoint: usize,
    version: u64,
    signed: String,
    after: Position,
    now: Option<String>,
    first_after: Option<u64>,
}

/// Checks any number of checkpoints in one pass over the log in global
/// order: the root of the first N events for each, and each listed head.
#[derive(Debug)]
pub struct LogCheck {
    checkpoints: Vec<Checkpoint>,
    frontier: Frontier,
    next: usize,
    at: Vec<Option<(Position, String)>>,
    watches: HashMap<String, Vec<Watch>>,
    ends: HashMap<String, u64>,
}

impl LogCheck {
    pub fn new(mut checkpoints: Vec<Checkpoint>) -> Self {
        checkpoints.sort_by_key(|c| c.events);
        let mut watches: HashMap<String, Vec<Watch>> = HashMap::new();
        for (i, c) in checkpoints.iter().enumerate() {
            for h in &c.heads {
                watches.entry(h.stream.clone()).or_default().push(Watch {
                    checkpoint: i,
                    version: h.version,
                    signed: h.hash.clone(),
                    after: c.position.into(),
                    now: None,
                    first_after: None,
                });
            }
        }
        let mut check =
            LogCheck { at: vec![None; checkpoints.len()], checkpoints, frontier: Frontier::new(), next: 0, watches, ends: HashMap::new() };
        check.close(Position::START);
        check
    }

    pub fn push(&mut self, position: Position, stream: &str, version: u64, hash: &str) {
        self.frontier.push(merkle::event_leaf(hash));
        self.close(position);
        if let Some(watches) = self.watches.get_mut(stream) {
            for w in watches.iter_mut() {
                if version == w.version {
                    w.now = Some(hash.to_owned());
                }
                if position > w.after && version <= w.version && w.first_after.is_none_or(|v| version < v) {
                    w.first_after = Some(version);
                }
            }
            match self.ends.get_mut(stream) {
                Some(end) => *end = (*end).max(version),
                None => {
                    self.ends.insert(stream.to_owned(), version);
                }
            }
        }
    }

    /// Records the root for every checkpoint that covers exactly the events so far.
    fn close(&mut self, position: Position) {
        while self.next < self.checkpoints.len() && self.checkpoints[self.next].events == self.frontier.size() {
            self.at[self.next] = Some((position, hex::encode(self.frontier.root())));
            self.next += 1;
        }
    }

    pub fn finish(self) -> Vec<CheckpointReport> {
        let mut reports: Vec<CheckpointReport> = self
            .checkpoints
            .into_iter()
            .zip(self.at)
            .map(|(checkpoint, at)| {
                let mut problems = Vec::new();
                match at {
                    None => problems.push(Problem::Shorter { events: self.frontier.size() }),
                    Some((position, root)) => {
                        if checkpoint.events > 0 && position != Position::from(checkpoint.position) {
                            problems.push(Problem::Moved { found: position });
                        }
                        if root != checkpoint.root {
                            problems.push(Problem::Root { found: root });
                        }
                    }
                }
                CheckpointReport { checkpoint, problems }
            })
            .collect();
        let mut watched: Vec<(String, Watch)> =
            self.watches.into_iter().flat_map(|(stream, ws)| ws.into_iter().map(move |w| (stream.clone(), w))).collect();
        watched.sort_by(|a, b| a.0.cmp(&b.0));
        for (stream, w) in watched {
            let Some(report) = reports.get_mut(w.checkpoint) else { continue };
            if w.now.as_ref() == Some(&w.signed) {
                continue;
            }
            let ends_at = self.ends.get(&stream).copied().unwrap_or(0);
            // A cut tail that was not re-appended differs from its first missing version.
            let cut = (ends_at < w.version).then_some(ends_at + 1);
            let first_differing = match (w.first_after, cut) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            report.problems.push(Problem::Head { stream, version: w.version, now: w.now, ends_at, first_differing });
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{event_hash, GENESIS};

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    /// (position, stream, version, hash) of `streams` interleaved, `per` events each.
    fn log(streams: &[&str], per: u64) -> Vec<(Position, String, u64, String)> {
        let mut prev: HashMap<&str, String> = HashMap::new();
        let mut out = Vec::new();
        for v in 1..=per {
            for s in streams {
                let p = prev.get(s).cloned().unwrap_or_else(|| GENESIS.into());
                let h = event_hash(&p, s, v, &format!("body {s} {v}"));
                prev.insert(s, h.clone());
                out.push((Position { tx: 0, seq: out.len() as i64 + 1 }, s.to_string(), v, h));
            }
        }
        out
    }

    fn build(rows: &[(Position, String, u64, String)], previous: Option<&Checkpoint>) -> Result<Checkpoint, Refusal> {
        build_with(rows, previous, &key(7))
    }

    fn build_with(rows: &[(Position, String, u64, String)], previous: Option<&Checkpoint>, key: &SecretKey) -> Result<Checkpoint, Refusal> {
        let mut b = Builder::new(previous);
        rows.iter().for_each(|(p, s, v, h)| b.push(*p, s, *v, h));
        b.finish("2025-01-01T00:00:00Z".into(), key)
    }

    fn check(rows: &[(Position, String, u64, String)], checkpoints: Vec<Checkpoint>) -> Vec<CheckpointReport> {
        let mut c = LogCheck::new(checkpoints);
        rows.iter().for_each(|(p, s, v, h)| c.push(*p, s, *v, h));
        c.finish()
    }

    #[test]
    fn a_checkpoint_signs_the_merkle_root_and_verifies() {
        let rows = log(&["a", "b"], 3);
        let c = build(&rows, None).unwrap();
        let leaves: Vec<_> = rows.iter().map(|r| merkle::event_leaf(&r.3)).collect();
        assert_eq!(c.root, hex::encode(merkle::root(&leaves)));
        assert_eq!((c.events, c.position.seq, c.base), (6, 6, 0));
        assert_eq!(c.heads.iter().map(|h| (h.stream.as_str(), h.version)).collect::<Vec<_>>(), [("a", 3), ("b", 3)]);
        c.check_signature(None).unwrap();
        c.check_signature(Some(&key(7).public())).unwrap();
        let parsed = Checkpoint::from_json(&c.to_json()).unwrap();
        assert_eq!(parsed, c);
        assert!(check(&rows, vec![c]).iter().all(CheckpointReport::holds));
    }

    #[test]
    fn a_changed_field_or_another_key_breaks_the_signature() {
        let c = build(&log(&["a"], 2), None).unwrap();
        let mut edited = c.clone();
        edited.heads[0].version = 1;
        assert!(matches!(edited.check_signature(None), Err(CheckpointError::BadSignature { .. })));
        let mut edited = c.clone();
        edited.events += 1;
        assert!(edited.check_signature(None).is_err());
        assert!(matches!(c.check_signature(Some(&key(8).public())), Err(CheckpointError::WrongKey { .. })));
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let k = key(3);
        let again = SecretKey::parse(&k.to_text()).unwrap();
        assert_eq!(again.public(), k.public());
        assert_eq!(PublicKey::parse(&k.public().to_text()).unwrap(), k.public());
        assert_eq!(PublicKey::parse(&k.public().to_hex()).unwrap(), k.public(), "a file written before the labels");
        assert!(SecretKey::parse("abc").is_err());
        // Each file refuses to stand for the other, and says which it is.
        let secret_as_public = PublicKey::parse(&k.to_text()).unwrap_err().to_string();
        assert!(secret_as_public.contains("SECRET key file"), "{secret_as_public}");
        assert!(!secret_as_public.contains(&k.to_text().trim()[SECRET_LABEL.len()..]), "the secret is not printed");
        let public_as_secret = SecretKey::parse(&k.public().to_text()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(public_as_secret.contains("public key file"), "{public_as_secret}");
    }

    #[test]
    fn an_unlabelled_secret_key_given_as_the_public_key_is_named_not_printed() {
        // A seed whose bytes also read as a curve point (about half do; the
        // others are refused as no public key at all).
        let n = (1..=255u8).find(|n| PublicKey::parse(&hex::encode([*n; 32])).is_ok()).unwrap();
        let c = build_with(&log(&["a"], 2), None, &key(n)).unwrap();
        let given = PublicKey::parse(&hex::encode([n; 32])).unwrap();
        assert_eq!(c.check_signature(Some(&given)).unwrap_err(), CheckpointError::SecretKeyGiven);
        let not_a_point = (1..=255u8).find(|n| PublicKey::parse(&hex::encode([*n; 32])).is_err()).unwrap();
        let refused = PublicKey::parse(&hex::encode([not_a_point; 32])).unwrap_err().to_string();
        assert!(refused.contains("the secret key file?"), "{refused}");
        let wrong = c.check_signature(Some(&key(8).public())).unwrap_err().to_string();
        assert!(!wrong.contains(&key(8).public().to_hex()), "{wrong}");
    }

    #[test]
    fn a_rewritten_tail_is_found_with_its_first_differing_version() {
        let rows = log(&["a", "b"], 3);
        let c = build(&rows, None).unwrap();
        // b@2 and b@3 deleted and re-appended (a valid chain) after the checkpoint.
        let mut now: Vec<_> = rows.iter().filter(|r| !(r.1 == "b" && r.2 >= 2)).cloned().collect();
        let mut prev = rows.iter().find(|r| r.1 == "b" && r.2 == 1).unwrap().3.clone();
        for v in 2..=3 {
            let h = event_hash(&prev, "b", v, "forged");
            now.push((Position { tx: 0, seq: 100 + v as i64 }, "b".into(), v, h.clone()));
            prev = h;
        }
        let report = &check(&now, vec![c])[0];
        assert!(report.problems.iter().any(|p| matches!(p, Problem::Root { .. })), "{:?}", report.problems);
        let head = report.problems.iter().find_map(|p| match p {
            Problem::Head { stream, version, first_differing, .. } => Some((stream.as_str(), *version, *first_differing)),
            _ => None,
        });
        assert_eq!(head, Some(("b", 3, Some(2))));
    }

    #[test]
    fn a_cut_tail_is_found() {
        let rows = log(&["a", "b"], 3);
        let c = build(&rows, None).unwrap();
        let report = &check(&rows[..rows.len() - 1], vec![c])[0];
        assert_eq!(report.problems[0], Problem::Shorter { events: 5 });
        let cut = Problem::Head { stream: "b".into(), version: 3, now: None, ends_at: 2, first_differing: Some(3) };
        assert!(report.problems.contains(&cut));
        assert_eq!(
            cut.to_string(),
            "b@3 is gone (the stream ends at version 2); versions from 3 on were removed since the checkpoint signed them"
        );
    }

    #[test]
    fn a_following_checkpoint_lists_only_the_streams_that_moved_and_refuses_a_diverged_log() {
        let rows = log(&["a", "b", "c"], 2);
        let first = build(&rows[..3], None).unwrap();
        let mut more = rows.clone();
        more.push((Position { tx: 0, seq: 50 }, "c".into(), 3, event_hash(&rows[5].3, "c", 3, "x")));
        let second = build(&more, Some(&first)).unwrap();
        assert_eq!(second.base, 3);
        assert_eq!(second.heads.iter().map(|h| (h.stream.as_str(), h.version)).collect::<Vec<_>>(), [("a", 2), ("b", 2), ("c", 3)]);
        let reports = check(&more, vec![second.clone(), first.clone()]);
        assert_eq!(reports.iter().map(|r| r.checkpoint.events).collect::<Vec<_>>(), [3, 7]);
        assert!(reports.iter().all(CheckpointReport::holds));

        let mut changed = rows.clone();
        changed[1].3 = event_hash(GENESIS, "b", 1, "other");
        assert!(matches!(build(&changed, Some(&first)), Err(Refusal::Diverged { previous: 3, .. })));
        assert!(matches!(build(&rows[..2], Some(&first)), Err(Refusal::Shorter { previous: 3, events: 2 })));
    }

    #[test]
    fn an_empty_log_has_a_checkpoint_too() {
        let c = build(&[], None).unwrap();
        assert_eq!(c.root, hex::encode(merkle::empty_root()));
        assert!(check(&[], vec![c.clone()])[0].holds());
        assert!(check(&log(&["a"], 1), vec![c])[0].holds(), "a longer log still holds an empty checkpoint");
    }
}
