//! Slipway's telemetry: traces, metrics and logs shared by every process.
//!
//! - `init(service_name)` sets up logging (human text, or JSON with
//!   `SLIPWAY_LOG_FORMAT=json`, filtered by `SLIPWAY_LOG`) and, when an
//!   exporter is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
//!   `SLIPWAY_TRACE_FILE` for tests), OpenTelemetry tracing.
//! - `trace`: a deployment's trace across the engine and the workers
//!   (W3C trace context in envelopes and queue headers).
//! - `metrics`: the process's Prometheus registry and its text rendering;
//!   `serve` answers `GET /metrics` for processes without the HTTP API.

mod file_export;
mod ids;
mod init;
pub mod metrics;
pub mod serve;
pub mod trace;

pub use init::{init, LogFormat, Telemetry, TelemetryError};
