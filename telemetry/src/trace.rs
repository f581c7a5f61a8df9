//! One trace per deployment, one span per step, across processes.
//!
//! The trace context travels as W3C `traceparent` (and `tracestate`) in
//! each envelope and in the queue message's headers. Three kinds of span
//! make up a deployment's trace:
//!
//! - `deployment requested`: recorded where the request is recorded; its
//!   trace id is the deployment id unless the request continued a trace
//!   its caller started.
//! - `<queue> publish` (producer): the engine dispatching a command; the
//!   span is planned before the dispatch is appended (its `traceparent`
//!   goes into the command) and recorded only once the append committed.
//! - `<queue> process` (consumer): a worker running the command, a child
//!   of the publish span; the outcome event carries this span's context, so
//!   the next dispatch is its child.
//!
//! Everything here works without an exporter: ids are still chosen and
//! propagated, and recording a span then does nothing.

use std::time::SystemTime;

/// Span kinds, re-exported so callers need no OpenTelemetry dependency.
pub use opentelemetry::trace::SpanKind as Kind;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use slipway_proto::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ids;

/// The `tracing` target of the spans that carry a deployment's context
/// into log lines. `init` enables it in every log filter, so log lines
/// inside a step name the deployment and the step whatever `SLIPWAY_LOG` says.
pub const SPAN_TARGET: &str = "slipway::span";

/// The instrumentation scope of Slipway's own spans.
const SCOPE: &str = "slipway";

/// The span context a `traceparent` (and optional `tracestate`) names, as
/// a remote parent. `None` for anything malformed: a bad header must not
/// stop a step, it only starts a new trace.
pub fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    let parts: Vec<&str> = trace.traceparent.split('-').collect();
    let [version, trace_id, span_id, flags] = parts.as_slice() else { return None };
    if version.len() != 2 || *version == "ff" || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = trace.tracestate.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags & 1), true, state);
    context.is_valid().then_some(context)
}

/// The `traceparent` (and `tracestate`) of a span context; `None` if it is invalid.
pub fn trace_context(context: &SpanContext) -> Option<TraceContext> {
    if !context.is_valid() {
        return None;
    }
    let traceparent = format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8());
    let state = context.trace_state().header();
    Some(TraceContext { traceparent, tracestate: (!state.is_empty()).then_some(state) })
}

/// A span whose ids are chosen now and which is recorded later, once what
/// it stands for has happened (the append that dispatches a command
/// committed). Dropping it unrecorded leaves no trace.
#[derive(Debug, Clone)]
pub struct PlannedSpan {
    context: SpanContext,
    parent: Option<SpanContext>,
    name: String,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    start: SystemTime,
}

impl PlannedSpan {
    /// A child of `parent` (a new trace when there is none, or it is malformed).
    pub fn child_of(parent: Option<&TraceContext>, name: impl Into<String>, kind: SpanKind) -> Self {
        let parent = parent.and_then(span_context);
        let trace_id = parent.as_ref().map_or_else(ids::random_trace_id, |p| p.trace_id());
        Self::new(trace_id, parent, name.into(), kind)
    }

    /// The first span of a new trace whose id is `trace_id` (0 picks one).
    pub fn root(trace_id: u128, name: impl Into<String>, kind: SpanKind) -> Self {
        let trace_id = if trace_id == 0 { ids::random_trace_id() } else { TraceId::from(trace_id) };
        Self::new(trace_id, None, name.into(), kind)
    }

    fn new(trace_id: TraceId, parent: Option<SpanContext>, name: String, kind: SpanKind) -> Self {
        let state = parent.as_ref().map(|p| p.trace_state().clone()).unwrap_or_default();
        let context = SpanContext::new(trace_id, ids::random_span_id(), TraceFlags::SAMPLED, false, state);
        PlannedSpan { context, parent, name, kind, attributes: Vec::new(), start: SystemTime::now() }
    }

