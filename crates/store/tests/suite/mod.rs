//! The behaviour every backend must have. Each function takes a fresh, empty store; the
//! backend's test file runs each one through `suite_tests!`.

use std::collections::BTreeSet;

use passerelle_store::{
    AuditAction, Budget, BudgetPeriod, FeedbackCounts, FeedbackRecord, KeyLimits, KeyRecord,
    NewAuditEvent, NewKey, PromptRecord, Rating, SafetyChecks, Scope, Store, StoreError,
    UsageBucket, UsageQuery, UsageRecord, pseudonym, unix_now,
};

/// One `#[tokio::test]` per suite function, each on a fresh store from `$fixture::new()`.
#[macro_export]
macro_rules! suite_tests {
    ($fixture:ident: $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let fixture = $fixture::new().await;
            suite::$name(fixture.store()).await;
        }
    )*};
}

/// 2024-03-01T12:00:00Z and the day before, for usage on known days.
pub const DAY2: u64 = 1_709_294_400;
pub const DAY1: u64 = DAY2 - 86_400;

pub async fn keys_round_trip(store: &dyn Store) {
    assert!(!store.has_any_keys().await.unwrap());
    assert!(store.list().await.unwrap().is_empty());

    let (record, secret) = store.create(NewKey::new(" ci ", "alice")).await.unwrap();
    assert_eq!(record.name, "ci");
    assert_eq!(record.owner, "alice");
    assert_eq!(record.scopes, Scope::all_user());
    assert_eq!(record.models, None);
    assert_eq!(record.expires_at, None);
    assert!(record.limits.is_unlimited());
    assert!(secret.expose().starts_with("psk-") && secret.expose().len() >= 44);
    assert_eq!(record.prefix, &secret.expose()[..12]);
    assert!(!record.is_revoked());
    assert!(store.has_any_keys().await.unwrap());

    assert_eq!(
        store.verify(secret.expose()).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.get(&record.id).await.unwrap(), record);
    assert_eq!(store.get(&record.prefix).await.unwrap(), record);
    assert_eq!(store.list().await.unwrap(), vec![record.clone()]);

    let (second, second_secret) = store.create(NewKey::new("other", "bob")).await.unwrap();
    assert_ne!(second.prefix, record.prefix);
    let listed: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&record.id) && listed.contains(&second.id));

    // Revoking by display prefix works as well as by id.
    let revoked = store.revoke(&record.prefix).await.unwrap();
    assert!(revoked.is_revoked());
    assert_eq!(revoked.id, record.id);
    assert_eq!(store.verify(secret.expose()).await.unwrap(), None);
    assert_eq!(
        store.verify(second_secret.expose()).await.unwrap(),
        Some(second)
    );
    // Revoking the last key keeps authentication on; revoking again keeps the first time.
    assert!(store.has_any_keys().await.unwrap());
    assert_eq!(store.revoke(&record.id).await.unwrap(), revoked);
    assert_eq!(store.get(&record.id).await.unwrap(), revoked);

    for missing in ["psk-00000000", "no-such-id"] {
        let err = store.revoke(missing).await.unwrap_err();
        assert!(matches!(err, StoreError::KeyNotFound(_)), "{err}");
        let err = store.get(missing).await.unwrap_err();
        assert!(matches!(err, StoreError::KeyNotFound(_)), "{err}");
    }
}

pub async fn wrong_keys_fail(store: &dyn Store) {
    let (_, secret) = store.create(NewKey::new("ci", "alice")).await.unwrap();
    let real = secret.expose();
    // Same display prefix, different tail: found by prefix, rejected by hash.
    let mut forged = real[..real.len() - 1].to_owned();
    forged.push(if real.ends_with('a') { 'b' } else { 'a' });
    for wrong in [
        forged.as_str(),
        "",
        "psk-",
        "sk-nothing",
        &real[..real.len() - 1],
    ] {
        assert_eq!(
            store.verify(wrong).await.unwrap(),
            None,
            "{wrong:?} verified"
        );
    }
}

