use std::path::PathBuf;
use std::time::Duration;

use crate::policy::scope_names;

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
    InvalidName(String),
    /// A scope name is not one of [`crate::Scope`]'s.
    #[error("unknown scope {0:?}; valid scopes are {names}", names = scope_names())]
    InvalidScope(String),
    /// A field of a new key or of a record to store is unusable; the message says which.
    #[error("{0}")]
    InvalidInput(String),
    /// Every freshly drawn secret collided with an existing display prefix: with 62^8 prefixes
    /// this means the random source is broken.
    #[error("could not draw an unused key prefix in {0} attempts")]
    PrefixCollision(usize),
    /// The Redis server cannot be reached: connection refused or dropped, I/O timeout, or
    /// still loading its data after a restart. Retrying later may succeed.
    #[error("the Redis store is unavailable: {0}")]
    Unavailable(#[source] Box<redis::RedisError>),
    /// A Redis operation did not finish within the configured time.
    #[error("the Redis store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error (a bug or a misconfigured server, not an outage).
    #[error("Redis error: {0}")]
    Redis(#[source] Box<redis::RedisError>),
    /// The blocking worker running a database operation panicked or was cancelled.
    #[error("store worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// Whether the store could not be reached at all (as opposed to refusing the request or
    /// being corrupt), so the caller may apply its fail-open or fail-closed policy.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        let loading = matches!(
            err.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        );
        if err.is_io_error()
            || err.is_connection_refusal()
            || err.is_connection_dropped()
            || err.is_timeout()
            || loading
        {
            StoreError::Unavailable(Box::new(err))
        } else {
            StoreError::Redis(Box::new(err))
        }
    }
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
