//! Sharing the cache through Redis: an append-only log of stored entries in a Redis Stream,
//! `<prefix>:cache:<embedding model id>:log`, that every replica writes to and follows.
//!
//! - Writing: [`SharedLog::publish`] hands the entry to a bounded outbox and returns; a writer
//!   task `XADD`s batches of them with `MAXLEN ~ max_entries`, so the stream stays about as
//!   large as one replica's cache. A batch that failed because Redis is unreachable is retried
//!   until it is written; entries that do not fit the outbox meanwhile, or that Redis refuses
//!   outright, are dropped (counted): the local cache has them anyway.
//! - Following: a task reads the stream from its start in pages (`XREAD COUNT`), which replays
//!   what other replicas and earlier runs stored, then keeps reading with `BLOCK` from the
//!   last id it saw. Expired entries are skipped; the rest are stored for what remains of
//!   their lifetime. Entries this process wrote carry its replica id and are skipped.
//! - Failure: neither task ever holds up a lookup or a store. While Redis cannot be reached
//!   they retry with a capped backoff, `passerelle_semantic_cache_redis_up` reads 0 and one
//!   warning is logged per outage; the connection manager reconnects underneath.
//!
//! Keyed by the embedding model because vectors are only comparable within one model; the
//! generating model and the gateway's namespace are inside each entry.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::{
    Client, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{StreamId, StreamReadReply},
};
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::AbortHandle,
};

use super::{
    CacheRedisConfig,
    handle::{Applied, Core},
    record::SharedEntry,
};
use crate::error::EmbeddingsError;

/// Entries waiting for the writer; more are dropped.
const OUTBOX_CAPACITY: usize = 1024;
/// Most entries in one pipelined write.
const WRITE_BATCH: usize = 64;
/// Most entries read at once.
const PAGE: usize = 256;
/// How long one `XREAD BLOCK` waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);
/// Connecting, and any one reply other than a blocked read.
const TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The closed label set of `passerelle_semantic_cache_redis_entries_total`.
const RESULTS: [&str; 5] = ["written", "dropped", "applied", "expired", "invalid"];

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// This process's side of the shared log; dropping it stops both tasks.
#[derive(Debug)]
pub(super) struct SharedLog {
    replica: Arc<str>,
    outbox: mpsc::Sender<SharedEntry>,
    health: Arc<Health>,
    tasks: [AbortHandle; 2],
}

impl SharedLog {
    /// Starts the writer and the follower of `embedding_model`'s log; nothing waits for Redis.
    pub(super) fn start(
        config: &CacheRedisConfig,
        embedding_model: &str,
        core: Core,
        registry: &Registry,
    ) -> Result<Self, EmbeddingsError> {
        // The connection managers and the tasks need a runtime to spawn on.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EmbeddingsError::CacheRedis(
                "sharing the cache through Redis needs a tokio runtime".to_owned(),
            ));
        }
        let client = Client::open(config.url.as_str())
            .map_err(|err| EmbeddingsError::CacheRedis(format!("invalid Redis URL: {err}")))?;
        let manager = |response_timeout| {
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(1)
                .set_min_delay(MIN_BACKOFF)
                .set_max_delay(MAX_BACKOFF);
            ConnectionManager::new_lazy_with_config(client.clone(), settings)
                .map_err(|err| EmbeddingsError::CacheRedis(err.to_string()))
        };
        // The follower has a connection of its own, since a blocked read holds up every
        // other command on a connection.
        let writer = manager(TIMEOUT)?;
        let reader = manager(BLOCK + TIMEOUT)?;
        let health = Arc::new(Health::register(registry)?);
        let key = format!("{}:cache:{embedding_model}:log", config.key_prefix);
        let replica: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let (outbox, pending) = mpsc::channel(OUTBOX_CAPACITY);
        let write = tokio::spawn(write(
            pending,
            writer,
            key.clone(),
            core.max_entries(),
            Arc::clone(&health),
        ));
        let follow = tokio::spawn(
            Follower {
                connection: reader,
                key,
                replica: Arc::clone(&replica),
                core,
                health: Arc::clone(&health),
            }
            .run(),
        );
        Ok(Self {
            replica,
            outbox,
            health,
            tasks: [write.abort_handle(), follow.abort_handle()],
        })
    }

    /// The id this process's entries carry.
    pub(super) fn replica(&self) -> Arc<str> {
        Arc::clone(&self.replica)
    }

    /// Queues `entry` for the log without waiting.
    pub(super) fn publish(&self, entry: SharedEntry) {
        match self.outbox.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => self.health.count("dropped", 1),
        }
    }

    /// Whether the last exchange with Redis went through.
    pub(super) fn healthy(&self) -> bool {
        self.health.state.load(Ordering::Relaxed) == UP
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Appends queued entries to the stream until every sender is gone.
async fn write(
    mut pending: mpsc::Receiver<SharedEntry>,
    mut connection: ConnectionManager,
    key: String,
    max_len: usize,
    health: Arc<Health>,
) {
    let mut backoff = Backoff::default();
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match pending.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for entry in &batch {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*");
            for (name, value) in entry.fields() {
                pipe.arg(name).arg(value);
            }
            pipe.ignore();
        }
        let count = batch.len() as u64;
        // A batch that failed for want of Redis waits for it, holding up the outbox, which
        // then drops what does not fit: an outage costs the entries past the outbox's size,
        // not all of them. A retried write may land twice, which is harmless (the same key
        // replaces itself).
        loop {
            match bounded(TIMEOUT, pipe.query_async::<()>(&mut connection)).await {
                Ok(()) => {
                    health.up();
                    health.count("written", count);
                    backoff.reset();
                    break;
                }
                Err(err) if transient(&err) => {
                    health.down(&err);
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, entries = count, "Redis refused semantic cache entries");
                    health.count("dropped", count);
                    break;
                }
            }
        }
    }
}

