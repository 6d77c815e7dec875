//! Drift in what users ask. The gateway embeds a sample of incoming prompts and compares the
//! most recent window of them with a baseline window, dimension by dimension, with the
//! two-sample Kolmogorov-Smirnov test. The share of dimensions whose test rejects "same
//! distribution" is the drift score: about `alpha` while traffic looks like the baseline, near 1
//! once it has moved. `/admin/drift` reports it and `passerelle_embedding_drift_score` exports
//! it for the alert rule in deploy/prometheus/alerts.yml.

mod ks;
mod windows;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use passerelle_proto::embeddings::EmbedRequest;
use passerelle_proto::llm::{GenerateRequest, prompt};
use prometheus::{Gauge, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::embeddings::EmbeddingsBackend;
use windows::{Comparison, Phase, Windows};

/// Prompts embedded for drift at once; past it a sampled prompt is skipped rather than queued,
/// so drift never competes with requests for the embeddings service.
const MAX_IN_FLIGHT: usize = 4;

/// How drift is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// Share of prompts embedded for drift, 0 to 1. Default 0.2.
    pub sample_rate: f64,
    /// Samples in the baseline and in the recent window. Default 500.
    pub window: usize,
    /// Recent samples needed before drift is reported. Default 100.
    pub min_recent: usize,
    /// Significance level of each dimension's test. Default 0.01.
    pub alpha: f64,
    /// Drift score above which the report says `drifting` (the alert rule uses the same
    /// value). Default 0.25.
    pub threshold: f64,
    /// Embedding model; the embeddings service's default when empty. Default empty.
    pub model: String,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            sample_rate: 0.2,
            window: 500,
            min_recent: 100,
            alpha: 0.01,
            threshold: 0.25,
            model: String::new(),
        }
    }
}

/// The drift report of `/admin/drift`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    object: &'static str,
    status: Phase,
    test: &'static str,
    alpha: f64,
    threshold: f64,
    sample_rate: f64,
    window: usize,
    baseline_samples: usize,
    recent_samples: usize,
    /// Prompts embedded for drift since the gateway started.
    samples_total: u64,
    /// Share of dimensions that moved; absent until both windows are ready.
    drift_score: Option<f64>,
    drifting: bool,
    #[serde(flatten)]
    comparison: Option<Comparison>,
}

/// The sampler, the windows and the gauges. Cheap to clone.
#[derive(Clone)]
pub(crate) struct DriftMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    config: DriftConfig,
    backend: EmbeddingsBackend,
    windows: Mutex<Windows>,
    in_flight: Arc<Semaphore>,
    pushes_since_update: AtomicUsize,
    samples_total: AtomicU64,
    metrics: DriftMetrics,
}

