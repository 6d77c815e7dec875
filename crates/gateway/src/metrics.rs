//! The gateway's Prometheus metrics, and the per-request ones that `edge` records.
//!
//! Labels come from closed sets only: the route template (`/v1/models/{id}`, or `unmatched`),
//! a model id the llm service reported (else `unknown`, or `none` for routes without a model),
//! and the status class (`2xx`, `4xx`, `5xx`).

mod children;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::response::Response;
use passerelle_telemetry::metrics::{INTER_TOKEN_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use children::{Children, STATUS_CLASSES, status_index};

/// Model label for routes that do not name a model.
const NO_MODEL: &str = "none";
/// Model label for a model the service did not confirm it serves.
pub(crate) const UNKNOWN_MODEL: &str = "unknown";

/// The model a response was for, put in its extensions by generation handlers so the request
/// metrics can carry it. Only ever a model id the service reported, or [`UNKNOWN_MODEL`].
#[derive(Debug, Clone)]
pub(crate) struct ModelLabel(pub String);

/// Handles on the gateway's metrics. Cheap to clone.
#[derive(Clone)]
pub struct GatewayMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    in_flight: IntGauge,
    time_to_first_token: HistogramVec,
    inter_token_latency: HistogramVec,
    prompt_tokens: IntCounterVec,
    completion_tokens: IntCounterVec,
    cache_results: IntCounterVec,
    cache_saved_tokens: IntCounterVec,
    feedback: IntCounterVec,
    satisfaction: Gauge,
    safety_blocked: IntCounterVec,
    safety_unchecked: IntCounterVec,
    fallbacks: IntCounterVec,
    cascades: IntCounterVec,
    /// The children of the families above that every request records.
    children: Children,
}

impl GatewayMetrics {
    /// Creates the gateway's metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        };
        let inner = Inner {
            requests: IntCounterVec::new(
                Opts::new("passerelle_http_requests_total", "HTTP requests answered."),
                &["route", "model", "status"],
            )?,
            request_duration: histogram(
                "passerelle_http_request_duration_seconds",
                "Time from request to the end of the response body (streams included).",
                REQUEST_BUCKETS,
                &["route", "status"],
            )?,
            in_flight: IntGauge::new(
                "passerelle_http_requests_in_flight",
                "HTTP requests being handled or streaming.",
            )?,
            time_to_first_token: histogram(
                "passerelle_time_to_first_token_seconds",
                "Time from request to the first generated token.",
                TTFT_BUCKETS,
                &["model"],
            )?,
            inter_token_latency: histogram(
                "passerelle_inter_token_latency_seconds",
                "Time between consecutive token deliveries of one generation.",
                INTER_TOKEN_BUCKETS,
                &["model"],
            )?,
            prompt_tokens: IntCounterVec::new(
                Opts::new("passerelle_prompt_tokens_total", "Prompt tokens processed."),
                &["model"],
            )?,
            completion_tokens: IntCounterVec::new(
                Opts::new("passerelle_completion_tokens_total", "Tokens generated."),
                &["model"],
            )?,
            cache_results: IntCounterVec::new(
                Opts::new(
                    "passerelle_semantic_cache_requests_total",
                    "Cacheable generation requests by what the semantic cache did with them.",
                ),
                &["result"],
            )?,
            cache_saved_tokens: IntCounterVec::new(
                Opts::new(
                    "passerelle_semantic_cache_saved_tokens_total",
                    "Prompt and completion tokens a cached answer spared the model.",
                ),
                &["model"],
            )?,
            feedback: IntCounterVec::new(
                Opts::new("passerelle_feedback_total", "Ratings received, by rating."),
                &["rating"],
            )?,
            safety_blocked: IntCounterVec::new(
                Opts::new(
                    "passerelle_safety_blocked_total",
                    "Requests refused by the safety filter, by stage, layer and category.",
                ),
                &["stage", "layer", "category"],
            )?,
            safety_unchecked: IntCounterVec::new(
                Opts::new(
                    "passerelle_safety_unchecked_total",
                    "Prompts let through unchecked because the safety service failed and the \
                     failure policy is open, by stage.",
                ),
                &["stage"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "passerelle_route_fallbacks_total",
                    "Requests passed from a failing model to its fallback, by both models.",
                ),
                &["from", "to"],
            )?,
            cascades: IntCounterVec::new(
                Opts::new(
                    "passerelle_cascade_total",
                    "Requests to a cascade, by cascade, outcome (small or escalated) and reason.",
                ),
                &["cascade", "outcome", "reason"],
            )?,
            children: Children::default(),
            satisfaction: Gauge::new(
                "passerelle_feedback_satisfaction_ratio",
                "Share of thumbs-up among the ratings of the last 24 hours, all replicas \
                 together; updated as ratings arrive.",
            )?,
        };
        registry.register(Box::new(inner.requests.clone()))?;
        registry.register(Box::new(inner.request_duration.clone()))?;
        registry.register(Box::new(inner.in_flight.clone()))?;
        registry.register(Box::new(inner.time_to_first_token.clone()))?;
        registry.register(Box::new(inner.inter_token_latency.clone()))?;
        registry.register(Box::new(inner.prompt_tokens.clone()))?;
        registry.register(Box::new(inner.completion_tokens.clone()))?;
        registry.register(Box::new(inner.cache_results.clone()))?;
        registry.register(Box::new(inner.cache_saved_tokens.clone()))?;
        registry.register(Box::new(inner.feedback.clone()))?;
        registry.register(Box::new(inner.satisfaction.clone()))?;
        registry.register(Box::new(inner.safety_blocked.clone()))?;
        registry.register(Box::new(inner.safety_unchecked.clone()))?;
        registry.register(Box::new(inner.fallbacks.clone()))?;
        registry.register(Box::new(inner.cascades.clone()))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub(crate) fn safety_blocked(&self, stage: &str, layer: &str, category: &str) {
        self.inner
            .safety_blocked
            .with_label_values(&[stage, layer, category])
            .inc();
    }

