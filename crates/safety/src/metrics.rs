//! The service's Prometheus metrics, registered on the registry it is given. Every label comes
//! from a closed set: stages, layers, verdicts, the categories of the configured rules, PII
//! kinds and RPC names.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::verdict::{Stage, Verdict};

/// Check latency buckets, in seconds: microseconds for the rules and PII layers, up to
/// seconds for the model layers to come.
const CHECK_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone)]
pub(crate) struct SafetyMetrics {
    checks: IntCounterVec,
    violations: IntCounterVec,
    pii: IntCounterVec,
    invalid: IntCounterVec,
    seconds: HistogramVec,
}

impl SafetyMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            checks: IntCounterVec::new(
                Opts::new(
                    "passerelle_safety_checks_total",
                    "Checks by stage, deciding layer (none when safe) and verdict.",
                ),
                &["stage", "layer", "verdict"],
            )?,
            violations: IntCounterVec::new(
                Opts::new(
                    "passerelle_safety_violations_total",
                    "Unsafe verdicts by stage, layer and category.",
                ),
                &["stage", "layer", "category"],
            )?,
            pii: IntCounterVec::new(
                Opts::new(
                    "passerelle_safety_pii_found_total",
                    "Pieces of personal data found, by kind and RPC (check or redact).",
                ),
                &["rpc", "kind"],
            )?,
            invalid: IntCounterVec::new(
                Opts::new(
                    "passerelle_safety_invalid_requests_total",
                    "Requests refused as malformed, by RPC.",
                ),
                &["rpc"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "passerelle_safety_check_seconds",
                    "Time to check one conversation, by stage.",
                )
                .buckets(CHECK_BUCKETS.to_vec()),
                &["stage"],
            )?,
        };
        registry.register(Box::new(metrics.checks.clone()))?;
        registry.register(Box::new(metrics.violations.clone()))?;
        registry.register(Box::new(metrics.pii.clone()))?;
        registry.register(Box::new(metrics.invalid.clone()))?;
        registry.register(Box::new(metrics.seconds.clone()))?;
        Ok(metrics)
    }

    pub fn check(&self, stage: Stage, verdict: &Verdict, took: Duration) {
        let layer = verdict.layer().map_or("none", |layer| layer.label());
        self.checks
            .with_label_values(&[stage.label(), layer, verdict.label()])
            .inc();
        self.seconds
            .with_label_values(&[stage.label()])
            .observe(took.as_secs_f64());
        match verdict {
            Verdict::Safe => {}
            Verdict::Unsafe { violation, .. } => self
                .violations
                .with_label_values(&[stage.label(), layer, &violation.category])
                .inc(),
            Verdict::Redacted { redaction, .. } => {
                for found in &redaction.found {
                    self.pii_found("check", found.kind);
                }
            }
        }
    }

    pub fn pii_found(&self, rpc: &str, kind: passerelle_pii::PiiKind) {
        self.pii.with_label_values(&[rpc, kind.name()]).inc();
    }

    pub fn invalid(&self, rpc: &str) {
        self.invalid.with_label_values(&[rpc]).inc();
    }
}
