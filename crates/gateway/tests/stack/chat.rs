//! `/v1/chat/completions` end to end, from both model formats.

use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served, json_events};

fn greedy_request(served: &Served, max_tokens: u32) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me about the weather today."}
        ],
        "temperature": 0,
        "max_tokens": max_tokens,
        "logit_bias": served.eos_bias(-100),
    })
}

async fn non_streaming_chat_has_openai_shape_and_usage(format: Format) {
    let served = Served::start(format).await;
    let client = served.client();
    let (status, body) = client
        .post_json("/v1/chat/completions", &greedy_request(&served, 12))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL_ID);
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(choice["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    assert!(
        prompt_tokens > 10,
        "the chat template adds role markers: {usage}"
    );
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt_tokens + 12);
}

#[tokio::test]
async fn non_streaming_chat_from_gguf() {
    non_streaming_chat_has_openai_shape_and_usage(Format::Gguf).await;
}

#[tokio::test]
async fn non_streaming_chat_from_safetensors() {
    non_streaming_chat_has_openai_shape_and_usage(Format::Safetensors).await;
}

#[tokio::test]
async fn prompt_tokens_match_the_services_own_tokenization() {
    use passerelle_proto::{
        common::ChatMessage,
        llm::{ChatPrompt, Prompt, TokenizeRequest, llm_client::LlmClient, prompt::Kind},
    };
    let served = Served::start(Format::Gguf).await;
    let (_, body) = served
        .client()
        .post_json("/v1/chat/completions", &greedy_request(&served, 3))
        .await;
    let mut llm = LlmClient::connect(served.stack.llm_endpoint().to_owned())
        .await
        .unwrap();
    let message = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    };
    let tokens = llm
        .tokenize(TokenizeRequest {
            model: MODEL_ID.into(),
            prompt: Some(Prompt {
                kind: Some(Kind::Chat(ChatPrompt {
                    messages: vec![
                        message("system", "You are terse."),
                        message("user", "Tell me about the weather today."),
                    ],
                    tools: vec![],
                    add_generation_prompt: true,
                    ..Default::default()
                })),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokens.text.ends_with("<|im_start|>assistant\n"),
        "{}",
        tokens.text
    );
    assert_eq!(
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        tokens.ids.len() as u64
    );
}

#[tokio::test]
async fn streaming_chat_matches_non_streaming_and_ends_with_usage_and_done() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let request = greedy_request(&served, 10);
    let (_, whole) = client.post_json("/v1/chat/completions", &request).await;

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let events = json_events(&client.post_sse("/v1/chat/completions", &streaming).await);

    let first = &events[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let id = first["id"].as_str().unwrap();
    assert!(
        events.iter().all(|event| event["id"] == id),
        "one id for the whole stream"
    );

    let usage_chunk = events.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], whole["usage"]);
    let content_chunks = &events[..events.len() - 1];
    assert!(content_chunks.iter().all(|event| event["usage"].is_null()));

    let text: String = content_chunks
        .iter()
        .filter_map(|event| event["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let finish: Vec<&Value> = content_chunks
        .iter()
        .map(|event| &event["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(
        finish,
        vec![&json!("length")],
        "exactly one chunk carries the finish reason"
    );
}

#[tokio::test]
async fn streaming_without_include_usage_sends_no_usage_chunk() {
    let served = Served::start(Format::Gguf).await;
    let mut request = greedy_request(&served, 4);
    request["stream"] = json!(true);
    let events = json_events(
        &served
            .client()
            .post_sse("/v1/chat/completions", &request)
            .await,
    );
    assert!(
        events
            .iter()
            .all(|event| !event["choices"].as_array().unwrap().is_empty())
    );
    assert!(
        events
            .iter()
            .all(|event| event.get("usage").is_none_or(Value::is_null))
    );
}

#[tokio::test]
async fn stop_strings_end_the_answer_and_are_not_emitted() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let (_, free) = client
        .post_json("/v1/chat/completions", &greedy_request(&served, 24))
        .await;
    let text = free["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    // A stop string from the middle of what the model says when unconstrained.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "need some text to cut: {text:?}");
    let start = chars.len() / 2;
    let stop: String = chars[start..start + 3].iter().collect();
    let expected: String = text[..text.find(&stop).unwrap()].to_owned();

    let mut request = greedy_request(&served, 24);
    request["stop"] = json!(["never-said-anywhere", stop]);
    let (status, stopped) = client.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(
        stopped["choices"][0]["message"]["content"],
        expected.as_str()
    );
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    request["stream"] = json!(true);
    let events = json_events(&client.post_sse("/v1/chat/completions", &request).await);
    let streamed: String = events
        .iter()
        .filter_map(|event| event["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed, expected,
        "a stop string split across tokens is never streamed"
    );
}

#[tokio::test]
async fn end_of_sequence_finishes_with_stop() {
    let served = Served::start(Format::Gguf).await;
    let mut request = greedy_request(&served, 50);
    request["logit_bias"] = served.eos_bias(100);
    let (status, body) = served
        .client()
        .post_json("/v1/chat/completions", &request)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["content"], "");
    assert_eq!(
        body["usage"]["completion_tokens"], 1,
        "the end-of-sequence token is counted"
    );
}

#[tokio::test]
async fn the_same_seed_gives_the_same_answer() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let sampled = |seed: u64| {
        let mut request = greedy_request(&served, 16);
        request["temperature"] = json!(1.0);
        request["seed"] = json!(seed);
        request
    };
    let answer = |body: Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = answer(
        client
            .post_json("/v1/chat/completions", &sampled(7))
            .await
            .1,
    );
    let again = answer(
        client
            .post_json("/v1/chat/completions", &sampled(7))
            .await
            .1,
    );
    assert_eq!(first, again);
    let mut differs = false;
    for seed in [8, 9, 10] {
        differs |= answer(
            client
                .post_json("/v1/chat/completions", &sampled(seed))
                .await
                .1,
        ) != first;
    }
    assert!(differs, "other seeds should sample other answers");
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let served = Served::start(Format::Safetensors).await;
    let client = served.client();
    let response = client.get("/v1/models").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL_ID);
    assert_eq!(body["data"][0]["object"], "model");
    let one: Value = client
        .get(&format!("/v1/models/{MODEL_ID}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], MODEL_ID);
}
