//! Scrubbing: every value a worker resolved (setting values and source
//! credentials), as it is, URL-encoded, base64-encoded and escaped as a
//! quoted string shows it (Docker's errors, JSON), replaced by
//! `***` in whatever the worker records — a failure's reason and details,
//! and the release logs it stores. One pass over the text for all values
//! (Aho-Corasick, leftmost-longest, so a value that contains another is
//! hidden whole).
//!
//! A long log is mostly free of values, and running the automaton over
//! every byte of it cost three times writing the log. So a sampler looks
//! first: every 4-byte window of every form goes into a small bitmap, and
//! only one window in `stride` of the text is looked up in it (`stride` is
//! the shortest form's length less 3, so every occurrence of a form holds a
//! sampled window whole). The automaton then runs only around the windows
//! found. A text of a megabyte or more is sampled, and its regions
//! searched, on every core; or, when it goes to a sink (a log on its way to
//! disk), a chunk ahead of the sink on a thread of its own, so the search
//! is hidden behind the writing. The matches are exactly what the automaton
//! finds over the whole text:
//! every occurrence lies in one region, and occurrences that overlap lie in
//! the same one (the `samples_find_what_the_automaton_finds` test), and a
//! value across a chunk's end is found whole (the
//! `a_text_searched_a_chunk_ahead_is_scrubbed_as_a_whole_search_would` test).
//!
//! A worker holds values only, not which of them are secret (the command
//! carries key -> fingerprint), so every value of `SCRUB_MIN_LEN` characters
//! or more is treated as one, and so is the password inside a URL value
//! (an app that cannot log in tends to print just that) if it has
//! `URL_PASSWORD_MIN_LEN` characters or more. A shorter one is hidden where
//! it stands in a URL (`:pw@`, or `password=pw` in its query), not
//! everywhere: searched for alone, a one-letter password put `***` for
//! every such letter of every log line and failure reason.

use std::borrow::Cow;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, Input, MatchKind};

use super::{check_services, Settings};

/// Setting values shorter than this are left in evidence: "1" or "on"
/// would turn every log line into asterisks, and is no secret anyway.
pub const SCRUB_MIN_LEN: usize = 4;

/// URL passwords shorter than this are hidden only inside a URL (`:pw@`).
pub const URL_PASSWORD_MIN_LEN: usize = 3;

/// What replaces a value.
const MASK: &str = "***";

/// Every form of every value of some settings, ready to scrub text with.
#[derive(Debug, Clone)]
pub struct Scrubber {
    matcher: Option<AhoCorasick>,
    /// `None` when a form is shorter than a window: the automaton reads all.
    sampler: Option<Sampler>,
    /// The longest form's length in bytes.
    longest: usize,
}

