//! The semantic cache's Prometheus metrics, registered on the service's registry.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use super::semantic::Evictions;

/// Similarity buckets: coarse below the usual thresholds, fine around them (0.9 to 1), where
/// an operator tunes `min_similarity`.
const SIMILARITY_BUCKETS: &[f64] = &[
    0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0,
];

/// How a lookup ended, the closed label set of `passerelle_semantic_cache_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    HitExact,
    HitSemantic,
    Miss,
}

impl LookupResult {
    const ALL: [Self; 3] = [Self::HitExact, Self::HitSemantic, Self::Miss];

    fn label(self) -> &'static str {
        match self {
            Self::HitExact => "hit_exact",
            Self::HitSemantic => "hit_semantic",
            Self::Miss => "miss",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CacheMetrics {
    lookups: IntCounterVec,
    entries: IntGauge,
    evictions: IntCounterVec,
    similarity: Histogram,
}

impl CacheMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            lookups: IntCounterVec::new(
                Opts::new(
                    "passerelle_semantic_cache_lookups_total",
                    "Semantic cache lookups by result.",
                ),
                &["result"],
            )?,
            entries: IntGauge::new(
                "passerelle_semantic_cache_entries",
                "Entries in the semantic cache, all namespaces together.",
            )?,
            evictions: IntCounterVec::new(
                Opts::new(
                    "passerelle_semantic_cache_evictions_total",
                    "Entries removed by a bound: ttl (expired) or capacity (least recently used).",
                ),
                &["reason"],
            )?,
            similarity: Histogram::with_opts(
                HistogramOpts::new(
                    "passerelle_semantic_cache_similarity",
                    "Cosine similarity of the best entry on each lookup that found one (1 for exact matches).",
                )
                .buckets(SIMILARITY_BUCKETS.to_vec()),
            )?,
        };
        registry.register(Box::new(metrics.lookups.clone()))?;
        registry.register(Box::new(metrics.entries.clone()))?;
        registry.register(Box::new(metrics.evictions.clone()))?;
        registry.register(Box::new(metrics.similarity.clone()))?;
        // Every label is exported from the start, at zero, so rates work before the first one.
        for result in LookupResult::ALL {
            metrics.lookups.with_label_values(&[result.label()]);
        }
        for reason in ["ttl", "capacity"] {
            metrics.evictions.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    pub fn lookup(&self, result: LookupResult, best_similarity: Option<f32>) {
        self.lookups.with_label_values(&[result.label()]).inc();
        if let Some(similarity) = best_similarity {
            self.similarity.observe(f64::from(similarity));
        }
    }

    /// Brings the entry gauge and eviction counters up to date after a cache call.
    pub fn after(&self, entries: usize, evictions: Evictions) {
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.evictions
            .with_label_values(&["ttl"])
            .inc_by(evictions.ttl);
        self.evictions
            .with_label_values(&["capacity"])
            .inc_by(evictions.capacity);
    }
}
