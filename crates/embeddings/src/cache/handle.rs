//! The cache as the gRPC handlers share it: the pure [`SemanticCache`] behind a mutex, the
//! engine that embeds prompts, and the metrics.
//!
//! A `std::sync::Mutex` rather than an actor: every cache call is a short synchronous step
//! (a hash lookup, or one index search of well under a millisecond) and never awaits, so a lock
//! costs less than a channel round trip. Embedding a prompt, the slow part, happens before the
//! lock is taken. The steps still run on tokio's blocking pool because a store or a sweep can
//! now and then (re)build a namespace's HNSW graph, which takes longer than a runtime worker
//! should be held. A panic inside the lock leaves the maps in doubt: the next call starts the
//! cache afresh, since a cache only saves work and an empty one is always correct.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::Registry;

use super::{
    CacheConfig,
    metrics::{CacheMetrics, LookupResult},
    prompt::PromptKey,
    record::SharedEntry,
    request::{LookupQuery, StoreCommand},
    semantic::{EntryId, Hit, Limits, SemanticCache},
    shared::SharedLog,
};
use crate::{engine::EmbeddingHandle, error::EmbeddingsError, request::EmbedOptions};

/// A cloneable handle on one service's semantic cache.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    core: Core,
    engine: EmbeddingHandle,
    /// The Redis log, when configured; its tasks stop when the last handle goes.
    shared: Option<Arc<SharedLog>>,
}

/// The cache, its configuration and metrics: what the Redis follower needs to apply other
/// replicas' entries, without the handle whose last drop stops that follower.
#[derive(Debug, Clone)]
pub(super) struct Core {
    cache: Arc<Mutex<SemanticCache>>,
    config: CacheConfig,
    metrics: CacheMetrics,
}

impl CacheHandle {
    /// An empty cache whose prompts `engine` embeds; metrics are registered on `registry`.
    /// With `config.redis` set, it also replays and follows the shared log in the background
    /// (which needs a tokio runtime) and appends what it stores to it.
    pub fn new(
        config: CacheConfig,
        engine: EmbeddingHandle,
        registry: &Registry,
    ) -> Result<Self, EmbeddingsError> {
        let metrics = CacheMetrics::register(registry)?;
        let core = Core {
            cache: Arc::new(Mutex::new(SemanticCache::new(limits(&config)))),
            config,
            metrics,
        };
        let shared = match &core.config.redis {
            Some(redis) => Some(Arc::new(SharedLog::start(
                redis,
                engine.model_id(),
                core.clone(),
                registry,
            )?)),
            None => None,
        };
        Ok(Self {
            core,
            engine,
            shared,
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.core.config
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        lock(&self.core.cache, &self.core.config).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached answer for `query`: an exact match of the normalised prompt first, without
    /// embedding it; otherwise the nearest entry by meaning, when close enough.
    pub async fn lookup(&self, query: LookupQuery) -> Result<Option<Hit>, EmbeddingsError> {
        let key = PromptKey::of(&query.prompt);
        let namespace = query.namespace.clone();
        let exact = self
            .core
            .run(move |cache, now| cache.lookup_exact(&namespace, &key, now))
            .await?;
        if let Some(hit) = exact {
            self.core
                .metrics
                .lookup(LookupResult::HitExact, Some(hit.similarity));
            return Ok(Some(hit));
        }
        let Some(vector) = self.embed(query.prompt).await? else {
            // Truncated: its embedding stands for only part of it, so only an exact match may answer.
            self.core.metrics.lookup(LookupResult::Miss, None);
            return Ok(None);
        };
        let LookupQuery {
            namespace,
            min_similarity,
            ..
        } = query;
        let nearest = self
            .core
            .run(move |cache, now| cache.lookup_nearest(&namespace, &vector, min_similarity, now))
            .await?;
        let result = match nearest.hit {
            Some(_) => LookupResult::HitSemantic,
            None => LookupResult::Miss,
        };
        self.core.metrics.lookup(result, nearest.best_similarity);
        Ok(nearest.hit)
    }

    /// Stores an answer under the prompt's exact key and, unless the prompt was too long for
    /// the model, its embedding.
    pub async fn store(&self, command: StoreCommand) -> Result<EntryId, EmbeddingsError> {
        let key = PromptKey::of(&command.prompt);
        let vector = self.embed(command.prompt).await?;
        let StoreCommand {
            namespace,
            response_json,
            ttl,
            ..
        } = command;
        let response_json: Arc<str> = response_json.into();
        // What the log needs is kept before the cache takes the vector and the answer.
        let shared = self.shared.as_ref().map(|log| {
            let created_ms = unix_millis(SystemTime::now());
            (
                log,
                SharedEntry {
                    replica: log.replica(),
                    namespace: namespace.clone(),
                    prompt: key,
                    vector: vector.clone(),
                    response_json: Arc::clone(&response_json),
                    created_ms,
                    expires_ms: created_ms
                        .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
                },
            )
        });
        let stored = self
            .core
            .run(move |cache, now| {
                cache.store(
                    namespace,
                    key,
                    vector.as_deref(),
                    response_json,
                    Some(ttl),
                    now,
                )
            })
            .await??;
        if let Some((log, entry)) = shared {
            log.publish(entry);
        }
        Ok(stored)
    }

    /// Removes expired entries now rather than at the next call.
    pub async fn sweep(&self) -> Result<usize, EmbeddingsError> {
        self.core.run(|cache, now| cache.sweep(now)).await
    }

    /// Whether the last exchange with the Redis log went through; `None` without Redis.
    pub fn redis_healthy(&self) -> Option<bool> {
        self.shared.as_ref().map(|log| log.healthy())
    }

    /// The prompt's unit vector, or `None` when the model truncated it.
    async fn embed(&self, prompt: String) -> Result<Option<Vec<f32>>, EmbeddingsError> {
        let options = EmbedOptions {
            normalize: true,
            dimensions: None,
        };
        let mut embedded = self.engine.embed(vec![prompt], options).await?;
        if embedded.truncated.first().copied().unwrap_or(false) {
            return Ok(None);
        }
        Ok(embedded.vectors.pop())
    }
}

impl Core {
    /// The entry bound, which the Redis log's length follows.
    pub(super) fn max_entries(&self) -> usize {
        self.config.max_entries
    }

    /// Runs `step` under the lock on the blocking pool, then updates the metrics it moved.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        step: impl FnOnce(&mut SemanticCache, Instant) -> R + Send + 'static,
    ) -> Result<R, EmbeddingsError> {
        let cache = Arc::clone(&self.cache);
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut cache = lock(&cache, &config);
            let result = step(&mut cache, Instant::now());
            let evictions = cache.take_evictions();
            metrics.after(cache.len(), evictions);
            result
        })
        .await
        .map_err(|err| EmbeddingsError::CacheTask(err.to_string()))
    }

