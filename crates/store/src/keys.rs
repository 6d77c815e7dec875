//! API key model: records, secrets, hashing and the traits every backend implements.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::StoreError;

/// Every generated secret starts with this, so leaked keys are recognisable by secret scanners.
pub const SECRET_PREFIX: &str = "psk-";
/// Random base62 characters after [`SECRET_PREFIX`]: 48 of them carry about 285 bits.
const SECRET_RANDOM_LEN: usize = 48;
/// Random characters kept in the display prefix. They identify a key in listings and index it
/// for lookup without revealing enough to matter (40 of the 285 bits).
const DISPLAY_RANDOM_LEN: usize = 8;
/// Longest accepted key name, so listings stay readable and records small.
const MAX_NAME_LEN: usize = 128;

/// What the store knows about one API key. Never contains the secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stable identifier (a UUID for stored keys, `static-N` for operator-supplied ones).
    pub id: String,
    /// Human label given at creation.
    pub name: String,
    /// The first characters of the secret (`psk-` and 8 more), for telling keys apart.
    pub prefix: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Revocation time, seconds since the Unix epoch; a revoked key never verifies again.
    pub revoked_at: Option<u64>,
}

impl KeyRecord {
    /// Whether this key has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A plaintext API key. Returned once by [`KeyStore::create`]; its `Debug` output is redacted
/// and it has no `Display`, so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// Draws a new secret from the thread-local CSPRNG (ChaCha, seeded from the OS).
    pub fn generate() -> Self {
        let random: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(SECRET_RANDOM_LEN)
            .map(char::from)
            .collect();
        Self(format!("{SECRET_PREFIX}{random}"))
    }

    /// The plaintext, to show to the operator exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The display prefix of this secret.
    pub fn display_prefix(&self) -> String {
        display_prefix(&self.0).unwrap_or_default().to_owned()
    }

    /// The hash under which this secret is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

/// The display prefix of a presented key, when it has the shape of a generated secret.
pub(crate) fn display_prefix(presented: &str) -> Option<&str> {
    let random = presented.strip_prefix(SECRET_PREFIX)?;
    if random.len() != SECRET_RANDOM_LEN || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    presented.get(..SECRET_PREFIX.len() + DISPLAY_RANDOM_LEN)
}

/// SHA-256 of a secret. A fast hash is enough: generated secrets have far too much entropy to
/// brute-force, and verification runs on every request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented or generated secret.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Compares in constant time, so response timing says nothing about how close a guess was.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub(crate) fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(<redacted>)")
    }
}

/// Checks a presented key. The gateway's auth needs only this.
#[async_trait::async_trait]
pub trait KeyVerifier: Send + Sync + 'static {
    /// The record of the active key matching `presented`, or `None` when it matches no key or
    /// only a revoked one.
    async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Whether any key was ever configured, revoked ones included. Counting revoked keys means
    /// revoking the last key never turns authentication off.
    async fn has_any_keys(&self) -> Result<bool, StoreError>;
}

/// A durable, manageable set of API keys.
#[async_trait::async_trait]
pub trait KeyStore: KeyVerifier {
    /// Creates a key. The returned secret is the only copy of the plaintext.
    async fn create(&self, name: &str) -> Result<(KeyRecord, ApiKeySecret), StoreError>;

    /// Every key, revoked ones included, oldest first.
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Revokes the key with this id or display prefix and returns its record. Revoking an
    /// already revoked key keeps its first revocation time.
    async fn revoke(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError>;
}

pub(crate) fn validate_name(name: &str) -> Result<&str, StoreError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::InvalidName("the name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(StoreError::InvalidName(
            "the name must be at most 128 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName(
            "the name must not contain control characters",
        ));
    }
    Ok(name)
}

pub(crate) fn unix_now() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps records valid rather than failing requests.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let secret = ApiKeySecret::generate();
        let text = secret.expose();
        assert!(text.starts_with(SECRET_PREFIX));
        assert_eq!(text.len(), SECRET_PREFIX.len() + SECRET_RANDOM_LEN);
        assert_eq!(display_prefix(text), Some(&text[..12]));
        assert_eq!(secret.display_prefix(), &text[..12]);
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(ApiKeySecret::generate(), ApiKeySecret::generate());
    }

    #[test]
    fn secrets_and_hashes_do_not_show_in_debug_output() {
        let secret = ApiKeySecret::generate();
        assert!(!format!("{secret:?}").contains(&secret.expose()[4..]));
        assert_eq!(format!("{:?}", secret.hash()), "KeyHash(<redacted>)");
    }

    #[test]
    fn hashes_match_only_the_same_secret() {
        let a = KeyHash::of("psk-a");
        assert!(a.matches(&KeyHash::of("psk-a")));
        assert!(!a.matches(&KeyHash::of("psk-b")));
        assert_eq!(KeyHash::from_hex(&a.to_hex()), Some(a));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }

    #[test]
    fn foreign_shapes_have_no_display_prefix() {
        assert_eq!(display_prefix("sk-abc"), None);
        assert_eq!(display_prefix("psk-short"), None);
        let bad = format!("psk-{}", "!".repeat(SECRET_RANDOM_LEN));
        assert_eq!(display_prefix(&bad), None);
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  ci  ").unwrap(), "ci");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
