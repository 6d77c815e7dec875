use std::path::PathBuf;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (usually a running gateway) holds the database file's lock.
    #[error(
        "the store {0} is in use by another process, usually a running passerelle server: stop it \
         to manage keys with `passerelle keys`, or pass extra keys in PASSERELLE_API_KEYS"
    )]
    Locked(PathBuf),
    /// The data directory could not be created or read.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The embedded database failed (I/O, corruption, lock poisoning).
    /// Boxed: redb's error is large and this enum travels through every `Result` here.
    #[error("embedded database error: {0}")]
    Database(#[source] Box<redb::Error>),
    /// A stored record could not be decoded: the file was written by an incompatible version.
    #[error("stored record {key:?} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// No key has this id or display prefix.
    #[error("no API key with id or prefix {0:?}")]
    KeyNotFound(String),
    /// The name given for a new key is unusable.
    #[error("invalid key name: {0}")]
    InvalidName(&'static str),
    /// Every freshly drawn secret collided with an existing display prefix: with 62^8 prefixes
    /// this means the random source is broken.
    #[error("could not draw an unused key prefix in {0} attempts")]
    PrefixCollision(usize),
    /// The blocking worker running a database operation panicked or was cancelled.
    #[error("store worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// redb splits its errors by operation; they all mean "the database failed" to our callers.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(Box::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
