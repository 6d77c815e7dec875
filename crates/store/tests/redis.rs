//! The Redis store against a real `redis-server` (append-only, fsync always) that each test
//! starts on a free loopback port: the shared suite, plus restarts and outages.

#[macro_use]
mod suite;

use std::time::{Duration, Instant};

use passerelle_store::{
    AuditLog as _, KeyStore as _, KeyVerifier as _, NewKey, RedisOptions, RedisStore, Store,
    StoreError, StoreHealth as _, UsageStore as _,
};
use passerelle_testkit::redis::RedisServer;

/// Short limits, so that outage tests finish quickly.
fn options(server: &RedisServer) -> RedisOptions {
    let mut options = RedisOptions::new(server.url()).with_prefix("test:");
    options.connect_timeout = Duration::from_millis(500);
    options.operation_timeout = Duration::from_secs(2);
    options
}

struct Redis {
    _server: RedisServer,
    store: RedisStore,
}

impl Redis {
    async fn new() -> Self {
        let server = RedisServer::start().unwrap();
        let store = RedisStore::connect_with(options(&server)).await.unwrap();
        Self {
            _server: server,
            store,
        }
    }

    fn store(&self) -> &dyn Store {
        &self.store
    }
}

suite_tests!(Redis:
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

/// Polls until the store answers again after the server came back.
async fn wait_until_answering(store: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.audit_events(None, 1).await {
            Ok(_) => return,
            Err(err) if err.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("the store did not come back: {err}"),
        }
    }
}

#[tokio::test]
async fn everything_survives_a_server_crash_and_restart() {
    let mut server = RedisServer::start().unwrap();
    let store = RedisStore::connect_with(options(&server)).await.unwrap();
    let written = suite::write_durable_state(&store).await;

    // SIGKILL: only what the append-only file holds comes back.
    server.restart().unwrap();
    // The same store reconnects on its own...
    wait_until_answering(&store).await;
    suite::check_durable_state(&store, &written).await;
    // ...and a fresh connection (a restarted gateway) sees the same.
    let reconnected = RedisStore::connect_with(options(&server)).await.unwrap();
    assert_eq!(
        reconnected.verify(written.secret.expose()).await.unwrap(),
        Some(written.key.clone())
    );
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_unavailable_promptly() {
    let mut server = RedisServer::start().unwrap();
    let store = RedisStore::connect_with(options(&server)).await.unwrap();
    let (_, secret) = store.create(NewKey::new("ci", "alice")).await.unwrap();
    server.stop();

    let started = Instant::now();
    let errors: Vec<StoreError> = vec![
        store.verify(secret.expose()).await.unwrap_err(),
        store
            .record_usage(&suite::usage("r1", "alice", "tiny", suite::DAY1))
            .await
            .unwrap_err(),
        store
            .append_audit(suite::event(
                "cli",
                passerelle_store::AuditAction::AdminAction,
                None,
                1,
            ))
            .await
            .unwrap_err(),
        store.list().await.unwrap_err(),
        store.ping().await.unwrap_err(),
    ];
    let took = started.elapsed();
    for err in &errors {
        assert!(err.is_unavailable(), "{err:?} should count as unavailable");
    }
    assert!(took < Duration::from_secs(10), "errors took {took:?}");

    let err = RedisStore::connect_with(options(&server))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");

    server.restart().unwrap();
    wait_until_answering(&store).await;
    store.ping().await.unwrap();
    assert!(store.verify(secret.expose()).await.unwrap().is_some());
}

#[tokio::test]
async fn prefixes_keep_deployments_apart() {
    let server = RedisServer::start().unwrap();
    let blue = RedisStore::connect_with(options(&server).with_prefix("blue:"))
        .await
        .unwrap();
    let green = RedisStore::connect_with(options(&server).with_prefix("green:"))
        .await
        .unwrap();
    let (_, secret) = blue.create(NewKey::new("ci", "alice")).await.unwrap();
    assert!(blue.verify(secret.expose()).await.unwrap().is_some());
    assert_eq!(green.verify(secret.expose()).await.unwrap(), None);
    assert!(!green.has_any_keys().await.unwrap());
    assert!(green.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_malformed_url_is_a_clear_error() {
    let err = RedisStore::connect("not a url").await.unwrap_err();
    assert!(!err.is_unavailable(), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("redis"), "{err}");
}
