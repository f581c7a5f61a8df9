//! The one table the bench prints: each figure of ours beside its baseline
//! measured in the same run, the ratio, the goal and whether it is met. A
//! figure only means something next to what the machine can do at all, so
//! every row carries its baseline and names what that baseline is.

use std::fmt::Write as _;

/// A measured figure.
#[derive(Debug, Clone, Copy)]
pub enum Figure {
    /// Events (or messages) per second: higher is better.
    Rate(f64),
    /// A latency in milliseconds: lower is better.
    Millis(f64),
}

impl Figure {
    fn value(self) -> f64 {
        match self {
            Figure::Rate(v) | Figure::Millis(v) => v,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Figure::Rate(v) => write!(f, "{} ev/s", thousands(v)),
            Figure::Millis(v) => write!(f, "{v:.1} ms"),
        }
    }
}

/// What a row must reach.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// Informational: no goal.
    None,
    /// ours / baseline must be at least this.
    RatioAtLeast(f64),
    /// ours must be below this many milliseconds.
    BelowMillis(f64),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub ours: Figure,
    /// The baseline figure and what it is ("bare UNNEST").
    pub baseline: Option<(Figure, String)>,
    pub goal: Goal,
}

impl Row {
    pub fn new(what: impl Into<String>, ours: Figure, baseline: Option<(Figure, &str)>, goal: Goal) -> Self {
        Row { what: what.into(), ours, baseline: baseline.map(|(f, what)| (f, what.to_string())), goal }
    }

    /// ours / baseline, for rates only (a latency ratio says little when the
    /// baseline is a few milliseconds).
    fn ratio(&self) -> Option<f64> {
        match (self.ours, &self.baseline) {
            (Figure::Rate(ours), Some((Figure::Rate(base), _))) if *base > 0.0 => Some(ours / base),
            _ => None,
        }
    }

    /// `None` when the row has no goal.
    pub fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::None => None,
            Goal::RatioAtLeast(min) => Some(self.ratio().is_some_and(|r| r >= min)),
            Goal::BelowMillis(max) => Some(self.ours.value() < max),
        }
    }

    fn cells(&self) -> [String; 6] {
        let baseline = match &self.baseline {
            Some((figure, what)) => format!("{figure} ({what})"),
            None => "-".into(),
        };
        let ratio = self.ratio().map_or("-".into(), |r| format!("{r:.2}"));
        let goal = match self.goal {
            Goal::None => "-".into(),
            Goal::RatioAtLeast(min) => format!(">= {min:.2}"),
            Goal::BelowMillis(max) => format!("< {max} ms"),
        };
        let met = match self.met() {
            None => "-",
            Some(true) => "yes",
            Some(false) => "NO",
        };
        [self.what.clone(), self.ours.to_string(), baseline, ratio, goal, met.into()]
    }
}

/// Renders rows as a plain text table with aligned columns.
pub fn render(rows: &[Row]) -> String {
    let header = ["what", "ours", "baseline (what)", "ratio", "goal", "met"].map(String::from);
    let lines: Vec<[String; 6]> = std::iter::once(header).chain(rows.iter().map(Row::cells)).collect();
    let widths: Vec<usize> = (0..6).map(|col| lines.iter().map(|l| l[col].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (cell, width) in line.iter().zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// 41234.6 -> "41,235".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(41_234.6), "41,235");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }

    #[test]
    fn goals_are_judged_on_ratio_or_latency() {
        let rate = Row::new("a", Figure::Rate(80.0), Some((Figure::Rate(100.0), "b")), Goal::RatioAtLeast(0.7));
        assert_eq!(rate.met(), Some(true));
        let slow = Row::new("a", Figure::Millis(60.0), Some((Figure::Millis(3.0), "b")), Goal::BelowMillis(50.0));
        assert_eq!(slow.met(), Some(false));
        assert!(render(&[rate, slow]).lines().count() == 3);
    }
}
