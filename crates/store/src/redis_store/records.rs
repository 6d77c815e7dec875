//! Feedback, the prompt log, the audit log and erasure in Redis.

use std::sync::LazyLock;

use redis::{AsyncCommands as _, Script};

use super::{RedisStore, from_json, json_field, to_json};
use crate::StoreError;
use crate::audit::{AuditEvent, AuditLog, MAX_AUDIT_PAGE, NewAuditEvent, pseudonym};
use crate::erasure::{Erasure, ErasureReport};
use crate::feedback::{FeedbackCounts, FeedbackRecord, FeedbackStore, Rating};
use crate::prompts::{PromptLog, PromptRecord};

/// Assigns the next id and stores the event with its index entries.
/// KEYS: sequence, events hash, actor index, target index. ARGV: event JSON, has target (0/1).
static APPEND_AUDIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local id = redis.call('INCR', KEYS[1])
        redis.call('HSET', KEYS[2], id, ARGV[1])
        redis.call('SADD', KEYS[3], id)
        if ARGV[2] == '1' then redis.call('SADD', KEYS[4], id) end
        return id
        ",
    )
});

/// Deletes a principal's prompts and feedback; returns their counts.
/// KEYS: prompts hash, feedback hash, up set, down set, the principal's feedback index.
static ERASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local prompts = redis.call('HLEN', KEYS[1])
        redis.call('DEL', KEYS[1])
        local removed = 0
        for _, field in ipairs(redis.call('SMEMBERS', KEYS[5])) do
            removed = removed + redis.call('HDEL', KEYS[2], field)
            redis.call('ZREM', KEYS[3], field)
            redis.call('ZREM', KEYS[4], field)
        end
        redis.call('DEL', KEYS[5])
        return {prompts, removed}
        ",
    )
});

#[async_trait::async_trait]
impl FeedbackStore for RedisStore {
    async fn record_feedback(&self, record: &FeedbackRecord) -> Result<(), StoreError> {
        record.validate()?;
        let json = to_json(&record.response_id, record)?;
        let field = json_field(&[&record.response_id, &record.principal]);
        let (rated, other) = match record.rating {
            Rating::Up => ("feedback:up", "feedback:down"),
            Rating::Down => ("feedback:down", "feedback:up"),
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.key("feedback"), &field, json)
            .ignore()
            .zadd(self.key(rated), &field, record.at)
            .ignore()
            .zrem(self.key(other), &field)
            .ignore()
            .sadd(self.key_of("feedback:by", &record.principal), &field)
            .ignore();
        let mut conn = self.conn();
        self.timed(pipe.exec_async(&mut conn)).await
    }

    async fn feedback_counts(&self, since: u64) -> Result<FeedbackCounts, StoreError> {
        let mut pipe = redis::pipe();
        pipe.zcount(self.key("feedback:up"), since, "+inf").zcount(
            self.key("feedback:down"),
            since,
            "+inf",
        );
        let mut conn = self.conn();
        let (up, down): (u64, u64) = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(FeedbackCounts { up, down })
    }
}

#[async_trait::async_trait]
impl PromptLog for RedisStore {
    async fn record_prompt(&self, record: &PromptRecord) -> Result<(), StoreError> {
        record.validate()?;
        let json = to_json(&record.response_id, record)?;
        let mut conn = self.conn();
        let _: i64 = self
            .timed(conn.hset(
                self.key_of("prompts", &record.principal),
                &record.response_id,
                json,
            ))
            .await?;
        Ok(())
    }

    async fn prompts_of(&self, principal: &str) -> Result<Vec<PromptRecord>, StoreError> {
        let mut conn = self.conn();
        let values: Vec<String> = self
            .timed(conn.hvals(self.key_of("prompts", principal)))
            .await?;
        let mut prompts = values
            .iter()
            .map(|json| from_json::<PromptRecord>(principal, json))
            .collect::<Result<Vec<_>, _>>()?;
        prompts.sort_by(|a, b| (a.at, &a.response_id).cmp(&(b.at, &b.response_id)));
        Ok(prompts)
    }
}

