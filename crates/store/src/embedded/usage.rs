//! Usage accounting in the embedded store.

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::{EmbeddedStore, Inner, KEY_SPEND, USAGE_DAILY, USAGE_RECORDS, from_json, to_json};
use crate::StoreError;
use crate::time::day_number;
use crate::usage::{Counters, UsageBucket, UsageQuery, UsageRecord, UsageStore};

impl Inner {
    fn record_usages(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        add_usages(&txn, batch)?;
        txn.commit()?;
        Ok(())
    }

    fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        let Some((first, last)) = query.days() else {
            return Ok(Vec::new());
        };
        let txn = self.db.begin_read()?;
        let daily = txn.open_table(USAGE_DAILY)?;
        let mut buckets = Vec::new();
        // Keys sort by day, then principal, then model: the order the caller wants.
        for entry in daily.range((first, "", "")..)? {
            let (key, json) = entry?;
            let (day, principal, model) = key.value();
            if day > last {
                break;
            }
            if query.principal.as_deref().is_some_and(|p| p != principal) {
                continue;
            }
            let counters: Counters = from_json("usage bucket", json.value())?;
            buckets.push(counters.into_bucket(day, principal.to_owned(), model.to_owned()));
        }
        Ok(buckets)
    }

    fn spent_micro_usd(&self, key_id: &str, since: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let spend = txn.open_table(KEY_SPEND)?;
        let mut total = 0u64;
        for entry in spend.range((key_id, day_number(since))..=(key_id, u64::MAX))? {
            total = total.saturating_add(entry?.1.value());
        }
        Ok(total)
    }

    fn usage_by_response(&self, response_id: &str) -> Result<Option<UsageRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(USAGE_RECORDS)?;
        match records.get(response_id)? {
            Some(json) => from_json(response_id, json.value()).map(Some),
            None => Ok(None),
        }
    }
}

#[async_trait::async_trait]
impl UsageStore for EmbeddedStore {
    async fn record_usage(&self, record: &UsageRecord) -> Result<(), StoreError> {
        self.record_usages(std::slice::from_ref(record)).await
    }

    async fn record_usages(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        for record in records {
            record.validate()?;
        }
        let records = records.to_vec();
        self.blocking(move |inner| inner.record_usages(&records))
            .await
    }

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        let query = query.clone();
        self.blocking(move |inner| inner.usage_summary(&query))
            .await
    }

    async fn spent_micro_usd(&self, key_id: &str, since: u64) -> Result<u64, StoreError> {
        let key_id = key_id.to_owned();
        self.blocking(move |inner| inner.spent_micro_usd(&key_id, since))
            .await
    }

    async fn usage_by_response(
        &self,
        response_id: &str,
    ) -> Result<Option<UsageRecord>, StoreError> {
        let response_id = response_id.to_owned();
        self.blocking(move |inner| inner.usage_by_response(&response_id))
            .await
    }
}

/// Adds the records not recorded yet (by response id) within `txn`, with their days' buckets
/// and their keys' spend. The batch is summed per bucket and per key and day first, so a batch
/// reads and writes each bucket once rather than once per record.
fn add_usages(txn: &redb::WriteTransaction, batch: &[UsageRecord]) -> Result<(), StoreError> {
    let mut buckets: BTreeMap<(u64, &str, &str), Counters> = BTreeMap::new();
    let mut spent: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    let mut records = txn.open_table(USAGE_RECORDS)?;
    for record in batch {
        if records.get(record.response_id.as_str())?.is_some() {
            continue; // already counted: nothing of it is written again
        }
        let json = to_json(&record.response_id, record)?;
        records.insert(record.response_id.as_str(), json.as_str())?;
        let day = record.day();
        buckets
            .entry((day, record.principal.as_str(), record.model.as_str()))
            .or_default()
            .merge(&Counters::of(record));
        if let Some(key_id) = &record.key_id {
            let cost = spent.entry((key_id.as_str(), day)).or_default();
            *cost = cost.saturating_add(record.cost_micro_usd);
        }
    }
    let mut daily = txn.open_table(USAGE_DAILY)?;
    for (bucket, added) in buckets {
        let mut counters: Counters = match daily.get(bucket)? {
            Some(json) => from_json("usage bucket", json.value())?,
            None => Counters::default(),
        };
        counters.merge(&added);
        let json = to_json("usage bucket", &counters)?;
        daily.insert(bucket, json.as_str())?;
    }
    let mut spend = txn.open_table(KEY_SPEND)?;
    for (slot, cost) in spent {
        let before = spend.get(slot)?.map(|v| v.value()).unwrap_or(0);
        spend.insert(slot, before.saturating_add(cost))?;
    }
    Ok(())
}
