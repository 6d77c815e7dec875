//! The Redis backend: the same arithmetic as the in-process one, run by Lua scripts (in
//! `scripts/`) so every replica's check-and-update is atomic and uses Redis's clock. Every key
//! expires once its state has drained, so idle principals vanish, and concurrency slots are
//! leases that a crashed gateway stops renewing.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use sha2::{Digest, Sha256};
use tokio::task::AbortHandle;

use super::{
    AdaptiveConfig, Admitted, BackendError, CONCURRENCY_RETRY, ConcurrencyPermit, Limits,
    RateLimitHeaders, RateLimitSetupError, RedisLimiterConfig, RefusalReason, Refused, Slot,
    WindowState,
};

pub(crate) struct RedisBackend {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    scripts: Arc<Scripts>,
}

struct Scripts {
    admit: Script,
    record_tokens: Script,
    note_violation: Script,
    renew_lease: Script,
}

/// The keys of one principal. They share a hash tag, so a Redis Cluster keeps them in one slot
/// as the scripts require. The subject is hashed: JWT subjects can be e-mail addresses, which
/// have no business in Redis key names.
struct Keys {
    buckets: String,
    leases: String,
    violations: String,
}

impl RedisBackend {
    pub(crate) fn new(config: &RedisLimiterConfig) -> Result<Self, RateLimitSetupError> {
        // The connection manager spawns its reconnection task, which needs a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RateLimitSetupError::NoRuntime);
        }
        let client = Client::open(config.url.as_str())
            .map_err(|e| RateLimitSetupError::InvalidRedisUrl(e.to_string()))?;
        // Few, quick reconnection attempts: callers never wait on them longer than `timeout`
        // anyway, and the breaker in `health` spaces out the retries.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(config.retry_interval.max(Duration::from_millis(50)));
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| RateLimitSetupError::InvalidRedisUrl(e.to_string()))?;
        Ok(Self {
            connection,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            lease: config.concurrency_lease.max(Duration::from_secs(1)),
            scripts: Arc::new(Scripts {
                admit: Script::new(include_str!("scripts/admit.lua")),
                record_tokens: Script::new(include_str!("scripts/record_tokens.lua")),
                note_violation: Script::new(include_str!("scripts/note_violation.lua")),
                renew_lease: Script::new(include_str!("scripts/renew_lease.lua")),
            }),
        })
    }

    fn keys(&self, subject: &str) -> Keys {
        let digest = Sha256::digest(subject.as_bytes());
        let tag = hex::encode(&digest[..16]);
        let base = format!("{}:{{{tag}}}", self.prefix);
        Keys {
            buckets: format!("{base}:b"),
            leases: format!("{base}:c"),
            violations: format!("{base}:v"),
        }
    }

    pub(crate) async fn admit(
        &self,
        subject: &str,
        limits: &Limits,
        adaptive: Option<&AdaptiveConfig>,
    ) -> Result<Result<Admitted, Refused>, BackendError> {
        let keys = self.keys(subject);
        let lease_id = uuid::Uuid::new_v4().to_string();
        let (threshold, window, max_tier) = adaptive_args(adaptive);
        let mut invocation = self.scripts.admit.prepare_invoke();
        invocation
            .key(&keys.buckets)
            .key(&keys.leases)
            .key(&keys.violations)
            .arg(limits.rpm.unwrap_or(0))
            .arg(limits.tpm.unwrap_or(0))
            .arg(limits.max_concurrent.unwrap_or(0))
            .arg(&lease_id)
            .arg(micros(self.lease))
            .arg(threshold)
            .arg(window)
            .arg(max_tier)
            .arg(micros(CONCURRENCY_RETRY));
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        let outcome = AdmitReply::parse(&reply)?;
        if let Some(reason) = outcome.refusal {
            return Ok(Err(Refused {
                reason,
                retry_after: outcome.retry_after,
                headers: outcome.headers,
            }));
        }
        let slot = limits.max_concurrent.map(|_| {
            Slot::Redis(RedisLease::start(
                self.connection.clone(),
                Arc::clone(&self.scripts),
                keys.leases,
                lease_id,
                self.lease,
                self.timeout,
            ))
        });
        Ok(Ok(Admitted {
            headers: outcome.headers,
            permit: ConcurrencyPermit { _slot: slot },
        }))
    }

    pub(crate) async fn record_tokens(
        &self,
        subject: &str,
        tpm: u32,
        tokens: u64,
        adaptive: Option<&AdaptiveConfig>,
    ) -> Result<(), BackendError> {
        let keys = self.keys(subject);
        let (threshold, window, max_tier) = adaptive_args(adaptive);
        let mut invocation = self.scripts.record_tokens.prepare_invoke();
        invocation
            .key(&keys.buckets)
            .key(&keys.violations)
            .arg(tpm)
            .arg(tokens)
            .arg(threshold)
            .arg(window)
            .arg(max_tier);
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }

    pub(crate) async fn note_violation(
        &self,
        subject: &str,
        adaptive: &AdaptiveConfig,
    ) -> Result<(), BackendError> {
        let keys = self.keys(subject);
        let mut invocation = self.scripts.note_violation.prepare_invoke();
        invocation
            .key(&keys.violations)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(micros(adaptive.window))
            .arg(adaptive.max_kept());
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }

    pub(crate) async fn ping(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        let ping = redis::cmd("PING");
        self.bounded(ping.query_async::<String>(&mut connection))
            .await
            .map(drop)
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        bounded(self.timeout, call).await
    }
}

