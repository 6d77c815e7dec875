//! The semantic cache: answers stored under a prompt, found again by a prompt that means the
//! same within the same namespace.
//!
//! - [`prompt`]: the exact-match key (a hash of the whitespace-normalised prompt), which answers
//!   before any embedding is computed.
//! - [`index`]: one namespace's vectors, an exact scan when small and an HNSW graph
//!   (`hnsw_rs`, with tombstones and rebuilds) when large.
//! - [`semantic`]: the pure cache — namespaces, LRU capacity bound, TTL expiry — given `now`
//!   on every call.
//! - [`request`]: checks and defaults of `CacheLookup` / `CacheStore`.
//! - [`handle`]: what the gRPC handlers share: the cache behind a mutex, the engine that embeds
//!   prompts, and the `passerelle_semantic_cache_*` metrics.

pub mod handle;
pub mod index;
mod metrics;
pub mod prompt;
pub mod request;
pub mod semantic;

use std::time::Duration;

pub use handle::CacheHandle;
pub use semantic::{EntryId, Hit, NamespaceKey, SemanticCache};

/// How big the cache may grow and what requests get when they leave a value at 0.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Entries in all namespaces together; the least recently used goes first when full.
    pub max_entries: usize,
    /// Lifetime of an entry stored with `ttl_seconds` 0.
    pub default_ttl: Duration,
    /// Cosine similarity a lookup with `min_similarity` 0 needs for a hit.
    pub default_min_similarity: f32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            default_ttl: Duration::from_secs(3600),
            default_min_similarity: 0.95,
        }
    }
}
