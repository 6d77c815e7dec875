//! Constrained decoding, tool calls and `n > 1` through the engine's Rust API, on tiny models
//! with random weights: whatever the weights, the grammar makes the output parse.

mod common;

use common::{MODEL_ID, engine, greedy, tiny};
use futures::StreamExt as _;
use passerelle_llm::{
    ChatMessage, ChatPrompt, EngineHandle, FinishReason, Finished, GenerationEvent,
    GenerationRequest, LlmError, Prompt, ResponseFormat, ToolCall, ToolChoice, ToolSpec,
};
use serde_json::{Value, json};

/// One choice as the stream delivered it.
#[derive(Debug, Default, Clone)]
struct Choice {
    text: String,
    tokens: Vec<u32>,
    tool_calls: Vec<ToolCall>,
    finished: Option<Finished>,
}

/// Every choice of a stream, checking the event order on the way: `Started` once, then each
/// choice's deltas and its one `Finished`.
async fn choices(engine: &EngineHandle, request: GenerationRequest) -> Vec<Choice> {
    let n = request.sampling.n.max(1) as usize;
    let mut stream = engine.generate(request).expect("the request is admitted");
    let mut out = vec![Choice::default(); n];
    let mut started = false;
    while let Some(event) = stream.next().await {
        match event.expect("no error event") {
            GenerationEvent::Started { .. } => {
                assert!(!started, "Started comes once");
                started = true;
            }
            GenerationEvent::Delta(delta) => {
                let choice = &mut out[delta.index as usize];
                assert!(choice.finished.is_none(), "no delta after its Finished");
                choice.text.push_str(&delta.text);
                choice.tokens.extend(delta.token_ids);
                for call in delta.tool_calls {
                    assert_eq!(call.index as usize, choice.tool_calls.len());
                    choice.tool_calls.push(call.call);
                }
            }
            GenerationEvent::Finished(finished) => {
                let choice = &mut out[finished.index as usize];
                assert!(choice.finished.is_none(), "Finished comes once per choice");
                choice.finished = Some(finished);
            }
        }
    }
    assert!(started);
    assert!(
        out.iter().all(|c| c.finished.is_some()),
        "every choice finished"
    );
    out
}

fn sampled(prompt: Prompt, seed: u64, max_tokens: u32) -> GenerationRequest {
    let mut request = GenerationRequest::new(MODEL_ID, prompt);
    request.sampling.temperature = Some(1.0);
    request.sampling.top_p = Some(1.0);
    request.sampling.top_k = Some(0);
    request.sampling.seed = Some(seed);
    request.stopping.max_tokens = Some(max_tokens);
    request
}

fn reason(choice: &Choice) -> FinishReason {
    choice.finished.as_ref().unwrap().reason
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pet": {"enum": ["cat", "dog"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        },
        "required": ["name", "age", "pet", "tags"],
        "additionalProperties": false,
    })
}

/// The checks `person_schema` asks for, by hand.
fn assert_person(value: &Value) {
    let object = value.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "name", "pet", "tags"], "{value}");
    assert!(
        object["name"].as_str().unwrap().chars().count() <= 6,
        "{value}"
    );
    assert!(
        (0..=120).contains(&object["age"].as_i64().unwrap()),
        "{value}"
    );
    assert!(
        ["cat", "dog"].contains(&object["pet"].as_str().unwrap()),
        "{value}"
    );
    let tags = object["tags"].as_array().unwrap();
    assert!(
        tags.len() <= 3 && tags.iter().all(Value::is_boolean),
        "{value}"
    );
}

#[tokio::test]
async fn json_schema_output_always_validates() {
    let model = tiny(60);
    let engine = engine(&model.gguf_path()).await;
    for seed in 0..6 {
        let mut request = sampled(Prompt::Text("Describe a person:".into()), seed, 200);
        request.response_format = ResponseFormat::JsonSchema {
            name: "person".into(),
            schema_json: person_schema().to_string(),
            strict: true,
        };
        let choice = choices(&engine, request).await.remove(0);
        assert_eq!(reason(&choice), FinishReason::Stop, "{:?}", choice.text);
        let value: Value = serde_json::from_str(&choice.text)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", choice.text));
        assert_person(&value);
    }
}

#[tokio::test]
async fn json_object_output_is_one_object() {
    let model = tiny(61);
    let engine = engine(&model.safetensors_dir()).await;
    let mut finished_objects = 0;
    for seed in 0..6 {
        let mut request = sampled(Prompt::Text("JSON:".into()), seed, 300);
        request.response_format = ResponseFormat::JsonObject;
        let choice = choices(&engine, request).await.remove(0);
        assert!(choice.text.starts_with('{'), "{:?}", choice.text);
        if reason(&choice) == FinishReason::Stop {
            match serde_json::from_str::<Value>(&choice.text) {
                Ok(value) => assert!(value.is_object()),
                // JSON numbers have no range (`1e99999` is valid JSON, and Python reads it as
                // inf); serde_json refuses those beyond f64, which random weights do produce.
                Err(e) if e.to_string().starts_with("number out of range") => {}
                Err(e) => panic!("seed {seed}: {e}: {:?}", choice.text),
            }
            finished_objects += 1;
        }
    }
    // Free-form objects may run past max_tokens; most must close well before.
    assert!(
        finished_objects >= 4,
        "{finished_objects} of 6 objects closed"
    );
}