pub async fn expired_keys_do_not_verify(store: &dyn Store) {
    let now = unix_now();
    let mut past = NewKey::new("past", "alice");
    past.expires_at = Some(now - 1);
    let (expired, expired_secret) = store.create(past).await.unwrap();
    let mut future = NewKey::new("future", "alice");
    future.expires_at = Some(now + 3600);
    let (valid, valid_secret) = store.create(future).await.unwrap();

    assert_eq!(store.verify(expired_secret.expose()).await.unwrap(), None);
    assert_eq!(
        store.verify(valid_secret.expose()).await.unwrap(),
        Some(valid.clone())
    );
    // Expired keys are still listed, with their expiry.
    let got = store.get(&expired.id).await.unwrap();
    assert!(got.is_expired(now) && !got.is_revoked());
    assert_eq!(got.expires_at, Some(now - 1));
    assert_eq!(store.list().await.unwrap().len(), 2);
}

pub async fn scopes_models_and_limits_round_trip(store: &dyn Store) {
    let mut new = NewKey::new("svc", "team-a");
    new.scopes = BTreeSet::from([Scope::Chat, Scope::Admin]);
    new.models = Some(BTreeSet::from(["tiny".to_owned(), "big".to_owned()]));
    new.limits = KeyLimits {
        rpm: Some(60),
        tpm: Some(10_000),
        max_concurrent: Some(2),
        budget: Some(Budget {
            limit_micro_usd: 5_000_000,
            period: BudgetPeriod::Monthly,
        }),
    };
    new.safety = Some(SafetyChecks::Output);
    let (record, secret) = store.create(new.clone()).await.unwrap();
    assert_eq!(record.safety, Some(SafetyChecks::Output));
    assert_eq!(record.scopes, new.scopes);
    assert_eq!(record.models, new.models);
    assert_eq!(record.limits, new.limits);
    assert!(record.allows_scope(Scope::Admin) && !record.allows_scope(Scope::Embeddings));
    assert!(record.allows_model("tiny") && !record.allows_model("other"));
    assert_eq!(
        store.verify(secret.expose()).await.unwrap(),
        Some(record.clone())
    );

    let limits = KeyLimits {
        rpm: Some(5),
        ..KeyLimits::default()
    };
    let updated = store
        .update_limits(&record.prefix, limits.clone())
        .await
        .unwrap();
    assert_eq!(updated.limits, limits);
    assert_eq!(updated.scopes, record.scopes);
    assert_eq!(store.verify(secret.expose()).await.unwrap(), Some(updated));

    // A limits change never undoes a revocation.
    let revoked = store.revoke(&record.id).await.unwrap();
    let after = store
        .update_limits(&record.id, KeyLimits::default())
        .await
        .unwrap();
    assert_eq!(after.revoked_at, revoked.revoked_at);
    assert_eq!(store.verify(secret.expose()).await.unwrap(), None);

    let err = store
        .update_limits(
            &record.id,
            KeyLimits {
                tpm: Some(0),
                ..KeyLimits::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    let err = store
        .update_limits("nope", KeyLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::KeyNotFound(_)), "{err}");
}

pub async fn bad_new_keys_are_rejected(store: &dyn Store) {
    let err = store.create(NewKey::new("  ", "alice")).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidName(_)), "{err}");
    let err = store.create(NewKey::new("ci", "")).await.unwrap_err();
    assert!(err.to_string().contains("owner"), "{err}");
    let mut no_scopes = NewKey::new("ci", "alice");
    no_scopes.scopes.clear();
    let err = store.create(no_scopes).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(!store.has_any_keys().await.unwrap());
}

pub async fn a_reachable_store_answers_ping(store: &dyn Store) {
    store.ping().await.unwrap();
    store.create(NewKey::new("ci", "alice")).await.unwrap();
    store.ping().await.unwrap();
}

pub fn usage(response_id: &str, principal: &str, model: &str, at: u64) -> UsageRecord {
    UsageRecord {
        response_id: response_id.to_owned(),
        principal: principal.to_owned(),
        key_id: Some(format!("key-{principal}")),
        model: model.to_owned(),
        endpoint: "chat".to_owned(),
        prompt_tokens: 10,
        completion_tokens: 5,
        latency_ms: 42,
        cache_hit: false,
        cost_micro_usd: 100,
        at,
    }
}

