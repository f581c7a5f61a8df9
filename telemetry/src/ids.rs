//! Span ids chosen before the span is recorded. The engine must write a
//! dispatched command's `traceparent` into the same transaction that
//! records the dispatch, but the span should only exist if that
//! transaction commits (a conflict discards the decision). The SDK picks
//! ids itself, so its id generator here hands out an id planned earlier
//! when one is set for the current thread, and random ids otherwise.

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

thread_local! {
    static NEXT_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// The tracer provider's id generator: planned ids first, random otherwise.
#[derive(Debug, Default)]
pub(crate) struct Planned {
    random: RandomIdGenerator,
}

impl IdGenerator for Planned {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE.with(Cell::take).unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN.with(Cell::take).unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `build` (which starts exactly one span, synchronously) with the
/// given ids planned for it. The SDK asks for the trace id only when the
/// span has no parent, so both are cleared afterwards whatever was used.
pub(crate) fn with_planned<T>(trace_id: TraceId, span_id: SpanId, build: impl FnOnce() -> T) -> T {
    NEXT_TRACE.with(|t| t.set(Some(trace_id)));
    NEXT_SPAN.with(|s| s.set(Some(span_id)));
    let out = build();
    NEXT_TRACE.with(|t| t.set(None));
    NEXT_SPAN.with(|s| s.set(None));
    out
}

/// A random span id (never the invalid all-zero id).
pub(crate) fn random_span_id() -> SpanId {
    loop {
        let id = RandomIdGenerator::default().new_span_id();
        if id != SpanId::INVALID {
            return id;
        }
    }
}

/// A random trace id (never the invalid all-zero id).
pub(crate) fn random_trace_id() -> TraceId {
    loop {
        let id = RandomIdGenerator::default().new_trace_id();
        if id != TraceId::INVALID {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_ids_are_used_once_then_random() {
        let generator = Planned::default();
        let (t, s) = (TraceId::from(7u128), SpanId::from(9u64));
        let (first_span, first_trace) = with_planned(t, s, || (generator.new_span_id(), generator.new_trace_id()));
        assert_eq!((first_span, first_trace), (s, t));
        assert_ne!(generator.new_span_id(), s);
        assert_ne!(generator.new_trace_id(), t);
    }

    #[test]
    fn an_unused_plan_does_not_leak_into_the_next_span() {
        let generator = Planned::default();
        with_planned(TraceId::from(7u128), SpanId::from(9u64), || generator.new_span_id());
        assert_ne!(generator.new_trace_id(), TraceId::from(7u128));
    }
}
