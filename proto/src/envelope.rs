//! The envelope around every command and event: identity, causation,
//! correlation, actor, trace context, schema version, payload. It is what the
//! store hashes and what travels through the queues, so its JSON form is the
//! contract; decoding never panics and every error names what was wrong.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use crate::upcast;

/// A message family (events, commands) whose variants are named by a type
/// string and carry a payload at a schema version.
pub trait Message: Sized {
    /// "event" or "command", for error messages.
    const KIND: &'static str;
    /// Every type name of this family with its current schema version.
    const TYPES: &'static [(&'static str, u32)];
    fn message_type(&self) -> &'static str;
    fn payload(&self) -> Result<Value, serde_json::Error>;
    /// Builds the message from a payload already upgraded to the current version.
    fn from_payload(message_type: &str, payload: Value) -> Result<Self, serde_json::Error>;
    /// Builds the message straight from the JSON text of a payload at the
    /// current version, without an intermediate `Value` (the replay path).
    fn from_raw_payload(message_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        Self::from_payload(message_type, serde_json::from_str(payload)?)
    }

    fn current_version(message_type: &str) -> Option<u32> {
        Self::TYPES.iter().find(|(t, _)| *t == message_type).map(|(_, v)| *v)
    }
}

/// W3C trace context (`traceparent`, optional `tracestate`), carried in the
/// envelope and in queue headers so one deployment is one trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Parses a `traceparent` header (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`).
    pub fn parse(traceparent: &str) -> Result<Self, DecodeError> {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let ok = parts.len() == 4
            && hex(parts[0], 2)
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1] != "00000000000000000000000000000000"
            && parts[2] != "0000000000000000";
        if !ok {
            return Err(DecodeError::Malformed {
                reason: format!("traceparent `{traceparent}` is not `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`"),
            });
        }
        Ok(TraceContext { traceparent: traceparent.to_owned(), tracestate: None })
    }

    /// A new root context; ids are passed in so callers stay deterministic.
    pub fn root(trace_id: u128, span_id: u64) -> Self {
        TraceContext { traceparent: format!("00-{trace_id:032x}-{:016x}-01", span_id.max(1)), tracestate: None }
    }

    /// The same trace with a new span id (one span per step).
    pub fn child(&self, span_id: u64) -> Self {
        let trace_id = self.traceparent.get(3..35).unwrap_or("0");
        TraceContext { traceparent: format!("00-{trace_id}-{:016x}-01", span_id.max(1)), tracestate: self.tracestate.clone() }
    }

    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or("")
    }
}

/// Who and what caused a message: copied from the cause to its consequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: String,
    pub trace: Option<TraceContext>,
}

impl Metadata {
    /// Metadata for a message caused by `cause`: same correlation, actor and trace.
    pub fn caused_by(cause: &Envelope) -> Self {
        Metadata {
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.id),
            actor: cause.actor.clone(),
            trace: cause.trace.clone(),
        }
    }
}

/// The stored and transmitted form of every command and event.
///
/// The payload is kept as the exact JSON text it was read as (or, for a new
/// envelope, the text of its `Value`), so re-serialising an envelope read
/// back gives the same bytes, and a typed decode parses the text once,
/// straight into the payload struct.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// UUID v7: unique, and roughly time-ordered.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub message_type: String,
    pub schema_version: u32,
    /// The stream the message belongs to (for a command: the stream it acts on).
    pub stream: String,
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    /// The deployment (or other workflow) this message is part of.
    pub correlation_id: Uuid,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    pub timestamp: DateTime<Utc>,
    /// The payload's JSON text; see `payload_value` and `set_payload_value`.
    pub payload: Box<RawValue>,
}

/// Equal when every field is; payloads compare as JSON values (so two
/// spellings of the same JSON are equal, as they were when the payload was a
/// `Value`), with a fast path for identical text.
impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.message_type == other.message_type
            && self.schema_version == other.schema_version
            && self.stream == other.stream
            && self.causation_id == other.causation_id
            && self.correlation_id == other.correlation_id
            && self.actor == other.actor
            && self.trace == other.trace
            && self.timestamp == other.timestamp
            && (self.payload.get() == other.payload.get()
                || serde_json::from_str::<Value>(self.payload.get()).ok() == serde_json::from_str::<Value>(other.payload.get()).ok())
    }
}

