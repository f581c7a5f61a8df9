//! `SLIPWAY_TRACE_FILE=PATH`: finished spans as JSON lines appended to a
//! file, one line per span, each written with one `write` call, so several
//! processes can share the file. For tests and for looking at a trace
//! without a collector; OTLP is the production path.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use serde_json::{json, Map, Value};

#[derive(Debug)]
pub(crate) struct FileExporter {
    file: Mutex<File>,
    service: String,
}

impl FileExporter {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileExporter { file: Mutex::new(file), service: String::new() })
    }
}

/// One span as a JSON line (without the newline).
pub(crate) fn span_line(service: &str, span: &SpanData) -> String {
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let attributes: Map<String, Value> =
        span.attributes.iter().map(|kv| (kv.key.to_string(), Value::String(kv.value.to_string()))).collect();
    let (status, message) = match &span.status {
        Status::Unset => ("unset", String::new()),
        Status::Ok => ("ok", String::new()),
        Status::Error { description } => ("error", description.to_string()),
    };
    let parent = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
    json!({
        "service": service,
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": parent,
        "name": span.name,
        "kind": format!("{:?}", span.span_kind).to_lowercase(),
        "start_unix_nano": nanos(span.start_time),
        "end_unix_nano": nanos(span.end_time),
        "status": status,
        "status_message": message,
        "attributes": attributes,
    })
    .to_string()
}

impl SpanExporter for FileExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut text = String::new();
        for span in &batch {
            text.push_str(&span_line(&self.service, span));
            text.push('\n');
        }
        let mut file = self.file.lock().map_err(|_| OTelSdkError::InternalFailure("trace file lock poisoned".into()))?;
        file.write_all(text.as_bytes()).map_err(|e| OTelSdkError::InternalFailure(format!("writing the trace file: {e}")))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.service = resource.get(&opentelemetry::Key::from_static_str("service.name")).map(|v| v.to_string()).unwrap_or_default();
    }
}
