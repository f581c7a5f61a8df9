//! Process set-up: the log subscriber and, when asked for, the tracer
//! provider behind the OpenTelemetry layer. Configuration comes from the
//! environment so every process of an installation (server, workers,
//! routers) reads it the same way: `SLIPWAY_LOG`, `SLIPWAY_LOG_FORMAT`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (with the other standard `OTEL_*`
//! variables the SDK reads, e.g. `OTEL_SERVICE_NAME`) and `SLIPWAY_TRACE_FILE`.

use std::path::PathBuf;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::file_export::FileExporter;
use crate::trace::SPAN_TARGET;

/// The target prefix of the spans and events that go to the trace exporter:
/// Slipway's own crates (`slipway_*`, `slipway::span`). Everything else,
/// database drivers and HTTP internals, would only be noise.
const TRACED: &str = "slipway";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("SLIPWAY_LOG_FORMAT is `{0}`; expected `text` or `json`")]
    LogFormat(String),
    #[error("SLIPWAY_LOG is not a valid filter (e.g. `info` or `warn,slipway_engine=debug`): {0}")]
    LogFilter(String),
    #[error("cannot set up the OTLP trace exporter (OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
    Otlp(String),
    #[error("cannot open SLIPWAY_TRACE_FILE {path}: {reason}")]
    TraceFile { path: PathBuf, reason: String },
    #[error("a log subscriber is already installed in this process")]
    AlreadyInstalled,
}

/// How log lines look on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `SLIPWAY_LOG_FORMAT`'s value (unset or empty: text).
    pub fn parse(value: Option<&str>) -> Result<Self, TelemetryError> {
        match value.map(str::trim) {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(TelemetryError::LogFormat(other.to_owned())),
        }
    }
}

/// Keeps the tracer provider alive; dropping it flushes and shuts the
/// exporter down (finished spans still in a batch are sent).
#[must_use = "dropping the guard shuts tracing down"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported from this process.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Installs logging and tracing for this process, named `service_name`
/// in traces unless `OTEL_SERVICE_NAME` says otherwise.
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    let format = LogFormat::parse(env("SLIPWAY_LOG_FORMAT").as_deref())?;
    let filter = log_filter(env("SLIPWAY_LOG").as_deref())?;
    let provider = provider(service_name)?;
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = log_layer(format, ansi, std::io::stderr);
    let otel = provider.as_ref().map(|p| {
        let targets = Targets::new().with_target(TRACED, LevelFilter::INFO);
        // Span locations would all point into this crate (where step spans are made).
        tracing_opentelemetry::layer().with_tracer(p.tracer("slipway")).with_location(false).with_filter(targets)
    });
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init().map_err(|_| TelemetryError::AlreadyInstalled)?;
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(Telemetry { provider })
}

/// `SLIPWAY_LOG`'s filter (default `warn`), which always lets the step
/// spans through: their fields are what ties a log line to its deployment
/// and step.
fn log_filter(spec: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let filter = match spec {
        Some(spec) => EnvFilter::try_new(spec).map_err(|e| TelemetryError::LogFilter(e.to_string()))?,
        None => EnvFilter::new("warn"),
    };
    let spans = format!("{SPAN_TARGET}=info").parse().map_err(|e| TelemetryError::LogFilter(format!("{e}")))?;
    Ok(filter.add_directive(spans))
}

/// The log lines' layer, writing to `writer`.
fn log_layer<S, W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(writer).boxed(),
    }
}

/// The tracer provider, if an exporter is configured.
fn provider(service_name: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let otlp = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let file = env("SLIPWAY_TRACE_FILE").map(PathBuf::from);
    if !otlp && file.is_none() {
        return Ok(None);
    }
    let mut resource = Resource::builder();
    // The SDK reads OTEL_SERVICE_NAME itself; only name the service when it is unset.
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build()).with_id_generator(crate::ids::Planned::default());
    if otlp {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    if let Some(path) = file {
        let exporter = FileExporter::open(&path).map_err(|e| TelemetryError::TraceFile { path: path.clone(), reason: e.to_string() })?;
        // Written as each span ends: a test reads the file while the processes run.
        builder = builder.with_simple_exporter(exporter);
    }
    Ok(Some(builder.build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, spec: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let filter = log_filter(Some(spec)).expect("filter");
        let subscriber = tracing_subscriber::registry().with(log_layer(format, false, move || writer.clone()).with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            let delivered = crate::trace::Delivered {
                system: "rabbitmq",
                queue: "slipway.step.build",
                message_id: "m-1",
                deployment_id: "0192-d",
                step: "build",
                attempt: 1,
            };
            crate::trace::process_span(&delivered, None).in_scope(|| tracing::warn!("image build is slow"));
            tracing::warn!("outside any step");
        });
        let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn json_log_lines_inside_a_step_name_the_deployment_and_the_step() {
        // `warn` would hide an info span; the step span passes anyway.
        let text = logged(LogFormat::Json, "warn");
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["fields"]["message"], "image build is slow");
        assert_eq!(lines[0]["span"]["slipway.deployment.id"], "0192-d", "{text}");
        assert_eq!(lines[0]["span"]["slipway.step"], "build", "{text}");
        assert!(lines[1].get("span").is_none(), "{text}");
    }

    #[test]
    fn text_log_lines_inside_a_step_carry_its_fields() {
        let text = logged(LogFormat::Text, "error,slipway_telemetry=warn");
        let line = text.lines().find(|l| l.contains("image build is slow")).unwrap_or_default();
        assert!(line.contains("slipway.deployment.id=\"0192-d\"") && line.contains("slipway.step=\"build\""), "{text}");
    }

    #[test]
    fn a_bad_log_filter_names_the_variable() {
        let err = log_filter(Some("slipway=loud")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("SLIPWAY_LOG"), "{err}");
    }

    #[test]
    fn log_formats() {
        assert_eq!(LogFormat::parse(None).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some(" json ")).ok(), Some(LogFormat::Json));
        let err = LogFormat::parse(Some("yaml")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("SLIPWAY_LOG_FORMAT") && err.contains("`yaml`") && err.contains("json"), "{err}");
    }
}
