//! [`crate::Store`] on a Redis server that every gateway replica shares.
//!
//! Writes that touch several keys run as one Lua script or one `MULTI` pipeline, so a crash
//! or a lost connection never leaves half an update. Every operation is bounded in time: an
//! unreachable server yields [`StoreError::Unavailable`] or [`StoreError::Timeout`] quickly,
//! and the [`ConnectionManager`] reconnects on its own once the server is back.
//!
//! Durability is the server's: run Redis with `appendonly yes` (and `appendfsync always` or
//! `everysec`, trading at most a second of writes for speed) so a restart loses nothing.
//!
//! Key layout under the prefix (`passerelle:` by default); the scripts compute no key names,
//! but several operations touch keys of many principals, so this backend expects one Redis
//! server (or a primary with replicas), not a Redis Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `key:{id}` | hash | `record` (JSON), `sha256`, `revoked_at`, `limits` (JSON) |
//! | `keyprefix:{prefix}` | string | key id |
//! | `keys` | set | every key id |
//! | `usage:resp:{response id}` | string | the usage record (JSON), expiring after the retention |
//! | `usage:days` | sorted set | day numbers that have usage |
//! | `usage:day:{day}` | hash | `["principal","model"]\|counter` -> count |
//! | `spend:{key id}` | hash | day number -> micro-USD |
//! | `feedback` | hash | `["response id","principal"]` -> record (JSON) |
//! | `feedback:up`, `feedback:down` | sorted sets | feedback fields by time |
//! | `feedback:by:{principal}` | set | that principal's feedback fields |
//! | `prompts:{principal}` | hash | response id -> record (JSON) |
//! | `audit:seq` | string | last audit id |
//! | `audit:events` | hash | id -> event (JSON) |
//! | `audit:by:{principal}` | set | ids of events naming the principal |

mod keys;
mod records;
mod usage;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::StoreError;
pub(crate) use crate::json::{from_json, to_json};

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/[db]` (or `rediss://` where the client has TLS).
    pub url: String,
    /// Prepended to every key, so several deployments (or tests) can share one server.
    pub prefix: String,
    /// Longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest one operation may take, reconnection attempts included; then
    /// [`StoreError::Timeout`].
    pub operation_timeout: Duration,
    /// How long raw usage records (read by [`crate::UsageStore::usage_by_response`]) are kept;
    /// `None` keeps them forever. Daily totals and spend are kept regardless.
    pub usage_record_retention: Option<Duration>,
}

impl RedisOptions {
    /// Defaults: prefix `passerelle:`, 2 s to connect, 5 s per operation, raw usage records
    /// kept 90 days.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "passerelle:".to_owned(),
            connect_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            usage_record_retention: Some(Duration::from_secs(90 * 86_400)),
        }
    }

    /// The same options with another key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// Durable state on a shared Redis server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    operation_timeout: Duration,
    usage_ttl_secs: u64,
    /// Keys are never deleted, so once one exists this stays true and saves the round trip.
    any_keys: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects with [`RedisOptions::new`]'s defaults.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(RedisOptions::new(url)).await
    }

    /// Connects, failing with [`StoreError::Unavailable`] or [`StoreError::Timeout`] when the
    /// server cannot be reached.
    pub async fn connect_with(options: RedisOptions) -> Result<Self, StoreError> {
        let client = redis::Client::open(options.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.operation_timeout))
            // Few, quick retries: a caller waiting on an outage should learn of it promptly;
            // the next operation starts a fresh reconnection anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = timed(
            options.operation_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await?;
        tracing::debug!(prefix = %options.prefix, "connected to the Redis store");
        Ok(Self {
            conn,
            prefix: options.prefix.into(),
            operation_timeout: options.operation_timeout,
            usage_ttl_secs: options
                .usage_record_retention
                .map_or(0, |ttl| ttl.as_secs().max(1)),
            any_keys: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The full name of a key.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The full name of the key `{kind}:{id}`.
    fn key_of(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// A connection handle; cheap, all share one multiplexed connection.
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one operation under the operation timeout.
    async fn timed<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>> + Send,
    ) -> Result<T, StoreError> {
        timed(self.operation_timeout, op).await
    }
}

async fn timed<T>(
    limit: Duration,
    op: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, op).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

/// A JSON field name for a tuple of strings: unambiguous whatever the strings hold.
fn json_field(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

#[async_trait::async_trait]
impl crate::StoreHealth for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        self.timed(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(drop)
    }
}
