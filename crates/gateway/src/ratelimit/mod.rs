//! Per-principal rate limits: requests per minute, tokens per minute and concurrent requests.
//!
//! [`RateLimiter::admit`] checks all three at once before a request runs and hands back the
//! `x-ratelimit-*` [headers](RateLimitHeaders) for the response and a [`ConcurrencyPermit`] to
//! hold until the response body ends; [`RateLimiter::record_tokens`] counts the tokens once they
//! are known. Without Redis the state lives in this process; with it, in Redis, updated by Lua
//! scripts so replicas share the limits atomically, on Redis's clock. When Redis cannot be
//! reached the [`FailurePolicy`] decides, the limiter says so in its logs, its metrics and
//! [`RateLimiter::backend_healthy`], and no call ever waits longer than the configured timeout.
//!
//! The [adaptive mode](AdaptiveConfig) halves a principal's rpm and tpm per tier of recent safety
//! violations, reported with [`RateLimiter::note_violation`].
//!
//! Inside: `bucket` (the arithmetic), `memory` and `redis` (the backends), `health` (the breaker,
//! metrics and logs), [`headers`].

mod bucket;
pub mod headers;
mod health;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;

pub use headers::{RateLimitHeaders, WindowState};

use bucket::Verdict;
use health::{Health, LimiterMetrics};

/// How long a client refused for concurrency is told to wait: slots free when other requests
/// finish, which no clock predicts.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// A principal's limits. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once, streams included.
    pub max_concurrent: Option<u32>,
}

impl Limits {
    /// No limit at all.
    pub const UNLIMITED: Limits = Limits {
        rpm: None,
        tpm: None,
        max_concurrent: None,
    };

    /// Whether nothing is limited, so admission needs no bookkeeping.
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrent.is_none()
    }
}

/// What to do with a request when the shared backend cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit it unchecked: availability over limits. The default.
    #[default]
    Open,
    /// Refuse it with [`RefusalReason::BackendUnavailable`] (a 503 with `Retry-After`).
    Closed,
}

impl FailurePolicy {
    /// `open` or `closed`, as in the configuration and `/health/ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FailurePolicy::Open => "fail open: admitting requests unchecked",
            FailurePolicy::Closed => "fail closed: refusing requests",
        }
    }
}

/// Lowers the limits of principals that keep tripping the safety filter.
///
/// With `v` violations in the last `window`, rpm and tpm are halved `min(v / threshold,
/// max_tier)` times, never below 1; as violations age out of the window the limits come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveConfig {
    /// Violations within `window` per halving. Default 3.
    pub threshold: u32,
    /// How long a violation counts. Default 10 minutes.
    pub window: Duration,
    /// Most halvings. Default 4 (a sixteenth of the limit).
    pub max_tier: u32,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            threshold: 3,
            window: Duration::from_secs(600),
            max_tier: 4,
        }
    }
}

impl AdaptiveConfig {
    /// Violations kept per principal: enough to reach the highest tier.
    fn max_kept(&self) -> usize {
        let kept = u64::from(self.threshold.max(1)) * (u64::from(self.max_tier) + 1);
        usize::try_from(kept).unwrap_or(usize::MAX)
    }
}

/// The Redis backend, shared by every gateway replica pointing at the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLimiterConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key the limiter writes. Default `passerelle:rl`.
    pub key_prefix: String,
    /// Longest a connect or a call may take before the failure policy applies. Default 250 ms.
    pub timeout: Duration,
    /// After a failure, how long calls skip Redis and apply the failure policy at once before
    /// trying again. Default 1 s.
    pub retry_interval: Duration,
    /// What to do while Redis cannot be reached. Default [`FailurePolicy::Open`].
    pub failure_policy: FailurePolicy,
    /// How long a concurrency slot outlives a gateway that stopped renewing it (it crashed):
    /// live requests renew theirs every third of it. Default 60 s.
    pub concurrency_lease: Duration,
}

impl RedisLimiterConfig {
    /// Defaults, with the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "passerelle:rl".to_owned(),
            timeout: Duration::from_millis(250),
            retry_interval: Duration::from_secs(1),
            failure_policy: FailurePolicy::Open,
            concurrency_lease: Duration::from_secs(60),
        }
    }
}

/// How the limiter keeps its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Shared state in Redis; with none, state lives in this process. Default none.
    pub redis: Option<RedisLimiterConfig>,
    /// Lower the limits of principals that trip the safety filter. Default off.
    pub adaptive: Option<AdaptiveConfig>,
}

/// Why a limiter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitSetupError {
    /// The Redis URL does not parse. The URL is not repeated: it may hold a password.
    #[error("invalid rate-limit Redis URL: {0}")]
    InvalidRedisUrl(String),
    /// The Redis backend was built outside a Tokio runtime.
    #[error("the Redis rate limiter must be built inside a Tokio runtime")]
    NoRuntime,
    /// The metrics could not be registered (already registered on this registry).
    #[error("cannot register rate-limit metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Concurrent requests.
    Concurrency,
    /// The shared backend is unreachable and the policy is [`FailurePolicy::Closed`]: a 503, not
    /// a 429.
    BackendUnavailable,
}

