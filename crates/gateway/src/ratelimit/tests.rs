//! The limiter end to end on the in-process backend, on Tokio's paused clock.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::advance;

use super::*;

fn limiter(adaptive: Option<AdaptiveConfig>) -> (RateLimiter, Registry) {
    let registry = Registry::new();
    let limiter = RateLimiter::in_process(adaptive, &registry).unwrap();
    (limiter, registry)
}

fn rpm(limit: u32) -> Limits {
    Limits {
        rpm: Some(limit),
        ..Limits::UNLIMITED
    }
}

fn tpm(limit: u32) -> Limits {
    Limits {
        tpm: Some(limit),
        ..Limits::UNLIMITED
    }
}

fn concurrent(limit: u32) -> Limits {
    Limits {
        max_concurrent: Some(limit),
        ..Limits::UNLIMITED
    }
}

fn subjects(limiter: &RateLimiter) -> usize {
    match &limiter.inner.backend {
        Backend::Memory(memory) => memory.subjects(),
        Backend::Redis(_) => unreachable!("in-process tests"),
    }
}

#[tokio::test(start_paused = true)]
async fn requests_over_rpm_are_refused_with_the_time_to_wait() {
    let (limiter, _) = limiter(None);
    let limits = rpm(2);
    limiter.admit("alice", &limits).await.unwrap();
    limiter.admit("alice", &limits).await.unwrap();
    let refused = limiter.admit("alice", &limits).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::Requests);
    // Two per minute: one drains every 30 s.
    assert_eq!(refused.retry_after, Duration::from_secs(30));
    assert_eq!(refused.retry_after_secs(), 30);
    let requests = refused.headers.requests.unwrap();
    assert_eq!((requests.limit, requests.remaining), (2, 0));
    assert_eq!(requests.reset, Duration::from_secs(60));
    assert!(refused.message().contains("requests per minute (limit 2)"));

    // Other principals are not affected.
    limiter.admit("bob", &limits).await.unwrap();

    advance(Duration::from_secs(29)).await;
    assert!(limiter.admit("alice", &limits).await.is_err());
    advance(Duration::from_secs(1)).await;
    let admitted = limiter.admit("alice", &limits).await.unwrap();
    assert_eq!(admitted.headers.requests.unwrap().remaining, 0);
}

#[tokio::test(start_paused = true)]
async fn tokens_recorded_after_responses_refuse_until_they_drain() {
    let (limiter, _) = limiter(None);
    let limits = tpm(600); // ten per second
    let first = limiter.admit("alice", &limits).await.unwrap();
    let tokens = first.headers.tokens.unwrap();
    assert_eq!((tokens.limit, tokens.remaining), (600, 600));
    assert!(first.headers.requests.is_none());

    // Under the limit, a request is admitted even though its response may overshoot.
    limiter.record_tokens("alice", &limits, 599).await;
    limiter.admit("alice", &limits).await.unwrap();
    limiter.record_tokens("alice", &limits, 101).await;

    let refused = limiter.admit("alice", &limits).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::Tokens);
    assert_eq!(refused.retry_after, Duration::from_secs(10));
    let tokens = refused.headers.tokens.unwrap();
    assert_eq!(
        (tokens.remaining, tokens.reset),
        (0, Duration::from_secs(70))
    );

    advance(Duration::from_millis(10_001)).await;
    let admitted = limiter.admit("alice", &limits).await.unwrap();
    assert_eq!(admitted.headers.tokens.unwrap().remaining, 0);
    advance(Duration::from_secs(1)).await;
    let admitted = limiter.admit("alice", &limits).await.unwrap();
    assert_eq!(admitted.headers.tokens.unwrap().remaining, 10);
}

#[tokio::test(start_paused = true)]
async fn record_tokens_without_a_tpm_limit_is_a_no_op() {
    let (limiter, _) = limiter(None);
    limiter.record_tokens("alice", &rpm(10), 1_000_000).await;
    assert_eq!(subjects(&limiter), 0);
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_slot_frees_when_its_permit_drops() {
    let (limiter, _) = limiter(None);
    let limits = concurrent(1);
    let held = limiter.admit("alice", &limits).await.unwrap();
    let refused = limiter.admit("alice", &limits).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::Concurrency);
    assert_eq!(refused.retry_after_secs(), 1);
    assert!(refused.headers.is_empty());
    limiter.admit("bob", &limits).await.unwrap();

    drop(held);
    let again = limiter.admit("alice", &limits).await.unwrap();
    assert!(limiter.admit("alice", &limits).await.is_err());
    drop(again);
    limiter.admit("alice", &limits).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_uses_none_of_the_budget() {
    let (limiter, _) = limiter(None);
    let limits = Limits {
        rpm: Some(2),
        max_concurrent: Some(1),
        tpm: None,
    };
    let held = limiter.admit("alice", &limits).await.unwrap();
    for _ in 0..5 {
        let refused = limiter.admit("alice", &limits).await.unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Concurrency);
    }
    drop(held);
    let admitted = limiter.admit("alice", &limits).await.unwrap();
    assert_eq!(admitted.headers.requests.unwrap().remaining, 0);
}

