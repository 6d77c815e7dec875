//! The semantic cache end to end: the gateway asks the embeddings service (real MiniLM weights)
//! before generating, and answers paraphrases of a question it has seen from the cache.

use std::time::Duration;

use passerelle_gateway::SemanticCacheConfig;
use passerelle_testkit::stack::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served, json_events, parse_sse};

const OTHER_KEY: &str = "psk-testkit-other-tenant-0123456789abcdef012345";

async fn cached_stack() -> Served {
    Served::start_with(Format::Gguf, |options| {
        options.embedding_model = Some(passerelle_testkit::minilm::minilm_dir().to_path_buf());
        options.api_keys.push(OTHER_KEY.to_owned());
        options.gateway.semantic_cache = Some(SemanticCacheConfig {
            min_similarity: 0.9,
            ..SemanticCacheConfig::default()
        });
    })
    .await
}

fn ask(served: &Served, question: &str) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
        "logit_bias": served.eos_bias(-100),
    })
}

async fn post(served: &Served, key: &str, body: &Value) -> (Option<String>, Option<f32>, Value) {
    let response = reqwest::Client::new()
        .post(served.stack.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let cache = header("x-passerelle-cache");
    let similarity = header("x-passerelle-cache-similarity").map(|s| s.parse().unwrap());
    (cache, similarity, response.json().await.unwrap())
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

/// Asks `question` until the answer stored in the background is found.
async fn until_cached(served: &Served, question: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (cache, _, body) = post(served, Stack::API_KEY, &ask(served, question)).await;
        if cache.as_deref() == Some("hit") {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the answer was never cached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_paraphrase_hits_and_an_unrelated_question_or_another_tenant_misses() {
    let served = cached_stack().await;
    let (cache, _, first) = post(
        &served,
        Stack::API_KEY,
        &ask(&served, "How do I reset my password?"),
    )
    .await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let cached = until_cached(&served, "How do I reset my password?").await;
    assert_eq!(content(&cached), content(&first));

    let (cache, similarity, paraphrase) = post(
        &served,
        Stack::API_KEY,
        &ask(&served, "How can I reset my password?"),
    )
    .await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert!(similarity.unwrap() >= 0.9, "{similarity:?}");
    assert_eq!(content(&paraphrase), content(&first));
    assert_eq!(paraphrase["usage"], first["usage"]);

    let (cache, _, _) = post(
        &served,
        Stack::API_KEY,
        &ask(&served, "What is the capital of France?"),
    )
    .await;
    assert_eq!(
        cache.as_deref(),
        Some("miss"),
        "an unrelated question must be generated"
    );

    let (cache, _, _) = post(
        &served,
        OTHER_KEY,
        &ask(&served, "How do I reset my password?"),
    )
    .await;
    assert_eq!(
        cache.as_deref(),
        Some("miss"),
        "another tenant never sees this tenant's answers"
    );

    let mut warmer = ask(&served, "How do I reset my password?");
    warmer["temperature"] = json!(0.5);
    let (cache, _, _) = post(&served, Stack::API_KEY, &warmer).await;
    assert_eq!(
        cache.as_deref(),
        Some("miss"),
        "other generation parameters, other answers"
    );

    assert!(
        served.stack.metric(
            "passerelle_semantic_cache_requests_total",
            &[("result", "hit")]
        ) >= 2.0
    );
    assert!(
        served
            .stack
            .metric("passerelle_semantic_cache_saved_tokens_total", &[])
            > 0.0
    );
}

#[tokio::test]
async fn a_streamed_hit_looks_like_a_normal_stream() {
    let served = cached_stack().await;
    let (_, _, first) = post(
        &served,
        Stack::API_KEY,
        &ask(&served, "Tell me a joke about cats."),
    )
    .await;
    until_cached(&served, "Tell me a joke about cats.").await;

    let mut streaming = ask(&served, "Tell me a joke about cats.");
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let response = reqwest::Client::new()
        .post(served.stack.url("/v1/chat/completions"))
        .bearer_auth(Stack::API_KEY)
        .json(&streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-passerelle-cache"], "hit");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = json_events(&parse_sse(&response.text().await.unwrap()));
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content(&first));
    let finish: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("length")]);
    assert_eq!(events.last().unwrap()["usage"], first["usage"]);
}
