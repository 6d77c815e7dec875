//! Durable state for the gateway: API keys, usage, feedback, the prompt log and the audit log,
//! behind one interface with two backends.
//!
//! One object-safe trait per concern: [`KeyStore`] (with [`KeyVerifier`], all the gateway's auth
//! needs), [`UsageStore`], [`FeedbackStore`], [`PromptLog`], [`AuditLog`], [`Erasure`] and
//! [`StoreHealth`] (a ping for readiness probes).
//! [`Store`] is all of them together, so the gateway holds one `Arc<dyn Store>`.
//!
//! - [`EmbeddedStore`]: a `redb` file in a data directory, for a single node.
//! - [`RedisStore`]: a Redis server every gateway replica shares.
//!
//! Both pass the same test suite (`tests/suite`). Alongside them: [`keys`] holds the key model
//! (secrets are SHA-256 hashed, compared in constant time, and returned once at creation),
//! [`policy`] what a key may do ([`Scope`], [`KeyLimits`]), [`StaticKeys`] the operator's
//! plaintext bootstrap keys, and [`Keyring`] answers for static and stored keys at once.

mod audit;
mod embedded;
mod erasure;
mod error;
mod feedback;
mod health;
mod json;
mod keyring;
pub mod keys;
pub mod policy;
mod prompts;
mod redis_store;
mod static_keys;
mod time;
mod usage;

pub use audit::{AuditAction, AuditEvent, AuditLog, MAX_AUDIT_PAGE, NewAuditEvent, pseudonym};
pub use embedded::EmbeddedStore;
pub use erasure::{Erasure, ErasureReport};
pub use error::StoreError;
pub use feedback::{FeedbackCounts, FeedbackRecord, FeedbackStore, MAX_COMMENT_CHARS, Rating};
pub use health::StoreHealth;
pub use keyring::Keyring;
pub use keys::{ApiKeySecret, KeyRecord, KeyStore, KeyVerifier, NewKey};
pub use policy::{Budget, BudgetPeriod, KeyLimits, SafetyChecks, Scope};
pub use prompts::{PromptLog, PromptRecord};
pub use redis_store::{RedisOptions, RedisStore};
pub use static_keys::{STATIC_OWNER, StaticKeys};
pub use time::unix_now;
pub use usage::{UsageBucket, UsageQuery, UsageRecord, UsageStore};

/// Everything durable, in one object: what the gateway holds as `Arc<dyn Store>`.
pub trait Store:
    KeyStore
    + UsageStore
    + FeedbackStore
    + PromptLog
    + AuditLog
    + Erasure
    + StoreHealth
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: KeyStore
        + UsageStore
        + FeedbackStore
        + PromptLog
        + AuditLog
        + Erasure
        + StoreHealth
        + std::fmt::Debug
{
}
