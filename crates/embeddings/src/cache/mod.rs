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
//! - [`record`] and [`shared`]: optional sharing through Redis ([`CacheRedisConfig`]): every
//!   stored entry is appended to a Redis Stream that each replica replays at start and then
//!   follows, so replicas answer from one another's entries and a restart keeps them.

pub mod handle;
pub mod index;
mod metrics;
pub mod prompt;
pub mod record;
pub mod request;
pub mod semantic;
mod shared;

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
    /// Share entries with the other replicas through Redis, and keep them across restarts;
    /// `None` keeps the cache in this process only.
    pub redis: Option<CacheRedisConfig>,
}

/// Where the cache's shared log lives in Redis.
#[derive(Clone, PartialEq)]
pub struct CacheRedisConfig {
    /// `redis://[user:password@]host:port/[db]`.
    pub url: String,
    /// The log is the stream `<key_prefix>:cache:<embedding model id>:log`.
    pub key_prefix: String,
}

impl CacheRedisConfig {
    /// The given server with the default key prefix, `passerelle`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "passerelle".to_owned(),
        }
    }
}

impl std::fmt::Debug for CacheRedisConfig {
    /// Without the password the URL may carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***{}", &self.url[..scheme], &self.url[at..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("CacheRedisConfig")
            .field("url", &url)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            default_ttl: Duration::from_secs(3600),
            default_min_similarity: 0.95,
            redis: None,
        }
    }
}
