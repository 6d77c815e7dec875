//! The cache itself, pure: entries per namespace, their exact keys and vectors, recency and
//! expiry. No clock and no lock: every call is given `now`, so tests move time by hand, and
//! the caller ([`super::handle`]) owns the mutex.
//!
//! Bounds: at most `max_entries` in all namespaces together; a store into a full cache first
//! evicts the least recently used entry (stored or hit). An entry expires at `created + ttl`;
//! every call first sweeps what has expired by `now`, so an expired entry never answers.
//! Storing a prompt whose exact key is already in the namespace replaces that entry.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    index::{DimensionMismatch, IndexTuning, VectorIndex},
    prompt::PromptKey,
};

/// Where entries live: only a lookup with the same namespace and generating model finds them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespaceKey {
    /// The gateway's tenant-and-parameters namespace.
    pub namespace: String,
    /// The generating model the answers came from.
    pub model: String,
}

/// An entry's id: a sequence number, shown to clients in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A cached answer found by a lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: EntryId,
    pub response_json: Arc<str>,
    /// 1.0 for an exact match.
    pub similarity: f32,
}

/// What a vector lookup found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Nearest {
    /// The closest entry, when it reached the threshold.
    pub hit: Option<Hit>,
    /// Similarity of the closest entry, hit or not; `None` when the namespace had none.
    pub best_similarity: Option<f32>,
}

/// Entries removed by a bound since the last [`SemanticCache::take_evictions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evictions {
    pub ttl: u64,
    pub capacity: u64,
}

/// Bounds of one cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Entries in all namespaces together (at least 1).
    pub max_entries: usize,
    /// Lifetime of an entry stored without one.
    pub default_ttl: Duration,
}

#[derive(Debug)]
struct Entry {
    namespace: Arc<NamespaceKey>,
    prompt: PromptKey,
    response_json: Arc<str>,
    created: Instant,
    expires: Instant,
    /// Position in `SemanticCache::recency`.
    last_used: u64,
}

#[derive(Debug, Default)]
struct Namespace {
    exact: HashMap<PromptKey, EntryId>,
    /// Created with the first vector stored, which fixes the dimension.
    index: Option<VectorIndex>,
    entries: usize,
}

/// Cached answers keyed by namespace and prompt meaning.
#[derive(Debug)]
pub struct SemanticCache {
    limits: Limits,
    tuning: IndexTuning,
    entries: HashMap<EntryId, Entry>,
    namespaces: HashMap<Arc<NamespaceKey>, Namespace>,
    /// Least recently used first.
    recency: BTreeMap<u64, EntryId>,
    /// Soonest expiry first.
    expiries: BTreeSet<(Instant, EntryId)>,
    next_id: u64,
    next_use: u64,
    evictions: Evictions,
}

impl SemanticCache {
    pub fn new(limits: Limits) -> Self {
        Self::with_tuning(limits, IndexTuning::default())
    }

