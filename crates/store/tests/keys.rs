//! The embedded key store against a real redb file in a temporary directory.

use std::sync::Arc;

use passerelle_store::{EmbeddedStore, KeyStore, KeyVerifier, Keyring, StaticKeys, StoreError};

#[tokio::test]
async fn create_list_verify_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(!store.has_any_keys().await.unwrap());
    assert!(store.list().await.unwrap().is_empty());

    let (record, secret) = store.create("ci").await.unwrap();
    assert_eq!(record.name, "ci");
    assert!(secret.expose().starts_with("psk-"));
    assert!(secret.expose().len() >= 44);
    assert_eq!(record.prefix, &secret.expose()[..12]);
    assert!(!record.is_revoked());
    assert!(store.has_any_keys().await.unwrap());

    assert_eq!(
        store.verify(secret.expose()).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.list().await.unwrap(), vec![record.clone()]);

    let revoked = store.revoke(&record.id).await.unwrap();
    assert!(revoked.is_revoked());
    assert_eq!(store.verify(secret.expose()).await.unwrap(), None);
    // Revoking the last key keeps authentication on.
    assert!(store.has_any_keys().await.unwrap());
    // Revoking again keeps the first revocation time.
    assert_eq!(store.revoke(&record.id).await.unwrap(), revoked);
    assert_eq!(store.list().await.unwrap(), vec![revoked]);
}

#[tokio::test]
async fn revoke_by_display_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (keep, keep_secret) = store.create("keep").await.unwrap();
    let (gone, gone_secret) = store.create("gone").await.unwrap();
    assert_ne!(keep.prefix, gone.prefix);

    let revoked = store.revoke(&gone.prefix).await.unwrap();
    assert_eq!(revoked.id, gone.id);
    assert!(store.verify(gone_secret.expose()).await.unwrap().is_none());
    assert_eq!(
        store.verify(keep_secret.expose()).await.unwrap(),
        Some(keep)
    );
}

#[tokio::test]
async fn wrong_keys_fail() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (_, secret) = store.create("ci").await.unwrap();
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

#[tokio::test]
async fn unknown_ids_cannot_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let err = store.revoke("psk-00000000").await.unwrap_err();
    assert!(matches!(err, StoreError::KeyNotFound(_)), "{err}");
}

#[tokio::test]
async fn bad_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let err = store.create("  ").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidName(_)), "{err}");
    assert!(!store.has_any_keys().await.unwrap());
}

#[tokio::test]
async fn keys_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, kept_secret, revoked_secret) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (kept, kept_secret) = store.create("kept").await.unwrap();
        let (revoked, revoked_secret) = store.create("revoked").await.unwrap();
        store.revoke(&revoked.id).await.unwrap();
        (kept, kept_secret, revoked_secret)
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.has_any_keys().await.unwrap());
    assert_eq!(
        store.verify(kept_secret.expose()).await.unwrap(),
        Some(kept)
    );
    assert_eq!(store.verify(revoked_secret.expose()).await.unwrap(), None);
    let names: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"kept".to_owned()) && names.contains(&"revoked".to_owned()));
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let err = EmbeddedStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[tokio::test]
async fn keyring_accepts_static_and_stored_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (stored, secret) = store.create("stored").await.unwrap();
    let keyring = Keyring::new(
        StaticKeys::from_plaintext(["operator-key"]),
        Some(Arc::new(store) as Arc<dyn KeyStore>),
    );
    assert_eq!(keyring.verify(secret.expose()).await.unwrap(), Some(stored));
    assert_eq!(
        keyring.verify("operator-key").await.unwrap().unwrap().id,
        "static-1"
    );
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
