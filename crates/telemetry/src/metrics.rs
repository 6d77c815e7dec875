//! Prometheus metric names and the text exposition used by `/metrics`.
//!
//! Every metric is prefixed `passerelle_`; label values come from closed sets (route templates,
//! known model ids, status classes), never from raw paths or user input.

use prometheus::{Encoder as _, Registry, TextEncoder};

/// Latency buckets for time to first token, in seconds (vLLM's, extended for CPU serving).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

/// Latency buckets between consecutive tokens, in seconds (vLLM's).
pub const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Whole-request latency buckets, in seconds.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Renders every metric in `registry` in the Prometheus text format.
pub fn encode_text(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec cannot fail on I/O; a metric family with inconsistent data would be a
    // bug in our registration, which the encoder reports by skipping it.
    if let Err(err) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        tracing::error!(error = %err, "encoding metrics failed");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// The `Content-Type` of [`encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_strictly_increasing() {
        for buckets in [TTFT_BUCKETS, INTER_TOKEN_BUCKETS, REQUEST_BUCKETS] {
            assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[test]
    fn registered_counters_appear_in_the_text() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("passerelle_test_total", "test").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        assert!(encode_text(&registry).contains("passerelle_test_total 1"));
    }
}
