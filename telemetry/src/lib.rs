//! Slipway's telemetry: traces, metrics and logs shared by every process.