    pub(crate) fn safety_unchecked(&self, stage: &str) {
        self.inner
            .safety_unchecked
            .with_label_values(&[stage])
            .inc();
    }

    /// Both models are names from the routing table or the service's list.
    pub(crate) fn fallback(&self, from: &str, to: &str) {
        self.inner.fallbacks.with_label_values(&[from, to]).inc();
    }

    /// `cascade`: a cascade of the routing table; `outcome`: `small` or `escalated`; `reason`:
    /// one of the cascade policy's reasons.
    pub(crate) fn cascade(&self, cascade: &str, outcome: &str, reason: &str) {
        self.inner
            .cascades
            .with_label_values(&[cascade, outcome, reason])
            .inc();
    }

    /// `rating`: `up` or `down`.
    pub(crate) fn feedback(&self, rating: &'static str) {
        self.inner.feedback.with_label_values(&[rating]).inc();
    }

    pub(crate) fn satisfaction(&self, ratio: f64) {
        self.inner.satisfaction.set(ratio);
    }

    /// `result`: `hit`, `miss` or `error`.
    pub(crate) fn cache_result(&self, result: &'static str) {
        self.inner.cache_results.with_label_values(&[result]).inc();
    }

    pub(crate) fn cache_saved_tokens(&self, model: &str, tokens: u32) {
        self.inner
            .cache_saved_tokens
            .with_label_values(&[model])
            .inc_by(u64::from(tokens));
    }

    pub(crate) fn prompt_tokens(&self, model: &str, tokens: u32) {
        let inner = &self.inner;
        let kept = inner.children.models.get(model);
        with_child(
            kept.map(|children| &children.prompt_tokens),
            || inner.prompt_tokens.with_label_values(&[model]),
            |counter| counter.inc_by(u64::from(tokens)),
        );
    }

    pub(crate) fn completion_tokens(&self, model: &str, tokens: u32) {
        let inner = &self.inner;
        let kept = inner.children.models.get(model);
        with_child(
            kept.map(|children| &children.completion_tokens),
            || inner.completion_tokens.with_label_values(&[model]),
            |counter| counter.inc_by(u64::from(tokens)),
        );
    }

    pub(crate) fn time_to_first_token(&self, model: &str, elapsed: Duration) {
        let inner = &self.inner;
        let kept = inner.children.models.get(model);
        with_child(
            kept.map(|children| &children.time_to_first_token),
            || inner.time_to_first_token.with_label_values(&[model]),
            |histogram| histogram.observe(elapsed.as_secs_f64()),
        );
    }

    pub(crate) fn inter_token_latency(&self, model: &str, elapsed: Duration) {
        let inner = &self.inner;
        let kept = inner.children.models.get(model);
        with_child(
            kept.map(|children| &children.inter_token_latency),
            || inner.inter_token_latency.with_label_values(&[model]),
            |histogram| histogram.observe(elapsed.as_secs_f64()),
        );
    }
}

/// Runs `use_child` on a family's child: the one kept in `kept` (made by `make` the first
/// time), or, where none is kept, one looked up by `make`.
fn with_child<M>(kept: Option<&OnceLock<M>>, make: impl FnOnce() -> M, use_child: impl FnOnce(&M)) {
    match kept {
        Some(cell) => use_child(cell.get_or_init(make)),
        None => use_child(&make()),
    }
}

