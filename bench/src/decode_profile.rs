//! Where the replay's CPU time goes, stage by stage, measured from memory on
//! the same bodies: parsing JSON into a `serde_json::Value` (the floor of
//! any Value-based decoder), `Envelope::from_json` (what `stream_all` does
//! per row) and `Envelope::decode::<Event>` (what a projection does next,
//! including its copy of the payload `Value`). If `Envelope::from_json`
//! costs about what the bare `Value` parse costs, the time goes into building
//! the payload's `Value` tree, not into the envelope's own fields.

use std::time::{Duration, Instant};

use anyhow::ensure;
use slipway_proto::{Envelope, Event};

use crate::replay::{rate, timed};
use crate::report::{Figure, Goal, Row};

/// Envelopes decoded per chunk for the stages that start from an envelope.
const CHUNK: usize = 10_000;

pub fn measure(bodies: &[String]) -> anyhow::Result<Vec<Row>> {
    let n = bodies.len();
    let value = timed(|| parse_values(bodies))?;
    let envelope = timed(|| parse_envelopes(bodies))?;
    let typed = typed_decode(bodies)?;
    let row = |what: &str, elapsed: Duration| Row::new(what, Figure::Rate(rate(n, elapsed)), None, Goal::None);
    Ok(vec![
        row("  cpu: body -> serde_json::Value", value),
        row("  cpu: Envelope::from_json", envelope),
        row("  cpu: decode::<Event>", typed),
    ])
}

fn parse_values(bodies: &[String]) -> anyhow::Result<()> {
    let mut objects = 0usize;
    for body in bodies {
        let value: serde_json::Value = serde_json::from_str(body)?;
        objects += usize::from(value.is_object());
    }
    ensure!(objects == bodies.len());
    Ok(())
}

fn parse_envelopes(bodies: &[String]) -> anyhow::Result<()> {
    let mut bytes = 0usize;
    for body in bodies {
        bytes += Envelope::from_json(body.as_bytes())?.stream.len();
    }
    ensure!(bytes > 0 || bodies.is_empty());
    Ok(())
}

/// Times `decode::<Event>` on envelopes parsed (untimed) a chunk at a time,
/// so memory stays small.
fn typed_decode(bodies: &[String]) -> anyhow::Result<Duration> {
    let mut typed = Duration::ZERO;
    for chunk in bodies.chunks(CHUNK) {
        let envelopes = chunk.iter().map(|b| Envelope::from_json(b.as_bytes())).collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        for envelope in &envelopes {
            std::hint::black_box(envelope.decode::<Event>()?);
        }
        typed += started.elapsed();
    }
    Ok(typed)
}
