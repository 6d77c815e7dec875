//! API key model: records, secrets, hashing and the traits every backend implements.

use std::collections::BTreeSet;
use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::StoreError;
use crate::policy::{KeyLimits, SafetyChecks, Scope, scope_names};
pub(crate) use crate::time::unix_now;

/// Every generated secret starts with this, so leaked keys are recognisable by secret scanners.
pub const SECRET_PREFIX: &str = "psk-";
/// Random base62 characters after [`SECRET_PREFIX`]: 48 of them carry about 285 bits.
const SECRET_RANDOM_LEN: usize = 48;
/// Random characters kept in the display prefix. They identify a key in listings and index it
/// for lookup without revealing enough to matter (40 of the 285 bits).
const DISPLAY_RANDOM_LEN: usize = 8;

/// What the store knows about one API key. Never contains the secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredRecord")]
pub struct KeyRecord {
    /// Stable identifier (a UUID for stored keys, `static-N` for operator-supplied ones).
    pub id: String,
    /// Human label given at creation.
    pub name: String,
    /// The user or principal the key acts for; usage and audit records name it.
    pub owner: String,
    /// The first characters of the secret (`psk-` and 8 more), for telling keys apart.
    pub prefix: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Revocation time, seconds since the Unix epoch; a revoked key never verifies again.
    pub revoked_at: Option<u64>,
    /// What the key may call.
    pub scopes: BTreeSet<Scope>,
    /// The models the key may use; `None` allows every model.
    pub models: Option<BTreeSet<String>>,
    /// Expiry, seconds since the Unix epoch; from then on the key no longer verifies.
    pub expires_at: Option<u64>,
    /// Rates, concurrency and budget for this key.
    pub limits: KeyLimits,
    /// What the safety filter checks for this key; `None`: the gateway's setting.
    pub safety: Option<SafetyChecks>,
}

/// How records are read back: records written before owners and scopes existed lack them,
/// and load as owned by their own name with every user scope (what they could do then).
#[derive(Deserialize)]
struct StoredRecord {
    id: String,
    name: String,
    #[serde(default)]
    owner: Option<String>,
    prefix: String,
    created_at: u64,
    revoked_at: Option<u64>,
    #[serde(default)]
    scopes: Option<BTreeSet<Scope>>,
    #[serde(default)]
    models: Option<BTreeSet<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    limits: KeyLimits,
    #[serde(default)]
    safety: Option<SafetyChecks>,
}

impl From<StoredRecord> for KeyRecord {
    fn from(stored: StoredRecord) -> Self {
        Self {
            owner: stored.owner.unwrap_or_else(|| stored.name.clone()),
            scopes: stored.scopes.unwrap_or_else(Scope::all_user),
            id: stored.id,
            name: stored.name,
            prefix: stored.prefix,
            created_at: stored.created_at,
            revoked_at: stored.revoked_at,
            models: stored.models,
            expires_at: stored.expires_at,
            limits: stored.limits,
            safety: stored.safety,
        }
    }
}

impl KeyRecord {
    /// Whether this key has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether this key has expired at `now` (seconds since the epoch): expiry is inclusive.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether this key verifies at `now`: neither revoked nor expired.
    pub fn is_active(&self, now: u64) -> bool {
        !self.is_revoked() && !self.is_expired(now)
    }

    /// Whether this key may call endpoints of `scope`.
    pub fn allows_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether this key may use `model` (always, when it has no allowlist).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.contains(model))
    }
}

/// What to create: see [`KeyStore::create`]. `NewKey::new(name, owner)` gives a key with every
/// user scope, every model, no expiry and no limits; set the public fields to narrow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Human label (trimmed; 1 to 128 characters, no control characters).
    pub name: String,
    /// The principal the key acts for (same rules as the name).
    pub owner: String,
    /// What the key may call; must not be empty.
    pub scopes: BTreeSet<Scope>,
    /// Model allowlist; `None` allows every model, `Some` must name at least one.
    pub models: Option<BTreeSet<String>>,
    /// Expiry, seconds since the Unix epoch. A time in the past is accepted (the key is born
    /// expired), so scripts can create keys from stored plans without racing the clock.
    pub expires_at: Option<u64>,
    /// Rates, concurrency and budget.
    pub limits: KeyLimits,
    /// What the safety filter checks; `None`: the gateway's setting.
    pub safety: Option<SafetyChecks>,
}

impl NewKey {
    /// A key with every user scope (not admin), every model, no expiry and no limits.
    pub fn new(name: impl Into<String>, owner: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            owner: owner.into(),
            scopes: Scope::all_user(),
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
            safety: None,
        }
    }

    /// Checks every field and builds the record a backend stores for `prefix`.
    pub(crate) fn into_record(self, prefix: String) -> Result<KeyRecord, StoreError> {
        let name = validate_name(&self.name)?.to_owned();
        let owner = validate_label("owner", &self.owner)?.to_owned();
        if self.scopes.is_empty() {
            return Err(StoreError::InvalidInput(format!(
                "a key needs at least one scope (one of {})",
                scope_names()
            )));
        }
        let models = match self.models {
            None => None,
            Some(models) => {
                let models = models
                    .iter()
                    .map(|model| validate_label("model", model).map(str::to_owned))
                    .collect::<Result<BTreeSet<_>, _>>()?;
                if models.is_empty() {
                    return Err(StoreError::InvalidInput(
                        "a model allowlist must name at least one model (leave it unset to \
                         allow every model)"
                            .to_owned(),
                    ));
                }
                Some(models)
            }
        };
        self.limits.validate()?;
        Ok(KeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name,
            owner,
            prefix,
            created_at: unix_now(),
            revoked_at: None,
            scopes: self.scopes,
            models,
            expires_at: self.expires_at,
            limits: self.limits,
            safety: self.safety,
        })
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
    /// only a revoked or expired one (expiry is checked against the current time).
    async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Whether any key was ever configured, revoked ones included. Counting revoked keys means
    /// revoking the last key never turns authentication off.
    async fn has_any_keys(&self) -> Result<bool, StoreError>;
}

