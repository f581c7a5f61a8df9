//! How a followed deployment looks: on a terminal, one line per pipeline
//! step with a spinner and the elapsed time while it runs, then ✓/✗ and its
//! duration (indicatif); elsewhere (a pipe, CI) the same as plain lines;
//! with `--json` JSON Lines a program can read; with `--quiet` only the
//! result. `slipway demo` shows every event instead. What the updates are
//! is `progress.rs`'s business; this module only draws them.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use slipway_proto::Step;

use crate::progress::{finished_line, Update};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Spinners on a terminal.
    Live,
    /// One line per step start and end.
    Plain,
    /// JSON Lines: `{"kind": "event" | "log" | "note" | "result", ...}`.
    Json,
    /// Nothing but the result.
    Quiet,
    /// Every recorded event on a line of its own (`slipway demo`).
    Events,
}

impl Style {
    /// Spinners only when a person watches standard output.
    pub fn choose(json: bool, quiet: bool) -> Style {
        match (json, quiet) {
            (true, _) => Style::Json,
            (_, true) => Style::Quiet,
            _ if std::io::stdout().is_terminal() => Style::Live,
            _ => Style::Plain,
        }
    }
}

pub struct Reporter {
    style: Style,
    multi: MultiProgress,
    bars: BTreeMap<Step, ProgressBar>,
}

fn spinner_style() -> ProgressStyle {
    // The template is a constant; it parses.
    ProgressStyle::with_template("{spinner:.cyan} {msg:<14} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// `value` with `"kind": kind` added, so a reader can tell the lines apart.
fn with_kind(mut value: Value, kind: &str) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), json!(kind));
    }
    value
}

impl Reporter {
    pub fn new(style: Style) -> Reporter {
        let target = if style == Style::Live { ProgressDrawTarget::stdout() } else { ProgressDrawTarget::hidden() };
        Reporter { style, multi: MultiProgress::with_draw_target(target), bars: BTreeMap::new() }
    }

    fn println(&self, text: &str) {
        match self.style {
            // Above the spinners, which redraw below it.
            Style::Live => {
                if self.multi.println(text).is_err() {
                    println!("{text}");
                }
            }
            _ => println!("{text}"),
        }
    }

    fn json_line(value: Value) {
        println!("{value}");
    }

    /// The deployment this command asked for.
    pub fn requested(&self, id: uuid::Uuid, project: &str, env: &str, text: &str) {
        match self.style {
            Style::Json => {
                Self::json_line(json!({ "kind": "requested", "deployment": id, "project": project, "environment": env, "text": text }))
            }
            Style::Quiet => {}
            _ => self.println(&format!("{text}\n")),
        }
    }

    /// A sentence about the deployment (queued behind another, ...).
    pub fn note(&self, text: &str) {
        match self.style {
            Style::Json => Self::json_line(json!({ "kind": "note", "text": text })),
            Style::Quiet => {}
            _ => self.println(text),
        }
    }

    /// One recorded event: `line` is its one-line rendering, `value` its
    /// JSON form, `updates` what it changed in the progress.
    pub fn event(&mut self, line: &str, value: Value, updates: &[Update]) {
        match self.style {
            Style::Json => Self::json_line(with_kind(value, "event")),
            Style::Events => println!("{line}"),
            Style::Quiet => {}
            Style::Plain | Style::Live => updates.iter().for_each(|u| self.update(u)),
        }
    }

    fn update(&mut self, update: &Update) {
        match update {
            Update::Started { step, attempt } => {
                let label = if *attempt > 1 { format!("{step} (attempt {attempt})") } else { step.to_string() };
                if self.style == Style::Plain {
                    println!("→ {label}");
                    return;
                }
                match self.bars.get(step) {
                    Some(bar) => bar.set_message(label),
                    None => {
                        let bar = self.multi.add(ProgressBar::new_spinner().with_style(spinner_style()).with_message(label));
                        bar.enable_steady_tick(Duration::from_millis(100));
                        self.bars.insert(*step, bar);
                    }
                }
            }
            Update::Finished { step, end, duration_ms } => {
                let line = finished_line(*step, end, *duration_ms);
                match self.bars.remove(step) {
                    Some(bar) if self.style == Style::Live => {
                        bar.set_style(done_style());
                        bar.finish_with_message(line);
                    }
                    _ => self.println(&line),
                }
            }
            Update::Ended(_) => self.stop(),
        }
    }

    /// One line of a build or release log.
    pub fn log(&self, source: &str, line: &str) {
        match self.style {
            Style::Json => Self::json_line(json!({ "kind": "log", "source": source, "line": line })),
            Style::Quiet => {}
            _ => self.println(&format!("     | {line}")),
        }
    }

    /// Takes the spinners still turning off the screen (following gave up).
    pub fn stop(&mut self) {
        for (_, bar) in std::mem::take(&mut self.bars) {
            bar.abandon();
        }
    }

    /// The deployment's result: `lines` for people, `value` (with `kind:
    /// result`) for `--json`. Failures go to standard error.
    pub fn result(&mut self, succeeded: bool, lines: &[String], value: Value) {
        self.stop();
        match self.style {
            Style::Json => Self::json_line(with_kind(value, "result")),
            // Nothing came before the result: no blank line to set it apart.
            Style::Quiet if succeeded => lines.iter().for_each(|l| println!("{}", l.trim_start_matches('\n'))),
            Style::Quiet => lines.iter().for_each(|l| eprintln!("{}", l.trim_start_matches('\n'))),
            _ if succeeded => lines.iter().for_each(|l| println!("{l}")),
            _ => lines.iter().for_each(|l| eprintln!("{l}")),
        }
    }
}
