//! Whether the shared backend answers, what that is exported as, and how often it is said in the
//! logs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::time::Instant;

use super::{FailurePolicy, RefusalReason};

/// While the backend stays down, one warning per this interval, not one per request.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The limiter's Prometheus metrics.
#[derive(Debug)]
pub(crate) struct LimiterMetrics {
    refused: IntCounterVec,
    backend_errors: IntCounter,
    backend_up: IntGauge,
    fail_open: IntCounter,
}

impl LimiterMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            refused: IntCounterVec::new(
                Opts::new(
                    "passerelle_ratelimit_refused_total",
                    "Requests refused by the rate limiter, by the limit that refused them.",
                ),
                &["reason"],
            )?,
            backend_errors: IntCounter::new(
                "passerelle_ratelimit_backend_errors_total",
                "Rate-limit backend calls that failed or timed out.",
            )?,
            backend_up: IntGauge::new(
                "passerelle_ratelimit_backend_up",
                "1 when the last call to the rate-limit backend succeeded, else 0.",
            )?,
            fail_open: IntCounter::new(
                "passerelle_ratelimit_fail_open_total",
                "Requests admitted unchecked because the rate-limit backend was unreachable.",
            )?,
        };
        registry.register(Box::new(metrics.refused.clone()))?;
        registry.register(Box::new(metrics.backend_errors.clone()))?;
        registry.register(Box::new(metrics.backend_up.clone()))?;
        registry.register(Box::new(metrics.fail_open.clone()))?;
        // Every reason shows from the start, so dashboards and alerts see zeros, not gaps.
        for reason in RefusalReason::ALL {
            metrics.refused.with_label_values(&[reason.as_str()]);
        }
        metrics.backend_up.set(1);
        Ok(metrics)
    }

    pub(crate) fn refused(&self, reason: RefusalReason) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }

    pub(crate) fn fail_open(&self) {
        self.fail_open.inc();
    }
}

/// The backend's health as the last call saw it, plus the circuit breaker: after a failure,
/// calls skip the backend for `retry_interval` and go straight to the failure policy, so a dead
/// or partitioned Redis costs each request nothing rather than a timeout.
#[derive(Debug)]
pub(crate) struct Health {
    up: AtomicBool,
    retry_interval: Duration,
    policy: FailurePolicy,
    // A std Mutex: both sections are a few instructions and never cross an await.
    retry_at: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
}

impl Health {
    pub(crate) fn new(retry_interval: Duration, policy: FailurePolicy) -> Self {
        Self {
            up: AtomicBool::new(true),
            retry_interval,
            policy,
            retry_at: Mutex::new(None),
            last_warning: Mutex::new(None),
        }
    }

    pub(crate) fn policy(&self) -> FailurePolicy {
        self.policy
    }

    pub(crate) fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether a call should reach the backend, or skip it while the breaker is open. Once the
    /// interval is over, one caller tries (and pushes the next try out by another interval);
    /// the others keep the policy's answer until that one succeeds.
    pub(crate) fn should_try(&self) -> bool {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        match *retry_at {
            None => true,
            Some(at) => {
                let now = Instant::now();
                let due = now >= at;
                if due {
                    *retry_at = Some(now + self.retry_interval);
                }
                due
            }
        }
    }

    pub(crate) fn succeeded(&self, metrics: &LimiterMetrics) {
        *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics.backend_up.set(1);
            tracing::info!("rate-limit backend reachable again; limits are enforced");
        }
    }

    pub(crate) fn failed(&self, metrics: &LimiterMetrics, error: &dyn std::fmt::Display) {
        metrics.backend_errors.inc();
        let now = Instant::now();
        *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + self.retry_interval);
        let was_up = self.up.swap(false, Ordering::Relaxed);
        metrics.backend_up.set(0);
        let policy = self.policy.describe();
        if was_up {
            tracing::error!(%error, policy, "rate-limit backend unreachable");
            *self.last_warning.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
            return;
        }
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            *last = Some(now);
            drop(last);
            tracing::warn!(%error, policy, "rate-limit backend still unreachable");
        }
    }
}
