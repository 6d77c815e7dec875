//! Durable state for the gateway. For now that is API keys; usage, feedback and audit records
//! will join them here.
//!
//! [`keys`] holds the backend-neutral pieces: [`KeyRecord`], the [`KeyVerifier`] and [`KeyStore`]
//! traits, secret generation and hashing (SHA-256, compared in constant time; the plaintext of a
//! key is returned once at creation and never stored). [`EmbeddedStore`] implements [`KeyStore`]
//! on a `redb` file in a data directory, for single-node deployments; a Redis backend will
//! implement the same trait. [`StaticKeys`] holds operator-supplied plaintext keys (for example
//! from `PASSERELLE_API_KEYS`), hashed at load, and [`Keyring`] answers for both at once.

mod embedded;
mod error;
mod keyring;
pub mod keys;
mod static_keys;

pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use keyring::Keyring;
pub use keys::{ApiKeySecret, KeyRecord, KeyStore, KeyVerifier};
pub use static_keys::StaticKeys;
