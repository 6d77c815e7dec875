//! Recently verified keys, so a store outage does not lock out callers it had already admitted.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use passerelle_store::{KeyRecord, unix_now};
use sha2::{Digest as _, Sha256};

/// How long a verified key is still accepted while the store cannot be reached.
pub(crate) const STALE_IF_ERROR: Duration = Duration::from_secs(600);
/// How stale an unchanged entry may grow before a verification renews its time; small beside
/// [`STALE_IF_ERROR`].
const REFRESH: Duration = Duration::from_secs(1);
/// Most keys remembered; past it the cache starts over (it only saves round trips).
const MAX_ENTRIES: usize = 10_000;

/// The cache is keyed by the SHA-256 of the presented secret, never the secret itself.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], (KeyRecord, Instant)>>,
}

impl KeyCache {
    /// The record of `presented` if it verified within [`STALE_IF_ERROR`] and has not expired
    /// since.
    pub(crate) fn get(&self, presented: &str) -> Option<KeyRecord> {
        let entries = self.lock();
        let (record, at) = entries.get(&digest(presented))?;
        (at.elapsed() < STALE_IF_ERROR && !record.is_expired(unix_now())).then(|| record.clone())
    }

    /// Remembers `record` as just verified. A key seen again with the same record within
    /// [`REFRESH`] keeps its entry: every request verifies its key, and copying the record each
    /// time bought nothing.
    pub(crate) fn insert(&self, presented: &str, record: &KeyRecord) {
        let digest = digest(presented);
        let mut entries = self.lock();
        if let Some((known, at)) = entries.get(&digest)
            && known == record
            && at.elapsed() < REFRESH
        {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(digest, (record.clone(), Instant::now()));
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