impl Scrubber {
    pub fn new(settings: &Settings) -> Scrubber {
        let values = forms(settings);
        let matcher = (!values.is_empty())
            .then(|| AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).kind(Some(AhoCorasickKind::DFA)).build(&values).ok())
            .flatten();
        let sampler = matcher.as_ref().and_then(|_| Sampler::new(&values));
        let longest = values.iter().map(String::len).max().unwrap_or(0);
        Scrubber { matcher, sampler, longest }
    }

    /// `text` with every value replaced by `***` (borrowed when none occurs).
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let found = self.matches(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        pieces(text, &found, |piece| out.push_str(piece));
        Cow::Owned(out)
    }

    pub fn scrub_owned(&self, text: String) -> String {
        match self.scrub(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(scrubbed) => scrubbed,
        }
    }

    /// `scrub` in pieces, in order, into `sink` (the text between values,
    /// and `***` for each), so a large log can go to its file or its cap
    /// without a scrubbed copy of it in memory. A text of a megabyte or
    /// more is searched a chunk ahead, on a thread of its own, while `sink`
    /// takes the chunk before: the search costs about a quarter of writing
    /// the text to a file, and this way it is hidden behind the writing.
    pub fn scrub_into(&self, text: &str, sink: impl FnMut(&str)) {
        if text.len() < PIPELINE_FROM || self.matcher.is_none() {
            return pieces(text, &self.matches(text), sink);
        }
        self.pipelined(text, PIPELINE_CHUNK, sink);
    }

    /// `scrub_into` in chunks of about `chunk` bytes: a thread finds each
    /// chunk's values (`chunk_matches`) and hands them over while this one
    /// gives the pieces before them to `sink`.
    fn pipelined(&self, text: &str, chunk: usize, mut sink: impl FnMut(&str)) {
        let (found, take) = std::sync::mpsc::sync_channel::<(Vec<Range<usize>>, usize)>(4);
        std::thread::scope(|scope| {
            let searcher = scope.spawn(move || {
                let mut from = 0;
                while from < text.len() {
                    let mut end = (from + chunk).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    let (matches, next) = self.chunk_matches(text, from, end);
                    if found.send((matches, next)).is_err() {
                        return;
                    }
                    from = next;
                }
            });
            let mut at = 0;
            for (matches, upto) in take {
                for range in matches {
                    sink(&text[at..range.start]);
                    sink(MASK);
                    at = range.end;
                }
                sink(&text[at..upto]);
                at = upto;
            }
            // A searcher that failed left the rest unsearched: search it
            // here rather than let it through unscrubbed.
            let _ = searcher.join();
            if at < text.len() {
                pieces(&text[at..], &self.matches(&text[at..]), sink);
            }
        });
    }

    /// The values that start in `from..end`, as `matches` finds them over the
    /// whole text when its search reaches `from` (the end of the last value
    /// before, or a chunk's end): searched up to `end` plus the longest
    /// form, since a value starting before `end` ends before that. Returns
    /// them and where the next chunk starts: `end`, or the end of a value
    /// that runs past it.
    fn chunk_matches(&self, text: &str, from: usize, end: usize) -> (Vec<Range<usize>>, usize) {
        let Some(matcher) = &self.matcher else { return (Vec::new(), end) };
        let reach = (end + self.longest).min(text.len());
        let regions = match &self.sampler {
            Some(sampler) => sampler.regions_in(text.as_bytes(), from..reach),
            None => std::iter::once(from..reach).collect(),
        };
        let found: Vec<Range<usize>> = regions
            .into_iter()
            .flat_map(|region| matcher.find_iter(Input::new(text).span(region)))
            .map(|m| m.range())
            .take_while(|m| m.start < end)
            .collect();
        let next = found.last().map_or(end, |m| m.end.max(end));
        (found, next)
    }

    /// Where the values occur in `text`, in order, not overlapping.
    fn matches(&self, text: &str) -> Vec<Range<usize>> {
        let Some(matcher) = &self.matcher else { return Vec::new() };
        let find = |regions: &[Range<usize>]| -> Vec<Range<usize>> {
            let found = regions.iter().flat_map(|region| matcher.find_iter(Input::new(text).span(region.clone())));
            found.map(|m| m.range()).collect()
        };
        match &self.sampler {
            Some(sampler) if text.len() >= SAMPLE_FROM => {
                let regions = sampler.regions(text.as_bytes());
                // Regions are disjoint: each part's matches are its own.
                in_parts(regions.len(), text.len() >= PARALLEL_FROM, |part| find(&regions[part]))
            }
            _ => find(std::slice::from_ref(&(0..text.len()))),
        }
    }
}

/// `text` in pieces around `found`, each found range as `***`.
fn pieces(text: &str, found: &[Range<usize>], mut sink: impl FnMut(&str)) {
    let mut at = 0;
    for range in found {
        sink(&text[at..range.start]);
        sink(MASK);
        at = range.end;
    }
    sink(&text[at..]);
}

/// `work` over `0..len`, split in as many consecutive parts as there are
/// cores when `parallel` (one part otherwise), the results in order. A
/// part whose thread failed is done again here: none is left out.
fn in_parts<T: Send>(len: usize, parallel: bool, work: impl Fn(Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    let parts = if parallel { std::thread::available_parallelism().map_or(1, |n| n.get().min(8)) } else { 1 };
    if parts == 1 {
        return work(0..len);
    }
    let size = len.div_ceil(parts);
    let work = &work;
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..parts)
            .map(|i| {
                let part = (i * size).min(len)..((i + 1) * size).min(len);
                (part.clone(), scope.spawn(move || work(part)))
            })
            .collect();
        threads.into_iter().flat_map(|(part, thread)| thread.join().unwrap_or_else(|_| work(part))).collect()
    })
}

/// Texts shorter than this go through the automaton whole (a reason or a
/// few log lines: sampling would not pay for itself).
const SAMPLE_FROM: usize = 4 << 10;

/// Texts this long are scrubbed into a sink a chunk ahead (`pipelined`),
/// in chunks of `PIPELINE_CHUNK` bytes.
const PIPELINE_FROM: usize = 1 << 20;
const PIPELINE_CHUNK: usize = 1 << 20;

