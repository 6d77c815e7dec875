//! The engine's Prometheus metrics, registered on the registry the service is given.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// How a request ended, the closed label set of `passerelle_llm_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stop,
    Length,
    Cancelled,
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [Self::Stop, Self::Length, Self::Cancelled, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

/// Counters read back by [`crate::EngineHandle::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub requests_stop: u64,
    pub requests_length: u64,
    pub requests_cancelled: u64,
    pub requests_error: u64,
    pub queue_depth: i64,
    pub active_requests: i64,
    /// Choices decoding or prefilling now.
    pub running_sequences: i64,
    /// KV blocks reserved by running requests.
    pub kv_blocks_used: i64,
    /// KV blocks the prefix cache holds.
    pub kv_blocks_cached: i64,
    /// Requests that started from a cached prefix.
    pub prefix_cache_hits: u64,
    /// Prompt tokens those requests did not compute.
    pub prefix_cache_tokens: u64,
    /// Requests refused after waiting too long for room.
    pub overloaded: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct EngineMetrics {
    pub generated_tokens: IntCounter,
    pub prompt_tokens: IntCounter,
    requests: IntCounterVec,
    pub queue_depth: IntGauge,
    pub active_requests: IntGauge,
    pub running_sequences: IntGauge,
    pub kv_blocks_used: IntGauge,
    pub kv_blocks_cached: IntGauge,
    pub kv_blocks_total: IntGauge,
    pub prefix_cache_hits: IntCounter,
    pub prefix_cache_tokens: IntCounter,
    pub overloaded: IntCounter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
}

impl EngineMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            generated_tokens: IntCounter::new(
                "passerelle_llm_generated_tokens_total",
                "Tokens sampled by the engine.",
            )?,
            prompt_tokens: IntCounter::new(
                "passerelle_llm_prompt_tokens_total",
                "Prompt tokens computed by the engine (not those reused from the prefix cache).",
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "passerelle_llm_requests_total",
                    "Generation requests by how they ended.",
                ),
                &["outcome"],
            )?,
            queue_depth: IntGauge::new(
                "passerelle_llm_queue_depth",
                "Requests waiting to be admitted into the running batch.",
            )?,
            active_requests: IntGauge::new(
                "passerelle_llm_active_requests",
                "Requests the engine is generating.",
            )?,
            running_sequences: IntGauge::new(
                "passerelle_llm_running_sequences",
                "Sequences (choices) in the running batch.",
            )?,
            kv_blocks_used: IntGauge::new(
                "passerelle_llm_kv_blocks_used",
                "KV cache blocks reserved by running sequences.",
            )?,
            kv_blocks_cached: IntGauge::new(
                "passerelle_llm_kv_blocks_cached",
                "KV cache blocks held by the prefix cache.",
            )?,
            kv_blocks_total: IntGauge::new(
                "passerelle_llm_kv_blocks_total",
                "KV cache blocks in the budget (16 tokens each).",
            )?,
            prefix_cache_hits: IntCounter::new(
                "passerelle_llm_prefix_cache_hits_total",
                "Requests that started from a cached prompt prefix.",
            )?,
            prefix_cache_tokens: IntCounter::new(
                "passerelle_llm_prefix_cache_tokens_total",
                "Prompt tokens reused from the prefix cache instead of computed.",
            )?,
            overloaded: IntCounter::new(
                "passerelle_llm_overloaded_total",
                "Requests refused after waiting too long for room in the batch.",
            )?,
            time_to_first_token: Histogram::with_opts(
                HistogramOpts::new(
                    "passerelle_llm_time_to_first_token_seconds",
                    "From admission to the first sampled token.",
                )
                .buckets(passerelle_telemetry::metrics::TTFT_BUCKETS.to_vec()),
            )?,
            inter_token_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "passerelle_llm_inter_token_latency_seconds",
                    "Between consecutive sampled tokens of one request.",
                )
                .buckets(passerelle_telemetry::metrics::INTER_TOKEN_BUCKETS.to_vec()),
            )?,
        };
        registry.register(Box::new(metrics.generated_tokens.clone()))?;
        registry.register(Box::new(metrics.prompt_tokens.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.active_requests.clone()))?;
        registry.register(Box::new(metrics.running_sequences.clone()))?;
        registry.register(Box::new(metrics.kv_blocks_used.clone()))?;
        registry.register(Box::new(metrics.kv_blocks_cached.clone()))?;
        registry.register(Box::new(metrics.kv_blocks_total.clone()))?;
        registry.register(Box::new(metrics.prefix_cache_hits.clone()))?;
        registry.register(Box::new(metrics.prefix_cache_tokens.clone()))?;
        registry.register(Box::new(metrics.overloaded.clone()))?;
        registry.register(Box::new(metrics.time_to_first_token.clone()))?;
        registry.register(Box::new(metrics.inter_token_latency.clone()))?;
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
            generated_tokens: self.generated_tokens.get(),
            prompt_tokens: self.prompt_tokens.get(),
            requests_stop: count(Outcome::Stop),
            requests_length: count(Outcome::Length),
            requests_cancelled: count(Outcome::Cancelled),
            requests_error: count(Outcome::Error),
            queue_depth: self.queue_depth.get(),
            active_requests: self.active_requests.get(),
            running_sequences: self.running_sequences.get(),
            kv_blocks_used: self.kv_blocks_used.get(),
            kv_blocks_cached: self.kv_blocks_cached.get(),
            prefix_cache_hits: self.prefix_cache_hits.get(),
            prefix_cache_tokens: self.prefix_cache_tokens.get(),
            overloaded: self.overloaded.get(),
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
        let text = passerelle_telemetry::metrics::encode_text(&registry);
        assert!(
            text.contains(r#"passerelle_llm_requests_total{outcome="length"} 0"#),
            "{text}"
        );
        assert!(
            EngineMetrics::register(&registry).is_err(),
            "a second engine needs its own registry"
        );
    }
}
