//! The Redis rate limiter against a real `redis-server`: two limiters stand for two gateway
//! replicas sharing limits, and the server is killed and restarted to prove the failure policies
//! apply at once and the limiter recovers.

use std::future::Future;
use std::time::{Duration, Instant};

use passerelle_gateway::ratelimit::{
    AdaptiveConfig, FailurePolicy, Limits, RateLimiter, RateLimiterConfig, RedisLimiterConfig,
    RefusalReason,
};
use passerelle_testkit::redis::RedisServer;
use prometheus::Registry;

/// No test may run longer than this.
const TEST_BOUND: Duration = Duration::from_secs(60);
/// With Redis gone, a call must come back well within this.
const FAST: Duration = Duration::from_secs(2);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("the test ran past its time bound")
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_config(redis: &RedisServer, policy: FailurePolicy) -> RedisLimiterConfig {
    RedisLimiterConfig {
        failure_policy: policy,
        retry_interval: Duration::from_millis(200),
        // The first call connects and loads the scripts; on a busy 2-core CI machine that can
        // take longer than the production default. The timeout itself is tested with a silent
        // server below.
        timeout: Duration::from_secs(2),
        ..RedisLimiterConfig::new(redis.url())
    }
}

/// A limiter standing for one gateway replica, with its own metrics registry.
fn gateway(
    config: RedisLimiterConfig,
    adaptive: Option<AdaptiveConfig>,
) -> (RateLimiter, Registry) {
    let registry = Registry::new();
    let config = RateLimiterConfig {
        redis: Some(config),
        adaptive,
    };
    (RateLimiter::new(config, &registry).unwrap(), registry)
}

