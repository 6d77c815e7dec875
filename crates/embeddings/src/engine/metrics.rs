//! The engine's Prometheus metrics, registered on the registry the service is given.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Forward-pass latency buckets, in seconds: a few milliseconds for one short text up to
/// seconds for a full batch of long ones on a small CPU.
const BATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How a request ended, the closed label set of `passerelle_embeddings_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused as malformed, or naming a model not served here.
    Invalid,
    /// Refused for load or lifecycle: queue full, model loading or failed, engine stopped.
    Unavailable,
    /// The caller went away before its vectors were delivered.
    Cancelled,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Self::Ok,
        Self::Invalid,
        Self::Unavailable,
        Self::Cancelled,
        Self::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

/// Counters read back by [`crate::EmbeddingHandle::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub requests_ok: u64,
    pub requests_invalid: u64,
    pub requests_unavailable: u64,
    pub requests_cancelled: u64,
    pub requests_error: u64,
    pub inputs: u64,
    pub tokens: u64,
    /// Forward passes run, warm-up excluded.
    pub batches: u64,
    pub queue_depth: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct EngineMetrics {
    requests: IntCounterVec,
    pub inputs: IntCounter,
    pub tokens: IntCounter,
    pub batch_seconds: Histogram,
    pub queue_depth: IntGauge,
}

impl EngineMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "passerelle_embeddings_requests_total",
                    "Embedding requests by how they ended.",
                ),
                &["outcome"],
            )?,
            inputs: IntCounter::new("passerelle_embeddings_inputs_total", "Texts embedded.")?,
            tokens: IntCounter::new(
                "passerelle_embeddings_tokens_total",
                "Tokens run through the model, special tokens included, after truncation.",
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "passerelle_embeddings_batch_seconds",
                    "Duration of one forward pass over a batch of texts.",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )?,
            queue_depth: IntGauge::new(
                "passerelle_embeddings_queue_depth",
                "Requests waiting for the engine.",
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.inputs.clone()))?;
        registry.register(Box::new(metrics.tokens.clone()))?;
        registry.register(Box::new(metrics.batch_seconds.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        // Every outcome is exported from the start, at zero, so rates work before the first one.
        for outcome in Outcome::ALL {
            metrics.requests.with_label_values(&[outcome.label()]);
        }
        Ok(metrics)
    }

    pub fn finished(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }

    pub fn stats(&self) -> EngineStats {
        let count = |outcome: Outcome| self.requests.with_label_values(&[outcome.label()]).get();
        EngineStats {
            requests_ok: count(Outcome::Ok),
            requests_invalid: count(Outcome::Invalid),
            requests_unavailable: count(Outcome::Unavailable),
            requests_cancelled: count(Outcome::Cancelled),
            requests_error: count(Outcome::Error),
            inputs: self.inputs.get(),
            tokens: self.tokens.get(),
            batches: self.batch_seconds.get_sample_count(),
            queue_depth: self.queue_depth.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_per_registry_and_exports_every_outcome() {
        let registry = Registry::new();
        let metrics = EngineMetrics::register(&registry).unwrap();
        metrics.finished(Outcome::Cancelled);
        assert_eq!(metrics.stats().requests_cancelled, 1);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        for name in [
            "passerelle_embeddings_requests_total",
            "passerelle_embeddings_inputs_total",
            "passerelle_embeddings_tokens_total",
            "passerelle_embeddings_batch_seconds",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let outcomes = registry
            .gather()
            .into_iter()
            .find(|family| family.name() == "passerelle_embeddings_requests_total")
            .unwrap();
        assert_eq!(outcomes.get_metric().len(), Outcome::ALL.len());
        assert!(
            EngineMetrics::register(&registry).is_err(),
            "a second engine needs its own registry"
        );
    }
}
