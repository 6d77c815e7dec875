//! The document store's Prometheus metrics, registered on the service's registry.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// Retrieval latency buckets, in seconds: embedding one query and scanning a namespace takes
/// milliseconds; a busy engine queue adds more.
const RETRIEVAL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone)]
pub(crate) struct DocumentMetrics {
    ingested: IntCounter,
    chunks_ingested: IntCounter,
    documents: IntGauge,
    chunks: IntGauge,
    retrieval_seconds: Histogram,
}

impl DocumentMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            ingested: IntCounter::new(
                "passerelle_documents_ingested_total",
                "Documents chunked, embedded and stored (replacements included).",
            )?,
            chunks_ingested: IntCounter::new(
                "passerelle_document_chunks_ingested_total",
                "Chunks embedded and stored by document ingestion.",
            )?,
            documents: IntGauge::new(
                "passerelle_documents",
                "Documents stored, all namespaces together.",
            )?,
            chunks: IntGauge::new(
                "passerelle_document_chunks",
                "Chunks stored, all namespaces together.",
            )?,
            retrieval_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "passerelle_documents_retrieval_seconds",
                    "Time to answer a Retrieve: embedding the query and scoring the namespace's chunks.",
                )
                .buckets(RETRIEVAL_BUCKETS.to_vec()),
            )?,
        };
        registry.register(Box::new(metrics.ingested.clone()))?;
        registry.register(Box::new(metrics.chunks_ingested.clone()))?;
        registry.register(Box::new(metrics.documents.clone()))?;
        registry.register(Box::new(metrics.chunks.clone()))?;
        registry.register(Box::new(metrics.retrieval_seconds.clone()))?;
        Ok(metrics)
    }

    pub fn ingested(&self, chunks: usize) {
        self.ingested.inc();
        self.chunks_ingested.inc_by(chunks as u64);
    }

    /// Brings the gauges up to date after a change.
    pub fn stored(&self, documents: usize, chunks: usize) {
        self.documents
            .set(i64::try_from(documents).unwrap_or(i64::MAX));
        self.chunks.set(i64::try_from(chunks).unwrap_or(i64::MAX));
    }

    pub fn retrieved(&self, elapsed: Duration) {
        self.retrieval_seconds.observe(elapsed.as_secs_f64());
    }
}
