//! The tamper-evidence chain: each event's hash covers its stream, version,
//! exact stored bytes and the previous event's hash, so changing, removing or
//! reordering a stored event breaks the chain at that point. Pure functions,
//! shared by both backends and by offline verification of an export.

use sha2::{Digest, Sha256};

/// The `prev_hash` of a stream's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one event.
pub fn event_hash(prev_hash: &str, stream: &str, version: u64, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(stream.as_bytes());
    h.update(b"\n");
    h.update(version.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// The fields of a stored event that the chain covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub stream: String,
    pub version: u64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TamperKind {
    /// The event's bytes no longer match its hash.
    Changed,
    /// An event before this one is missing.
    Removed,
    /// The event sits at a place in its stream it was not written at.
    Reordered,
}

impl std::fmt::Display for TamperKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TamperKind::Changed => "changed",
            TamperKind::Removed => "removed",
            TamperKind::Reordered => "reordered",
        })
    }
}

/// The first break found in one stream's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub stream: String,
    pub version: u64,
    pub kind: TamperKind,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}: {} ({})", self.stream, self.version, self.kind, self.detail)
    }
}

/// The result of walking every chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub streams: u64,
    pub events: u64,
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Walks rows ordered by (stream, version) and reports the first break of
/// each stream. A removed tail cannot be seen from the chain alone; signed
/// checkpoints (outside the database) cover that.
pub fn verify(rows: &[ChainRow]) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut start = 0;
    while start < rows.len() {
        let stream = &rows[start].stream;
        let end = rows[start..].iter().position(|r| &r.stream != stream).map_or(rows.len(), |n| start + n);
        report.streams += 1;
        report.events += (end - start) as u64;
        if let Some(finding) = verify_stream(&rows[start..end]) {
            report.findings.push(finding);
        }
        start = end;
    }
    report
}

fn verify_stream(rows: &[ChainRow]) -> Option<Finding> {
    let finding = |row: &ChainRow, kind, detail: String| Finding { stream: row.stream.clone(), version: row.version, kind, detail };
    let mut prev_hash = GENESIS;
    for (i, row) in rows.iter().enumerate() {
        let expected_version = i as u64 + 1;
        let self_consistent = event_hash(&row.prev_hash, &row.stream, row.version, &row.body) == row.hash;
        if !self_consistent {
            // Written at another version of this stream? Then it was moved.
            let moved_from = rows
                .iter()
                .map(|r| r.version)
                .chain([row.version.saturating_sub(1), row.version + 1])
                .find(|v| *v != row.version && event_hash(&row.prev_hash, &row.stream, *v, &row.body) == row.hash);
            return Some(match moved_from {
                Some(v) => finding(row, TamperKind::Reordered, format!("written as version {v}")),
                None => finding(row, TamperKind::Changed, "stored bytes do not match the event's hash".into()),
            });
        }
        if row.version != expected_version {
            return Some(finding(row, TamperKind::Removed, format!("version {expected_version} is missing")));
        }
        if row.prev_hash != prev_hash {
            let points_elsewhere = rows.iter().any(|r| r.hash == row.prev_hash);
            return Some(if points_elsewhere {
                finding(row, TamperKind::Reordered, "follows a different event than it was written after".into())
            } else {
                finding(row, TamperKind::Removed, "the event it was written after is missing".into())
            });
        }
        prev_hash = &row.hash;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(stream: &str, bodies: &[&str]) -> Vec<ChainRow> {
        let mut prev = GENESIS.to_string();
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let version = i as u64 + 1;
                let hash = event_hash(&prev, stream, version, body);
                let row = ChainRow { stream: stream.into(), version, body: (*body).into(), prev_hash: prev.clone(), hash: hash.clone() };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let mut rows = chain("a", &["1", "2", "3"]);
        rows.extend(chain("b", &["x"]));
        let report = verify(&rows);
        assert!(report.is_intact(), "{:?}", report.findings);
        assert_eq!((report.streams, report.events), (2, 4));
    }

    #[test]
    fn a_changed_body_is_found() {
        let mut rows = chain("a", &["1", "2", "3"]);
        rows[1].body = "two".into();
        let f = &verify(&rows).findings[0];
        assert_eq!((f.version, f.kind), (2, TamperKind::Changed));
    }

    #[test]
    fn a_removed_middle_event_is_found() {
        let mut rows = chain("a", &["1", "2", "3"]);
        rows.remove(1);
        let f = &verify(&rows).findings[0];
        assert_eq!((f.version, f.kind), (3, TamperKind::Removed));
    }

    #[test]
    fn a_removed_and_renumbered_event_is_found() {
        let mut rows = chain("a", &["1", "2", "3"]);
        rows.remove(1);
        rows[1].version = 2;
        let f = &verify(&rows).findings[0];
        assert_eq!(f.version, 2);
        assert_eq!(f.kind, TamperKind::Reordered, "{f}");
    }

    #[test]
    fn swapped_events_are_found() {
        let mut rows = chain("a", &["1", "2", "3"]);
        // Swap the stored rows' contents but keep the version column in place.
        let (b1, p1, h1) = (rows[1].body.clone(), rows[1].prev_hash.clone(), rows[1].hash.clone());
        rows[1].body = rows[2].body.clone();
        rows[1].prev_hash = rows[2].prev_hash.clone();
        rows[1].hash = rows[2].hash.clone();
        rows[2].body = b1;
        rows[2].prev_hash = p1;
        rows[2].hash = h1;
        let f = &verify(&rows).findings[0];
        assert_eq!((f.version, f.kind), (2, TamperKind::Reordered));
    }
}