    /// Stores entries other replicas wrote, each for what remains of its lifetime, except
    /// those already expired.
    pub(super) async fn apply(
        &self,
        entries: Vec<SharedEntry>,
    ) -> Result<Applied, EmbeddingsError> {
        let now_ms = unix_millis(SystemTime::now());
        self.run(move |cache, now| {
            let mut applied = Applied::default();
            for entry in entries {
                let Some(left) = entry.expires_ms.checked_sub(now_ms).filter(|&ms| ms > 0) else {
                    applied.expired += 1;
                    continue;
                };
                let result = cache.store(
                    entry.namespace,
                    entry.prompt,
                    entry.vector.as_deref(),
                    entry.response_json,
                    Some(Duration::from_millis(left)),
                    now,
                );
                match result {
                    Ok(_) => applied.stored += 1,
                    // Another embedding model under the same key prefix and model id, or a bug.
                    Err(err) => {
                        applied.refused += 1;
                        tracing::warn!(error = %err, "skipped a shared cache entry");
                    }
                }
            }
            applied
        })
        .await
    }
}

/// What [`Core::apply`] did with a page of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Applied {
    pub stored: u64,
    pub expired: u64,
    pub refused: u64,
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub(super) fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

fn limits(config: &CacheConfig) -> Limits {
    Limits {
        max_entries: config.max_entries,
        default_ttl: config.default_ttl,
    }
}

/// The cache, started afresh if a panic poisoned it (see the module doc).
fn lock<'a>(
    cache: &'a Mutex<SemanticCache>,
    config: &CacheConfig,
) -> MutexGuard<'a, SemanticCache> {
    cache.lock().unwrap_or_else(|poisoned| {
        tracing::error!("the semantic cache panicked during an update; starting it empty");
        let mut guard = poisoned.into_inner();
        *guard = SemanticCache::new(limits(config));
        cache.clear_poison();
        guard
    })
}