/// Whether `err` may go away by itself (a lost connection, a server still loading).
fn transient(err: &redis::RedisError) -> bool {
    !matches!(err.retry_method(), redis::RetryMethod::NoRetry)
}

/// Replays the stream, then follows it.
struct Follower {
    connection: ConnectionManager,
    key: String,
    replica: Arc<str>,
    core: Core,
    health: Arc<Health>,
}

impl Follower {
    async fn run(mut self) {
        let mut last = "0-0".to_owned();
        let mut replaying = true;
        let mut replayed = 0;
        let mut backoff = Backoff::default();
        loop {
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT").arg(PAGE);
            if !replaying {
                read.arg("BLOCK")
                    .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX));
            }
            read.arg("STREAMS").arg(&self.key).arg(&last);
            let reply = read.query_async::<Option<StreamReadReply>>(&mut self.connection);
            let page: Vec<StreamId> = match bounded(BLOCK + TIMEOUT, reply).await {
                Ok(reply) => {
                    self.health.up();
                    backoff.reset();
                    reply
                        .into_iter()
                        .flat_map(|reply| reply.keys)
                        .flat_map(|key| key.ids)
                        .collect()
                }
                Err(err) => {
                    self.health.down(&err);
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            let full = page.len() == PAGE;
            if let Some(entry) = page.last() {
                last.clone_from(&entry.id);
            }
            replayed += self.apply(page).await;
            if replaying && !full {
                replaying = false;
                tracing::info!(entries = replayed, stream = %self.key, "semantic cache replayed from Redis");
            }
        }
    }

    /// Stores a page's entries from other replicas; returns how many were stored.
    async fn apply(&self, page: Vec<StreamId>) -> u64 {
        let mut entries = Vec::with_capacity(page.len());
        for entry in page {
            let fields: HashMap<String, Vec<u8>> = entry
                .map
                .into_iter()
                .filter_map(|(name, value)| match value {
                    Value::BulkString(bytes) => Some((name, bytes)),
                    _ => None,
                })
                .collect();
            match SharedEntry::parse(&fields) {
                Ok(shared) if shared.replica == self.replica => {}
                Ok(shared) => entries.push(shared),
                Err(err) => {
                    self.health.count("invalid", 1);
                    tracing::debug!(id = %entry.id, error = %err, "skipped a shared cache entry");
                }
            }
        }
        if entries.is_empty() {
            return 0;
        }
        match self.core.apply(entries).await {
            Ok(Applied {
                stored,
                expired,
                refused,
            }) => {
                self.health.count("applied", stored);
                self.health.count("expired", expired);
                self.health.count("invalid", refused);
                stored
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not apply shared cache entries");
                0
            }
        }
    }
}

/// Whether Redis answers, as a gauge and one log line per change.
#[derive(Debug)]
struct Health {
    state: AtomicU8,
    up: IntGauge,
    entries: IntCounterVec,
}

impl Health {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let health = Self {
            state: AtomicU8::new(UNKNOWN),
            up: IntGauge::new(
                "passerelle_semantic_cache_redis_up",
                "1 while the semantic cache's Redis log answers, 0 before the first exchange and while it fails.",
            )?,
            entries: IntCounterVec::new(
                Opts::new(
                    "passerelle_semantic_cache_redis_entries_total",
                    "Semantic cache entries through the Redis log: written, dropped (not written), applied (from other replicas), expired (skipped on reading), invalid.",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(health.up.clone()))?;
        registry.register(Box::new(health.entries.clone()))?;
        for result in RESULTS {
            health.entries.with_label_values(&[result]);
        }
        Ok(health)
    }

    fn count(&self, result: &'static str, n: u64) {
        debug_assert!(RESULTS.contains(&result));
        if n > 0 {
            self.entries.with_label_values(&[result]).inc_by(n);
        }
    }

    fn up(&self) {
        if self.state.swap(UP, Ordering::Relaxed) == DOWN {
            tracing::info!("the semantic cache's Redis log answers again");
        }
        self.up.set(1);
    }

    fn down(&self, err: &redis::RedisError) {
        if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(error = %err, "the semantic cache's Redis log is unreachable; caching locally only until it answers");
        }
        self.up.set(0);
    }
}

/// Retry delays: doubling from [`MIN_BACKOFF`] up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(MIN_BACKOFF)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        delay
    }

    fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }
}

/// The connection manager has its own timeouts, but a call can also wait on a reconnection:
/// this bound holds whatever happens underneath.
async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..7).map(|_| backoff.next()).collect();
        assert_eq!(delays[0], MIN_BACKOFF);
        assert_eq!(delays[1], MIN_BACKOFF * 2);
        assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.next(), MIN_BACKOFF);
    }
}