    pub fn with_attribute(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// What to put into the envelope (and queue headers) of what this span sends.
    pub fn trace_context(&self) -> TraceContext {
        // A planned context is valid by construction (non-zero ids).
        trace_context(&self.context).unwrap_or_else(|| TraceContext::root(1, 1))
    }

    /// The parent's span id, if the span has a parent.
    pub fn parent_span_id(&self) -> Option<String> {
        self.parent.as_ref().map(|p| p.span_id().to_string())
    }

    /// Records the span (from its planning until now) with the planned ids.
    pub fn record(self) {
        let tracer = opentelemetry::global::tracer(SCOPE);
        let parent = match &self.parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        let builder = tracer.span_builder(self.name).with_kind(self.kind).with_start_time(self.start).with_attributes(self.attributes);
        ids::with_planned(self.context.trace_id(), self.context.span_id(), || {
            let mut span = builder.start_with_context(&tracer, &parent);
            opentelemetry::trace::Span::set_status(&mut span, Status::Unset);
            opentelemetry::trace::Span::end(&mut span);
        });
    }
}

tokio::task_local! {
    /// The trace context a caller sent with its request (`with_caller`).
    static CALLER: Option<TraceContext>;
}

/// Runs `work` (an API request's handling) as part of the caller's trace:
/// a deployment it requests continues that trace. A missing or malformed
/// `traceparent` changes nothing.
pub async fn with_caller<F: std::future::Future>(traceparent: Option<&str>, tracestate: Option<&str>, work: F) -> F::Output {
    let caller = traceparent
        .map(|t| TraceContext { traceparent: t.trim().to_owned(), tracestate: tracestate.map(|s| s.trim().to_owned()) })
        .filter(|t| span_context(t).is_some());
    CALLER.scope(caller, work).await
}

/// The `deployment requested` span, recorded once the request is. It
/// continues the caller's trace inside `with_caller`; otherwise it starts
/// the deployment's own trace, whose id is the deployment id, so a
/// deployment's trace can be found from its id alone.
pub fn deployment_requested(deployment_id: u128) -> PlannedSpan {
    let name = "deployment requested";
    let caller = CALLER.try_with(Clone::clone).ok().flatten();
    let span = match caller {
        Some(caller) => PlannedSpan::child_of(Some(&caller), name, SpanKind::Internal),
        None => PlannedSpan::root(deployment_id, name, SpanKind::Internal),
    };
    span.with_attribute("slipway.deployment.id", uuid_text(deployment_id))
}

/// A u128 in the UUID text form (the deployment ids).
fn uuid_text(id: u128) -> String {
    let h = format!("{id:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Makes `span` continue the trace of a `traceparent` its caller sent
/// (an HTTP header); call it before the span is entered. A malformed
/// header is ignored: the work then starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    let trace = TraceContext { traceparent: traceparent.to_owned(), tracestate: tracestate.map(str::to_owned) };
    if let Some(parent) = span_context(&trace) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
}

/// What a worker knows about a delivery when it starts processing it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    /// `rabbitmq` or `memory`.
    pub system: &'a str,
    /// The logical queue (`slipway.step.build`).
    pub queue: &'a str,
    pub message_id: &'a str,
    pub deployment_id: &'a str,
    pub step: &'a str,
    /// 1 on the first delivery.
    pub attempt: u32,
}

/// The `<queue> process` span a worker runs a command in: a child of the
/// span that dispatched it (`parent`, from the message headers or the
/// envelope). Log lines inside it carry its fields (deployment, step).
pub fn process_span(delivered: &Delivered<'_>, parent: Option<&TraceContext>) -> tracing::Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "step",
        otel.name = format!("{} process", delivered.queue),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = delivered.system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = delivered.queue,
        messaging.message.id = delivered.message_id,
        slipway.delivery.attempt = delivered.attempt,
        slipway.deployment.id = delivered.deployment_id,
        slipway.step = delivered.step,
    );
    if let Some(parent) = parent.and_then(span_context) {
        // Fails only without the OpenTelemetry layer (no exporter): fine.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    span
}

/// Marks a `process_span` as failed, with the reason.
pub fn mark_failed(span: &tracing::Span, reason: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", reason);
}

/// The trace context of a `tracing` span, if it is exported (the
/// OpenTelemetry layer is installed); the outcome of a step carries it.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    trace_context(&context.span().span_context().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_through_a_span_context() {
        let trace = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        };
        let context = span_context(&trace).expect("valid");
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(trace_context(&context), Some(trace));
    }

    #[test]
    fn malformed_traceparents_give_no_parent() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x",
        ] {
            let trace = TraceContext { traceparent: bad.into(), tracestate: None };
            assert_eq!(span_context(&trace), None, "{bad}");
        }
    }

    #[test]
    fn a_planned_child_keeps_the_trace_and_names_its_parent() {
        let parent = TraceContext::root(0xabc, 0x42);
        let child = PlannedSpan::child_of(Some(&parent), "slipway.step.build publish", SpanKind::Producer);
        let context = child.trace_context();
        assert_eq!(context.trace_id(), parent.trace_id());
        assert_ne!(context.traceparent, parent.traceparent);
        assert_eq!(child.parent_span_id().as_deref(), Some("0000000000000042"));
    }

    #[test]
    fn deployment_ids_print_as_uuids() {
        assert_eq!(uuid_text(0x0192_3b4c_5d6e_7f80_9102_a3b4_c5d6_e7f8), "01923b4c-5d6e-7f80-9102-a3b4c5d6e7f8");
    }

    #[test]
    fn a_request_outside_any_trace_starts_the_deployments_own() {
        let span = deployment_requested(0x42);
        assert_eq!(span.trace_context().trace_id(), format!("{:032x}", 0x42));
        assert_eq!(span.parent_span_id(), None);
    }

    #[tokio::test]
    async fn a_request_with_a_caller_continues_its_trace() {
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span = with_caller(Some(caller), None, async { deployment_requested(0x42) }).await;
        assert_eq!(span.trace_context().trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.parent_span_id().as_deref(), Some("b7ad6b7169203331"));
        let span = with_caller(Some("garbage"), None, async { deployment_requested(0x42) }).await;
        assert_eq!(span.trace_context().trace_id(), format!("{:032x}", 0x42));
    }

    #[test]
    fn a_root_uses_the_given_trace_id() {
        let root = PlannedSpan::root(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef, "deployment requested", SpanKind::Internal);
        assert_eq!(root.trace_context().trace_id(), "0123456789abcdef0123456789abcdef");
        assert_eq!(root.parent_span_id(), None);
        let random = PlannedSpan::root(0, "x", SpanKind::Internal);
        assert!(span_context(&random.trace_context()).is_some());
    }

    /// The whole path in one process: a planned publish span recorded with
    /// its planned ids, a process span that is its child, and the context an
    /// outcome would carry. One test, as it sets the global tracer provider.
    #[test]
    fn publish_then_process_spans_link_up() {
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider =
            SdkTracerProvider::builder().with_id_generator(crate::ids::Planned::default()).with_simple_exporter(exporter.clone()).build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let root = TraceContext::root(0xfeed, 0x1);

        let publish = PlannedSpan::child_of(Some(&root), "slipway.step.build publish", SpanKind::Producer)
            .with_attribute("messaging.system", "rabbitmq");
        let sent = publish.trace_context();
        let unrecorded = PlannedSpan::child_of(Some(&root), "lost in a conflict", SpanKind::Producer);
        drop(unrecorded);
        publish.record();

        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "test")));
        let outcome = tracing::subscriber::with_default(subscriber, || {
            let delivered = Delivered {
                system: "rabbitmq",
                queue: "slipway.step.build",
                message_id: "m-1",
                deployment_id: "d-1",
                step: "build",
                attempt: 1,
            };
            let span = process_span(&delivered, Some(&sent));
            let outcome = context_of(&span);
            mark_failed(&span, "docker said no");
            drop(span);
            outcome
        });
        let outcome = outcome.expect("the process span has a context");

        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let (published, processed) = (&spans[0], &spans[1]);
        assert_eq!(published.name, "slipway.step.build publish");
        assert_eq!(format!("00-{}-{}-01", published.span_context.trace_id(), published.span_context.span_id()), sent.traceparent);
        assert_eq!(published.parent_span_id, SpanId::from(1u64));
        assert_eq!(processed.name, "slipway.step.build process");
        assert_eq!(processed.span_kind, SpanKind::Consumer);
        assert_eq!(processed.parent_span_id, published.span_context.span_id());
        assert_eq!(processed.span_context.trace_id(), TraceId::from(0xfeedu128));
        assert!(matches!(&processed.status, Status::Error { description } if description == "docker said no"));
        let attribute = |k: &str| processed.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
        assert_eq!(attribute("slipway.step").as_deref(), Some("build"));
        assert_eq!(attribute("slipway.deployment.id").as_deref(), Some("d-1"));
        assert_eq!(attribute("messaging.destination.name").as_deref(), Some("slipway.step.build"));
        assert_eq!(attribute("messaging.message.id").as_deref(), Some("m-1"));
        assert_eq!(outcome.traceparent, format!("00-{}-{}-01", processed.span_context.trace_id(), processed.span_context.span_id()));
        let _ = provider.shutdown();
    }
}
