//! [`crate::Store`] on an embedded `redb` file, for single-node deployments.
//!
//! One file holds every table; each operation is one redb transaction, so a write is either
//! wholly on disk (redb commits are durable when they return) or not at all. redb's I/O is
//! blocking, so every operation runs on tokio's blocking pool.

mod keys;
mod records;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::StoreError;
pub(crate) use crate::json::{from_json, to_json};
use redb::{Database, MultimapTableDefinition, ReadableTable, TableDefinition};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "passerelle.redb";

/// Key id -> stored key as JSON (JSON so the format can grow fields without a migration).
const KEYS: TableDefinition<'_, &str, &str> = TableDefinition::new("api_keys");
/// Display prefix -> key id, so verification finds its candidate without scanning.
const PREFIXES: TableDefinition<'_, &str, &str> = TableDefinition::new("api_key_prefixes");
/// Response id -> [`crate::UsageRecord`] as JSON.
const USAGE_RECORDS: TableDefinition<'_, &str, &str> = TableDefinition::new("usage_records");
/// (day number, principal, model) -> counters as JSON.
const USAGE_DAILY: TableDefinition<'_, (u64, &str, &str), &str> =
    TableDefinition::new("usage_daily");
/// (key id, day number) -> micro-USD spent that day.
const KEY_SPEND: TableDefinition<'_, (&str, u64), u64> = TableDefinition::new("key_spend");
/// (principal, response id) -> [`crate::FeedbackRecord`] as JSON.
const FEEDBACK: TableDefinition<'_, (&str, &str), &str> = TableDefinition::new("feedback");
/// (principal, response id) -> [`crate::PromptRecord`] as JSON.
const PROMPTS: TableDefinition<'_, (&str, &str), &str> = TableDefinition::new("prompts");
/// Event id -> [`crate::AuditEvent`] as JSON.
const AUDIT: TableDefinition<'_, u64, &str> = TableDefinition::new("audit");
/// Principal -> ids of the audit events naming it as actor or target, for erasure.
const AUDIT_BY_PRINCIPAL: MultimapTableDefinition<'_, &str, u64> =
    MultimapTableDefinition::new("audit_by_principal");

/// Durable state in a `redb` file under a data directory. Cheap to clone; clones share the file.
///
/// redb takes an exclusive lock on the file, so only one process can open a data directory at
/// a time: the CLI's key commands cannot run beside a gateway using the same directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Whether any key exists: read when the file is opened, set when one is created. The
    /// file is this process's alone (redb locks it) and keys are never deleted, so the flag is
    /// the truth, and an open gateway's requests need no lookup (a blocking-pool hop each).
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
        txn.open_table(USAGE_RECORDS)?;
        txn.open_table(USAGE_DAILY)?;
        txn.open_table(KEY_SPEND)?;
        txn.open_table(FEEDBACK)?;
        txn.open_table(PROMPTS)?;
        txn.open_table(AUDIT)?;
        txn.open_multimap_table(AUDIT_BY_PRINCIPAL)?;
        txn.commit()?;
        let any_keys = !redb::ReadableTableMetadata::is_empty(&db.begin_read()?.open_table(KEYS)?)?;
        tracing::debug!(path = %path.display(), "opened embedded store");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                any_keys: AtomicBool::new(any_keys),
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

/// (response id, JSON) of every entry of a table keyed by (principal, response id) whose
/// principal is `principal`.
fn entries_of(
    table: &impl ReadableTable<(&'static str, &'static str), &'static str>,
    principal: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut found = Vec::new();
    for entry in table.range((principal, "")..)? {
        let (key, value) = entry?;
        let (owner, id) = key.value();
        if owner != principal {
            break;
        }
        found.push((id.to_owned(), value.value().to_owned()));
    }
    Ok(found)
}

#[async_trait::async_trait]
impl crate::StoreHealth for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            inner.db.begin_read()?.open_table(KEYS)?;
            Ok(())
        })
        .await
    }
}
