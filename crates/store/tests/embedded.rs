//! The embedded store against a real redb file in a temporary directory: the shared suite,
//! plus what only a local file has (reopening, the lock, records from the previous version).

#[macro_use]
mod suite;

use std::sync::Arc;

use passerelle_store::{
    EmbeddedStore, KeyStore, KeyVerifier, Keyring, NewKey, Scope, StaticKeys, Store, StoreError,
};

struct Embedded {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
}

impl Embedded {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        Self { _dir: dir, store }
    }

    fn store(&self) -> &dyn Store {
        &self.store
    }
}

suite_tests!(Embedded:
    keys_round_trip,
    wrong_keys_fail,
    expired_keys_do_not_verify,
    scopes_models_and_limits_round_trip,
    bad_new_keys_are_rejected,
    a_reachable_store_answers_ping,
    usage_is_summed_by_day_principal_and_model,
    usage_batches_count_as_single_records,
    feedback_is_replaced_and_counted,
    prompts_are_logged_per_principal,
    audit_ids_increase_and_pages_read_in_order,
    erasure_removes_personal_data_and_pseudonymizes_the_audit_log,
);

#[tokio::test]
async fn everything_survives_reopening_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        suite::write_durable_state(&store).await
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    suite::check_durable_state(&store, &written).await;
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

/// A key as the previous version wrote it: no owner, scopes, models, expiry or limits.
#[tokio::test]
async fn keys_written_by_the_previous_version_still_verify() {
    use redb::TableDefinition;
    let keys: TableDefinition<'_, &str, &str> = TableDefinition::new("api_keys");
    let prefixes: TableDefinition<'_, &str, &str> = TableDefinition::new("api_key_prefixes");

    let dir = tempfile::tempdir().unwrap();
    let secret = format!("psk-{}", "a1".repeat(24));
    {
        let db = redb::Database::create(EmbeddedStore::database_path(dir.path())).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let sha = {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(secret.as_bytes()))
            };
            let old = format!(
                r#"{{"id":"old-1","name":"legacy","prefix":"{}","created_at":1700000000,"revoked_at":null,"sha256":"{sha}"}}"#,
                &secret[..12]
            );
            txn.open_table(keys)
                .unwrap()
                .insert("old-1", old.as_str())
                .unwrap();
            txn.open_table(prefixes)
                .unwrap()
                .insert(&secret[..12], "old-1")
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let record = store
        .verify(&secret)
        .await
        .unwrap()
        .expect("the old key verifies");
    assert_eq!(record.id, "old-1");
    assert_eq!(record.owner, "legacy");
    assert_eq!(record.scopes, Scope::all_user());
    assert_eq!(record.models, None);
    assert_eq!(record.expires_at, None);
    assert!(record.limits.is_unlimited());
    // Changing it writes the new format, which reads back the same.
    let revoked = store.revoke("old-1").await.unwrap();
    assert_eq!(store.get("old-1").await.unwrap(), revoked);
    assert_eq!(store.list().await.unwrap(), vec![revoked]);
}

#[tokio::test]
async fn keyring_accepts_static_and_stored_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (stored, secret) = store.create(NewKey::new("stored", "alice")).await.unwrap();
    let shared: Arc<dyn Store> = Arc::new(store);
    let keyring = Keyring::new(
        StaticKeys::from_plaintext(["operator-key"]),
        Some(shared as Arc<dyn KeyStore>),
    );
    assert_eq!(keyring.verify(secret.expose()).await.unwrap(), Some(stored));
    let operator = keyring.verify("operator-key").await.unwrap().unwrap();
    assert_eq!(operator.id, "static-1");
    assert!(operator.allows_scope(Scope::Admin));
    assert_eq!(keyring.verify("nope").await.unwrap(), None);
    assert!(keyring.has_any_keys().await.unwrap());
}

#[tokio::test]
async fn an_empty_keyring_has_no_keys() {
    let keyring = Keyring::new(StaticKeys::default(), None);
    assert!(!keyring.has_any_keys().await.unwrap());
    assert_eq!(keyring.verify("anything").await.unwrap(), None);

    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let keyring = Keyring::new(
        StaticKeys::default(),
        Some(Arc::new(store) as Arc<dyn KeyStore>),
    );
    assert!(!keyring.has_any_keys().await.unwrap());
}
