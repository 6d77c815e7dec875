//! `/tokenize` and `/detokenize` against the real llm service.

use serde_json::json;

use crate::support::{Format, MODEL_ID, Served};

#[tokio::test]
async fn a_chat_prompt_counts_what_a_generation_is_charged() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is the station?"}
    ]);
    let (status, counted) = client
        .post_json(
            "/tokenize",
            &json!({"model": MODEL_ID, "messages": messages}),
        )
        .await;
    assert_eq!(status, 200, "{counted}");
    let tokens = counted["tokens"].as_array().unwrap();
    assert_eq!(counted["count"], tokens.len());
    assert!(counted["max_model_len"].as_u64().unwrap() > 0, "{counted}");

    let (status, answer) = client
        .post_json(
            "/v1/chat/completions",
            &json!({"model": MODEL_ID, "messages": messages, "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], counted["count"]);

    let (_, without_header) = client
        .post_json(
            "/tokenize",
            &json!({"model": MODEL_ID, "messages": messages, "add_generation_prompt": false}),
        )
        .await;
    assert!(without_header["count"].as_u64() < counted["count"].as_u64());
}

#[tokio::test]
async fn detokenize_gives_back_the_text_of_tokenize() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let text = "The weather in the mountains changes quickly.";
    let (status, counted) = client
        .post_json("/tokenize", &json!({"model": MODEL_ID, "prompt": text}))
        .await;
    assert_eq!(status, 200, "{counted}");
    let (status, decoded) = client
        .post_json(
            "/detokenize",
            &json!({"model": MODEL_ID, "tokens": counted["tokens"]}),
        )
        .await;
    assert_eq!(status, 200, "{decoded}");
    assert_eq!(decoded["prompt"], text);
}

#[tokio::test]
async fn bad_tokenize_requests_are_400s_or_404s() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    for (body, status, param) in [
        (json!({"model": MODEL_ID}), 400, None),
        (
            json!({"model": MODEL_ID, "prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
            400,
            None,
        ),
        (
            json!({"model": MODEL_ID, "messages": []}),
            400,
            Some("messages"),
        ),
        (
            json!({"model": MODEL_ID, "prompt": "a", "add_generation_prompt": true}),
            400,
            Some("add_generation_prompt"),
        ),
        (json!({"model": "", "prompt": "a"}), 400, Some("model")),
        (json!({"model": "no-such-model", "prompt": "a"}), 404, None),
        (json!({"model": MODEL_ID, "prompt": 3}), 400, None),
    ] {
        let (got, answer) = client.post_json("/tokenize", &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        if let Some(param) = param {
            assert_eq!(answer["error"]["param"], param, "{answer}");
        }
    }
    let (got, answer) = client
        .post_json("/detokenize", &json!({"model": MODEL_ID, "tokens": [-1]}))
        .await;
    assert_eq!(got, 400, "{answer}");
}
