//! Usage accounting: one [`UsageRecord`] per answered request, rolled up into daily buckets
//! and per-key spend counters that queries and budget checks read.

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::keys::validate_label;
use crate::time::{day_label, day_number};

/// One answered request, as the gateway accounts for it. Holds no prompt or completion text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The response id the client saw (`chatcmpl-...`); recording the same id twice counts once.
    pub response_id: String,
    /// Who asked: the key's owner, or the JWT subject.
    pub principal: String,
    /// The key used, if any; spend is counted per key.
    pub key_id: Option<String>,
    /// The model that answered.
    pub model: String,
    /// The endpoint family, e.g. `chat`.
    pub endpoint: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Time from request to last byte.
    pub latency_ms: u32,
    /// Answered from the semantic cache.
    pub cache_hit: bool,
    /// What the request cost, in micro-USD.
    pub cost_micro_usd: u64,
    /// When it was answered, seconds since the epoch; picks the day bucket.
    pub at: u64,
}

impl UsageRecord {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_label("response id", &self.response_id)?;
        validate_label("principal", &self.principal)?;
        validate_label("model", &self.model)?;
        if let Some(key_id) = &self.key_id {
            validate_label("key id", key_id)?;
        }
        Ok(())
    }

    /// Days since the epoch of [`UsageRecord::at`].
    pub(crate) fn day(&self) -> u64 {
        day_number(self.at)
    }
}

/// Which buckets [`UsageStore::usage_summary`] returns: every UTC day from the one containing
/// `since` to the one containing `until`, both included, for one principal or all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageQuery {
    pub principal: Option<String>,
    /// Seconds since the epoch.
    pub since: u64,
    /// Seconds since the epoch.
    pub until: u64,
}

impl UsageQuery {
    /// The first and last day numbers covered, or `None` when `until` precedes `since`.
    pub(crate) fn days(&self) -> Option<(u64, u64)> {
        let (first, last) = (day_number(self.since), day_number(self.until));
        (first <= last).then_some((first, last))
    }
}

/// Totals for one principal and model on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageBucket {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub principal: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
    pub cost_micro_usd: u64,
}

/// The counters of a bucket, as both backends store them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
    pub cost_micro_usd: u64,
}

impl Counters {
    /// One record's tally.
    pub(crate) fn of(record: &UsageRecord) -> Self {
        Self {
            requests: 1,
            prompt_tokens: u64::from(record.prompt_tokens),
            completion_tokens: u64::from(record.completion_tokens),
            cache_hits: u64::from(record.cache_hit),
            cost_micro_usd: record.cost_micro_usd,
        }
    }

    /// Adds another tally of the same bucket.
    pub(crate) fn merge(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cache_hits += other.cache_hits;
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(other.cost_micro_usd);
    }

    pub(crate) fn into_bucket(self, day: u64, principal: String, model: String) -> UsageBucket {
        UsageBucket {
            day: day_label(day),
            principal,
            model,
            requests: self.requests,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cache_hits: self.cache_hits,
            cost_micro_usd: self.cost_micro_usd,
        }
    }
}

/// Usage accounting.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Records one answered request and adds it to its day's bucket and its key's spend, all
    /// at once. A response id already recorded is ignored, so retrying a failed call is safe.
    async fn record_usage(&self, record: &UsageRecord) -> Result<(), StoreError>;

    /// Records several answered requests exactly as [`record_usage`](Self::record_usage)
    /// records each, in one write where the store can (one transaction, so one sync to disk,
    /// for the embedded store). Any invalid record fails the whole call before anything is
    /// written; an unavailable store may have taken some, which a retry counts once.
    async fn record_usages(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        for record in records {
            record.validate()?;
        }
        for record in records {
            self.record_usage(record).await?;
        }
        Ok(())
    }

    /// Daily totals per principal and model, sorted by day, principal, model.
    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError>;

    /// What a key has spent, in micro-USD, over the whole UTC days from the one containing
    /// `since` to now. Budget periods start on day boundaries, so
    /// `spent_micro_usd(id, period.period_start(now))` is exact. Reads per-day counters.
    async fn spent_micro_usd(&self, key_id: &str, since: u64) -> Result<u64, StoreError>;

    /// The record of one response, if it was recorded (and, on Redis, not yet expired).
    async fn usage_by_response(&self, response_id: &str)
    -> Result<Option<UsageRecord>, StoreError>;
}