impl RedisStore {
    /// The events with these ids that exist, in the order given.
    async fn load_events(&self, ids: &[u64]) -> Result<Vec<AuditEvent>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let values: Vec<Option<String>> = self
            .timed(conn.hmget(self.key("audit:events"), ids))
            .await?;
        let mut events = Vec::with_capacity(ids.len());
        for (id, json) in ids.iter().zip(values) {
            if let Some(json) = json {
                let event: NewAuditEvent = from_json("audit event", &json)?;
                events.push(event.with_id(*id));
            }
        }
        Ok(events)
    }
}

#[async_trait::async_trait]
impl AuditLog for RedisStore {
    async fn append_audit(&self, event: NewAuditEvent) -> Result<u64, StoreError> {
        event.validate()?;
        let json = to_json("audit event", &event)?;
        let actor_index = self.key_of("audit:by", &event.actor);
        let target_index = match &event.target {
            Some(target) => self.key_of("audit:by", target),
            None => actor_index.clone(),
        };
        let mut conn = self.conn();
        self.timed(
            APPEND_AUDIT
                .key(self.key("audit:seq"))
                .key(self.key("audit:events"))
                .key(actor_index)
                .key(target_index)
                .arg(json)
                .arg(u8::from(event.target.is_some()))
                .invoke_async(&mut conn),
        )
        .await
    }

    async fn audit_events(
        &self,
        since_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = u64::try_from(limit.min(MAX_AUDIT_PAGE)).unwrap_or(0);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let last: Option<u64> = self.timed(conn.get(self.key("audit:seq"))).await?;
        let last = last.unwrap_or(0);
        // Ids are contiguous: the append script takes the next one and stores it at once.
        let (first, end) = match since_id {
            Some(since) => (
                since.saturating_add(1),
                since.saturating_add(limit).min(last),
            ),
            None => (last.saturating_sub(limit - 1).max(1), last),
        };
        let ids: Vec<u64> = (first..=end).collect();
        self.load_events(&ids).await
    }
}

#[async_trait::async_trait]
impl Erasure for RedisStore {
    async fn erase_principal(&self, principal: &str) -> Result<ErasureReport, StoreError> {
        let mut conn = self.conn();
        let (prompts_removed, feedback_removed): (u64, u64) = self
            .timed(
                ERASE
                    .key(self.key_of("prompts", principal))
                    .key(self.key("feedback"))
                    .key(self.key("feedback:up"))
                    .key(self.key("feedback:down"))
                    .key(self.key_of("feedback:by", principal))
                    .invoke_async(&mut conn),
            )
            .await?;

        // Audit events never change except here, so reading then rewriting them is safe; events
        // appended meanwhile keep their index entries (SREM removes only what was read).
        let index = self.key_of("audit:by", principal);
        let ids: Vec<u64> = self.timed(conn.smembers(&index)).await?;
        let mut anonymized = Vec::new();
        for event in self.load_events(&ids).await? {
            let (id, mut event) = event.into_new();
            if event.anonymize(principal) {
                anonymized.push((id, to_json("audit event", &event)?));
            }
        }
        if !ids.is_empty() {
            let alias_index = self.key_of("audit:by", pseudonym(principal));
            let mut pipe = redis::pipe();
            pipe.atomic();
            if !anonymized.is_empty() {
                pipe.hset_multiple(self.key("audit:events"), &anonymized)
                    .ignore();
                let changed: Vec<u64> = anonymized.iter().map(|(id, _)| *id).collect();
                pipe.sadd(&alias_index, changed).ignore();
            }
            pipe.srem(&index, &ids).ignore();
            self.timed(pipe.exec_async(&mut conn)).await?;
        }
        Ok(ErasureReport {
            prompts_removed,
            feedback_removed,
            audit_entries_anonymized: anonymized.len() as u64,
        })
    }
}
