//! Usage accounting in Redis.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use redis::{AsyncCommands as _, Script};

use super::{RedisStore, from_json, json_field, to_json};
use crate::StoreError;
use crate::time::day_number;
use crate::usage::{Counters, UsageBucket, UsageQuery, UsageRecord, UsageStore};

/// Stores the raw record unless its response id was already counted, then adds it to its day's
/// bucket and its key's spend.
/// KEYS: raw record, day index, day hash, key spend hash.
/// ARGV: record JSON, retention secs (0 = keep), day, bucket field prefix, prompt tokens,
/// completion tokens, cache hit (0/1), cost, has key (0/1).
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local stored
        if ARGV[2] ~= '0' then
            stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
        else
            stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
        end
        if not stored then return 0 end
        redis.call('ZADD', KEYS[2], ARGV[3], ARGV[3])
        local f = ARGV[4]
        redis.call('HINCRBY', KEYS[3], f .. 'requests', 1)
        redis.call('HINCRBY', KEYS[3], f .. 'prompt_tokens', ARGV[5])
        redis.call('HINCRBY', KEYS[3], f .. 'completion_tokens', ARGV[6])
        redis.call('HINCRBY', KEYS[3], f .. 'cache_hits', ARGV[7])
        redis.call('HINCRBY', KEYS[3], f .. 'cost_micro_usd', ARGV[8])
        if ARGV[9] == '1' then redis.call('HINCRBY', KEYS[4], ARGV[3], ARGV[8]) end
        return 1
        ",
    )
});

/// Redis integers are signed 64-bit; no real cost comes near the clamp.
fn redis_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Folds one day's hash (`["principal","model"]|counter` -> value) into `buckets`.
fn fold_day(
    day: u64,
    fields: HashMap<String, u64>,
    principal: Option<&str>,
    buckets: &mut BTreeMap<(u64, String, String), Counters>,
) -> Result<(), StoreError> {
    for (field, value) in fields {
        let corrupt = || StoreError::Corrupt {
            key: format!("usage day {day}"),
            source: serde::de::Error::custom(format!("malformed field {field:?}")),
        };
        let (who, counter) = field.rsplit_once('|').ok_or_else(corrupt)?;
        let [owner, model]: [String; 2] = serde_json::from_str(who).map_err(|_| corrupt())?;
        if principal.is_some_and(|p| p != owner) {
            continue;
        }
        let counters = buckets.entry((day, owner, model)).or_default();
        match counter {
            "requests" => counters.requests = value,
            "prompt_tokens" => counters.prompt_tokens = value,
            "completion_tokens" => counters.completion_tokens = value,
            "cache_hits" => counters.cache_hits = value,
            "cost_micro_usd" => counters.cost_micro_usd = value,
            _ => return Err(corrupt()),
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl UsageStore for RedisStore {
    async fn record_usage(&self, record: &UsageRecord) -> Result<(), StoreError> {
        record.validate()?;
        let json = to_json(&record.response_id, record)?;
        let day = record.day();
        let mut conn = self.conn();
        let _: i64 = self
            .timed(
                RECORD
                    .key(self.key_of("usage:resp", &record.response_id))
                    .key(self.key("usage:days"))
                    .key(self.key_of("usage:day", day))
                    .key(self.key_of("spend", record.key_id.as_deref().unwrap_or("")))
                    .arg(json)
                    .arg(self.usage_ttl_secs)
                    .arg(day)
                    .arg(format!(
                        "{}|",
                        json_field(&[&record.principal, &record.model])
                    ))
                    .arg(record.prompt_tokens)
                    .arg(record.completion_tokens)
                    .arg(u8::from(record.cache_hit))
                    .arg(redis_int(record.cost_micro_usd))
                    .arg(u8::from(record.key_id.is_some()))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        let Some((first, last)) = query.days() else {
            return Ok(Vec::new());
        };
        let mut conn = self.conn();
        let days: Vec<u64> = self
            .timed(conn.zrangebyscore(self.key("usage:days"), first, last))
            .await?;
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.hgetall(self.key_of("usage:day", day));
        }
        let hashes: Vec<HashMap<String, u64>> = self.timed(pipe.query_async(&mut conn)).await?;
        let mut buckets = BTreeMap::new();
        for (day, fields) in days.into_iter().zip(hashes) {
            fold_day(day, fields, query.principal.as_deref(), &mut buckets)?;
        }
        Ok(buckets
            .into_iter()
            .map(|((day, principal, model), counters)| counters.into_bucket(day, principal, model))
            .collect())
    }

    async fn spent_micro_usd(&self, key_id: &str, since: u64) -> Result<u64, StoreError> {
        let first = day_number(since);
        let mut conn = self.conn();
        let days: HashMap<u64, u64> = self
            .timed(conn.hgetall(self.key_of("spend", key_id)))
            .await?;
        Ok(days
            .into_iter()
            .filter(|(day, _)| *day >= first)
            .fold(0u64, |total, (_, spent)| total.saturating_add(spent)))
    }

    async fn usage_by_response(
        &self,
        response_id: &str,
    ) -> Result<Option<UsageRecord>, StoreError> {
        let mut conn = self.conn();
        let json: Option<String> = self
            .timed(conn.get(self.key_of("usage:resp", response_id)))
            .await?;
        json.map(|json| from_json(response_id, &json)).transpose()
    }
}
