//! Recently verified keys, so a store outage does not lock out callers it had already admitted.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use passerelle_store::{KeyRecord, unix_now};
use sha2::{Digest as _, Sha256};

/// Age under which a cached key counts as fresh.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(30);
/// How long a verified key is still accepted while the store cannot be reached.
pub(crate) const STALE_IF_ERROR: Duration = Duration::from_secs(600);
/// Most keys remembered; past it the cache starts over (it only saves round trips).
const MAX_ENTRIES: usize = 10_000;

/// The cache is keyed by the SHA-256 of the presented secret, never the secret itself.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], (KeyRecord, Instant)>>,
}

/// What the cache knows of a presented key.
pub(crate) enum Cached {
    Fresh(KeyRecord),
    Stale(KeyRecord),
    Unknown,
}

impl KeyCache {
    pub(crate) fn get(&self, presented: &str) -> Cached {
        let digest = digest(presented);
        let entries = self.lock();
        let Some((record, at)) = entries.get(&digest) else {
            return Cached::Unknown;
        };
        if record.is_expired(unix_now()) {
            return Cached::Unknown;
        }
        let age = at.elapsed();
        if age < FRESH_FOR {
            Cached::Fresh(record.clone())
        } else if age < STALE_IF_ERROR {
            Cached::Stale(record.clone())
        } else {
            Cached::Unknown
        }
    }

    pub(crate) fn insert(&self, presented: &str, record: KeyRecord) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(digest(presented), (record, Instant::now()));
    }

    pub(crate) fn remove(&self, presented: &str) {
        self.lock().remove(&digest(presented));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (KeyRecord, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn digest(presented: &str) -> [u8; 32] {
    Sha256::digest(presented.as_bytes()).into()
}