/// Why bytes could not become a message. Every variant names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {reason}")]
    Malformed { reason: String },
    #[error("unknown {kind} type `{message_type}`; known types: {known}")]
    UnknownType { kind: &'static str, message_type: String, known: String },
    #[error(
        "{kind} `{message_type}` has schema version {version}, newer than this build understands (up to {supported}); upgrade Slipway"
    )]
    FutureVersion { kind: &'static str, message_type: String, version: u32, supported: u32 },
    #[error("{kind} `{message_type}` (schema version {version}) has a bad payload: {reason}")]
    BadPayload { kind: &'static str, message_type: String, version: u32, reason: String },
    #[error("cannot encode {kind} `{message_type}`: {reason}")]
    Encode { kind: &'static str, message_type: String, reason: String },
}

impl Envelope {
    /// Wraps a message. The id and time are passed in (the caller owns the clock).
    pub fn new<M: Message>(
        id: Uuid,
        timestamp: DateTime<Utc>,
        stream: impl Into<String>,
        message: &M,
        meta: Metadata,
    ) -> Result<Self, DecodeError> {
        let message_type = message.message_type();
        // Through `Value`, so the stored text is exactly what serialising the
        // payload's `Value` gives (the form every stored body already has).
        let payload = message.payload().and_then(|v| serde_json::value::to_raw_value(&v)).map_err(|e| DecodeError::Encode {
            kind: M::KIND,
            message_type: message_type.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Envelope {
            id,
            message_type: message_type.to_owned(),
            schema_version: M::current_version(message_type).unwrap_or(1),
            stream: stream.into(),
            causation_id: meta.causation_id,
            correlation_id: meta.correlation_id,
            actor: meta.actor,
            trace: meta.trace,
            timestamp,
            payload,
        })
    }

    /// The payload as a JSON value (parsed from its text on each call).
    pub fn payload_value(&self) -> Value {
        // The text is valid JSON (a `RawValue` cannot hold anything else).
        serde_json::from_str(self.payload.get()).unwrap_or(Value::Null)
    }

    /// Replaces the payload with the text of `value`.
    pub fn set_payload_value(&mut self, value: &Value) {
        // Serialising a `Value` cannot fail (its map keys are strings).
        if let Ok(raw) = serde_json::value::to_raw_value(value) {
            self.payload = raw;
        }
    }

    /// The exact JSON bytes that are stored, hashed and sent.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings, numbers and raw JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed { reason: e.to_string() })
    }

    /// Decodes the payload into a typed message, upgrading old schema
    /// versions first (see `upcast`).
    pub fn decode<M: Message>(&self) -> Result<M, DecodeError> {
        let Some(current) = M::current_version(&self.message_type) else {
            let known: Vec<&str> = M::TYPES.iter().map(|(t, _)| *t).collect();
            return Err(DecodeError::UnknownType { kind: M::KIND, message_type: self.message_type.clone(), known: known.join(", ") });
        };
        if self.schema_version > current {
            return Err(DecodeError::FutureVersion {
                kind: M::KIND,
                message_type: self.message_type.clone(),
                version: self.schema_version,
                supported: current,
            });
        }
        let bad = |reason: String| DecodeError::BadPayload {
            kind: M::KIND,
            message_type: self.message_type.clone(),
            version: self.schema_version,
            reason,
        };
        if self.schema_version == current {
            // The common case: parse the text once, into the payload struct.
            return M::from_raw_payload(&self.message_type, self.payload.get()).map_err(|e| bad(e.to_string()));
        }
        let payload: Value = serde_json::from_str(self.payload.get()).map_err(|e| bad(e.to_string()))?;
        let payload = upcast::to_current(&self.message_type, self.schema_version, current, payload).map_err(bad)?;
        M::from_payload(&self.message_type, payload).map_err(|e| bad(e.to_string()))
    }
}

/// Declares a message family: the enum, its type names and schema versions,
/// and the `Message` impl, from one list so they cannot drift apart.
#[macro_export]
macro_rules! message_family {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $( $(#[$vmeta:meta])* $variant:ident ( $payload:ty ) = $version:literal ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        // Messages are decoded once and moved rarely; boxing variants would
        // only make every match noisier.
        #[allow(clippy::large_enum_variant)]
        pub enum $name { $( $(#[$vmeta])* $variant($payload), )* }

        impl $crate::envelope::Message for $name {
            const KIND: &'static str = $kind;
            const TYPES: &'static [(&'static str, u32)] = &[ $( (stringify!($variant), $version), )* ];
            fn message_type(&self) -> &'static str {
                match self { $( Self::$variant(_) => stringify!($variant), )* }
            }
            fn payload(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self { $( Self::$variant(p) => serde_json::to_value(p), )* }
            }
            fn from_payload(message_type: &str, payload: serde_json::Value) -> Result<Self, serde_json::Error> {
                match message_type {
                    $( stringify!($variant) => serde_json::from_value(payload).map(Self::$variant), )*
                    other => Err(<serde_json::Error as serde::de::Error>::custom(format!("unknown type `{other}`"))),
                }
            }
            fn from_raw_payload(message_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
                match message_type {
                    $( stringify!($variant) => serde_json::from_str(payload).map(Self::$variant), )*
                    other => Err(<serde_json::Error as serde::de::Error>::custom(format!("unknown type `{other}`"))),
                }
            }
        }
    };
}