fn bucket(day: &str, principal: &str, model: &str, requests: u64, hits: u64) -> UsageBucket {
    UsageBucket {
        day: day.to_owned(),
        principal: principal.to_owned(),
        model: model.to_owned(),
        requests,
        prompt_tokens: 10 * requests,
        completion_tokens: 5 * requests,
        cache_hits: hits,
        cost_micro_usd: 100 * requests,
    }
}

pub async fn usage_is_summed_by_day_principal_and_model(store: &dyn Store) {
    let cached = UsageRecord {
        cache_hit: true,
        ..usage("r2", "alice", "tiny", DAY1 + 10)
    };
    for record in [
        usage("r1", "alice", "tiny", DAY1),
        cached,
        usage("r3", "bob", "tiny", DAY1 + 20),
        usage("r4", "alice", "big", DAY2),
        usage("r5", "alice", "tiny", DAY2 + 5),
        // Recording a response again (a retry) counts it once.
        usage("r1", "alice", "tiny", DAY1),
    ] {
        store.record_usage(&record).await.unwrap();
    }
    let all = UsageQuery {
        principal: None,
        since: DAY1,
        until: DAY2,
    };
    assert_eq!(
        store.usage_summary(&all).await.unwrap(),
        vec![
            bucket("2024-02-29", "alice", "tiny", 2, 1),
            bucket("2024-02-29", "bob", "tiny", 1, 0),
            bucket("2024-03-01", "alice", "big", 1, 0),
            bucket("2024-03-01", "alice", "tiny", 1, 0),
        ]
    );
    let alice_day2 = UsageQuery {
        principal: Some("alice".to_owned()),
        since: DAY2,
        until: DAY2 + 1,
    };
    assert_eq!(
        store.usage_summary(&alice_day2).await.unwrap(),
        vec![
            bucket("2024-03-01", "alice", "big", 1, 0),
            bucket("2024-03-01", "alice", "tiny", 1, 0),
        ]
    );
    let bob = UsageQuery {
        principal: Some("bob".to_owned()),
        since: 0,
        until: u64::MAX / 2,
    };
    assert_eq!(store.usage_summary(&bob).await.unwrap().len(), 1);
    let backwards = UsageQuery {
        principal: None,
        since: DAY2,
        until: DAY1,
    };
    assert!(store.usage_summary(&backwards).await.unwrap().is_empty());

    assert_eq!(store.spent_micro_usd("key-alice", 0).await.unwrap(), 400);
    assert_eq!(store.spent_micro_usd("key-alice", DAY2).await.unwrap(), 200);
    assert_eq!(
        store
            .spent_micro_usd("key-alice", DAY2 + 86_400)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.spent_micro_usd("key-bob", DAY1).await.unwrap(), 100);
    assert_eq!(store.spent_micro_usd("key-nobody", 0).await.unwrap(), 0);
    assert_eq!(
        BudgetPeriod::Daily.period_start(DAY2 + 100),
        DAY2 - DAY2 % 86_400,
        "budget periods start on the day boundaries spend is kept by"
    );

    assert_eq!(
        store.usage_by_response("r3").await.unwrap(),
        Some(usage("r3", "bob", "tiny", DAY1 + 20))
    );
    assert_eq!(store.usage_by_response("r404").await.unwrap(), None);

    // Names holding the separators of either backend's encoding are kept apart exactly.
    store
        .record_usage(&usage("r8", "we|ird\"one", "m|x", DAY1))
        .await
        .unwrap();
    let weird = UsageQuery {
        principal: Some("we|ird\"one".to_owned()),
        since: DAY1,
        until: DAY1,
    };
    let buckets = store.usage_summary(&weird).await.unwrap();
    assert_eq!(buckets.len(), 1);
    assert_eq!(
        (buckets[0].principal.as_str(), buckets[0].model.as_str()),
        ("we|ird\"one", "m|x")
    );

    let mut bad = usage("", "alice", "tiny", DAY1);
    let err = store.record_usage(&bad).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    bad.response_id = "r6".to_owned();
    bad.key_id = None;
    store.record_usage(&bad).await.unwrap();
    assert_eq!(store.spent_micro_usd("key-alice", 0).await.unwrap(), 400);
}

