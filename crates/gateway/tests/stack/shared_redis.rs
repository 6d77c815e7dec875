//! Gateways on a shared Redis, over HTTP with real requests: two replicas enforce one rate limit
//! (requests and tokens) for a key; a Redis outage is met by the failure policy (and shown by `/health/ready`) without a
//! 500 or a hang, and service comes back with Redis, without restarting the gateway; keys, limits
//! usage and the audit log outlive a gateway restart, on the embedded store and on Redis restarted
//! in between.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use passerelle_gateway::GatewayConfig;
use passerelle_gateway::ratelimit::{FailurePolicy, RateLimiterConfig, RedisLimiterConfig};
use passerelle_store::{
    ApiKeySecret, AuditAction, AuditLog as _, EmbeddedStore, NewKey, RedisOptions, RedisStore,
    Scope, StaticKeys, Store, StoreError, UsageQuery, unix_now,
};
use passerelle_testkit::redis::RedisServer;
use passerelle_testkit::stack::Gateway;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

/// No test may run longer than this.
const TEST_BOUND: Duration = Duration::from_secs(240);
/// No request may take longer than this, Redis up or down.
const REQUEST_BOUND: Duration = Duration::from_secs(30);
/// How long the gateway may take to notice Redis is back.
const RECOVERY: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("the test ran past its time bound")
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts (or restarts) redis-server without stalling the runtime's other worker.
fn start_redis() -> RedisServer {
    tokio::task::block_in_place(|| RedisServer::start().expect("start redis-server"))
}

fn restart_redis(redis: &mut RedisServer) {
    tokio::task::block_in_place(|| redis.restart().expect("restart redis-server"));
}

/// Limits in `redis`, with generous timeouts for a loaded machine and a short breaker interval.
fn redis_limiter(redis: &RedisServer, policy: FailurePolicy) -> RateLimiterConfig {
    RateLimiterConfig {
        redis: Some(RedisLimiterConfig {
            failure_policy: policy,
            timeout: Duration::from_secs(2),
            retry_interval: Duration::from_millis(200),
            ..RedisLimiterConfig::new(redis.url())
        }),
        adaptive: None,
    }
}

fn gateway_config(rate_limiter: RateLimiterConfig) -> GatewayConfig {
    GatewayConfig {
        rate_limiter,
        require_auth: true,
        shutdown_grace: Duration::from_secs(5),
        ..GatewayConfig::default()
    }
}

async fn redis_store(redis: &RedisServer) -> Arc<RedisStore> {
    let mut options = RedisOptions::new(redis.url());
    options.connect_timeout = Duration::from_millis(500);
    options.operation_timeout = Duration::from_secs(2);
    Arc::new(RedisStore::connect_with(options).await.expect("connect"))
}

async fn start(served: &Served, config: GatewayConfig, store: Arc<dyn Store>) -> Gateway {
    served
        .stack
        .start_gateway(config, store, StaticKeys::default())
        .await
        .expect("start gateway")
}

async fn create_key(store: &dyn Store, edit: impl FnOnce(&mut NewKey)) -> ApiKeySecret {
    let mut new = NewKey::new("replicated", "alice");
    edit(&mut new);
    store.create(new).await.expect("create key").1
}

/// A response, read within [`REQUEST_BOUND`].
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// An OpenAI error envelope with this status and code, never a 500.
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);
        assert!(self.body["error"]["type"].is_string(), "{}", self.body);
    }
}

