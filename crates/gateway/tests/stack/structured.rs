//! Structured output end to end: `response_format` JSON schemas, tool calls and `n > 1`. The
//! model has random weights, so whatever parses does so because of the service's grammar.

use serde_json::{Value, json};

use crate::support::{Format, MODEL_ID, Served, json_events};

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
    })
}

fn assert_person(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let object = value.as_object().unwrap();
    assert_eq!(object.len(), 2, "{value}");
    assert!(object["name"].as_str().unwrap().chars().count() <= 6);
    assert!((0..=120).contains(&object["age"].as_i64().unwrap()));
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10}},
                "required": ["city"],
                "additionalProperties": false,
            },
        }},
    ])
}

fn chat(extra: Value) -> Value {
    let mut request = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "temperature": 1.0,
        "seed": 3,
        "max_tokens": 200,
    });
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    request
}

#[tokio::test]
async fn json_schema_answers_parse_and_validate_in_every_choice() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let request = chat(json!({
        "n": 3,
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "person", "schema": person_schema(), "strict": true}},
    }));
    let (status, body) = client.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut completion_tokens = 0;
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(choice["finish_reason"], "stop", "{choice}");
        assert_person(choice["message"]["content"].as_str().unwrap());
        completion_tokens += 1;
    }
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= completion_tokens);

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let events = json_events(&client.post_sse("/v1/chat/completions", &streaming).await);
    let mut texts = vec![String::new(); 3];
    let mut finished = vec![false; 3];
    for event in &events {
        for choice in event["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if let Some(text) = choice["delta"]["content"].as_str() {
                texts[index].push_str(text);
            }
            if choice["finish_reason"] == "stop" {
                finished[index] = true;
            }
        }
    }
    assert_eq!(finished, [true; 3]);
    for text in &texts {
        assert_person(text);
    }
    assert_eq!(
        texts,
        choices
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        "the same seed streams the same choices"
    );

    let (status, body) = client
        .post_json(
            "/v1/chat/completions",
            &chat(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "object", "if": {}}}}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "response_format");
}

#[tokio::test]
async fn a_named_tool_choice_comes_back_as_tool_calls_whole_and_streamed() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let request = chat(json!({
        "tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }));
    let (status, body) = client.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].as_str().unwrap().chars().count() <= 10);

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let events = json_events(&client.post_sse("/v1/chat/completions", &streaming).await);
    let pieces: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls"))
        .flat_map(|calls| calls.as_array().unwrap())
        .collect();
    assert!(pieces.len() >= 2, "{events:?}");
    assert_eq!(pieces[0]["index"], 0);
    assert_eq!(pieces[0]["function"]["name"], "get_weather");
    assert!(pieces[0]["id"].as_str().unwrap().starts_with("call_"));
    let streamed_arguments: String = pieces
        .iter()
        .filter_map(|p| p["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        streamed_arguments,
        calls[0]["function"]["arguments"].as_str().unwrap(),
        "the same seed calls with the same arguments"
    );
    let reasons: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"].get(0).map(|c| &c["finish_reason"]))
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(reasons, [&json!("tool_calls")]);

    let (status, body) = client
        .post_json(
            "/v1/chat/completions",
            &chat(json!({"tools": weather_tools(),
                "tool_choice": {"type": "function", "function": {"name": "launch"}}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tool_choice");
}

#[tokio::test]
async fn n_text_completions_stream_every_choice_with_its_index() {
    let served = Served::start(Format::Gguf).await;
    let client = served.client();
    let request = json!({
        "model": MODEL_ID,
        "prompt": "Once upon a time",
        "n": 3,
        "max_tokens": 5,
        "temperature": 1.0,
        "seed": 11,
        "logit_bias": served.eos_bias(-100),
    });
    let (status, body) = client.post_json("/v1/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_eq!(
        body["usage"]["completion_tokens"], 15,
        "usage sums the choices"
    );

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let events = json_events(&client.post_sse("/v1/completions", &streaming).await);
    let mut texts = vec![String::new(); 3];
    for event in &events {
        for choice in event["choices"].as_array().unwrap() {
            texts[choice["index"].as_u64().unwrap() as usize]
                .push_str(choice["text"].as_str().unwrap());
        }
    }
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(texts[index], choice["text"].as_str().unwrap());
    }
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 15);

    let (status, body) = client
        .post_json(
            "/v1/completions",
            &json!({"model": MODEL_ID, "prompt": "JSON:", "max_tokens": 100, "seed": 1,
                "response_format": {"type": "json_schema",
                    "json_schema": {"name": "person", "schema": person_schema()}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_person(body["choices"][0]["text"].as_str().unwrap());
}