/// A request's metrics once its response head is ready: counted (by route, model and status
/// class) at once, timed until the body ends or is dropped (the client went away mid-stream).
pub(crate) struct RequestTimer {
    duration: Histogram,
    started: Instant,
    _in_flight: InFlight,
}

impl RequestTimer {
    /// `route` is the route template, or `unmatched`.
    pub(crate) fn start(
        metrics: &GatewayMetrics,
        route: &str,
        response: &Response,
        started: Instant,
        in_flight: InFlight,
    ) -> Self {
        let class = status_index(response.status().as_u16());
        let status = STATUS_CLASSES[class];
        let model = response
            .extensions()
            .get::<ModelLabel>()
            .map_or(NO_MODEL, |label| label.0.as_str());
        let inner = &metrics.inner;
        let kept = inner.children.routes.get(route);
        with_child(
            kept.and_then(|children| children.requests.get(model))
                .map(|by_status| &by_status[class]),
            || inner.requests.with_label_values(&[route, model, status]),
            IntCounter::inc,
        );
        let make_duration = || inner.request_duration.with_label_values(&[route, status]);
        let duration = match kept {
            Some(children) => children.duration[class].get_or_init(make_duration).clone(),
            None => make_duration(),
        };
        Self {
            duration,
            started,
            _in_flight: in_flight,
        }
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// Holds the in-flight gauge up while a request is handled or its body is streaming.
pub(crate) struct InFlight(GatewayMetrics);

impl InFlight {
    pub(crate) fn enter(metrics: &GatewayMetrics) -> Self {
        metrics.inner.in_flight.inc();
        Self(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn registers_every_metric_once() {
        let registry = Registry::new();
        let metrics = GatewayMetrics::register(&registry).unwrap();
        metrics.prompt_tokens("m", 3);
        metrics.completion_tokens("m", 4);
        metrics.time_to_first_token("m", Duration::from_millis(20));
        metrics.inter_token_latency("m", Duration::from_millis(20));
        let text = passerelle_telemetry::metrics::encode_text(&registry);
        for name in [
            "passerelle_prompt_tokens_total{model=\"m\"} 3",
            "passerelle_completion_tokens_total{model=\"m\"} 4",
            "passerelle_time_to_first_token_seconds_bucket",
            "passerelle_inter_token_latency_seconds_bucket",
            "passerelle_http_requests_in_flight 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(
            GatewayMetrics::register(&registry).is_err(),
            "double registration must fail"
        );
    }

    #[test]
    fn kept_children_count_the_same_series_as_lookups() {
        let registry = Registry::new();
        let metrics = GatewayMetrics::register(&registry).unwrap();
        let response = |status: u16, model: Option<&str>| {
            let mut response = Response::new(axum::body::Body::empty());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(model) = model {
                response
                    .extensions_mut()
                    .insert(ModelLabel(model.to_owned()));
            }
            response
        };
        let record = |route: &str, response: &Response| {
            let in_flight = InFlight::enter(&metrics);
            drop(RequestTimer::start(
                &metrics,
                route,
                response,
                Instant::now(),
                in_flight,
            ));
        };
        for _ in 0..2 {
            record("/v1/chat/completions", &response(200, Some("m")));
            record("/v1/chat/completions", &response(429, Some("m")));
            record("/v1/models", &response(200, None));
            metrics.prompt_tokens("m", 3);
        }
        // More models than a route keeps: counted by lookup, in the same series.
        for n in 0..40 {
            record("/v1/completions", &response(200, Some(&format!("x{n}"))));
            metrics.completion_tokens(&format!("x{n}"), 1);
        }
        let text = passerelle_telemetry::metrics::encode_text(&registry);
        for line in [
            "passerelle_http_requests_total{model=\"m\",route=\"/v1/chat/completions\",status=\"2xx\"} 2",
            "passerelle_http_requests_total{model=\"m\",route=\"/v1/chat/completions\",status=\"4xx\"} 2",
            "passerelle_http_requests_total{model=\"none\",route=\"/v1/models\",status=\"2xx\"} 2",
            "passerelle_http_requests_total{model=\"x39\",route=\"/v1/completions\",status=\"2xx\"} 1",
            "passerelle_http_request_duration_seconds_count{route=\"/v1/chat/completions\",status=\"4xx\"} 2",
            "passerelle_prompt_tokens_total{model=\"m\"} 6",
            "passerelle_completion_tokens_total{model=\"x39\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Children are made when first used, as lookups made them.
        assert!(!text.contains("passerelle_http_requests_total{model=\"m\",route=\"/v1/chat/completions\",status=\"5xx\"}"));
        assert!(!text.contains("passerelle_time_to_first_token_seconds_count{model=\"m\"}"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
    }
}
