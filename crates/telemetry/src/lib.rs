//! Observability shared by every Passerelle binary and service.
//!
//! - [`init`] installs the `tracing` subscriber once per process: text or JSON logs, plus an
//!   OpenTelemetry layer exporting spans over OTLP when an endpoint is configured. Keep the
//!   returned [`TelemetryGuard`] alive; dropping it flushes pending spans.
//! - [`propagation`] carries W3C trace context across gRPC hops: injected into request metadata by
//!   clients, read back by servers, so one request is one trace across gateway and services.
//! - [`metrics`] holds the Prometheus metric names and the text encoder behind `/metrics`.

pub mod metrics;
pub mod propagation;
mod subscriber;

pub use subscriber::{LogFormat, TelemetryConfig, TelemetryError, TelemetryGuard, init};
