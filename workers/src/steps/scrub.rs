//! Scrubbing: every value a worker resolved (setting values and source
//! credentials), as it is, URL-encoded and base64-encoded, replaced by
//! `***` in whatever the worker records — a failure's reason and details,
//! and the release logs it stores. One pass over the text for all values
//! (Aho-Corasick, leftmost-longest, so a value that contains another is
//! hidden whole): a release log of tens of megabytes with dozens of values
//! costs about what copying it does.
//!
//! A worker holds values only, not which of them are secret (the command
//! carries key -> fingerprint), so every value of `SCRUB_MIN_LEN` characters
//! or more is treated as one, and so is the password inside a URL value
//! (an app that cannot log in tends to print just that, whatever its length).

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use super::{check_services, Settings};

/// Setting values shorter than this are left in evidence: "1" or "on"
/// would turn every log line into asterisks, and is no secret anyway.
pub const SCRUB_MIN_LEN: usize = 4;

/// What replaces a value.
const MASK: &str = "***";

/// Every form of every value of some settings, ready to scrub text with.
#[derive(Debug, Clone)]
pub struct Scrubber {
    matcher: Option<AhoCorasick>,
}

impl Scrubber {
    pub fn new(settings: &Settings) -> Scrubber {
        let values = forms(settings);
        let matcher = (!values.is_empty())
            .then(|| AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).kind(Some(AhoCorasickKind::DFA)).build(&values).ok())
            .flatten();
        Scrubber { matcher }
    }

    /// `text` with every value replaced by `***` (borrowed when none occurs).
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.matcher {
            Some(m) if m.is_match(text) => Cow::Owned(m.replace_all(text, &vec![MASK; m.patterns_len()])),
            _ => Cow::Borrowed(text),
        }
    }

    pub fn scrub_owned(&self, text: String) -> String {
        match self.scrub(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(scrubbed) => scrubbed,
        }
    }
}

/// Every form of every value to hide.
fn forms(settings: &Settings) -> Vec<String> {
    use base64::Engine as _;
    let long: Vec<String> = settings.values().filter(|v| v.len() >= SCRUB_MIN_LEN).cloned().collect();
    let passwords = settings.values().flat_map(|v| check_services::secrets_in(v));
    let encoded = long.iter().flat_map(|v| [percent_encode(v), base64::engine::general_purpose::STANDARD.encode(v)]);
    let mut values: Vec<String> = long.iter().cloned().chain(passwords).chain(encoded).filter(|v| !v.is_empty()).collect();
    values.sort();
    values.dedup();
    values
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
