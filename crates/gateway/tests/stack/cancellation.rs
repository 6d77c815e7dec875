//! A client that goes away stops its generation in the llm service.

use std::time::Duration;

use futures::StreamExt as _;
use passerelle_store::{UsageQuery, UsageStore as _, unix_now};
use passerelle_testkit::stack::Stack;
use serde_json::json;

use crate::support::{Format, MODEL_ID, Served};

const MAX_TOKENS: f64 = 3000.0;

#[tokio::test]
async fn disconnecting_mid_stream_stops_the_engine() {
    let served = Served::start(Format::Gguf).await;
    let request = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": MAX_TOKENS as u32,
        "temperature": 0,
        "logit_bias": served.eos_bias(-100),
        "stream": true,
    });
    let response = served
        .client()
        .post("/v1/chat/completions")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut events = 0;
    while events < 3 {
        let chunk = body.next().await.expect("stream ended early").unwrap();
        events += String::from_utf8_lossy(&chunk).matches("data:").count();
    }
    drop(body);

    let stack = &served.stack;
    let cancelled = Stack::eventually(Duration::from_secs(20), || {
        stack.metric("passerelle_llm_requests_total", &[("outcome", "cancelled")]) == 1.0
    })
    .await;
    assert!(cancelled, "the engine never saw the client leave");
    assert!(
        Stack::eventually(Duration::from_secs(5), || stack
            .metric("passerelle_llm_active_requests", &[])
            == 0.0)
        .await
    );
    let generated = stack.metric("passerelle_llm_generated_tokens_total", &[]);
    assert!(
        generated < MAX_TOKENS,
        "generation ran to {generated} tokens after the client left"
    );

    // The abandoned answer is accounted with the tokens generated before the client left.
    let query = UsageQuery {
        principal: None,
        since: 0,
        until: unix_now(),
    };
    let mut recorded = Vec::new();
    for _ in 0..100 {
        recorded = stack.store().usage_summary(&query).await.unwrap();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].requests, 1);
    assert!(recorded[0].prompt_tokens > 0);
    assert!(
        (2..MAX_TOKENS as u64).contains(&recorded[0].completion_tokens),
        "{recorded:?}"
    );

    // The engine is free again and nothing was left behind.
    let (status, _) = served
        .client()
        .post_json("/v1/chat/completions", &json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_latency() {
    let served = Served::start(Format::Gguf).await;
    let request = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "logit_bias": served.eos_bias(-100),
        "stream": true,
    });
    served
        .client()
        .post_sse("/v1/chat/completions", &request)
        .await;
    let text = served
        .client()
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "passerelle_http_requests_total",
        "passerelle_http_request_duration_seconds_bucket",
        "passerelle_time_to_first_token_seconds_bucket",
        "passerelle_inter_token_latency_seconds_bucket",
        "passerelle_prompt_tokens_total",
        "passerelle_completion_tokens_total",
        "passerelle_http_requests_in_flight",
        "passerelle_llm_generated_tokens_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(text.contains("route=\"/v1/chat/completions\""));
    assert_eq!(
        served
            .stack
            .metric("passerelle_completion_tokens_total", &[("model", MODEL_ID)]),
        5.0
    );
}