impl RefusalReason {
    const ALL: [RefusalReason; 4] = [
        RefusalReason::Requests,
        RefusalReason::Tokens,
        RefusalReason::Concurrency,
        RefusalReason::BackendUnavailable,
    ];

    /// A stable name, for the metric label and logs: `requests`, `tokens`, `concurrency`,
    /// `backend_unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Requests => "requests",
            RefusalReason::Tokens => "tokens",
            RefusalReason::Concurrency => "concurrency",
            RefusalReason::BackendUnavailable => "backend_unavailable",
        }
    }
}

/// A request the limiter turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Refused {
    /// The limit that refused it; when several did, the one that frees last.
    pub reason: RefusalReason,
    /// How long until it would be admitted (for concurrency and an unavailable backend, a
    /// suggestion).
    pub retry_after: Duration,
    /// The principal's limits, for the response headers (empty for an unavailable backend).
    pub headers: RateLimitHeaders,
}

impl Refused {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_nanos().div_ceil(1_000_000_000).max(1) as u64
    }

    /// A client-facing message in OpenAI's style.
    pub fn message(&self) -> String {
        let wait = headers::format_reset(self.retry_after);
        let limit = |state: Option<WindowState>| state.map_or(0, |s| s.limit);
        match self.reason {
            RefusalReason::Requests => format!(
                "Rate limit reached for requests per minute (limit {}). Please try again in {wait}.",
                limit(self.headers.requests)
            ),
            RefusalReason::Tokens => format!(
                "Rate limit reached for tokens per minute (limit {}). Please try again in {wait}.",
                limit(self.headers.tokens)
            ),
            RefusalReason::Concurrency => {
                "Too many concurrent requests for this key. Please try again when one finishes."
                    .to_owned()
            }
            RefusalReason::BackendUnavailable => {
                "Rate limits cannot be checked right now. Please try again shortly.".to_owned()
            }
        }
    }

    fn backend_unavailable(retry_after: Duration) -> Self {
        Self {
            reason: RefusalReason::BackendUnavailable,
            retry_after: retry_after.max(Duration::from_secs(1)),
            headers: RateLimitHeaders::default(),
        }
    }
}

/// An admitted request: headers for its response, and its concurrency slot.
#[derive(Debug)]
pub struct Admitted {
    /// The principal's limits after counting this request.
    pub headers: RateLimitHeaders,
    /// Hold until the response body ends (streams included); dropping it frees the slot.
    pub permit: ConcurrencyPermit,
}

impl Admitted {
    fn unchecked() -> Self {
        Self {
            headers: RateLimitHeaders::default(),
            permit: ConcurrencyPermit::none(),
        }
    }
}

/// A concurrency slot, released when dropped. Empty when concurrency is not limited.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    _slot: Option<Slot>,
}

/// The fields are only there to be dropped, which frees the slot.
#[derive(Debug)]
#[allow(dead_code, reason = "held for its Drop")]
enum Slot {
    Memory(memory::MemorySlot),
    Redis(redis::RedisLease),
}

impl ConcurrencyPermit {
    fn none() -> Self {
        Self { _slot: None }
    }
}

/// The limiter. Cheap to clone: clones share state, backend and metrics.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    adaptive: Option<AdaptiveConfig>,
    health: Health,
    metrics: LimiterMetrics,
}

enum Backend {
    Memory(Arc<memory::MemoryBackend>),
    Redis(redis::RedisBackend),
}

/// A backend call that did not come back, for the failure policy.
#[derive(Debug, thiserror::Error)]
enum BackendError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis failed recently; waiting before trying again")]
    CoolingDown,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("backend", &self.backend_name())
            .field("adaptive", &self.inner.adaptive)
            .field("healthy", &self.backend_healthy())
            .finish()
    }
}