#[tokio::test(start_paused = true)]
async fn when_several_limits_refuse_the_longest_wait_wins() {
    let (limiter, _) = limiter(None);
    let limits = Limits {
        rpm: Some(1),
        tpm: Some(60),
        max_concurrent: Some(1),
    };
    let _held = limiter.admit("alice", &limits).await.unwrap();
    limiter.record_tokens("alice", &limits, 60 + 120).await;
    let refused = limiter.admit("alice", &limits).await.unwrap_err();
    // Requests free in 60 s, concurrency "in 1 s", tokens in 120 s.
    assert_eq!(refused.reason, RefusalReason::Tokens);
    assert_eq!(refused.retry_after, Duration::from_secs(120));
    assert!(refused.headers.requests.is_some() && refused.headers.tokens.is_some());
}

#[tokio::test(start_paused = true)]
async fn headers_report_limit_remaining_and_reset() {
    let (limiter, _) = limiter(None);
    let limits = Limits {
        rpm: Some(60),
        tpm: Some(1000),
        max_concurrent: None,
    };
    limiter.admit("alice", &limits).await.unwrap();
    limiter.record_tokens("alice", &limits, 500).await;
    let admitted = limiter.admit("alice", &limits).await.unwrap();
    let mut headers = HeaderMap::new();
    admitted.headers.apply(&mut headers);
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-ratelimit-limit-requests"), "60");
    assert_eq!(header("x-ratelimit-remaining-requests"), "58");
    assert_eq!(header("x-ratelimit-reset-requests"), "2s");
    assert_eq!(header("x-ratelimit-limit-tokens"), "1000");
    assert_eq!(header("x-ratelimit-remaining-tokens"), "500");
    assert_eq!(header("x-ratelimit-reset-tokens"), "30s");

    advance(Duration::from_millis(500)).await;
    let admitted = limiter.admit("alice", &limits).await.unwrap();
    assert_eq!(
        admitted.headers.requests.unwrap().reset,
        Duration::from_millis(2500)
    );
    let mut headers = HeaderMap::new();
    admitted.headers.apply(&mut headers);
    assert_eq!(headers["x-ratelimit-reset-requests"], "2.5s");
}

#[tokio::test(start_paused = true)]
async fn unlimited_principals_leave_no_state_and_no_headers() {
    let (limiter, _) = limiter(None);
    let admitted = limiter.admit("alice", &Limits::UNLIMITED).await.unwrap();
    assert!(admitted.headers.is_empty());
    assert_eq!(subjects(&limiter), 0);
}

#[tokio::test(start_paused = true)]
async fn repeated_violations_lower_the_limits_until_they_age_out() {
    let adaptive = AdaptiveConfig {
        threshold: 3,
        window: Duration::from_secs(600),
        max_tier: 2,
    };
    let (limiter, _) = limiter(Some(adaptive));
    let limits = Limits {
        rpm: Some(60),
        tpm: Some(1000),
        max_concurrent: None,
    };
    let limit_now = async |subject: &str| {
        let headers = limiter.admit(subject, &limits).await.unwrap().headers;
        (
            headers.requests.unwrap().limit,
            headers.tokens.unwrap().limit,
        )
    };
    assert_eq!(limit_now("alice").await, (60, 1000));
    limiter.note_violation("alice").await;
    limiter.note_violation("alice").await;
    assert_eq!(limit_now("alice").await, (60, 1000), "below the threshold");
    limiter.note_violation("alice").await;
    assert_eq!(limit_now("alice").await, (30, 500));
    advance(Duration::from_secs(60)).await;
    for _ in 0..3 {
        limiter.note_violation("alice").await;
    }
    assert_eq!(limit_now("alice").await, (15, 250));
    for _ in 0..30 {
        limiter.note_violation("alice").await;
    }
    assert_eq!(limit_now("alice").await, (15, 250), "capped at max_tier");
    assert_eq!(
        limit_now("bob").await,
        (60, 1000),
        "others keep their limits"
    );

    // The first three age out 600 s after they were noted; the rest still count.
    advance(Duration::from_secs(541)).await;
    assert_eq!(limit_now("alice").await, (15, 250));
    advance(Duration::from_secs(60)).await;
    assert_eq!(limit_now("alice").await, (60, 1000));
}

