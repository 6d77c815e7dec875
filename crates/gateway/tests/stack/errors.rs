//! Every client mistake is an OpenAI-shaped 4xx, with the model really behind the gateway.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served};

fn assert_envelope(body: &Value, kind: &str) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_model_is_404() {
    let served = Served::start(Format::Gguf).await;
    let request =
        json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = served
        .client()
        .post_json("/v1/chat/completions", &request)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_envelope(&body, "invalid_request_error");
    assert_eq!(body["error"]["code"], "model_not_found");
    let missing = served
        .client()
        .get("/v1/models/no-such-model")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_parameters_are_400_naming_the_param() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": MODEL_ID, "messages": messages, "temperature": 3.5}),
            "temperature",
        ),
        (
            json!({"model": MODEL_ID, "messages": messages, "top_p": 1.5}),
            "top_p",
        ),
        (
            json!({"model": MODEL_ID, "messages": messages, "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL_ID, "messages": messages, "presence_penalty": -3}),
            "presence_penalty",
        ),
        (
            json!({"model": MODEL_ID, "messages": messages, "top_logprobs": 3}),
            "top_logprobs",
        ),
        (
            json!({"model": MODEL_ID, "messages": messages, "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (json!({"model": MODEL_ID, "messages": []}), "messages"),
        (
            json!({"model": MODEL_ID, "messages": messages, "max_tokens": 100000000}),
            "max_tokens",
        ),
    ];
    for (request, param) in cases {
        let (status, body) = client.post_json("/v1/chat/completions", &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}: {body}");
        assert_envelope(&body, "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
}

#[tokio::test]
async fn malformed_and_mistyped_json_is_400() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    for body in [r#"{"model": "#, r#"{"model": 5, "messages": []}"#, "[]"] {
        let response = client
            .post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_envelope(&response.json().await.unwrap(), "invalid_request_error");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.gateway.body_limit_bytes = 1024
    })
    .await;
    let request = json!({"model": MODEL_ID, "prompt": "x".repeat(4096)});
    let (status, body) = served.client().post_json("/v1/completions", &request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_envelope(&body, "invalid_request_error");
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401() {
    let served = Served::start(Format::Gguf).await;
    let http = reqwest::Client::new();
    let url = served.stack.url("/v1/models");
    let attempts = [
        http.get(&url),
        http.get(&url).bearer_auth("psk-wrong"),
        http.get(&url).header("x-api-key", "psk-wrong"),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_envelope(&response.json().await.unwrap(), "invalid_request_error");
    }
    let with_header = http
        .get(&url)
        .header("x-api-key", passerelle_testkit::stack::Stack::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(with_header.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_400() {
    let served = Served::start(Format::Gguf).await;
    let request = json!({"model": MODEL_ID, "prompt": "word ".repeat(6000), "max_tokens": 4});
    let (status, body) = served.client().post_json("/v1/completions", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_envelope(&body, "invalid_request_error");
}

#[tokio::test]
async fn a_full_kv_cache_is_429_with_retry_after_while_the_running_stream_goes_on() {
    let served = Served::start_with(Format::Gguf, |options| {
        options.batch.kv_cache_tokens = Some(256);
        // Refused at the first step the request cannot join, rather than after a wait.
        options.batch.max_wait = std::time::Duration::ZERO;
    })
    .await;
    let client = served.client();
    let request = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 150,
        "logit_bias": served.eos_bias(-100),
        "stream": true,
    });
    let mut running = client
        .post("/v1/chat/completions")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(
        running.status(),
        StatusCode::OK,
        "{:?}",
        running.text().await
    );
    assert!(
        running.chunk().await.unwrap().is_some(),
        "the stream started"
    );

    let response = client
        .post("/v1/chat/completions")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_envelope(&body, "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("capacity")),
        "{body}"
    );

    let mut rest = String::new();
    while let Some(chunk) = running.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        rest.contains("[DONE]"),
        "the running stream finished normally"
    );
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
}