impl RateLimiter {
    /// Builds the limiter and registers its metrics on `registry`. With Redis it does not
    /// connect here (a Redis that is down at startup is handled by the failure policy like one
    /// that goes down later), but it must be called inside a Tokio runtime.
    pub fn new(
        config: RateLimiterConfig,
        registry: &Registry,
    ) -> Result<Self, RateLimitSetupError> {
        let (backend, health) = match config.redis {
            None => (
                Backend::Memory(Arc::new(memory::MemoryBackend::new())),
                Health::new(Duration::ZERO, FailurePolicy::Open),
            ),
            Some(redis) => (
                Backend::Redis(redis::RedisBackend::new(&redis)?),
                Health::new(redis.retry_interval, redis.failure_policy),
            ),
        };
        let metrics = LimiterMetrics::register(registry)?;
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                adaptive: config.adaptive,
                health,
                metrics,
            }),
        })
    }

    /// An in-process limiter: the default without Redis.
    pub fn in_process(
        adaptive: Option<AdaptiveConfig>,
        registry: &Registry,
    ) -> Result<Self, RateLimitSetupError> {
        Self::new(
            RateLimiterConfig {
                redis: None,
                adaptive,
            },
            registry,
        )
    }

    /// Admits or refuses one request of `subject` (a key id or a JWT subject) under `limits`,
    /// counting it against the request rate and taking a concurrency slot when admitted.
    pub async fn admit(&self, subject: &str, limits: &Limits) -> Result<Admitted, Refused> {
        if limits.is_unlimited() {
            return Ok(Admitted::unchecked());
        }
        let inner = &self.inner;
        let adaptive = inner.adaptive.as_ref();
        let result = match &inner.backend {
            Backend::Memory(memory) => Ok(memory.admit(subject, limits, adaptive)),
            // Boxed: inline, the Redis call's state would be part of (and copied with) every
            // request's future, whatever the backend.
            Backend::Redis(redis) => {
                Box::pin(self.call(redis.admit(subject, limits, adaptive))).await
            }
        };
        match result {
            Ok(Ok(admitted)) => Ok(admitted),
            Ok(Err(refused)) => {
                inner.metrics.refused(refused.reason);
                Err(refused)
            }
            Err(_) => match inner.health.policy() {
                FailurePolicy::Open => {
                    inner.metrics.fail_open();
                    Ok(Admitted::unchecked())
                }
                FailurePolicy::Closed => {
                    let refused = Refused::backend_unavailable(inner.health.retry_interval());
                    inner.metrics.refused(refused.reason);
                    Err(refused)
                }
            },
        }
    }

    /// Counts `tokens` (prompt + completion) used by `subject` once a response is done, streamed
    /// or not. A no-op without a tpm limit; lost (and logged) while the backend is unreachable.
    pub async fn record_tokens(&self, subject: &str, limits: &Limits, tokens: u64) {
        let Some(tpm) = limits.tpm else { return };
        if tokens == 0 {
            return;
        }
        let adaptive = self.inner.adaptive.as_ref();
        match &self.inner.backend {
            Backend::Memory(memory) => memory.record_tokens(subject, tpm, tokens, adaptive),
            Backend::Redis(redis) => {
                let _ = self
                    .call(redis.record_tokens(subject, tpm, tokens, adaptive))
                    .await;
            }
        }
    }

    /// Records that `subject` tripped the safety filter. A no-op unless the adaptive mode is on.
    pub async fn note_violation(&self, subject: &str) {
        let Some(adaptive) = self.inner.adaptive.as_ref() else {
            return;
        };
        match &self.inner.backend {
            Backend::Memory(memory) => memory.note_violation(subject, adaptive),
            Backend::Redis(redis) => {
                let _ = self.call(redis.note_violation(subject, adaptive)).await;
            }
        }
    }

    /// Whether the last call to the backend succeeded (always true in process), for
    /// `/health/ready`. Also exported as the `passerelle_ratelimit_backend_up` gauge.
    pub fn backend_healthy(&self) -> bool {
        self.inner.health.is_up()
    }

    /// Asks the backend now (a Redis PING, within the timeout), updates the health flag with the
    /// answer and returns it. For readiness probes, which should not trust a flag that only
    /// traffic refreshes.
    pub async fn probe(&self) -> bool {
        match &self.inner.backend {
            Backend::Memory(_) => true,
            Backend::Redis(redis) => {
                let result = redis.ping().await;
                self.inner.observe(&result);
                result.is_ok()
            }
        }
    }

    /// Where the state lives: `redis` or `in_process`, for `/health/ready`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Memory(_) => "in_process",
            Backend::Redis(_) => "redis",
        }
    }

    /// The configured failure policy (always `Open` in process, where nothing can fail).
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.health.policy()
    }

    /// Runs a backend call unless the breaker is open, and records how it went.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        if !self.inner.health.should_try() {
            return Err(BackendError::CoolingDown);
        }
        let result = call.await;
        self.inner.observe(&result);
        result
    }
}

impl Inner {
    fn observe<T>(&self, result: &Result<T, BackendError>) {
        match result {
            Ok(_) => self.health.succeeded(&self.metrics),
            Err(BackendError::CoolingDown) => {}
            Err(error) => self.health.failed(&self.metrics, error),
        }
    }
}

/// Combines each limit's verdict: refused if any refuses, for as long as the slowest needs.
fn decide(
    requests: Option<Verdict>,
    tokens: Option<Verdict>,
    concurrency_full: bool,
) -> Option<(RefusalReason, Duration)> {
    let mut refusal: Option<(RefusalReason, Duration)> = None;
    let candidates = [
        requests
            .filter(|v| !v.admit)
            .map(|v| (RefusalReason::Requests, v.retry_after)),
        tokens
            .filter(|v| !v.admit)
            .map(|v| (RefusalReason::Tokens, v.retry_after)),
        concurrency_full.then_some((RefusalReason::Concurrency, CONCURRENCY_RETRY)),
    ];
    for candidate in candidates.into_iter().flatten() {
        if refusal.is_none_or(|(_, wait)| candidate.1 > wait) {
            refusal = Some(candidate);
        }
    }
    refusal
}

#[cfg(test)]
mod tests;