#[tokio::test]
async fn schemas_the_grammar_cannot_enforce_are_invalid_arguments() {
    let model = tiny(62);
    let engine = engine(&model.gguf_path()).await;
    let param = |schema: &str| {
        let mut request = greedy("Hi", 5);
        request.response_format = ResponseFormat::JsonSchema {
            name: "s".into(),
            schema_json: schema.to_owned(),
            strict: true,
        };
        match engine.generate(request) {
            Err(LlmError::InvalidArgument { param, message }) => {
                assert!(!message.is_empty());
                param
            }
            other => panic!("expected InvalidArgument for {schema}, got {other:?}"),
        }
    };
    assert_eq!(param("{not json"), "response_format");
    assert_eq!(param("[1, 2]"), "response_format");
    assert_eq!(param(r#"{"type": "object", "if": {}}"#), "response_format");
    assert_eq!(param(r##"{"$ref": "#/$defs/missing"}"##), "response_format");
    assert_eq!(
        param(r#"{"type": "integer", "minimum": 5, "maximum": 1}"#),
        "response_format"
    );
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "The weather in a city.".into(),
        parameters_json: json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": false,
        })
        .to_string(),
    }
}

fn time_tool() -> ToolSpec {
    ToolSpec {
        name: "get_time".into(),
        description: "The time now.".into(),
        parameters_json: json!({"type": "object", "properties": {}, "additionalProperties": false})
            .to_string(),
    }
}

fn chat(tool_choice: ToolChoice) -> Prompt {
    Prompt::Chat(ChatPrompt {
        messages: vec![ChatMessage::new("user", "What is the weather in Paris?")],
        tools: vec![time_tool(), weather_tool()],
        tool_choice,
        add_generation_prompt: true,
    })
}

#[tokio::test]
async fn a_named_tool_choice_always_comes_out_as_a_call_of_that_function() {
    let model = tiny(63);
    let engine = engine(&model.gguf_path()).await;
    for seed in 0..4 {
        let request = sampled(chat(ToolChoice::Function("get_weather".into())), seed, 200);
        let choice = choices(&engine, request).await.remove(0);
        assert_eq!(reason(&choice), FinishReason::ToolCalls, "{choice:?}");
        assert_eq!(choice.text, "", "the call is not content");
        assert_eq!(choice.tool_calls.len(), 1, "{choice:?}");
        let call = &choice.tool_calls[0];
        assert_eq!(call.name, "get_weather");
        assert!(call.id.starts_with("call_"), "{}", call.id);
        let arguments: Value = serde_json::from_str(&call.arguments_json).unwrap();
        let object = arguments.as_object().unwrap();
        assert!(object["city"].as_str().unwrap().chars().count() <= 12);
        assert!(["celsius", "fahrenheit"].contains(&object["unit"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn a_required_tool_choice_calls_one_of_the_tools() {
    let model = tiny(64);
    let engine = engine(&model.gguf_path()).await;
    for seed in 0..3 {
        let request = sampled(chat(ToolChoice::Required), seed, 400);
        let choice = choices(&engine, request).await.remove(0);
        if reason(&choice) == FinishReason::Length {
            continue;
        }
        assert_eq!(reason(&choice), FinishReason::ToolCalls, "{choice:?}");
        assert!(!choice.tool_calls.is_empty());
        for call in &choice.tool_calls {
            assert!(["get_weather", "get_time"].contains(&call.name.as_str()));
            assert!(
                serde_json::from_str::<Value>(&call.arguments_json)
                    .unwrap()
                    .is_object()
            );
        }
    }
    let unknown = sampled(chat(ToolChoice::Function("launch".into())), 0, 10);
    assert!(matches!(
        engine.generate(unknown),
        Err(LlmError::InvalidArgument {
            param: "tool_choice",
            ..
        })
    ));
}

#[tokio::test]
async fn tool_choice_none_renders_no_tools() {
    let model = tiny(65);
    let engine = engine(&model.gguf_path()).await;
    let with_none = engine.tokenize(MODEL_ID, &chat(ToolChoice::None)).unwrap();
    let with_auto = engine.tokenize(MODEL_ID, &chat(ToolChoice::Auto)).unwrap();
    assert!(with_auto.text.contains("get_weather"));
    assert!(!with_none.text.contains("get_weather"));
}

#[tokio::test]
async fn n_choices_are_seeded_by_index_and_their_usage_adds_up() {
    let model = tiny(66);
    let engine = engine(&model.gguf_path()).await;
    let prompt = || Prompt::Text("Once upon a time".into());
    let mut request = sampled(prompt(), 7, 12);
    request.sampling.n = 3;
    request.stopping.ignore_eos = true;
    let three = choices(&engine, request).await;
    assert_eq!(three.len(), 3);
    for (index, choice) in three.iter().enumerate() {
        let mut alone = sampled(prompt(), 7 + index as u64, 12);
        alone.stopping.ignore_eos = true;
        let single = choices(&engine, alone).await.remove(0);
        assert_eq!(
            choice.tokens, single.tokens,
            "choice {index} is seed + {index}"
        );
        assert_eq!(reason(choice), FinishReason::Length);
    }
    assert_ne!(three[0].tokens, three[1].tokens);
    let last = three[2].finished.as_ref().unwrap().usage;
    assert_eq!(last.completion_tokens, 36);
    assert_eq!(
        last.prompt_tokens,
        three[0].finished.as_ref().unwrap().usage.prompt_tokens
    );

    // Constrained choices each follow the grammar from its start.
    let mut request = sampled(prompt(), 1, 200);
    request.sampling.n = 2;
    request.response_format = ResponseFormat::JsonSchema {
        name: "person".into(),
        schema_json: person_schema().to_string(),
        strict: true,
    };
    for choice in choices(&engine, request).await {
        assert_person(&serde_json::from_str(&choice.text).unwrap());
    }
}