#[tokio::test(start_paused = true)]
async fn the_lowered_limit_is_enforced() {
    let adaptive = AdaptiveConfig {
        threshold: 1,
        window: Duration::from_secs(600),
        max_tier: 4,
    };
    let (limiter, _) = limiter(Some(adaptive));
    let limits = rpm(8);
    for _ in 0..2 {
        limiter.note_violation("alice").await;
    }
    // 8 halved twice.
    limiter.admit("alice", &limits).await.unwrap();
    limiter.admit("alice", &limits).await.unwrap();
    let refused = limiter.admit("alice", &limits).await.unwrap_err();
    assert_eq!(refused.headers.requests.unwrap().limit, 2);
    assert_eq!(refused.retry_after, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn violations_are_ignored_without_the_adaptive_mode() {
    let (limiter, _) = limiter(None);
    for _ in 0..10 {
        limiter.note_violation("alice").await;
    }
    assert_eq!(subjects(&limiter), 0);
    let headers = limiter.admit("alice", &rpm(60)).await.unwrap().headers;
    assert_eq!(headers.requests.unwrap().limit, 60);
}

#[tokio::test(start_paused = true)]
async fn idle_principals_are_forgotten() {
    let (limiter, _) = limiter(None);
    let limits = rpm(60);
    for i in 0..100 {
        limiter.admit(&format!("user-{i}"), &limits).await.unwrap();
    }
    let held = limiter.admit("streaming", &concurrent(1)).await.unwrap();
    assert_eq!(subjects(&limiter), 101);
    // One request at 60 rpm drains in 1 s.
    advance(Duration::from_secs(2)).await;
    for _ in 0..memory::PRUNE_EVERY {
        limiter.admit("active", &limits).await.ok();
    }
    // The holder of a slot stays, as does the principal still busy.
    assert_eq!(subjects(&limiter), 2);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn refusals_are_counted_by_reason() {
    let (limiter, registry) = limiter(None);
    limiter.admit("alice", &rpm(1)).await.unwrap();
    limiter.admit("alice", &rpm(1)).await.unwrap_err();
    limiter.admit("alice", &rpm(1)).await.unwrap_err();
    let text = passerelle_telemetry::metrics::encode_text(&registry);
    for line in [
        "passerelle_ratelimit_refused_total{reason=\"requests\"} 2",
        "passerelle_ratelimit_refused_total{reason=\"tokens\"} 0",
        "passerelle_ratelimit_refused_total{reason=\"backend_unavailable\"} 0",
        "passerelle_ratelimit_backend_up 1",
        "passerelle_ratelimit_backend_errors_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(limiter.backend_healthy());
    assert!(limiter.probe().await);
    assert!(RateLimiter::in_process(None, &registry).is_err());
}

#[test]
fn refusal_messages_name_the_limit_and_round_retry_after_up() {
    let refused = Refused {
        reason: RefusalReason::Tokens,
        retry_after: Duration::from_millis(1500),
        headers: RateLimitHeaders {
            requests: None,
            tokens: Some(WindowState {
                limit: 1000,
                remaining: 0,
                reset: Duration::from_secs(3),
            }),
        },
    };
    assert_eq!(refused.retry_after_secs(), 2);
    assert_eq!(
        refused.to_string(),
        "Rate limit reached for tokens per minute (limit 1000). Please try again in 1.5s."
    );
    let unavailable = Refused::backend_unavailable(Duration::ZERO);
    assert_eq!(unavailable.retry_after_secs(), 1);
    assert_eq!(unavailable.reason.as_str(), "backend_unavailable");
}

#[test]
fn redis_urls_that_do_not_parse_are_refused_without_echoing_them() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let config = RateLimiterConfig {
        redis: Some(RedisLimiterConfig::new("http://user:hunter2@example")),
        adaptive: None,
    };
    let err = RateLimiter::new(config, &Registry::new()).unwrap_err();
    assert!(matches!(err, RateLimitSetupError::InvalidRedisUrl(_)));
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_redis_limiter_outside_a_runtime_is_an_error_not_a_panic() {
    let config = RateLimiterConfig {
        redis: Some(RedisLimiterConfig::new("redis://127.0.0.1:1/")),
        adaptive: None,
    };
    assert!(matches!(
        RateLimiter::new(config, &Registry::new()),
        Err(RateLimitSetupError::NoRuntime)
    ));
}