pub async fn usage_batches_count_as_single_records(store: &dyn Store) {
    store
        .record_usage(&usage("b1", "alice", "tiny", DAY1))
        .await
        .unwrap();
    // b1 again (a retry after a lost reply) and b2 twice in one batch: each counted once;
    // b3 and b5 share a bucket the batch opens.
    let batch = [
        usage("b1", "alice", "tiny", DAY1),
        usage("b2", "alice", "tiny", DAY1 + 1),
        usage("b3", "bob", "big", DAY2),
        usage("b2", "alice", "tiny", DAY1 + 1),
        usage("b5", "bob", "big", DAY2 + 1),
    ];
    store.record_usages(&batch).await.unwrap();
    let all = UsageQuery {
        principal: None,
        since: DAY1,
        until: DAY2,
    };
    assert_eq!(
        store.usage_summary(&all).await.unwrap(),
        vec![
            bucket("2024-02-29", "alice", "tiny", 2, 0),
            bucket("2024-03-01", "bob", "big", 2, 0),
        ]
    );
    assert_eq!(store.spent_micro_usd("key-alice", 0).await.unwrap(), 200);
    assert_eq!(store.spent_micro_usd("key-bob", 0).await.unwrap(), 200);
    // One invalid record refuses the batch before any of it is written.
    let refused = [
        usage("b4", "alice", "tiny", DAY1),
        usage("", "alice", "tiny", DAY1),
    ];
    let err = store.record_usages(&refused).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert_eq!(store.usage_by_response("b4").await.unwrap(), None);
    store.record_usages(&[]).await.unwrap();
}

fn feedback(response_id: &str, principal: &str, rating: Rating, at: u64) -> FeedbackRecord {
    FeedbackRecord {
        response_id: response_id.to_owned(),
        principal: principal.to_owned(),
        rating,
        comment: None,
        at,
    }
}

pub async fn feedback_is_replaced_and_counted(store: &dyn Store) {
    let counts = |up, down| FeedbackCounts { up, down };
    assert_eq!(store.feedback_counts(0).await.unwrap(), counts(0, 0));
    store
        .record_feedback(&feedback("r1", "alice", Rating::Up, DAY1))
        .await
        .unwrap();
    assert_eq!(store.feedback_counts(0).await.unwrap(), counts(1, 0));
    // A second rating of the same response by the same principal replaces the first.
    let mut changed = feedback("r1", "alice", Rating::Down, DAY2);
    changed.comment = Some("wrong answer".to_owned());
    store.record_feedback(&changed).await.unwrap();
    assert_eq!(store.feedback_counts(0).await.unwrap(), counts(0, 1));
    store
        .record_feedback(&feedback("r1", "bob", Rating::Up, DAY1))
        .await
        .unwrap();
    store
        .record_feedback(&feedback("r2", "alice", Rating::Up, DAY2 + 1))
        .await
        .unwrap();
    assert_eq!(store.feedback_counts(0).await.unwrap(), counts(2, 1));
    assert_eq!(store.feedback_counts(DAY2).await.unwrap(), counts(1, 1));
    assert_eq!(store.feedback_counts(DAY2 + 2).await.unwrap(), counts(0, 0));

    let mut long = feedback("r3", "alice", Rating::Up, DAY2);
    long.comment = Some("x".repeat(passerelle_store::MAX_COMMENT_CHARS + 1));
    let err = store.record_feedback(&long).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
}

pub fn prompt(response_id: &str, principal: &str, at: u64) -> PromptRecord {
    PromptRecord {
        response_id: response_id.to_owned(),
        principal: principal.to_owned(),
        at,
        prompt: format!("question {response_id}"),
        completion: format!("answer {response_id}"),
    }
}

pub async fn prompts_are_logged_per_principal(store: &dyn Store) {
    store
        .record_prompt(&prompt("r2", "alice", DAY2))
        .await
        .unwrap();
    store
        .record_prompt(&prompt("r1", "alice", DAY1))
        .await
        .unwrap();
    store
        .record_prompt(&prompt("r3", "bob", DAY1))
        .await
        .unwrap();
    assert_eq!(
        store.prompts_of("alice").await.unwrap(),
        vec![prompt("r1", "alice", DAY1), prompt("r2", "alice", DAY2)]
    );
    let mut again = prompt("r1", "alice", DAY1);
    again.completion = "corrected".to_owned();
    store.record_prompt(&again).await.unwrap();
    assert_eq!(store.prompts_of("alice").await.unwrap()[0], again);
    assert!(store.prompts_of("carol").await.unwrap().is_empty());
}