/// A durable, manageable set of API keys.
#[async_trait::async_trait]
pub trait KeyStore: KeyVerifier {
    /// Creates a key. The returned secret is the only copy of the plaintext.
    async fn create(&self, new: NewKey) -> Result<(KeyRecord, ApiKeySecret), StoreError>;

    /// The key with this id or display prefix, revoked and expired ones included.
    async fn get(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError>;

    /// Every key, revoked ones included, oldest first.
    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError>;

    /// Revokes the key with this id or display prefix and returns its record. Revoking an
    /// already revoked key keeps its first revocation time.
    async fn revoke(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError>;

    /// Replaces the limits of the key with this id or display prefix; returns the new record.
    async fn update_limits(
        &self,
        id_or_prefix: &str,
        limits: KeyLimits,
    ) -> Result<KeyRecord, StoreError>;
}

/// A fresh secret whose display prefix is already taken is redrawn; with 62^8 prefixes a second
/// collision in a row means the random source is broken, and we stop rather than loop.
pub(crate) const MAX_PREFIX_DRAWS: usize = 4;

/// Longest accepted name, owner or model name, so listings stay readable and records small.
const MAX_LABEL_LEN: usize = 128;

pub(crate) fn validate_name(name: &str) -> Result<&str, StoreError> {
    check_label("name", name).map_err(StoreError::InvalidName)
}

/// The rules every stored label follows (key names, owners, models, principals): trimmed, 1 to
/// 128 characters, no control characters. Returns the trimmed label, or an
/// [`StoreError::InvalidInput`] naming `field`, so callers can check input before a store call.
pub fn validate_label<'a>(field: &str, value: &'a str) -> Result<&'a str, StoreError> {
    check_label(field, value)
        .map_err(|reason| StoreError::InvalidInput(format!("invalid {field}: {reason}")))
}

/// The trimmed label, or why it is unusable.
fn check_label<'a>(field: &str, value: &'a str) -> Result<&'a str, String> {
    let value = value.trim();
    let problem = if value.is_empty() {
        "must not be empty"
    } else if value.len() > MAX_LABEL_LEN && value.chars().count() > MAX_LABEL_LEN {
        "must be at most 128 characters"
    } else if has_control(value) {
        "must not contain control characters"
    } else {
        return Ok(value);
    };
    Err(format!("the {field} {problem}"))
}

/// Whether `value` holds a control character; labels are checked on every usage record, and
/// nearly all are ASCII, whose control characters are the ASCII ones.
fn has_control(value: &str) -> bool {
    if value.is_ascii() {
        value.bytes().any(|b| b.is_ascii_control())
    } else {
        value.chars().any(char::is_control)
    }
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
    fn other_labels_name_their_field() {
        let err = validate_label("owner", " ").unwrap_err().to_string();
        assert!(err.contains("the owner must not be empty"), "{err}");
    }

    fn record(json: &str) -> KeyRecord {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn records_from_before_owners_and_scopes_still_load() {
        let old = record(
            r#"{"id":"k1","name":"ci","prefix":"psk-abcdefgh","created_at":5,"revoked_at":null}"#,
        );
        assert_eq!(old.owner, "ci");
        assert_eq!(old.scopes, Scope::all_user());
        assert_eq!(old.models, None);
        assert!(old.limits.is_unlimited());
        let round = record(&serde_json::to_string(&old).unwrap());
        assert_eq!(round, old);
    }

    #[test]
    fn expiry_scopes_and_models_decide_what_a_key_may_do() {
        let mut key = NewKey::new("n", "o").into_record("psk-x".into()).unwrap();
        assert!(key.is_active(u64::MAX));
        key.expires_at = Some(100);
        assert!(key.is_active(99) && key.is_expired(100) && !key.is_active(100));
        assert!(key.allows_scope(Scope::Chat) && !key.allows_scope(Scope::Admin));
        assert!(key.allows_model("anything"));
        key.models = Some(BTreeSet::from(["tiny".to_owned()]));
        assert!(key.allows_model("tiny") && !key.allows_model("big"));
    }

    #[test]
    fn new_keys_are_validated() {
        let bad = |edit: fn(&mut NewKey)| {
            let mut new = NewKey::new("n", "o");
            edit(&mut new);
            new.into_record("p".into()).unwrap_err()
        };
        assert!(matches!(
            bad(|k| k.name.clear()),
            StoreError::InvalidName(_)
        ));
        assert!(matches!(
            bad(|k| k.owner = "\n".into()),
            StoreError::InvalidInput(_)
        ));
        assert!(matches!(
            bad(|k| k.scopes.clear()),
            StoreError::InvalidInput(_)
        ));
        assert!(matches!(
            bad(|k| k.models = Some(BTreeSet::new())),
            StoreError::InvalidInput(_)
        ));
        assert!(matches!(
            bad(|k| k.limits.tpm = Some(0)),
            StoreError::InvalidInput(_)
        ));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  ci  ").unwrap(), "ci");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