/// The connection manager has its own timeouts, but a call can also wait on a reconnection:
/// this bound holds whatever happens underneath.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BackendError::Timeout(timeout)),
    }
}

/// `admit.lua`'s reply.
struct AdmitReply {
    refusal: Option<RefusalReason>,
    retry_after: Duration,
    headers: RateLimitHeaders,
}

impl AdmitReply {
    fn parse(reply: &[i64]) -> Result<Self, BackendError> {
        let &[
            admitted,
            reason,
            retry_us,
            rpm,
            r_left,
            r_reset,
            tpm,
            t_left,
            t_reset,
        ] = reply
        else {
            return Err(unexpected_reply(reply));
        };
        let refusal = match (admitted, reason) {
            (1, _) => None,
            (_, 1) => Some(RefusalReason::Requests),
            (_, 2) => Some(RefusalReason::Tokens),
            (_, 3) => Some(RefusalReason::Concurrency),
            _ => return Err(unexpected_reply(reply)),
        };
        let window = |limit: i64, remaining: i64, reset: i64| {
            let limit = u32::try_from(limit).ok().filter(|&l| l > 0)?;
            Some(WindowState {
                limit,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(limit),
                reset: Duration::from_micros(u64::try_from(reset).unwrap_or(0)),
            })
        };
        Ok(Self {
            refusal,
            retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(0)),
            headers: RateLimitHeaders {
                requests: window(rpm, r_left, r_reset),
                tokens: window(tpm, t_left, t_reset),
            },
        })
    }
}

fn unexpected_reply(reply: &[i64]) -> BackendError {
    BackendError::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply from the rate-limit script",
        format!("{reply:?}"),
    )))
}

/// A concurrency slot in Redis: a lease renewed while the request lives and removed when it
/// ends. If this gateway dies, the lease runs out on its own.
pub(crate) struct RedisLease {
    connection: ConnectionManager,
    key: String,
    id: String,
    timeout: Duration,
    renewal: AbortHandle,
}

impl RedisLease {
    fn start(
        connection: ConnectionManager,
        scripts: Arc<Scripts>,
        key: String,
        id: String,
        lease: Duration,
        timeout: Duration,
    ) -> Self {
        let renewal = {
            let mut connection = connection.clone();
            let (key, id) = (key.clone(), id.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(lease / 3);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let mut invocation = scripts.renew_lease.prepare_invoke();
                    invocation.key(&key).arg(&id).arg(micros(lease));
                    // A missed renewal is retried at the next tick; the lease outlasts two.
                    let _ = bounded(timeout, invocation.invoke_async::<i64>(&mut connection)).await;
                }
            })
            .abort_handle()
        };
        Self {
            connection,
            key,
            id,
            timeout,
            renewal,
        }
    }
}

impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease").finish_non_exhaustive()
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.renewal.abort();
        // Without a runtime (at shutdown) the lease simply expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut connection = self.connection.clone();
        let (key, id, timeout) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
            self.timeout,
        );
        runtime.spawn(async move {
            let release = redis::cmd("ZREM").arg(&key).arg(&id).to_owned();
            let _ = bounded(timeout, release.query_async::<i64>(&mut connection)).await;
        });
    }
}

fn adaptive_args(adaptive: Option<&AdaptiveConfig>) -> (u32, u64, u32) {
    adaptive.map_or((0, 0, 0), |config| {
        (
            config.threshold.max(1),
            micros(config.window),
            config.max_tier,
        )
    })
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
