//! One verifier over the operator's static keys and a durable store.

use std::sync::Arc;

use crate::StoreError;
use crate::keys::{KeyRecord, KeyStore, KeyVerifier};
use crate::static_keys::StaticKeys;

/// Accepts a key when either the static set or the store does. This is what the gateway holds.
#[derive(Clone, Default)]
pub struct Keyring {
    static_keys: StaticKeys,
    store: Option<Arc<dyn KeyStore>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("static_keys", &self.static_keys.len())
            .field("store", &self.store.is_some())
            .finish()
    }
}

impl Keyring {
    /// A keyring over static keys and, optionally, a durable store.
    pub fn new(static_keys: StaticKeys, store: Option<Arc<dyn KeyStore>>) -> Self {
        Self { static_keys, store }
    }

    /// The operator's static keys.
    pub fn static_keys(&self) -> &StaticKeys {
        &self.static_keys
    }

    /// The durable store, for managing keys.
    pub fn store(&self) -> Option<&Arc<dyn KeyStore>> {
        self.store.as_ref()
    }
}

#[async_trait::async_trait]
impl KeyVerifier for Keyring {
    async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(record) = self.static_keys.find(presented) {
            return Ok(Some(record));
        }
        match &self.store {
            Some(store) => store.verify(presented).await,
            None => Ok(None),
        }
    }

    async fn has_any_keys(&self) -> Result<bool, StoreError> {
        if !self.static_keys.is_empty() {
            return Ok(true);
        }
        match &self.store {
            Some(store) => store.has_any_keys().await,
            None => Ok(false),
        }
    }
}
