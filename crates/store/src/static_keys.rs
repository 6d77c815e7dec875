//! Operator-supplied plaintext keys (for example `PASSERELLE_API_KEYS`), held only as hashes.

use crate::StoreError;
use crate::keys::{KeyHash, KeyRecord, KeyVerifier};
use crate::policy::{KeyLimits, Scope};

/// The owner of every static key.
pub const STATIC_OWNER: &str = "static";

/// A fixed set of keys given in plaintext by the operator. The plaintext is hashed at load and
/// dropped; records are named by position (`static-1`, ...) rather than by any part of the key,
/// since operator-chosen keys may be short enough for a fragment to matter.
///
/// These are the operator's bootstrap keys: each is owned by [`STATIC_OWNER`] and holds every
/// scope, [`Scope::Admin`] included, with no model allowlist, expiry or limits, so that the
/// first stored keys can be created through the admin API with one of them.
#[derive(Default, Clone)]
pub struct StaticKeys {
    keys: Vec<(KeyHash, KeyRecord)>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("len", &self.keys.len())
            .finish()
    }
}

impl StaticKeys {
    /// Hashes each key. Surrounding whitespace is trimmed, empty entries are skipped (so a
    /// trailing comma in a list is harmless) and duplicates are kept once.
    pub fn from_plaintext<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut hashes: Vec<KeyHash> = Vec::new();
        for key in keys {
            let key = key.as_ref().trim();
            if key.is_empty() {
                continue;
            }
            let hash = KeyHash::of(key);
            if !hashes.iter().any(|h| h.matches(&hash)) {
                hashes.push(hash);
            }
        }
        let keys = hashes
            .into_iter()
            .enumerate()
            .map(|(i, hash)| {
                let record = KeyRecord {
                    id: format!("static-{}", i + 1),
                    name: "static".to_owned(),
                    owner: STATIC_OWNER.to_owned(),
                    prefix: format!("static-{}", i + 1),
                    created_at: 0,
                    revoked_at: None,
                    scopes: Scope::ALL.into_iter().collect(),
                    models: None,
                    expires_at: None,
                    limits: KeyLimits::default(),
                    safety: None,
                };
                (hash, record)
            })
            .collect();
        Self { keys }
    }

    /// Splits a comma-separated list, as `PASSERELLE_API_KEYS` holds it, then as
    /// [`StaticKeys::from_plaintext`].
    pub fn from_comma_separated(list: &str) -> Self {
        Self::from_plaintext(list.split(','))
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key was given.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The matching record.
    pub fn find(&self, presented: &str) -> Option<KeyRecord> {
        self.position(presented)
            .map(|index| self.keys[index].1.clone())
    }

    /// Where the matching key's record is in [`StaticKeys::records`], comparing against every
    /// key so timing does not reveal which (or whether an early one) matched.
    pub fn position(&self, presented: &str) -> Option<usize> {
        let presented = KeyHash::of(presented);
        let mut found = None;
        for (index, (hash, _)) in self.keys.iter().enumerate() {
            if hash.matches(&presented) {
                found = Some(index);
            }
        }
        found
    }

    /// Every key's record, in the order the keys were given.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &KeyRecord> {
        self.keys.iter().map(|(_, record)| record)
    }
}

#[async_trait::async_trait]
impl KeyVerifier for StaticKeys {
    async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.find(presented))
    }

    async fn has_any_keys(&self) -> Result<bool, StoreError> {
        Ok(!self.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_listed_keys() {
        let keys = StaticKeys::from_plaintext(["alpha", "beta"]);
        assert_eq!(keys.find("alpha").unwrap().id, "static-1");
        assert_eq!(keys.find("beta").unwrap().id, "static-2");
        let record = keys.find("alpha").unwrap();
        assert_eq!(record.owner, STATIC_OWNER);
        assert!(record.allows_scope(Scope::Admin) && record.allows_scope(Scope::Chat));
        assert!(keys.find("gamma").is_none());
        assert!(keys.find("").is_none());
        assert!(keys.find("alpha ").is_none());
    }

    #[test]
    fn positions_index_the_records() {
        let keys = StaticKeys::from_plaintext(["alpha", "beta"]);
        let ids: Vec<&str> = keys.records().map(|record| record.id.as_str()).collect();
        assert_eq!(ids, ["static-1", "static-2"]);
        assert_eq!(keys.position("beta"), Some(1));
        assert_eq!(keys.position("gamma"), None);
    }

    #[test]
    fn trims_skips_empty_and_dedups() {
        let keys = StaticKeys::from_comma_separated(" alpha, ,beta,alpha,");
        assert_eq!(keys.len(), 2);
        assert!(keys.find("alpha").is_some());
        assert!(StaticKeys::from_comma_separated("").is_empty());
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let keys = StaticKeys::from_plaintext(["supersecret"]);
        assert_eq!(format!("{keys:?}"), "StaticKeys { len: 1 }");
    }
}
