//! Feedback, the prompt log, the audit log and erasure in the embedded store.

use redb::{ReadableMultimapTable, ReadableTable};

use super::{
    AUDIT, AUDIT_BY_PRINCIPAL, EmbeddedStore, FEEDBACK, Inner, PROMPTS, entries_of, from_json,
    to_json,
};
use crate::StoreError;
use crate::audit::{AuditEvent, AuditLog, MAX_AUDIT_PAGE, NewAuditEvent, pseudonym};
use crate::erasure::{Erasure, ErasureReport};
use crate::feedback::{FeedbackCounts, FeedbackRecord, FeedbackStore, Rating};
use crate::prompts::{PromptLog, PromptRecord};

impl Inner {
    fn put_pair(
        &self,
        table: redb::TableDefinition<'_, (&str, &str), &str>,
        principal: &str,
        response_id: &str,
        json: &str,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(table)?
            .insert((principal, response_id), json)?;
        txn.commit()?;
        Ok(())
    }

    fn feedback_counts(&self, since: u64) -> Result<FeedbackCounts, StoreError> {
        let txn = self.db.begin_read()?;
        let mut counts = FeedbackCounts::default();
        for entry in txn.open_table(FEEDBACK)?.iter()? {
            let (key, json) = entry?;
            let record: FeedbackRecord = from_json(key.value().1, json.value())?;
            if record.at >= since {
                match record.rating {
                    Rating::Up => counts.up += 1,
                    Rating::Down => counts.down += 1,
                }
            }
        }
        Ok(counts)
    }

    fn prompts_of(&self, principal: &str) -> Result<Vec<PromptRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut prompts = entries_of(&txn.open_table(PROMPTS)?, principal)?
            .into_iter()
            .map(|(id, json)| from_json::<PromptRecord>(&id, &json))
            .collect::<Result<Vec<_>, _>>()?;
        prompts.sort_by(|a, b| (a.at, &a.response_id).cmp(&(b.at, &b.response_id)));
        Ok(prompts)
    }

    fn append_audit(&self, event: NewAuditEvent) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut audit = txn.open_table(AUDIT)?;
            let id = match audit.last()? {
                Some((last, _)) => last.value() + 1,
                None => 1,
            };
            let mut index = txn.open_multimap_table(AUDIT_BY_PRINCIPAL)?;
            index.insert(event.actor.as_str(), id)?;
            if let Some(target) = &event.target {
                index.insert(target.as_str(), id)?;
            }
            let json = to_json("audit event", &event.with_id(id))?;
            audit.insert(id, json.as_str())?;
            id
        };
        txn.commit()?;
        Ok(id)
    }

    fn audit_events(
        &self,
        since_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = limit.min(MAX_AUDIT_PAGE);
        let txn = self.db.begin_read()?;
        let audit = txn.open_table(AUDIT)?;
        let decode = |entry: Result<
            (redb::AccessGuard<'_, u64>, redb::AccessGuard<'_, &str>),
            redb::StorageError,
        >| {
            let (_, json) = entry?;
            from_json::<AuditEvent>("audit event", json.value())
        };
        match since_id {
            Some(since) => {
                let Some(first) = since.checked_add(1) else {
                    return Ok(Vec::new());
                };
                audit.range(first..)?.take(limit).map(decode).collect()
            }
            None => {
                let mut events = audit
                    .iter()?
                    .rev()
                    .take(limit)
                    .map(decode)
                    .collect::<Result<Vec<_>, _>>()?;
                events.reverse();
                Ok(events)
            }
        }
    }

    fn erase_principal(&self, principal: &str) -> Result<ErasureReport, StoreError> {
        let mut report = ErasureReport::default();
        let txn = self.db.begin_write()?;
        {
            for (table, removed) in [
                (PROMPTS, &mut report.prompts_removed),
                (FEEDBACK, &mut report.feedback_removed),
            ] {
                let mut table = txn.open_table(table)?;
                for (response_id, _) in entries_of(&table, principal)? {
                    table.remove((principal, response_id.as_str()))?;
                    *removed += 1;
                }
            }

            let mut index = txn.open_multimap_table(AUDIT_BY_PRINCIPAL)?;
            let ids = index
                .get(principal)?
                .map(|id| id.map(|id| id.value()))
                .collect::<Result<Vec<_>, _>>()?;
            if !ids.is_empty() {
                let alias = pseudonym(principal);
                let mut audit = txn.open_table(AUDIT)?;
                for id in ids {
                    let Some(json) = audit.get(id)?.map(|json| json.value().to_owned()) else {
                        continue;
                    };
                    let (id, mut event) = from_json::<AuditEvent>("audit event", &json)?.into_new();
                    if event.anonymize(principal) {
                        let json = to_json("audit event", &event.with_id(id))?;
                        audit.insert(id, json.as_str())?;
                        index.insert(alias.as_str(), id)?;
                        report.audit_entries_anonymized += 1;
                    }
                }
                index.remove_all(principal)?;
            }
        }
        txn.commit()?;
        Ok(report)
    }
}

#[async_trait::async_trait]
impl FeedbackStore for EmbeddedStore {
    async fn record_feedback(&self, record: &FeedbackRecord) -> Result<(), StoreError> {
        record.validate()?;
        let json = to_json(&record.response_id, record)?;
        let (principal, response_id) = (record.principal.clone(), record.response_id.clone());
        self.blocking(move |inner| inner.put_pair(FEEDBACK, &principal, &response_id, &json))
            .await
    }

    async fn feedback_counts(&self, since: u64) -> Result<FeedbackCounts, StoreError> {
        self.blocking(move |inner| inner.feedback_counts(since))
            .await
    }
}

#[async_trait::async_trait]
impl PromptLog for EmbeddedStore {
    async fn record_prompt(&self, record: &PromptRecord) -> Result<(), StoreError> {
        record.validate()?;
        let json = to_json(&record.response_id, record)?;
        let (principal, response_id) = (record.principal.clone(), record.response_id.clone());
        self.blocking(move |inner| inner.put_pair(PROMPTS, &principal, &response_id, &json))
            .await
    }

    async fn prompts_of(&self, principal: &str) -> Result<Vec<PromptRecord>, StoreError> {
        let principal = principal.to_owned();
        self.blocking(move |inner| inner.prompts_of(&principal))
            .await
    }
}

#[async_trait::async_trait]
impl AuditLog for EmbeddedStore {
    async fn append_audit(&self, event: NewAuditEvent) -> Result<u64, StoreError> {
        event.validate()?;
        self.blocking(move |inner| inner.append_audit(event)).await
    }

    async fn audit_events(
        &self,
        since_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.blocking(move |inner| inner.audit_events(since_id, limit))
            .await
    }
}

#[async_trait::async_trait]
impl Erasure for EmbeddedStore {
    async fn erase_principal(&self, principal: &str) -> Result<ErasureReport, StoreError> {
        let principal = principal.to_owned();
        self.blocking(move |inner| inner.erase_principal(&principal))
            .await
    }
}