/// Texts this long are sampled on every core (a thread costs tens of
/// microseconds; sampling a megabyte, about a quarter of a millisecond).
const PARALLEL_FROM: usize = 1 << 20;

/// The sampler's two hash multipliers (odd, well spread bits).
const HASHES: [u32; 2] = [0x9E37_79B1, 0x85EB_CA77];

/// The window the sampler looks up, in bytes.
const WINDOW: usize = 4;

/// Which 4-byte windows occur in some form: a Bloom filter, two hashes
/// of each window in one bitmap (a false positive only sends the automaton
/// to look; with one hash, log text sent it to look 6 times as often as a
/// value was there).
#[derive(Debug, Clone)]
struct Sampler {
    bits: Vec<u64>,
    /// log2 of the bitmap's size in bits.
    order: u32,
    /// Every `stride`-th window of a text is looked up.
    stride: usize,
    /// The longest form: how far around a window found an occurrence may reach.
    longest: usize,
}

impl Sampler {
    fn new(forms: &[String]) -> Option<Sampler> {
        let shortest = forms.iter().map(String::len).min()?;
        if shortest < WINDOW {
            return None;
        }
        let windows: usize = forms.iter().map(|f| f.len() + 1 - WINDOW).sum();
        // About 128 bits per window: few false positives, and it stays in cache.
        let order = (windows * 128).next_power_of_two().trailing_zeros().clamp(12, 22);
        let mut sampler = Sampler {
            bits: vec![0; 1 << (order - 6)],
            order,
            stride: shortest + 1 - WINDOW,
            longest: forms.iter().map(String::len).max()?,
        };
        for form in forms {
            for window in form.as_bytes().windows(WINDOW) {
                for bit in sampler.bits_of(window) {
                    sampler.bits[bit >> 6] |= 1 << (bit & 63);
                }
            }
        }
        Some(sampler)
    }

    /// The window's bit for hash multiplier `k` (the top `order` bits).
    fn bit(&self, window: &[u8], k: u32) -> usize {
        let word = u32::from_le_bytes([window[0], window[1], window[2], window[3]]);
        (word.wrapping_mul(k) >> (32 - self.order)) as usize
    }

    /// The window's two bits.
    fn bits_of(&self, window: &[u8]) -> [usize; 2] {
        HASHES.map(|k| self.bit(window, k))
    }

    /// Whether both of the window's bits are set (the second is computed
    /// only when the first is: most windows stop there).
    fn has(&self, window: &[u8]) -> bool {
        HASHES.iter().all(|&k| {
            let bit = self.bit(window, k);
            self.bits[bit >> 6] & (1 << (bit & 63)) != 0
        })
    }

    /// The parts of `text` an occurrence may lie in, in order, disjoint:
    /// around each sampled window that some form has, as far as the longest
    /// form reaches either way, with overlapping parts merged. A long text
    /// is sampled in parts on every core (the same windows: one in `stride`
    /// from the start).
    fn regions(&self, text: &[u8]) -> Vec<Range<usize>> {
        let Some(windows) = (text.len() + 1).checked_sub(WINDOW) else { return Vec::new() };
        let hits = in_parts(windows, text.len() >= PARALLEL_FROM, |starts| self.hits(text, starts));
        self.around(hits, 0..text.len())
    }

    /// `regions` of the part `span` of `text`, on this core: every
    /// occurrence that lies in `span` lies in one of them.
    fn regions_in(&self, text: &[u8], span: Range<usize>) -> Vec<Range<usize>> {
        let Some(windows) = (span.end + 1).checked_sub(WINDOW) else { return Vec::new() };
        let hits = self.hits(text, span.start..windows.max(span.start));
        self.around(hits, span)
    }

    /// The parts of `span` around `hits` (in order), overlapping ones merged.
    fn around(&self, hits: Vec<usize>, span: Range<usize>) -> Vec<Range<usize>> {
        let mut regions: Vec<Range<usize>> = Vec::new();
        for at in hits {
            let around = at.saturating_sub(self.longest - WINDOW).max(span.start)..(at + self.longest).min(span.end);
            match regions.last_mut() {
                Some(open) if around.start <= open.end => open.end = around.end,
                _ => regions.push(around),
            }
        }
        regions
    }

    /// The sampled windows of `text` that start in `starts` and that some
    /// form has, in order.
    fn hits(&self, text: &[u8], starts: Range<usize>) -> Vec<usize> {
        let first = starts.start.div_ceil(self.stride) * self.stride;
        (first..starts.end).step_by(self.stride).filter(|&at| self.has(&text[at..at + WINDOW])).collect()
    }
}