fn metric(registry: &Registry, name: &str) -> f64 {
    let text = passerelle_telemetry::metrics::encode_text(registry);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

fn rpm(limit: u32) -> Limits {
    Limits {
        rpm: Some(limit),
        ..Limits::UNLIMITED
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_enforce_one_shared_rpm_limit() {
    bounded(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let (b, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let limits = rpm(10);
        for i in 0..10 {
            let gateway = if i % 2 == 0 { &a } else { &b };
            let admitted = gateway.admit("alice", &limits).await.unwrap();
            let requests = admitted.headers.requests.unwrap();
            assert_eq!(requests.limit, 10);
            assert_eq!(requests.remaining, 9 - i, "request {i}");
        }
        for gateway in [&a, &b] {
            let refused = gateway.admit("alice", &limits).await.unwrap_err();
            assert_eq!(refused.reason, RefusalReason::Requests);
            // One request drains every 6 s, less what passed since.
            assert!(refused.retry_after <= Duration::from_secs(6));
            assert!(refused.retry_after > Duration::from_secs(5), "{refused:?}");
            assert_eq!(refused.retry_after_secs(), 6);
            assert_eq!(refused.headers.requests.unwrap().remaining, 0);
        }
        b.admit("bob", &limits).await.unwrap();
        assert!(a.backend_healthy() && b.backend_healthy());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_enforce_one_shared_tpm_limit() {
    bounded(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let (b, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let limits = Limits {
            tpm: Some(1000),
            ..Limits::UNLIMITED
        };
        let first = a.admit("alice", &limits).await.unwrap();
        assert_eq!(first.headers.tokens.unwrap().remaining, 1000);
        a.record_tokens("alice", &limits, 600).await;
        let second = b.admit("alice", &limits).await.unwrap();
        let tokens = second.headers.tokens.unwrap();
        assert!((399..=400).contains(&tokens.remaining), "{tokens:?}");
        b.record_tokens("alice", &limits, 600).await;
        for gateway in [&a, &b] {
            let refused = gateway.admit("alice", &limits).await.unwrap_err();
            assert_eq!(refused.reason, RefusalReason::Tokens);
            // 200 tokens over at 1000 per minute: 12 s.
            assert!(refused.retry_after <= Duration::from_secs(12));
            assert!(refused.retry_after > Duration::from_secs(11), "{refused:?}");
            let tokens = refused.headers.tokens.unwrap();
            assert_eq!(tokens.remaining, 0);
            assert!(tokens.reset > Duration::from_secs(71), "{tokens:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_counted_across_gateways_and_released() {
    bounded(async {
        let redis = RedisServer::start().unwrap();
        let (a, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let (b, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let limits = Limits {
            max_concurrent: Some(2),
            ..Limits::UNLIMITED
        };
        let held_a = a.admit("alice", &limits).await.unwrap();
        let _held_b = b.admit("alice", &limits).await.unwrap();
        for gateway in [&a, &b] {
            let refused = gateway.admit("alice", &limits).await.unwrap_err();
            assert_eq!(refused.reason, RefusalReason::Concurrency);
            assert_eq!(refused.retry_after_secs(), 1);
        }
        drop(held_a);
        // The release is sent in the background.
        eventually(Duration::from_secs(5), "the slot is released", || async {
            match b.admit("alice", &limits).await {
                Ok(permit) => {
                    std::mem::drop(permit);
                    true
                }
                Err(_) => false,
            }
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_a_crashed_gateway_expire_and_live_ones_are_renewed() {
    bounded(async {
        let redis = RedisServer::start().unwrap();
        let config = RedisLimiterConfig {
            concurrency_lease: Duration::from_secs(1),
            ..redis_config(&redis, FailurePolicy::Closed)
        };
        let limits = Limits {
            max_concurrent: Some(1),
            ..Limits::UNLIMITED
        };

        // A gateway that takes a slot and dies: its runtime goes (so no renewal), and its permit
        // is dropped outside any runtime (so no release).
        let crashed = {
            let (config, limits) = (config.clone(), limits);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let permit = runtime.block_on(async {
                    let (gateway, _) = gateway(config, None);
                    gateway.admit("alice", &limits).await.unwrap()
                });
                drop(runtime);
                permit
            })
        };
        let permit = tokio::task::spawn_blocking(move || crashed.join().unwrap())
            .await
            .unwrap();
        std::thread::spawn(move || drop(permit)).join().unwrap();

        let (survivor, _) = gateway(config, None);
        assert_eq!(
            survivor.admit("alice", &limits).await.unwrap_err().reason,
            RefusalReason::Concurrency
        );
        let started = Instant::now();
        let held = loop {
            if let Ok(permit) = survivor.admit("alice", &limits).await {
                break permit;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the dead lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(started.elapsed() < Duration::from_millis(1500));

        // A live request keeps its slot past the lease: it is renewed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            survivor.admit("bob", &limits).await.map(drop),
            Ok(()),
            "other principals are unaffected"
        );
        assert_eq!(
            survivor.admit("alice", &limits).await.unwrap_err().reason,
            RefusalReason::Concurrency
        );
        drop(held);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_at_once_while_redis_is_down_then_recovers() {
    bounded(async {
        let mut redis = RedisServer::start().unwrap();
        let (a, registry) = gateway(redis_config(&redis, FailurePolicy::Open), None);
        let limits = rpm(1);
        a.admit("alice", &limits).await.unwrap();
        assert_eq!(
            a.admit("alice", &limits).await.unwrap_err().reason,
            RefusalReason::Requests
        );
        assert_eq!(metric(&registry, "passerelle_ratelimit_backend_up"), 1.0);

        redis.stop();
        for _ in 0..20 {
            let started = Instant::now();
            let admitted = a.admit("alice", &limits).await.unwrap();
            assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
            assert!(admitted.headers.is_empty());
        }
        a.record_tokens("alice", &limits, 10).await;
        assert!(!a.backend_healthy());
        assert!(!a.probe().await);
        assert_eq!(a.failure_policy(), FailurePolicy::Open);
        assert_eq!(metric(&registry, "passerelle_ratelimit_backend_up"), 0.0);
        // The breaker: while Redis is down, only one call per retry interval tries it.
        let errors = metric(&registry, "passerelle_ratelimit_backend_errors_total");
        assert!((1.0..5.0).contains(&errors), "{errors} backend errors");
        assert_eq!(
            metric(&registry, "passerelle_ratelimit_fail_open_total"),
            20.0
        );

        redis.restart().unwrap();
        eventually(
            Duration::from_secs(10),
            "the limiter sees Redis again",
            || a.probe(),
        )
        .await;
        assert!(a.backend_healthy());
        assert_eq!(metric(&registry, "passerelle_ratelimit_backend_up"), 1.0);
        // Limits apply again, with the state Redis kept (append-only file).
        assert_eq!(
            a.admit("alice", &limits).await.unwrap_err().reason,
            RefusalReason::Requests
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_at_once_while_redis_is_down_then_recovers() {
    bounded(async {
        let mut redis = RedisServer::start().unwrap();
        let (a, registry) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let limits = rpm(100);
        a.admit("alice", &limits).await.unwrap();

        redis.stop();
        for _ in 0..20 {
            let started = Instant::now();
            let refused = a.admit("alice", &limits).await.unwrap_err();
            assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
            assert_eq!(refused.reason, RefusalReason::BackendUnavailable);
            assert!(refused.retry_after_secs() >= 1);
            assert!(refused.headers.is_empty());
        }
        assert!(!a.backend_healthy());
        let refused = metric(
            &registry,
            "passerelle_ratelimit_refused_total{reason=\"backend_unavailable\"}",
        );
        assert_eq!(refused, 20.0);

        redis.restart().unwrap();
        eventually(Duration::from_secs(10), "admitted again", || async {
            a.admit("alice", &limits).await.is_ok()
        })
        .await;
        assert!(a.backend_healthy());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_startup_is_handled_by_the_policy() {
    bounded(async {
        let mut redis = RedisServer::start().unwrap();
        redis.stop();
        let (open, _) = gateway(redis_config(&redis, FailurePolicy::Open), None);
        let (closed, _) = gateway(redis_config(&redis, FailurePolicy::Closed), None);
        let started = Instant::now();
        open.admit("alice", &rpm(1)).await.unwrap();
        let refused = closed.admit("alice", &rpm(1)).await.unwrap_err();
        assert_eq!(refused.reason, RefusalReason::BackendUnavailable);
        assert!(started.elapsed() < 2 * FAST, "took {:?}", started.elapsed());
        assert!(!open.backend_healthy() && !closed.backend_healthy());

        redis.restart().unwrap();
        eventually(Duration::from_secs(10), "connected", || closed.probe()).await;
        closed.admit("alice", &rpm(1)).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_noted_by_one_gateway_lower_the_limits_on_every_gateway() {
    bounded(async {
        let redis = RedisServer::start().unwrap();
        let adaptive = Some(AdaptiveConfig {
            threshold: 2,
            ..AdaptiveConfig::default()
        });
        let (a, _) = gateway(redis_config(&redis, FailurePolicy::Closed), adaptive);
        let (b, _) = gateway(redis_config(&redis, FailurePolicy::Closed), adaptive);
        let limits = Limits {
            rpm: Some(60),
            tpm: Some(1000),
            max_concurrent: None,
        };
        let limits_now = async |gateway: &RateLimiter| {
            let headers = gateway.admit("alice", &limits).await.unwrap().headers;
            (
                headers.requests.unwrap().limit,
                headers.tokens.unwrap().limit,
            )
        };
        assert_eq!(limits_now(&b).await, (60, 1000));
        a.note_violation("alice").await;
        assert_eq!(limits_now(&b).await, (60, 1000));
        a.note_violation("alice").await;
        assert_eq!(limits_now(&b).await, (30, 500));
        for _ in 0..2 {
            b.note_violation("alice").await;
        }
        assert_eq!(limits_now(&a).await, (15, 250));
        let headers = b.admit("bob", &limits).await.unwrap().headers;
        assert_eq!(headers.requests.unwrap().limit, 60);

        // The lowered tpm applies to recorded tokens too: 260 is over it, 1000 was not.
        a.record_tokens("alice", &limits, 260).await;
        let refused = b.admit("alice", &limits).await.unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Tokens);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_and_names_no_subject() {
    bounded(async {
        let redis = RedisServer::start().unwrap();
        let config = RedisLimiterConfig {
            key_prefix: "test-rl".to_owned(),
            ..redis_config(&redis, FailurePolicy::Closed)
        };
        let (a, _) = gateway(config, Some(AdaptiveConfig::default()));
        let limits = Limits {
            rpm: Some(60),
            tpm: Some(1000),
            max_concurrent: Some(4),
        };
        let _held = a.admit("alice@example.com", &limits).await.unwrap();
        a.record_tokens("alice@example.com", &limits, 100).await;
        a.note_violation("alice@example.com").await;

        let client = redis::Client::open(redis.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
        for key in keys {
            assert!(key.starts_with("test-rl:{"), "{key}");
            assert!(!key.contains("alice"), "{key}");
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .unwrap();
            assert!(ttl > 0, "{key} has no expiry ({ttl})");
            assert!(ttl <= 601_000, "{key} lives too long ({ttl} ms)");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_times_out() {
    bounded(async {
        // Accepts connections and reads nothing back: a hung server or a black-holed network.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = RedisLimiterConfig {
            failure_policy: FailurePolicy::Closed,
            timeout: Duration::from_millis(200),
            ..RedisLimiterConfig::new(format!("redis://127.0.0.1:{port}/"))
        };
        let (gateway, _) = gateway(config, None);
        let started = Instant::now();
        let refused = gateway.admit("alice", &rpm(10)).await.unwrap_err();
        assert_eq!(refused.reason, RefusalReason::BackendUnavailable);
        assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
        assert!(!gateway.probe().await);
        silent.abort();
    })
    .await;
}