impl DriftMonitor {
    pub(crate) fn new(
        config: DriftConfig,
        backend: EmbeddingsBackend,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                windows: Mutex::new(Windows::new(config.window)),
                config,
                backend,
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                pushes_since_update: AtomicUsize::new(0),
                samples_total: AtomicU64::new(0),
                metrics: DriftMetrics::register(registry)?,
            }),
        })
    }

    /// Samples a request's prompt: embeds it in the background and adds it to the windows. Never
    /// delays or fails the request.
    pub(crate) fn observe(&self, request: &GenerateRequest) {
        let config = &self.inner.config;
        if config.sample_rate <= 0.0 || rand::random::<f64>() >= config.sample_rate {
            return;
        }
        let Some(text) = request
            .prompt
            .as_ref()
            .and_then(|p| p.kind.as_ref())
            .and_then(latest_prompt)
        else {
            return;
        };
        let Ok(permit) = self.inner.in_flight.clone().try_acquire_owned() else {
            self.inner
                .metrics
                .skipped
                .with_label_values(&["busy"])
                .inc();
            return;
        };
        let monitor = self.clone();
        tokio::spawn(async move {
            monitor.embed_and_push(text).await;
            drop(permit);
        });
    }

    async fn embed_and_push(&self, text: String) {
        let request = EmbedRequest {
            model: self.inner.config.model.clone(),
            inputs: vec![text],
            normalize: true,
            dimensions: None,
            request_id: String::new(),
            ..EmbedRequest::default()
        };
        let embedding = match self.inner.backend.embed(request).await {
            Ok(response) => response.embeddings.into_iter().next(),
            Err(err) => {
                tracing::debug!(error = %err, "drift sample not embedded");
                None
            }
        };
        let Some(embedding) = embedding else {
            self.inner
                .metrics
                .skipped
                .with_label_values(&["error"])
                .inc();
            return;
        };
        self.lock().push(embedding.values);
        self.inner.samples_total.fetch_add(1, Ordering::Relaxed);
        // Re-testing after every sample would cost a sort per dimension each time; every
        // twentieth of a window keeps the gauge fresh at a twentieth of the cost.
        let every = (self.inner.config.window / 20).max(1);
        if self
            .inner
            .pushes_since_update
            .fetch_add(1, Ordering::Relaxed)
            + 1
            >= every
        {
            self.inner.pushes_since_update.store(0, Ordering::Relaxed);
            let monitor = self.clone();
            // Sorting every dimension of two windows is CPU work: keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || monitor.report()).await;
        }
    }

    /// Compares the windows now, updates the gauges and reports.
    pub(crate) fn report(&self) -> DriftReport {
        let config = &self.inner.config;
        let (phase, baseline_samples, recent_samples, columns) = {
            let windows = self.lock();
            let phase = windows.phase(config.min_recent);
            let columns = (phase == Phase::Comparing).then(|| windows.columns());
            (phase, windows.baseline_len(), windows.recent_len(), columns)
        };
        let comparison =
            columns.map(|(baseline, recent)| windows::compare(&baseline, &recent, config.alpha));
        let drift_score = comparison.map(|c| c.rejected_share);
        self.inner
            .metrics
            .update(baseline_samples, recent_samples, comparison);
        DriftReport {
            object: "drift.report",
            status: phase,
            test: "kolmogorov_smirnov_two_sample_per_dimension",
            alpha: config.alpha,
            threshold: config.threshold,
            sample_rate: config.sample_rate,
            window: config.window,
            baseline_samples,
            recent_samples,
            samples_total: self.inner.samples_total.load(Ordering::Relaxed),
            drift_score,
            drifting: drift_score.is_some_and(|score| score > config.threshold),
            comparison,
        }
    }

    /// Accepts today's traffic as normal: the recent window becomes the baseline.
    pub(crate) fn rebase(&self) -> DriftReport {
        let samples = self.lock().rebase();
        tracing::info!(samples, "drift baseline replaced by the recent window");
        self.report()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // A panic while pushing leaves the windows consistent (push is all-or-nothing).
        self.inner
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The text a request adds: its last user message, or the whole text of a completion.
/// The conversation's earlier turns were sampled when they were new.
fn latest_prompt(kind: &prompt::Kind) -> Option<String> {
    let text = match kind {
        prompt::Kind::Text(text) => text.as_str(),
        prompt::Kind::Chat(chat) => chat
            .messages
            .iter()
            .rev()
            .find(|message| message.role == "user")?
            .content
            .as_str(),
        prompt::Kind::Tokens(_) => return None,
    };
    (!text.trim().is_empty()).then(|| text.to_owned())
}

#[derive(Clone)]
struct DriftMetrics {
    score: Gauge,
    mean_ks: Gauge,
    samples: IntGaugeVec,
    skipped: IntCounterVec,
}

impl DriftMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            score: Gauge::new(
                "passerelle_embedding_drift_score",
                "Share of prompt-embedding dimensions whose KS test against the baseline rejects at alpha (0 until both windows are ready)",
            )?,
            mean_ks: Gauge::new(
                "passerelle_embedding_drift_mean_ks",
                "Mean per-dimension KS statistic between the recent and baseline prompt embeddings",
            )?,
            samples: IntGaugeVec::new(
                Opts::new(
                    "passerelle_embedding_drift_samples",
                    "Prompt embeddings held for drift, by window",
                ),
                &["window"],
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "passerelle_embedding_drift_skipped_total",
                    "Sampled prompts not embedded for drift, by reason (busy, error)",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(metrics.score.clone()))?;
        registry.register(Box::new(metrics.mean_ks.clone()))?;
        registry.register(Box::new(metrics.samples.clone()))?;
        registry.register(Box::new(metrics.skipped.clone()))?;
        Ok(metrics)
    }

    fn update(&self, baseline: usize, recent: usize, comparison: Option<Comparison>) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.samples
            .with_label_values(&["baseline"])
            .set(gauge(baseline));
        self.samples
            .with_label_values(&["recent"])
            .set(gauge(recent));
        self.score.set(comparison.map_or(0.0, |c| c.rejected_share));
        self.mean_ks.set(comparison.map_or(0.0, |c| c.mean_ks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_rule_uses_this_metric_and_the_default_threshold() {
        let rules = include_str!("../../../../deploy/prometheus/alerts.yml");
        let expr = format!(
            "expr: passerelle_embedding_drift_score > {}",
            DriftConfig::default().threshold
        );
        assert!(rules.contains(&expr), "alerts.yml lacks `{expr}`");
    }

    #[test]
    fn the_latest_user_message_is_sampled() {
        use passerelle_proto::common::ChatMessage;
        use passerelle_proto::llm::ChatPrompt;
        let message = |role: &str, content: &str| ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
            ..ChatMessage::default()
        };
        let chat = prompt::Kind::Chat(ChatPrompt {
            messages: vec![
                message("system", "be brief"),
                message("user", "first"),
                message("assistant", "answer"),
                message("user", "second"),
            ],
            ..ChatPrompt::default()
        });
        assert_eq!(latest_prompt(&chat).as_deref(), Some("second"));
        assert_eq!(latest_prompt(&prompt::Kind::Text("  ".to_owned())), None);
    }
}
