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
    let filter = match env("SLIPWAY_LOG") {
        Some(spec) => EnvFilter::try_new(&spec).map_err(|e| TelemetryError::LogFilter(e.to_string()))?,
        None => EnvFilter::new("warn"),
    };
    // The step spans must pass every filter: their fields are what ties a
    // log line to its deployment and step.
    let filter = filter.add_directive(format!("{SPAN_TARGET}=info").parse().map_err(|e| TelemetryError::LogFilter(format!("{e}")))?);
    let provider = provider(service_name)?;
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let otel = provider.as_ref().map(|p| {
        let targets = Targets::new().with_target(TRACED, LevelFilter::INFO);
        tracing_opentelemetry::layer().with_tracer(p.tracer("slipway")).with_filter(targets)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(Telemetry { provider })
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
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_id_generator(crate::ids::Planned::default());
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
        let exporter =
            FileExporter::open(&path).map_err(|e| TelemetryError::TraceFile { path: path.clone(), reason: e.to_string() })?;
        // Written as each span ends: a test reads the file while the processes run.
        builder = builder.with_simple_exporter(exporter);
    }
    Ok(Some(builder.build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats() {
        assert_eq!(LogFormat::parse(None).ok(), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some(" json ")).ok(), Some(LogFormat::Json));
        let err = LogFormat::parse(Some("yaml")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("SLIPWAY_LOG_FORMAT") && err.contains("`yaml`") && err.contains("json"), "{err}");
    }
}