    /// A cache whose indexes switch to HNSW and rebuild as `tuning` says.
    pub fn with_tuning(limits: Limits, tuning: IndexTuning) -> Self {
        Self {
            limits: Limits {
                max_entries: limits.max_entries.max(1),
                ..limits
            },
            tuning,
            entries: HashMap::new(),
            namespaces: HashMap::new(),
            recency: BTreeMap::new(),
            expiries: BTreeSet::new(),
            next_id: 0,
            next_use: 0,
            evictions: Evictions::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: EntryId) -> bool {
        self.entries.contains_key(&id)
    }

    /// When the entry was stored.
    pub fn created(&self, id: EntryId) -> Option<Instant> {
        self.entries.get(&id).map(|entry| entry.created)
    }

    /// Evictions since the last call, for the metrics.
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evictions)
    }

    /// The entry stored under exactly this prompt (after normalising), if any.
    pub fn lookup_exact(
        &mut self,
        namespace: &NamespaceKey,
        prompt: &PromptKey,
        now: Instant,
    ) -> Option<Hit> {
        self.sweep(now);
        let id = *self.namespaces.get(namespace)?.exact.get(prompt)?;
        Some(self.hit(id, 1.0))
    }

    /// The entry whose prompt vector is closest to `vector`; a hit when its similarity is at
    /// least `min_similarity`.
    pub fn lookup_nearest(
        &mut self,
        namespace: &NamespaceKey,
        vector: &[f32],
        min_similarity: f32,
        now: Instant,
    ) -> Nearest {
        self.sweep(now);
        let Some(best) = self
            .namespaces
            .get_mut(namespace)
            .and_then(|ns| ns.index.as_mut())
            .and_then(|index| {
                index.poll_rebuild();
                index.nearest(vector)
            })
        else {
            return Nearest::default();
        };
        let similarity = best.similarity.min(1.0);
        Nearest {
            hit: (similarity >= min_similarity).then(|| self.hit(EntryId(best.id), similarity)),
            best_similarity: Some(similarity),
        }
    }

    /// Stores an answer. `vector` is the prompt's unit embedding, or `None` for an entry only
    /// an exact lookup may find. `ttl` is the default's when `None`.
    pub fn store(
        &mut self,
        namespace: NamespaceKey,
        prompt: PromptKey,
        vector: Option<&[f32]>,
        response_json: Arc<str>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<EntryId, DimensionMismatch> {
        // Checked before anything changes, so a refused store leaves the cache as it was.
        if let (Some(vector), Some(index)) = (
            vector,
            self.namespaces
                .get(&namespace)
                .and_then(|ns| ns.index.as_ref()),
        ) && vector.len() != index.dimension()
        {
            return Err(DimensionMismatch {
                expected: index.dimension(),
                found: vector.len(),
            });
        }
        self.sweep(now);
        if let Some(old) = self
            .namespaces
            .get(&namespace)
            .and_then(|ns| ns.exact.get(&prompt))
            .copied()
        {
            self.remove(old);
        }
        while self.entries.len() >= self.limits.max_entries {
            let Some((_, lru)) = self.recency.first_key_value() else {
                break;
            };
            self.remove(*lru);
            self.evictions.capacity += 1;
        }

        let id = EntryId(self.next_id);
        self.next_id += 1;
        let ttl = ttl.unwrap_or(self.limits.default_ttl);
        // A lifetime past what `Instant` can represent is as good as forever.
        let expires = now
            .checked_add(ttl)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let (namespace, ns) = match self.namespaces.get_key_value(&namespace) {
            Some((key, _)) => {
                let key = Arc::clone(key);
                let ns = self.namespaces.get_mut(&key).expect("just found");
                (key, ns)
            }
            None => {
                let key = Arc::new(namespace);
                let ns = self.namespaces.entry(Arc::clone(&key)).or_default();
                (key, ns)
            }
        };
        if let Some(vector) = vector {
            ns.index
                .get_or_insert_with(|| VectorIndex::new(vector.len(), self.tuning))
                .insert(id.0, vector)?;
        }
        ns.exact.insert(prompt, id);
        ns.entries += 1;
        let last_used = self.next_use;
        self.next_use += 1;
        self.recency.insert(last_used, id);
        self.expiries.insert((expires, id));
        self.entries.insert(
            id,
            Entry {
                namespace,
                prompt,
                response_json,
                created: now,
                expires,
                last_used,
            },
        );
        Ok(id)
    }

    /// Removes every entry expired by `now`; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some(&(expires, id)) = self.expiries.first() {
            if expires > now {
                break;
            }
            self.remove(id);
            expired += 1;
        }
        self.evictions.ttl += expired as u64;
        expired
    }

    /// Marks `id` used now and returns it as a hit.
    fn hit(&mut self, id: EntryId, similarity: f32) -> Hit {
        let entry = self
            .entries
            .get_mut(&id)
            .expect("indexes only name live entries");
        self.recency.remove(&entry.last_used);
        entry.last_used = self.next_use;
        self.next_use += 1;
        self.recency.insert(entry.last_used, id);
        Hit {
            id,
            response_json: Arc::clone(&entry.response_json),
            similarity,
        }
    }

    fn remove(&mut self, id: EntryId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        self.recency.remove(&entry.last_used);
        self.expiries.remove(&(entry.expires, id));
        let Some(ns) = self.namespaces.get_mut(&entry.namespace) else {
            return;
        };
        if ns.exact.get(&entry.prompt) == Some(&id) {
            ns.exact.remove(&entry.prompt);
        }
        if let Some(index) = &mut ns.index {
            index.remove(id.0);
        }
        ns.entries -= 1;
        if ns.entries == 0 {
            self.namespaces.remove(&entry.namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn ns(name: &str) -> NamespaceKey {
        NamespaceKey {
            namespace: name.to_owned(),
            model: "llm".to_owned(),
        }
    }

    fn cache(max_entries: usize) -> SemanticCache {
        SemanticCache::new(Limits {
            max_entries,
            default_ttl: HOUR,
        })
    }

    fn unit(angle: f32) -> [f32; 2] {
        [angle.cos(), angle.sin()]
    }

    fn store(
        cache: &mut SemanticCache,
        ns_name: &str,
        prompt: &str,
        v: [f32; 2],
        now: Instant,
    ) -> EntryId {
        cache
            .store(
                ns(ns_name),
                PromptKey::of(prompt),
                Some(&v),
                prompt.into(),
                None,
                now,
            )
            .unwrap()
    }

    #[test]
    fn exact_lookups_match_normalised_prompts_within_their_namespace_only() {
        let now = Instant::now();
        let mut cache = cache(10);
        let id = store(&mut cache, "a", "reset my password", unit(0.0), now);
        let hit = cache
            .lookup_exact(&ns("a"), &PromptKey::of("  reset my\tpassword "), now)
            .unwrap();
        assert_eq!((hit.id, hit.similarity), (id, 1.0));
        assert_eq!(&*hit.response_json, "reset my password");
        assert_eq!(
            cache.lookup_exact(&ns("b"), &PromptKey::of("reset my password"), now),
            None
        );
        let other_model = NamespaceKey {
            model: "other".to_owned(),
            ..ns("a")
        };
        assert_eq!(
            cache.lookup_exact(&other_model, &PromptKey::of("reset my password"), now),
            None
        );
        assert_eq!(
            cache.lookup_nearest(&ns("b"), &unit(0.0), 0.5, now),
            Nearest::default()
        );
    }

    #[test]
    fn nearest_hits_only_at_or_above_the_threshold() {
        let now = Instant::now();
        let mut cache = cache(10);
        let id = store(&mut cache, "a", "x", unit(0.0), now);
        store(&mut cache, "a", "y", unit(1.5), now);
        let near = unit(0.2); // cos 0.2 = 0.980
        let found = cache.lookup_nearest(&ns("a"), &near, 0.95, now);
        assert_eq!(found.hit.as_ref().unwrap().id, id);
        assert!((found.best_similarity.unwrap() - 0.2f32.cos()).abs() < 1e-6);
        let strict = cache.lookup_nearest(&ns("a"), &near, 0.99, now);
        assert_eq!(strict.hit, None);
        assert!(strict.best_similarity.is_some());
    }

    #[test]
    fn storing_the_same_prompt_again_replaces_the_entry() {
        let now = Instant::now();
        let mut cache = cache(10);
        let first = store(&mut cache, "a", "q", unit(0.0), now);
        let second = cache
            .store(
                ns("a"),
                PromptKey::of("q "),
                Some(&unit(0.0)),
                "new".into(),
                None,
                now,
            )
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(cache.len(), 1);
        assert!(!cache.contains(first));
        let hit = cache
            .lookup_nearest(&ns("a"), &unit(0.0), 0.9, now)
            .hit
            .unwrap();
        assert_eq!((hit.id, &*hit.response_json), (second, "new"));
        assert_eq!(cache.take_evictions(), Evictions::default());
    }

    #[test]
    fn entries_expire_at_their_ttl_and_never_hit_after() {
        let t0 = Instant::now();
        let mut cache = cache(10);
        let short = cache
            .store(
                ns("a"),
                PromptKey::of("short"),
                Some(&unit(0.0)),
                "s".into(),
                Some(Duration::from_secs(10)),
                t0,
            )
            .unwrap();
        let long = store(&mut cache, "a", "long", unit(1.0), t0);
        assert_eq!(cache.created(short), Some(t0));
        let before = t0 + Duration::from_secs(9);
        assert!(
            cache
                .lookup_exact(&ns("a"), &PromptKey::of("short"), before)
                .is_some()
        );
        let after = t0 + Duration::from_secs(10);
        assert_eq!(
            cache.lookup_exact(&ns("a"), &PromptKey::of("short"), after),
            None
        );
        // Not even as the nearest vector: it is gone, the other entry is the best left.
        let nearest = cache.lookup_nearest(&ns("a"), &unit(0.0), 0.0, after);
        assert_eq!(nearest.hit.unwrap().id, long);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.take_evictions(),
            Evictions {
                ttl: 1,
                capacity: 0
            }
        );
        // The default TTL applies to the other.
        assert_eq!(cache.sweep(t0 + HOUR - Duration::from_millis(1)), 0);
        assert_eq!(cache.sweep(t0 + HOUR), 1);
        assert!(cache.is_empty());
        assert_eq!(
            cache.take_evictions(),
            Evictions {
                ttl: 1,
                capacity: 0
            }
        );
    }

    #[test]
    fn a_full_cache_evicts_exactly_the_least_recently_used() {
        let now = Instant::now();
        let mut cache = cache(3);
        let a = store(&mut cache, "one", "a", unit(0.0), now);
        let b = store(&mut cache, "two", "b", unit(1.0), now);
        let c = store(&mut cache, "one", "c", unit(2.0), now);
        // A hit makes `a` recent: `b` is now the least recently used.
        assert!(
            cache
                .lookup_exact(&ns("one"), &PromptKey::of("a"), now)
                .is_some()
        );
        let d = store(&mut cache, "one", "d", unit(3.0), now);
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains(b));
        assert!(cache.contains(a) && cache.contains(c) && cache.contains(d));
        // A semantic hit counts as use too.
        assert_eq!(
            cache
                .lookup_nearest(&ns("one"), &unit(2.0), 0.99, now)
                .hit
                .unwrap()
                .id,
            c
        );
        let e = store(&mut cache, "one", "e", unit(4.0), now);
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains(a));
        assert!(cache.contains(c) && cache.contains(d) && cache.contains(e));
        assert_eq!(
            cache.take_evictions(),
            Evictions {
                ttl: 0,
                capacity: 2
            }
        );
        // The evicted entries are gone from their namespaces' lookups too.
        assert_eq!(
            cache.lookup_exact(&ns("two"), &PromptKey::of("b"), now),
            None
        );
        assert_eq!(
            cache
                .lookup_nearest(&ns("one"), &unit(4.1), 0.99, now)
                .hit
                .unwrap()
                .id,
            e
        );
    }

    #[test]
    fn prompts_without_a_vector_are_found_only_exactly() {
        let now = Instant::now();
        let mut cache = cache(10);
        let id = cache
            .store(ns("a"), PromptKey::of("long"), None, "r".into(), None, now)
            .unwrap();
        assert_eq!(
            cache.lookup_nearest(&ns("a"), &unit(0.0), 0.0, now),
            Nearest::default()
        );
        assert_eq!(
            cache
                .lookup_exact(&ns("a"), &PromptKey::of("long"), now)
                .unwrap()
                .id,
            id
        );
    }

    #[test]
    fn a_vector_of_another_dimension_is_refused_without_changing_anything() {
        let now = Instant::now();
        let mut cache = cache(1);
        let id = store(&mut cache, "a", "x", unit(0.0), now);
        let err = cache
            .store(
                ns("a"),
                PromptKey::of("y"),
                Some(&[1.0, 0.0, 0.0]),
                "r".into(),
                None,
                now,
            )
            .unwrap_err();
        assert_eq!(
            err,
            DimensionMismatch {
                expected: 2,
                found: 3
            }
        );
        assert!(cache.contains(id));
    }

    #[test]
    fn hnsw_namespaces_stay_right_through_eviction_and_expiry() {
        use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut cache = SemanticCache::with_tuning(
            Limits {
                max_entries: 60,
                default_ttl: HOUR,
            },
            IndexTuning {
                scan_threshold: 8,
                rebuild_fraction: 0.25,
                ..IndexTuning::default()
            },
        );
        let mut vectors = Vec::new();
        for i in 0..150u32 {
            let mut v: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
            crate::vector::l2_normalize(&mut v);
            let now = t0 + Duration::from_secs(u64::from(i));
            let ttl = (i % 3 == 0).then_some(Duration::from_secs(20));
            let id = cache
                .store(
                    ns("a"),
                    PromptKey::of(&i.to_string()),
                    Some(&v),
                    i.to_string().into(),
                    ttl,
                    now,
                )
                .unwrap();
            vectors.push((id, v));
            assert!(cache.len() <= 60);
            // Every live entry is its own nearest; every removed one is never returned.
            for (id, v) in &vectors {
                let found = cache.lookup_nearest(&ns("a"), v, 0.999, now);
                match found.hit {
                    Some(hit) => {
                        assert!(cache.contains(*id));
                        assert_eq!(hit.id, *id);
                    }
                    None => assert!(!cache.contains(*id), "{id} live but missed"),
                }
            }
        }
        let evictions = cache.take_evictions();
        assert!(evictions.ttl > 0 && evictions.capacity > 0, "{evictions:?}");
    }
}
