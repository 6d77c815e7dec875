//! API keys in Redis.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use redis::{AsyncCommands as _, Script};

use super::{RedisStore, from_json, to_json};
use crate::StoreError;
use crate::keys::{
    ApiKeySecret, KeyHash, KeyRecord, KeyStore, KeyVerifier, MAX_PREFIX_DRAWS, NewKey,
    display_prefix, unix_now,
};
use crate::policy::KeyLimits;

/// Claims the display prefix and writes the key, or does nothing when the prefix is taken.
/// KEYS: prefix index, key hash, key set. ARGV: id, record JSON, sha256.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
        redis.call('HSET', KEYS[2], 'record', ARGV[2], 'sha256', ARGV[3])
        redis.call('SADD', KEYS[3], ARGV[1])
        return 1
        ",
    )
});

/// Fields of a key's hash. Revocation and limits live in their own fields so that revoking
/// (`HSETNX`) and changing limits (`HSET`) never race each other's read-modify-write.
const RECORD: &str = "record";
const SHA256: &str = "sha256";
const REVOKED_AT: &str = "revoked_at";
const LIMITS: &str = "limits";

/// A key's record and hash from its Redis hash; `None` when the hash is empty (no such key).
fn assemble(
    id: &str,
    mut fields: HashMap<String, String>,
) -> Result<Option<(KeyRecord, String)>, StoreError> {
    let Some(json) = fields.remove(RECORD) else {
        return Ok(None);
    };
    let mut record: KeyRecord = from_json(id, &json)?;
    if let Some(at) = fields.remove(REVOKED_AT) {
        record.revoked_at = Some(at.parse().map_err(|_| corrupt(id, "revoked_at"))?);
    }
    if let Some(limits) = fields.remove(LIMITS) {
        record.limits = from_json(id, &limits)?;
    }
    let sha256 = fields.remove(SHA256).ok_or_else(|| corrupt(id, "sha256"))?;
    Ok(Some((record, sha256)))
}

fn corrupt(id: &str, field: &str) -> StoreError {
    StoreError::Corrupt {
        key: id.to_owned(),
        source: serde::de::Error::custom(format!("field {field} is missing or malformed")),
    }
}

impl RedisStore {
    async fn load_key(&self, id: &str) -> Result<Option<(KeyRecord, String)>, StoreError> {
        let mut conn = self.conn();
        let fields: HashMap<String, String> =
            self.timed(conn.hgetall(self.key_of("key", id))).await?;
        assemble(id, fields)
    }

    /// The id of the key named by id or display prefix.
    async fn resolve(&self, id_or_prefix: &str) -> Result<String, StoreError> {
        let mut conn = self.conn();
        let is_id: bool = self
            .timed(conn.exists(self.key_of("key", id_or_prefix)))
            .await?;
        if is_id {
            return Ok(id_or_prefix.to_owned());
        }
        let id: Option<String> = self
            .timed(conn.get(self.key_of("keyprefix", id_or_prefix)))
            .await?;
        id.ok_or_else(|| StoreError::KeyNotFound(id_or_prefix.to_owned()))
    }

    async fn get_existing(&self, id: &str) -> Result<KeyRecord, StoreError> {
        Ok(self
            .load_key(id)
            .await?
            .ok_or_else(|| StoreError::KeyNotFound(id.to_owned()))?
            .0)
    }
}

#[async_trait::async_trait]
impl KeyVerifier for RedisStore {
    async fn verify(&self, presented: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(prefix) = display_prefix(presented) else {
            return Ok(None);
        };
        let presented_hash = KeyHash::of(presented);
        let mut conn = self.conn();
        let id: Option<String> = self
            .timed(conn.get(self.key_of("keyprefix", prefix)))
            .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let Some((record, sha256)) = self.load_key(&id).await? else {
            return Ok(None);
        };
        let stored_hash = KeyHash::from_hex(&sha256).ok_or_else(|| corrupt(&id, SHA256))?;
        let valid = stored_hash.matches(&presented_hash) && record.is_active(unix_now());
        Ok(valid.then_some(record))
    }

    async fn has_any_keys(&self) -> Result<bool, StoreError> {
        if self.any_keys.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let mut conn = self.conn();
        let any: bool = self.timed(conn.exists(self.key("keys"))).await?;
        if any {
            self.any_keys.store(true, Ordering::Relaxed);
        }
        Ok(any)
    }
}

#[async_trait::async_trait]
impl KeyStore for RedisStore {
    async fn create(&self, new: NewKey) -> Result<(KeyRecord, ApiKeySecret), StoreError> {
        let template = new.into_record(String::new())?;
        for _ in 0..MAX_PREFIX_DRAWS {
            let secret = ApiKeySecret::generate();
            let record = KeyRecord {
                prefix: secret.display_prefix(),
                ..template.clone()
            };
            let json = to_json(&record.id, &record)?;
            let mut conn = self.conn();
            let created: i64 = self
                .timed(
                    CREATE
                        .key(self.key_of("keyprefix", &record.prefix))
                        .key(self.key_of("key", &record.id))
                        .key(self.key("keys"))
                        .arg(&record.id)
                        .arg(json)
                        .arg(secret.hash().to_hex())
                        .invoke_async(&mut conn),
                )
                .await?;
            if created == 1 {
                self.any_keys.store(true, Ordering::Relaxed);
                return Ok((record, secret));
            }
        }
        Err(StoreError::PrefixCollision(MAX_PREFIX_DRAWS))
    }

    async fn get(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let id = self.resolve(id_or_prefix).await?;
        self.get_existing(&id).await
    }

    async fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut conn = self.conn();
        let ids: Vec<String> = self.timed(conn.smembers(self.key("keys"))).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.key_of("key", id));
        }
        let hashes: Vec<HashMap<String, String>> = self.timed(pipe.query_async(&mut conn)).await?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.iter().zip(hashes) {
            if let Some((record, _)) = assemble(id, fields)? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(records)
    }

    async fn revoke(&self, id_or_prefix: &str) -> Result<KeyRecord, StoreError> {
        let id = self.resolve(id_or_prefix).await?;
        let mut conn = self.conn();
        // HSETNX keeps the first revocation time when revoked twice.
        let _: bool = self
            .timed(conn.hset_nx(self.key_of("key", &id), REVOKED_AT, unix_now()))
            .await?;
        self.get_existing(&id).await
    }

    async fn update_limits(
        &self,
        id_or_prefix: &str,
        limits: KeyLimits,
    ) -> Result<KeyRecord, StoreError> {
        limits.validate()?;
        let id = self.resolve(id_or_prefix).await?;
        let json = to_json(&id, &limits)?;
        let mut conn = self.conn();
        let _: i64 = self
            .timed(conn.hset(self.key_of("key", &id), LIMITS, json))
            .await?;
        self.get_existing(&id).await
    }
}
