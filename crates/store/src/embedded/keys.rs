//! API keys in the embedded store.

use std::sync::atomic::Ordering;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{EmbeddedStore, Inner, KEYS, PREFIXES, from_json, to_json};
use crate::StoreError;
use crate::keys::{
    ApiKeySecret, KeyHash, KeyRecord, KeyStore, KeyVerifier, MAX_PREFIX_DRAWS, NewKey,
    display_prefix, unix_now,
};
use crate::policy::KeyLimits;

#[derive(Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    record: KeyRecord,
    /// Hex SHA-256 of the secret; the secret itself is never written.
    sha256: String,
}

type KeysTable<'t> = redb::Table<'t, &'static str, &'static str>;

impl Inner {
    fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(prefix) = display_prefix(presented) else {
            return Ok(None);
        };
        let presented_hash = KeyHash::of(presented);
        let txn = self.db.begin_read()?;
        let Some(id) = txn
            .open_table(PREFIXES)?
            .get(prefix)?
            .map(|v| v.value().to_owned())
        else {
            return Ok(None);
        };
        let Some(stored) = load(&txn.open_table(KEYS)?, &id)? else {
            return Ok(None);
        };
        let stored_hash = KeyHash::from_hex(&stored.sha256).ok_or_else(|| corrupt_hash(&id))?;
        let valid = stored_hash.matches(&presented_hash) && stored.record.is_active(unix_now());
        Ok(valid.then_some(stored.record))
    }

    fn create(&self, new: NewKey) -> Result<(KeyRecord, ApiKeySecret), StoreError> {
        let template = new.into_record(String::new())?;
        for _ in 0..MAX_PREFIX_DRAWS {
            let secret = ApiKeySecret::generate();
            let prefix = secret.display_prefix();
            let txn = self.db.begin_write()?;
            let record = {
                let mut prefixes = txn.open_table(PREFIXES)?;
                if prefixes.get(prefix.as_str())?.is_some() {
                    continue; // dropping the transaction aborts it
                }
                let record = KeyRecord {
                    prefix: prefix.clone(),
                    ..template.clone()
                };
                prefixes.insert(prefix.as_str(), record.id.as_str())?;
                let stored = StoredKey {
                    record: record.clone(),
                    sha256: secret.hash().to_hex(),
                };
                store(&mut txn.open_table(KEYS)?, &stored)?;
                record
            };
            txn.commit()?;
            self.any_keys.store(true, Ordering::Relaxed);
            return Ok((record, secret));
        }
        Err(StoreError::PrefixCollision(MAX_PREFIX_DRAWS))
    }

    fn get(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let keys = txn.open_table(KEYS)?;
        let prefixes = txn.open_table(PREFIXES)?;
        let id = resolve(&keys, &prefixes, id_or_prefix)?;
        Ok(load(&keys, &id)?
            .ok_or_else(|| StoreError::KeyNotFound(id_or_prefix.to_owned()))?
            .record)
    }

    fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KEYS)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (id, json) = entry?;
            records.push(from_json::<StoredKey>(id.value(), json.value())?.record);
        }
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(records)
    }

    /// Applies `change` to the key's record in one write transaction.
    fn modify(
        &self,
        id_or_prefix: &str,
        change: impl FnOnce(&mut KeyRecord),
    ) -> Result<KeyRecord, StoreError> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut keys = txn.open_table(KEYS)?;
            let id = resolve(&keys, &txn.open_table(PREFIXES)?, id_or_prefix)?;
            let mut stored = load(&keys, &id)?
                .ok_or_else(|| StoreError::KeyNotFound(id_or_prefix.to_owned()))?;
            change(&mut stored.record);
            store(&mut keys, &stored)?;
            stored.record
        };
        txn.commit()?;
        Ok(record)
    }
}

/// The id of the key named by id or display prefix.
fn resolve(
    keys: &impl ReadableTable<&'static str, &'static str>,
    prefixes: &impl ReadableTable<&'static str, &'static str>,
    id_or_prefix: &str,
) -> Result<String, StoreError> {
    if keys.get(id_or_prefix)?.is_some() {
        return Ok(id_or_prefix.to_owned());
    }
    let id = prefixes.get(id_or_prefix)?.map(|v| v.value().to_owned());
    id.ok_or_else(|| StoreError::KeyNotFound(id_or_prefix.to_owned()))
}

fn load(
    table: &impl ReadableTable<&'static str, &'static str>,
    id: &str,
) -> Result<Option<StoredKey>, StoreError> {
    match table.get(id)? {
        Some(json) => from_json(id, json.value()).map(Some),
        None => Ok(None),
    }
}

fn store(table: &mut KeysTable<'_>, stored: &StoredKey) -> Result<(), StoreError> {
    let json = to_json(&stored.record.id, stored)?;
    table.insert(stored.record.id.as_str(), json.as_str())?;
    Ok(())
}

fn corrupt_hash(id: &str) -> StoreError {
    StoreError::Corrupt {
        key: id.to_owned(),
        source: serde::de::Error::custom("sha256 is not 64 hex digits"),
    }
}

#[async_trait::async_trait]
impl KeyVerifier for EmbeddedStore {
    async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError> {
        // Cheap shape check before paying for a thread hop: most wrong keys are not ours at all.
        if display_prefix(presented).is_none() {
            return Ok(None);
        }
        let presented = presented.to_owned();
        self.blocking(move |inner| inner.verify(&presented)).await
    }

    async fn has_any_keys(&self) -> Result<bool, StoreError> {
        Ok(self.inner.any_keys.load(Ordering::Relaxed))
    }
}

#[async_trait::async_trait]
impl KeyStore for EmbeddedStore {
    async fn create(&self, new: NewKey) -> Result<(KeyRecord, ApiKeySecret), StoreError> {
        self.blocking(move |inner| inner.create(new)).await
    }

    async fn get(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let id_or_prefix = id_or_prefix.to_owned();
        self.blocking(move |inner| inner.get(&id_or_prefix)).await
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.blocking(Inner::list).await
    }

    async fn revoke(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let id_or_prefix = id_or_prefix.to_owned();
        self.blocking(move |inner| {
            inner.modify(&id_or_prefix, |record| {
                record.revoked_at.get_or_insert_with(unix_now);
            })
        })
        .await
    }

    async fn update_limits(
        &self,
        id_or_prefix: &str,
        limits: KeyLimits,
    ) -> Result<KeyRecord, StoreError> {
        limits.validate()?;
        let id_or_prefix = id_or_prefix.to_owned();
        self.blocking(move |inner| inner.modify(&id_or_prefix, |record| record.limits = limits))
            .await
    }
}
