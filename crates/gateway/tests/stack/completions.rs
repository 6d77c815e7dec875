//! `/v1/completions` end to end.

use serde_json::json;

use crate::support::{Format, MODEL_ID, Served, json_events};

#[tokio::test]
async fn text_completion_streams_the_same_text_it_returns_whole() {
    let served = Served::start(Format::Safetensors).await;
    let client = served.client();
    let request = json!({
        "model": MODEL_ID,
        "prompt": "The quick brown fox",
        "max_tokens": 9,
        "temperature": 0,
        "logit_bias": served.eos_bias(-100),
    });
    let (status, whole) = client.post_json("/v1/completions", &request).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    assert!(whole["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 9);
    assert!(whole["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let events = json_events(&client.post_sse("/v1/completions", &streaming).await);
    assert!(
        events
            .iter()
            .all(|event| event["object"] == "text_completion")
    );
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    let text: String = events
        .iter()
        .filter_map(|event| event["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, choice["text"].as_str().unwrap());
}

#[tokio::test]
async fn echo_prefixes_the_prompt() {
    let served = Served::start(Format::Gguf).await;
    let request = json!({
        "model": MODEL_ID,
        "prompt": "Once upon a time",
        "max_tokens": 4,
        "temperature": 0,
        "echo": true,
    });
    let (status, body) = served.client().post_json("/v1/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["choices"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Once upon a time")
    );
}

#[tokio::test]
async fn safetensors_and_gguf_serve_the_same_greedy_text() {
    let request = |served: &Served| {
        json!({
            "model": MODEL_ID,
            "prompt": "Hello there, how are you",
            "max_tokens": 16,
            "temperature": 0,
            // The safetensors model's generation_config.json sets a repetition penalty; the GGUF
            // carries none. Parity is about the weights, so both run without it.
            "repetition_penalty": 1.0,
            "logit_bias": served.eos_bias(-100),
        })
    };
    let gguf = Served::start(Format::Gguf).await;
    let (_, from_gguf) = gguf
        .client()
        .post_json("/v1/completions", &request(&gguf))
        .await;
    let safetensors = Served::start(Format::Safetensors).await;
    let (_, from_safetensors) = safetensors
        .client()
        .post_json("/v1/completions", &request(&safetensors))
        .await;
    assert_eq!(
        from_gguf["choices"][0]["text"],
        from_safetensors["choices"][0]["text"]
    );
}
