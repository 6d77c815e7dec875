//! [`KeyStore`] on an embedded `redb` file, for single-node deployments.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::keys::{
    ApiKeySecret, KeyHash, KeyRecord, KeyStore, KeyVerifier, display_prefix, unix_now,
    validate_name,
};

/// The database file inside the data directory; later kinds of state share it.
pub const DATABASE_FILE: &str = "passerelle.redb";

/// Key id -> [`StoredKey`] as JSON (JSON so the format can grow fields without a migration).
const KEYS: TableDefinition<'_, &str, &str> = TableDefinition::new("api_keys");
/// Display prefix -> key id, so verification finds its candidate without scanning.
const PREFIXES: TableDefinition<'_, &str, &str> = TableDefinition::new("api_key_prefixes");

/// A fresh secret whose display prefix is already taken is redrawn; with 62^8 prefixes a second
/// collision in a row means the random source is broken, and we stop rather than loop.
const MAX_PREFIX_DRAWS: usize = 4;

#[derive(Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    record: KeyRecord,
    /// Hex SHA-256 of the secret; the secret itself is never written.
    sha256: String,
}

/// API keys in a `redb` file under a data directory. Cheap to clone; clones share the file.
///
/// redb takes an exclusive lock on the file, so only one process can open a data directory at
/// a time: the CLI's key commands cannot run beside a gateway using the same directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Keys are never deleted, so once one exists this stays true and saves the lookup.
    any_keys: AtomicBool,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`, in the file [`DATABASE_FILE`].
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DATABASE_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.clone()),
            other => other.into(),
        })?;
        // Creating the tables up front means readers never meet "table does not exist".
        let txn = db.begin_write()?;
        txn.open_table(KEYS)?;
        txn.open_table(PREFIXES)?;
        txn.commit()?;
        tracing::debug!(path = %path.display(), "opened embedded store");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                any_keys: AtomicBool::new(false),
            }),
        })
    }

    /// The path of the database file inside a data directory.
    pub fn database_path(data_dir: impl AsRef<Path>) -> PathBuf {
        data_dir.as_ref().join(DATABASE_FILE)
    }

    /// Runs redb's blocking I/O off the async workers.
    async fn blocking<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || op(&inner)).await?
    }
}

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
        let valid = stored_hash.matches(&presented_hash) && !stored.record.is_revoked();
        Ok(valid.then_some(stored.record))
    }

    fn create(&self, name: &str) -> Result<(KeyRecord, ApiKeySecret), StoreError> {
        let name = validate_name(name)?;
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
                    id: uuid::Uuid::new_v4().to_string(),
                    name: name.to_owned(),
                    prefix: prefix.clone(),
                    created_at: unix_now(),
                    revoked_at: None,
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

    fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KEYS)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (id, json) = entry?;
            records.push(decode(id.value(), json.value())?.record);
        }
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(records)
    }

    fn revoke(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let not_found = || StoreError::KeyNotFound(id_or_prefix.to_owned());
        let txn = self.db.begin_write()?;
        let record = {
            let mut keys = txn.open_table(KEYS)?;
            let id = if keys.get(id_or_prefix)?.is_some() {
                id_or_prefix.to_owned()
            } else {
                let prefixes = txn.open_table(PREFIXES)?;
                let id = prefixes.get(id_or_prefix)?.map(|v| v.value().to_owned());
                id.ok_or_else(not_found)?
            };
            let mut stored = load(&keys, &id)?.ok_or_else(not_found)?;
            if stored.record.revoked_at.is_none() {
                stored.record.revoked_at = Some(unix_now());
                store(&mut keys, &stored)?;
            }
            stored.record
        };
        txn.commit()?;
        Ok(record)
    }

    fn has_any_keys(&self) -> Result<bool, StoreError> {
        if self.any_keys.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let txn = self.db.begin_read()?;
        let any = !txn.open_table(KEYS)?.is_empty()?;
        if any {
            self.any_keys.store(true, Ordering::Relaxed);
        }
        Ok(any)
    }
}

fn load(
    table: &impl ReadableTable<&'static str, &'static str>,
    id: &str,
) -> Result<Option<StoredKey>, StoreError> {
    match table.get(id)? {
        Some(json) => decode(id, json.value()).map(Some),
        None => Ok(None),
    }
}

fn store(
    table: &mut redb::Table<'_, &'static str, &'static str>,
    stored: &StoredKey,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(stored).map_err(|source| StoreError::Corrupt {
        key: stored.record.id.clone(),
        source,
    })?;
    table.insert(stored.record.id.as_str(), json.as_str())?;
    Ok(())
}

fn decode(id: &str, json: &str) -> Result<StoredKey, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        key: id.to_owned(),
        source,
    })
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
        if self.inner.any_keys.load(Ordering::Relaxed) {
            return Ok(true);
        }
        self.blocking(Inner::has_any_keys).await
    }
}

#[async_trait::async_trait]
impl KeyStore for EmbeddedStore {
    async fn create(&self, name: &str) -> Result<(KeyRecord, ApiKeySecret), StoreError> {
        let name = name.to_owned();
        self.blocking(move |inner| inner.create(&name)).await
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.blocking(Inner::list).await
    }

    async fn revoke(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let id_or_prefix = id_or_prefix.to_owned();
        self.blocking(move |inner| inner.revoke(&id_or_prefix))
            .await
    }
}