/// Every form of every value to hide.
fn forms(settings: &Settings) -> Vec<String> {
    use base64::Engine as _;
    let long: Vec<String> = settings.values().filter(|v| v.len() >= SCRUB_MIN_LEN).cloned().collect();
    // A short password only where it stands in the URL: `:pw@`, `password=pw`.
    let long_passwords = settings.values().flat_map(|v| check_services::secrets_in(v)).filter(|p| p.len() >= URL_PASSWORD_MIN_LEN);
    let short_passwords = settings
        .values()
        .flat_map(|v| check_services::passwords_in(v))
        .filter(|(p, _)| p.len() < URL_PASSWORD_MIN_LEN)
        .map(|(_, standing)| standing);
    let passwords = long_passwords.chain(short_passwords);
    let encoded = long.iter().flat_map(|v| [percent_encode(v), base64::engine::general_purpose::STANDARD.encode(v)]);
    let quoted = long.iter().flat_map(|v| quoted_forms(v));
    let mut values: Vec<String> = long.iter().cloned().chain(passwords).chain(encoded).chain(quoted).filter(|v| !v.is_empty()).collect();
    values.sort();
    values.dedup();
    values
}

/// `value` as a quoted string shows it in an error message, when that
/// differs from the value: escaped as Go's `%q` does (Docker's errors:
/// `\x00`) and as JSON does (`\u0000`), quotes, backslashes and line
/// breaks alike in both.
fn quoted_forms(value: &str) -> Vec<String> {
    let escaped = |control: fn(char) -> String| {
        let mut out = String::with_capacity(value.len() + 8);
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&control(c)),
                c => out.push(c),
            }
        }
        out
    };
    let go = escaped(|c| format!("\\x{:02x}", u32::from(c)));
    let json = escaped(|c| format!("\\u{:04x}", u32::from(c)));
    [go, json].into_iter().filter(|q| q != value).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pseudo-random text of `len` bytes: log-like filler with forms and
    /// pieces of forms (prefixes, suffixes, overlaps) strewn in.
    fn text(seed: u64, len: usize, forms: &[String]) -> String {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut next = move |n: usize| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize % n
        };
        // A cut of `form` at about `n` bytes, on a character boundary.
        let cut = |form: &str, mut n: usize| {
            while !form.is_char_boundary(n) {
                n -= 1;
            }
            n
        };
        let mut out = String::new();
        while out.len() < len {
            let form = &forms[next(forms.len())];
            match next(6) {
                0 => out.push_str(form),
                1 => out.push_str(&form[..cut(form, next(form.len()))]),
                2 => out.push_str(&form[cut(form, next(form.len()))..]),
                3 => {
                    // Two forms run together, the second starting inside the first.
                    out.push_str(&form[..cut(form, next(form.len()))]);
                    out.push_str(&forms[next(forms.len())]);
                }
                4 => out.push('ñ'),
                _ => out.push_str(&" INFO step ok 123 abc\n"[..next(22) + 1]),
            }
        }
        out
    }

    #[test]
    fn samples_find_what_the_automaton_finds() {
        let settings: Settings = [("A", "s3cr3t"), ("B", "s3cr3t-longer"), ("C", "tok/en+with=odd"), ("D", "p4ssw0rd"), ("E", "ñandú-key")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let scrubber = Scrubber::new(&settings);
        assert!(scrubber.sampler.is_some(), "every form is at least a window long");
        let forms = forms(&settings);
        let whole = AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&forms).unwrap();
        for seed in 0..200 {
            let text = text(seed, SAMPLE_FROM * 3, &forms);
            let sampled = scrubber.matches(&text);
            let everywhere: Vec<_> = whole.find_iter(&text).map(|m| m.range()).collect();
            assert!(!everywhere.is_empty());
            assert_eq!(sampled, everywhere, "seed {seed}");
            let scrubbed = scrubber.scrub(&text);
            assert_eq!(scrubbed, whole.replace_all(&text, &vec![MASK; forms.len()]), "seed {seed}");
        }
    }

    #[test]
    fn a_long_text_sampled_and_searched_on_every_core_finds_the_same() {
        let settings: Settings =
            [("A", "s3cr3t-value"), ("B", "an0ther/secret+value")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let scrubber = Scrubber::new(&settings);
        let forms = forms(&settings);
        let whole = AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&forms).unwrap();
        let text = text(7, PARALLEL_FROM * 2 + 12_345, &forms);
        let everywhere: Vec<_> = whole.find_iter(&text).map(|m| m.range()).collect();
        assert!(everywhere.len() > 1000);
        assert_eq!(scrubber.matches(&text), everywhere);
    }

    #[test]
    fn a_text_searched_a_chunk_ahead_is_scrubbed_as_a_whole_search_would() {
        let sampled: Settings = [("A", "s3cr3t"), ("B", "s3cr3t-longer"), ("C", "tok/en+with=odd"), ("D", "ñandú-key")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // A URL's short password: searched for everywhere.
        let everywhere = Settings::from([("URL".to_string(), "postgres://app:pw@db/app".to_string())]);
        for settings in [sampled, everywhere] {
            let scrubber = Scrubber::new(&settings);
            let forms = forms(&settings);
            let whole = AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&forms).unwrap();
            for seed in 0..40 {
                let text = text(seed, 20_000, &forms);
                let expected = whole.replace_all(&text, &vec![MASK; forms.len()]);
                // Chunks shorter than a form, about one, and longer: every
                // way a value can lie across a chunk's end.
                for chunk in [1, 5, 17, 64, 1000] {
                    let mut out = String::new();
                    scrubber.pipelined(&text, chunk, |piece| out.push_str(piece));
                    assert_eq!(out, expected, "seed {seed}, chunks of {chunk}");
                }
            }
        }
    }

    #[test]
    fn a_value_quoted_in_an_error_is_hidden_as_it_is_escaped_there() {
        let settings = Settings::from([("API_KEY".to_string(), "hunter2-SECRET-\0-tail".to_string()), ("Q".into(), "pa\"ss\\wd".into())]);
        let scrubber = Scrubber::new(&settings);
        // Docker's error for a NUL in an environment value, and JSON.
        let docker = r#"invalid env: value can't contain null(\x00): "API_KEY=hunter2-SECRET-\x00-tail": unknown"#;
        assert_eq!(scrubber.scrub(docker), r#"invalid env: value can't contain null(\x00): "API_KEY=***": unknown"#);
        assert_eq!(scrubber.scrub(r#"{"v":"hunter2-SECRET-\u0000-tail"}"#), r#"{"v":"***"}"#);
        assert_eq!(scrubber.scrub(r#"Q="pa\"ss\\wd" and pa"ss\wd"#), r#"Q="***" and ***"#);
        assert!(quoted_forms("plain-value").is_empty(), "nothing to escape: the value itself is the form");
    }

    #[test]
    fn a_form_shorter_than_a_window_is_searched_for_everywhere() {
        let settings: Settings = [("DATABASE_URL".to_string(), "postgres://app:pw3@db/app".to_string())].into_iter().collect();
        let scrubber = Scrubber::new(&settings);
        assert!(scrubber.sampler.is_none());
        let log = format!("{}login failed with pw3\n", "x".repeat(SAMPLE_FROM));
        assert!(!scrubber.scrub(&log).contains("with pw3"));
    }

    #[test]
    fn a_short_url_password_is_hidden_in_a_url_and_leaves_other_text_alone() {
        let settings: Settings = [("DATABASE_URL".to_string(), "postgres://x:y@db/hello".to_string())].into_iter().collect();
        let scrubber = Scrubber::new(&settings);
        let log = "ref v1.2 not found in /tmp/tour/.slipway/example-hello; yes, really\n";
        assert_eq!(scrubber.scrub(log), log, "every `y` masked");
        let elsewhere = scrubber.scrub("connecting to postgres://x:y@db2/other failed\n");
        assert!(!elsewhere.contains(":y@"), "{elsewhere}");
        assert_eq!(scrubber.scrub("postgres://x:y@db/hello\n"), format!("{MASK}\n"), "the value itself");
        // A longer one is still hidden wherever it is printed.
        let settings: Settings = [("DATABASE_URL".to_string(), "postgres://app:hunter2@db/app".to_string())].into_iter().collect();
        assert!(!Scrubber::new(&settings).scrub("password hunter2 refused\n").contains("hunter2"));
        // A short one in the query, where it stands there.
        let settings: Settings = [("DATABASE_URL".to_string(), "postgres://db/app?user=app&password=p".to_string())].into_iter().collect();
        let scrubber = Scrubber::new(&settings);
        let said = scrubber.scrub("dsn host=db2 user=app password=p sslmode=off; please retry\n");
        assert!(!said.contains("password=p ") && said.contains("please retry"), "{said}");
    }
}