pub fn event(actor: &str, action: AuditAction, target: Option<&str>, at: u64) -> NewAuditEvent {
    let mut event = NewAuditEvent::now(actor, action).client_addr("127.0.0.1:5000");
    event.at = at;
    if let Some(target) = target {
        event = event.target(target);
    }
    event
}

pub async fn audit_ids_increase_and_pages_read_in_order(store: &dyn Store) {
    assert!(store.audit_events(None, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for i in 0..5 {
        let new = event(
            "admin",
            AuditAction::KeyCreated,
            Some(&format!("key-{i}")),
            DAY1 + i,
        );
        ids.push(
            store
                .append_audit(new.detail(format!("n={i}")))
                .await
                .unwrap(),
        );
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);

    let all = store.audit_events(None, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[2].target.as_deref(), Some("key-2"));
    assert_eq!(all[2].detail.as_deref(), Some("n=2"));
    assert_eq!(all[2].client_addr.as_deref(), Some("127.0.0.1:5000"));
    assert_eq!(all[2].at, DAY1 + 2);
    assert_eq!(all[2].action, AuditAction::KeyCreated);
    assert_eq!(all[2].actor, "admin");

    let ids_of = |events: Vec<passerelle_store::AuditEvent>| {
        events.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids_of(store.audit_events(None, 2).await.unwrap()),
        vec![4, 5]
    );
    assert_eq!(
        ids_of(store.audit_events(Some(2), 2).await.unwrap()),
        vec![3, 4]
    );
    assert_eq!(
        ids_of(store.audit_events(Some(3), 100).await.unwrap()),
        vec![4, 5]
    );
    assert!(store.audit_events(Some(5), 10).await.unwrap().is_empty());
    assert!(
        store
            .audit_events(Some(u64::MAX), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.audit_events(None, 0).await.unwrap().is_empty());

    let next = store
        .append_audit(NewAuditEvent::now("cli", AuditAction::KeyRevoked))
        .await
        .unwrap();
    assert_eq!(next, 6);
    let err = store
        .append_audit(NewAuditEvent::now("", AuditAction::AdminAction))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
}

pub async fn erasure_removes_personal_data_and_pseudonymizes_the_audit_log(store: &dyn Store) {
    store
        .record_prompt(&prompt("r1", "alice", DAY1))
        .await
        .unwrap();
    store
        .record_prompt(&prompt("r2", "alice", DAY2))
        .await
        .unwrap();
    store
        .record_prompt(&prompt("r3", "bob", DAY1))
        .await
        .unwrap();
    store
        .record_feedback(&feedback("r1", "alice", Rating::Up, DAY1))
        .await
        .unwrap();
    store
        .record_feedback(&feedback("r3", "bob", Rating::Down, DAY1))
        .await
        .unwrap();
    store
        .record_usage(&usage("r1", "alice", "tiny", DAY1))
        .await
        .unwrap();
    store
        .append_audit(event("alice", AuditAction::KeyCreated, None, DAY1))
        .await
        .unwrap();
    store
        .append_audit(event("admin", AuditAction::KeyRevoked, Some("alice"), DAY1))
        .await
        .unwrap();
    store
        .append_audit(event(
            "alice",
            AuditAction::AdminAction,
            Some("alice"),
            DAY1,
        ))
        .await
        .unwrap();
    store
        .append_audit(event(
            "bob",
            AuditAction::RequestBlocked,
            Some("carol"),
            DAY1,
        ))
        .await
        .unwrap();

    let report = store.erase_principal("alice").await.unwrap();
    assert_eq!(report.prompts_removed, 2);
    assert_eq!(report.feedback_removed, 1);
    assert_eq!(report.audit_entries_anonymized, 3);

    assert!(store.prompts_of("alice").await.unwrap().is_empty());
    assert_eq!(store.prompts_of("bob").await.unwrap().len(), 1);
    assert_eq!(
        store.feedback_counts(0).await.unwrap(),
        FeedbackCounts { up: 0, down: 1 }
    );

    let alias = pseudonym("alice");
    assert!(alias.starts_with("erased:") && alias.len() == "erased:".len() + 12);
    let events = store.audit_events(None, 10).await.unwrap();
    assert_eq!(events.len(), 4, "erasure deletes no audit entry");
    assert_eq!(events[0].actor, alias);
    assert_eq!(events[1].actor, "admin");
    assert_eq!(events[1].target.as_deref(), Some(alias.as_str()));
    assert_eq!(events[2].actor, alias);
    assert_eq!(events[2].target.as_deref(), Some(alias.as_str()));
    assert_eq!(events[3].actor, "bob");
    assert_eq!(events[3].target.as_deref(), Some("carol"));
    assert!(!format!("{events:?}").contains("alice"));

    // Accounting stays.
    let summary = store
        .usage_summary(&UsageQuery {
            principal: Some("alice".to_owned()),
            since: DAY1,
            until: DAY1,
        })
        .await
        .unwrap();
    assert_eq!(summary.len(), 1);

    // Erasing again finds nothing, and other principals are untouched.
    let again = store.erase_principal("alice").await.unwrap();
    assert_eq!(again, Default::default());
    let nobody = store.erase_principal("nobody").await.unwrap();
    assert_eq!(nobody, Default::default());
}

/// What [`write_durable_state`] wrote, for [`check_durable_state`] after a restart.
pub struct Written {
    pub key: KeyRecord,
    pub secret: passerelle_store::ApiKeySecret,
    pub revoked_secret: passerelle_store::ApiKeySecret,
}

/// Writes one of everything.
pub async fn write_durable_state(store: &dyn Store) -> Written {
    let (key, secret) = store.create(NewKey::new("kept", "alice")).await.unwrap();
    let (revoked, revoked_secret) = store.create(NewKey::new("revoked", "alice")).await.unwrap();
    store.revoke(&revoked.id).await.unwrap();
    store
        .record_usage(&usage("r1", "alice", "tiny", DAY1))
        .await
        .unwrap();
    store
        .record_feedback(&feedback("r1", "alice", Rating::Up, DAY1))
        .await
        .unwrap();
    store
        .record_prompt(&prompt("r1", "alice", DAY1))
        .await
        .unwrap();
    store
        .append_audit(event("cli", AuditAction::KeyCreated, Some(&key.id), DAY1))
        .await
        .unwrap();
    store
        .append_audit(event(
            "cli",
            AuditAction::KeyRevoked,
            Some(&revoked.id),
            DAY1,
        ))
        .await
        .unwrap();
    Written {
        key,
        secret,
        revoked_secret,
    }
}

/// Checks that everything [`write_durable_state`] wrote is still there.
pub async fn check_durable_state(store: &dyn Store, written: &Written) {
    assert!(store.has_any_keys().await.unwrap());
    assert_eq!(
        store.verify(written.secret.expose()).await.unwrap(),
        Some(written.key.clone())
    );
    assert_eq!(
        store.verify(written.revoked_secret.expose()).await.unwrap(),
        None
    );
    assert_eq!(store.list().await.unwrap().len(), 2);
    let summary = store
        .usage_summary(&UsageQuery {
            principal: None,
            since: DAY1,
            until: DAY1,
        })
        .await
        .unwrap();
    assert_eq!(summary, vec![bucket("2024-02-29", "alice", "tiny", 1, 0)]);
    assert_eq!(store.spent_micro_usd("key-alice", 0).await.unwrap(), 100);
    assert!(store.usage_by_response("r1").await.unwrap().is_some());
    assert_eq!(
        store.feedback_counts(0).await.unwrap(),
        FeedbackCounts { up: 1, down: 0 }
    );
    assert_eq!(store.prompts_of("alice").await.unwrap().len(), 1);
    let audit = store.audit_events(None, 10).await.unwrap();
    assert_eq!(audit.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
    // The id sequence carries on after the restart.
    let next = store
        .append_audit(NewAuditEvent::now("cli", AuditAction::AdminAction))
        .await
        .unwrap();
    assert_eq!(next, 3);
}
