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
    time::Instant,
};

use prometheus::Registry;

use super::{
    CacheConfig,
    metrics::{CacheMetrics, LookupResult},
    prompt::PromptKey,
    request::{LookupQuery, StoreCommand},
    semantic::{EntryId, Hit, Limits, SemanticCache},
};
use crate::{engine::EmbeddingHandle, error::EmbeddingsError, request::EmbedOptions};

/// A cloneable handle on one service's semantic cache.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    cache: Arc<Mutex<SemanticCache>>,
    config: CacheConfig,
    engine: EmbeddingHandle,
    metrics: CacheMetrics,
}

impl CacheHandle {
    /// An empty cache whose prompts `engine` embeds; metrics are registered on `registry`.
    pub fn new(
        config: CacheConfig,
        engine: EmbeddingHandle,
        registry: &Registry,
    ) -> Result<Self, EmbeddingsError> {
        let metrics = CacheMetrics::register(registry)?;
        Ok(Self {
            cache: Arc::new(Mutex::new(SemanticCache::new(limits(&config)))),
            config,
            engine,
            metrics,
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        lock(&self.cache, &self.config).len()
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
            .run(move |cache, now| cache.lookup_exact(&namespace, &key, now))
            .await?;
        if let Some(hit) = exact {
            self.metrics
                .lookup(LookupResult::HitExact, Some(hit.similarity));
            return Ok(Some(hit));
        }
        let Some(vector) = self.embed(query.prompt).await? else {
            // Truncated: its embedding stands for only part of it, so only an exact match may answer.
            self.metrics.lookup(LookupResult::Miss, None);
            return Ok(None);
        };
        let LookupQuery {
            namespace,
            min_similarity,
            ..
        } = query;
        let nearest = self
            .run(move |cache, now| cache.lookup_nearest(&namespace, &vector, min_similarity, now))
            .await?;
        let result = match nearest.hit {
            Some(_) => LookupResult::HitSemantic,
            None => LookupResult::Miss,
        };
        self.metrics.lookup(result, nearest.best_similarity);
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
        let stored = self
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
            .await?;
        Ok(stored?)
    }

    /// Removes expired entries now rather than at the next call.
    pub async fn sweep(&self) -> Result<usize, EmbeddingsError> {
        self.run(|cache, now| cache.sweep(now)).await
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

    /// Runs `step` under the lock on the blocking pool, then updates the metrics it moved.
    async fn run<R: Send + 'static>(
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