async fn send(request: RequestBuilder) -> Reply {
    let started = Instant::now();
    let reply = tokio::time::timeout(REQUEST_BOUND, async {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        Reply {
            status,
            headers,
            body,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a request hung for {:?}", started.elapsed()));
    assert_ne!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.body
    );
    reply
}

fn post(gateway: &Gateway, path: &str, key: &ApiKeySecret, body: &Value) -> RequestBuilder {
    reqwest::Client::new()
        .post(gateway.url(path))
        .bearer_auth(key.expose())
        .json(body)
}

async fn chat(gateway: &Gateway, key: &ApiKeySecret) -> Reply {
    let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    send(post(gateway, "/v1/chat/completions", key, &body)).await
}

async fn ready(gateway: &Gateway) -> Reply {
    send(reqwest::Client::new().get(gateway.url("/health/ready"))).await
}

fn backend_up(gateway: &Gateway) -> f64 {
    gateway.metric("passerelle_ratelimit_backend_up", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_used_through_one_gateway_count_on_the_other() {
    bounded(async {
        let served = Served::start(Format::Gguf).await;
        let redis = start_redis();
        let (store_a, store_b) = (redis_store(&redis).await, redis_store(&redis).await);
        let key = create_key(&*store_a, |new| new.limits.tpm = Some(30)).await;
        let config = || gateway_config(redis_limiter(&redis, FailurePolicy::Closed));
        let a = start(&served, config(), store_a).await;
        let b = start(&served, config(), store_b).await;

        let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 40, "logit_bias": served.eos_bias(-100)});
        let first = send(post(&a, "/v1/chat/completions", &key, &body)).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        assert_eq!(first.header("x-ratelimit-limit-tokens"), "30");
        assert!(first.body["usage"]["total_tokens"].as_u64().unwrap() > 30);
        // Counted once the answer ends, just after the response: B refuses as soon as it is.
        eventually(RECOVERY, "the other gateway refuses on tokens", async || {
            let reply = chat(&b, &key).await;
            if reply.status == StatusCode::OK {
                return false;
            }
            reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
            assert_eq!(reply.header("x-ratelimit-limit-tokens"), "30");
            assert_eq!(reply.header("x-ratelimit-remaining-tokens"), "0");
            assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
            true
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_enforce_one_rpm_limit_per_key() {
    bounded(async {
        let served = Served::start(Format::Gguf).await;
        let redis = start_redis();
        let (store_a, store_b) = (redis_store(&redis).await, redis_store(&redis).await);
        // One request every 20 s: none comes back while the test runs.
        let key = create_key(&*store_a, |new| new.limits.rpm = Some(3)).await;
        let config = || gateway_config(redis_limiter(&redis, FailurePolicy::Open));
        let a = start(&served, config(), store_a).await;
        let b = start(&served, config(), store_b).await;

        for (gateway, remaining) in [(&a, "2"), (&b, "1"), (&a, "0")] {
            let reply = chat(gateway, &key).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert_eq!(reply.header("x-ratelimit-limit-requests"), "3");
            assert_eq!(reply.header("x-ratelimit-remaining-requests"), remaining);
            assert!(!reply.header("x-ratelimit-reset-requests").is_empty());
        }
        for gateway in [&b, &a] {
            let refused = chat(gateway, &key).await;
            refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
            assert_eq!(refused.body["error"]["type"], "rate_limit_error");
            let retry_after: u64 = refused.header("retry-after").parse().unwrap();
            assert!((1..=20).contains(&retry_after), "{retry_after}");
            assert_eq!(refused.header("x-ratelimit-limit-requests"), "3");
            assert_eq!(refused.header("x-ratelimit-remaining-requests"), "0");
        }
    })
    .await;
}

/// Redis up: ready. Redis killed: requests with a key verified before, and readiness, answer as
/// `policy` says, promptly. Redis back: the same gateway serves and enforces limits again.
async fn outage(policy: FailurePolicy) {
    let served = Served::start(Format::Gguf).await;
    let mut redis = start_redis();
    let store = redis_store(&redis).await;
    let key = create_key(&*store, |new| new.limits.rpm = Some(1000)).await;
    let never_used = create_key(&*store, |_| {}).await;
    let gateway = start(
        &served,
        gateway_config(redis_limiter(&redis, policy)),
        store,
    )
    .await;

    let up = ready(&gateway).await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.body);
    assert_eq!(up.body["status"], "ready", "{}", up.body);
    let limiter = &up.body["dependencies"]["rate_limiter"];
    assert_eq!(limiter["ready"], true, "{}", up.body);
    assert_eq!(limiter["backend"], "redis", "{}", up.body);
    assert_eq!(limiter["failure_policy"], policy.as_str(), "{}", up.body);
    assert_eq!(
        up.body["dependencies"]["store"]["status"], "up",
        "{}",
        up.body
    );
    // Verifies the key, so the gateway can vouch for it while the store is away.
    let served_before = chat(&gateway, &key).await;
    assert_eq!(
        served_before.status,
        StatusCode::OK,
        "{}",
        served_before.body
    );
    assert_eq!(served_before.header("x-ratelimit-limit-requests"), "1000");

    redis.stop();
    let down = ready(&gateway).await;
    let dependencies = &down.body["dependencies"];
    assert_eq!(
        dependencies["rate_limiter"]["ready"], false,
        "{}",
        down.body
    );
    assert_eq!(
        dependencies["rate_limiter"]["status"], "unreachable",
        "{}",
        down.body
    );
    assert_eq!(dependencies["store"]["ready"], false, "{}", down.body);
    assert_eq!(
        dependencies["store"]["status"], "unreachable",
        "{}",
        down.body
    );
    assert_eq!(dependencies["llm"]["ready"], true, "{}", down.body);
    assert_eq!(backend_up(&gateway), 0.0);
    match policy {
        FailurePolicy::Open => {
            assert_eq!(down.status, StatusCode::OK, "{}", down.body);
            assert_eq!(down.body["status"], "degraded");
            for _ in 0..3 {
                let reply = chat(&gateway, &key).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                // Unchecked: no limit to report.
                assert!(!reply.headers.contains_key("x-ratelimit-limit-requests"));
            }
        }
        FailurePolicy::Closed => {
            assert_eq!(
                down.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                down.body
            );
            assert_eq!(down.body["status"], "not_ready");
            for _ in 0..3 {
                let refused = chat(&gateway, &key).await;
                refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "rate_limiter_unavailable");
                assert!(refused.header("retry-after").parse::<u64>().unwrap() >= 1);
            }
        }
    }
    // A key the gateway never saw cannot be verified by anyone: 503, whatever the policy.
    let unknown = chat(&gateway, &never_used).await;
    unknown.assert_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert!(unknown.headers.contains_key("retry-after"));

    restart_redis(&mut redis);
    eventually(RECOVERY, "ready again once Redis is back", async || {
        let reply = ready(&gateway).await;
        reply.status == StatusCode::OK && reply.body["status"] == "ready"
    })
    .await;
    eventually(RECOVERY, "served and limited again", async || {
        let reply = chat(&gateway, &key).await;
        reply.status == StatusCode::OK && reply.headers.contains_key("x-ratelimit-limit-requests")
    })
    .await;
    let newly_seen = chat(&gateway, &never_used).await;
    assert_eq!(newly_seen.status, StatusCode::OK, "{}", newly_seen.body);
    assert_eq!(backend_up(&gateway), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_open_for_verified_keys_and_recovers() {
    bounded(outage(FailurePolicy::Open)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_with_503_and_recovers() {
    bounded(outage(FailurePolicy::Closed)).await;
}

/// A chat-only key: 200 on chat, 403 (audited) on completions.
async fn use_chat_only_key(gateway: &Gateway, key: &ApiKeySecret) {
    let allowed = chat(gateway, key).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.body);
    let body = json!({"model": MODEL_ID, "prompt": "Hello", "max_tokens": 1});
    let refused = send(post(gateway, "/v1/completions", key, &body)).await;
    refused.assert_error(StatusCode::FORBIDDEN, "insufficient_scope");
}

fn chat_only(new: &mut NewKey) {
    new.scopes = [Scope::Chat].into();
}

/// The usage of the chat requests a gateway answered before it stopped.
async fn assert_usage_kept(store: &dyn Store, requests: u64) {
    let query = UsageQuery {
        principal: Some("alice".to_owned()),
        since: 0,
        until: unix_now(),
    };
    let buckets = store.usage_summary(&query).await.expect("usage");
    assert_eq!(
        buckets.iter().map(|b| b.requests).sum::<u64>(),
        requests,
        "{buckets:?}"
    );
    assert!(buckets.iter().all(|b| b.prompt_tokens > 0));
}

async fn assert_refusal_audited(store: &dyn Store) {
    let events = store.audit_events(None, 100).await.expect("audit events");
    assert!(
        events
            .iter()
            .any(|event| event.action == AuditAction::RequestBlocked
                && event.actor == "alice"
                && event.target.as_deref() == Some("/v1/completions")),
        "{events:?}"
    );
}

/// The directory's lock is free once the previous gateway has let go of its store.
async fn reopen(dir: &Path) -> EmbeddedStore {
    let deadline = Instant::now() + RECOVERY;
    loop {
        match EmbeddedStore::open(dir) {
            Ok(store) => return store,
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("cannot reopen the data directory: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_on_its_embedded_store_keeps_keys_and_audit() {
    bounded(async {
        let served = Served::start(Format::Gguf).await;
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
            let key = create_key(&*store, chat_only).await;
            let config = gateway_config(RateLimiterConfig::default());
            let gateway = start(&served, config, store).await;
            use_chat_only_key(&gateway, &key).await;
            gateway.shutdown().await.expect("clean shutdown");
            key
        };

        let store = Arc::new(reopen(dir.path()).await);
        assert_refusal_audited(&*store).await;
        assert_usage_kept(&*store, 1).await;
        let config = gateway_config(RateLimiterConfig::default());
        let gateway = start(&served, config, store.clone()).await;
        use_chat_only_key(&gateway, &key).await;
        gateway.shutdown().await.expect("clean shutdown");
        let blocked = store.audit_events(None, 100).await.unwrap();
        let blocked = blocked
            .iter()
            .filter(|event| event.action == AuditAction::RequestBlocked)
            .count();
        assert_eq!(blocked, 2, "one refusal per gateway run");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_restarted_around_a_redis_restart_keep_keys_limits_and_audit() {
    bounded(async {
        let served = Served::start(Format::Gguf).await;
        let mut redis = start_redis();
        // One request every 30 s: the test is over long before one comes back.
        let key = create_key(&*redis_store(&redis).await, |new| {
            chat_only(new);
            new.limits.rpm = Some(2);
        })
        .await;
        let limiter = redis_limiter(&redis, FailurePolicy::Closed);
        let config = || gateway_config(limiter.clone());

        let first = start(&served, config(), redis_store(&redis).await).await;
        use_chat_only_key(&first, &key).await;
        first.shutdown().await.expect("clean shutdown");

        // SIGKILL: only what the append-only file holds comes back.
        restart_redis(&mut redis);
        let store = redis_store(&redis).await;
        assert_refusal_audited(&*store).await;
        assert_usage_kept(&*store, 1).await;
        let second = start(&served, config(), store).await;
        let reply = chat(&second, &key).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.header("x-ratelimit-limit-requests"), "2");
        // The first gateway's request still counts.
        assert_eq!(reply.header("x-ratelimit-remaining-requests"), "0");
        let refused = chat(&second, &key).await;
        refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    })
    .await;
}
