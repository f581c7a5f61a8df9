//! The cap on the build and release logs Slipway keeps under `<logs>/<id>/`:
//! a build that prints without end, or a migration that logs every row,
//! must not fill the data directory. A capped log keeps its first
//! `LOG_HEAD` bytes (written through as they come, so `--logs` and the live
//! stream follow them) and its last `LOG_TAIL_BYTES` (held back and written
//! at the end, where a failure shows), with one marker line between them
//! saying how much was cut. Whole lines only: nothing is cut mid-line.
//!
//! Pure: the steps do the writing.

use std::collections::VecDeque;

/// The most a stored log holds, besides the marker line: 5 MiB.
pub const LOG_CAP: usize = 5 << 20;
/// Of that, the head: where the build's steps and the command's start show.
pub const LOG_HEAD: usize = 4 << 20;
/// And the tail: where a failure shows.
pub const LOG_TAIL_BYTES: usize = LOG_CAP - LOG_HEAD;

/// A log on its way to disk, kept to `head + tail` bytes.
#[derive(Debug, Clone)]
pub struct CappedLog {
    head: usize,
    tail: usize,
    /// Bytes written through so far (all in the head).
    written: usize,
    /// Once a line did not fit the head, everything after goes to `held`.
    head_full: bool,
    held: VecDeque<String>,
    held_bytes: usize,
    /// A line pushed in pieces, until its newline (or `finish`) comes.
    partial: String,
    /// Bytes (and lines) dropped from the front of `held`.
    cut_bytes: usize,
    cut_lines: usize,
}

impl Default for CappedLog {
    fn default() -> Self {
        CappedLog::new(LOG_HEAD, LOG_TAIL_BYTES)
    }
}

impl CappedLog {
    pub fn new(head: usize, tail: usize) -> CappedLog {
        CappedLog {
            head,
            tail,
            written: 0,
            head_full: false,
            held: VecDeque::new(),
            held_bytes: 0,
            partial: String::new(),
            cut_bytes: 0,
            cut_lines: 0,
        }
    }

    /// Takes `text`, which may end or start mid-line (a line in pieces is
    /// taken whole once its newline comes, or once it is longer than the
    /// whole cap, which cuts it anyway); returns what to write now (empty
    /// once the head is full).
    pub fn push(&mut self, text: &str) -> String {
        let mut now = String::new();
        for piece in text.split_inclusive('\n') {
            if piece.ends_with('\n') && self.partial.is_empty() {
                self.line(piece, &mut now);
                continue;
            }
            self.partial.push_str(piece);
            if piece.ends_with('\n') || self.partial.len() > self.head + self.tail {
                let line = std::mem::take(&mut self.partial);
                self.line(&line, &mut now);
            }
        }
        now
    }

    /// One whole line: written through while the head has room, else held.
    fn line(&mut self, line: &str, now: &mut String) {
        if !self.head_full && self.written + line.len() <= self.head {
            self.written += line.len();
            now.push_str(line);
            return;
        }
        self.head_full = true;
        self.held_bytes += line.len();
        self.held.push_back(line.to_string());
        while self.held_bytes > self.tail {
            let Some(dropped) = self.held.pop_front() else { break };
            self.held_bytes -= dropped.len();
            self.cut_bytes += dropped.len();
            self.cut_lines += 1;
        }
    }

    /// What is left to write at the end: the last line if it had no
    /// newline, the marker (if anything was cut) and the held-back tail.
    pub fn finish(mut self) -> String {
        let mut last = String::new();
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, &mut last);
        }
        let mut end = String::with_capacity(last.len() + self.held_bytes + 160);
        end.push_str(&last);
        if self.cut_bytes > 0 {
            end.push_str(&marker(self.cut_bytes, self.cut_lines, self.head, self.tail));
        }
        end.extend(self.held);
        end
    }
}

/// A log as it is stored: the pieces `fill` gives, capped, with the marker.
pub fn capped(fill: impl FnOnce(&mut dyn FnMut(&str))) -> String {
    let mut log = CappedLog::default();
    let mut stored = String::new();
    fill(&mut |piece| stored.push_str(&log.push(piece)));
    stored.push_str(&log.finish());
    stored
}

/// The line that stands where lines were cut.
fn marker(cut_bytes: usize, cut_lines: usize, head: usize, tail: usize) -> String {
    format!(
        "[slipway: {cut_lines} lines ({cut_bytes} bytes) cut here; a stored log keeps its first {} and last {}]\n",
        size(head),
        size(tail)
    )
}

/// "4 MiB", "1 KiB", "300 bytes".
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as it is stored: capped, with the marker.
    fn cap(text: &str) -> String {
        capped(|push| push(text))
    }

    fn lines(range: std::ops::Range<usize>) -> String {
        range.map(|i| format!("line {i:02}\n")).collect()
    }

    #[test]
    fn a_short_log_is_kept_whole_and_written_through() {
        let mut log = CappedLog::new(100, 50);
        assert_eq!(log.push("a\nb\n"), "a\nb\n");
        assert_eq!(log.finish(), "");
        assert_eq!(cap("hello\n"), "hello\n");
    }

    #[test]
    fn a_long_log_keeps_head_and_tail_with_a_marker_between() {
        // Each line is 8 bytes: the head takes 3 lines (24 of 30), the tail 2 (16 of 20).
        let mut log = CappedLog::new(30, 20);
        let now = log.push(&lines(0..10));
        assert_eq!(now, lines(0..3));
        let end = log.finish();
        assert_eq!(
            end,
            format!("[slipway: 5 lines (40 bytes) cut here; a stored log keeps its first 30 bytes and last 20 bytes]\n{}", lines(8..10))
        );
    }

    #[test]
    fn after_the_head_is_full_nothing_is_written_through() {
        let mut log = CappedLog::new(10, 100);
        assert_eq!(log.push("12345678\n"), "12345678\n");
        assert_eq!(log.push("abc\n"), "", "does not fit the head");
        assert_eq!(log.push("d\n"), "", "would fit, but comes after a held line");
        assert_eq!(log.finish(), "abc\nd\n", "nothing cut, so no marker");
    }

    #[test]
    fn a_log_pushed_in_pieces_is_stored_as_if_pushed_whole() {
        // Pieces that end mid-line, as a scrubber or a build stream gives them.
        let text = lines(0..40) + "no newline at the end";
        for (head, tail) in [(30, 20), (1000, 1000), (100, 30)] {
            let mut whole = CappedLog::new(head, tail);
            let expected = whole.push(&text) + &whole.finish();
            for size in [1, 2, 3, 5, 7, 11, 64] {
                let mut log = CappedLog::new(head, tail);
                let mut stored = String::new();
                for piece in text.as_bytes().chunks(size) {
                    stored.push_str(&log.push(std::str::from_utf8(piece).unwrap()));
                }
                stored.push_str(&log.finish());
                assert_eq!(stored, expected, "head {head}, tail {tail}, pieces of {size}");
            }
        }
    }

    #[test]
    fn the_default_cap_is_five_mib() {
        let big = "x".repeat(1023) + "\n";
        let text = big.repeat(6 * 1024);
        let stored = cap(&text);
        assert!(stored.len() <= LOG_CAP + 200, "{} bytes", stored.len());
        assert!(stored.contains("[slipway: 1024 lines (1048576 bytes) cut here; a stored log keeps its first 4 MiB and last 1 MiB]"));
    }
}
