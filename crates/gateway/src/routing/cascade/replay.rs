//! A whole answer replayed as the SSE stream a streaming client expects, in OpenAI's chunk
//! shape: for each choice its content in one chunk and its finish reason in the next, then the
//! usage chunk when the client asked for it, then `[DONE]`.

use axum::body::Body;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::super::dispatch::Api;
use super::super::relay;

/// `answer` (a chat completion or text completion JSON body) as an SSE response.
pub(crate) fn response(api: Api, answer: &Value, include_usage: bool) -> Response {
    relay::event_stream(Body::from(events(api, answer, include_usage).concat()))
}

/// The events, each `data: ...\n\n`.
fn events(api: Api, answer: &Value, include_usage: bool) -> Vec<String> {
    let mut head = Map::new();
    for field in ["id", "created", "model", "system_fingerprint"] {
        if let Some(value) = answer.get(field) {
            head.insert(field.to_owned(), value.clone());
        }
    }
    let object = match api {
        Api::Chat => "chat.completion.chunk",
        Api::Completions => "text_completion",
    };
    head.insert("object".to_owned(), Value::from(object));
    let chunk = |choices: Vec<Value>, usage: Value| {
        let mut chunk = head.clone();
        chunk.insert("choices".to_owned(), Value::Array(choices));
        if include_usage {
            chunk.insert("usage".to_owned(), usage);
        }
        format!("data: {}\n\n", Value::Object(chunk))
    };
    let mut events = Vec::new();
    let choices = answer
        .get("choices")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (position, choice) in choices.iter().enumerate() {
        let index = choice
            .get("index")
            .cloned()
            .unwrap_or_else(|| Value::from(position));
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        let finish_reason = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        let (content, finish) = match api {
            Api::Chat => (
                json!({"index": index, "delta": chat_delta(choice.get("message")),
                       "logprobs": logprobs, "finish_reason": null}),
                json!({"index": index, "delta": {}, "logprobs": null,
                       "finish_reason": finish_reason}),
            ),
            Api::Completions => (
                json!({"index": index, "text": choice.get("text").cloned().unwrap_or_default(),
                       "logprobs": logprobs, "finish_reason": null}),
                json!({"index": index, "text": "", "logprobs": null,
                       "finish_reason": finish_reason}),
            ),
        };
        events.push(chunk(vec![content], Value::Null));
        events.push(chunk(vec![finish], Value::Null));
    }
    if include_usage {
        let usage = answer.get("usage").cloned().unwrap_or(Value::Null);
        events.push(chunk(Vec::new(), usage));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// A chat message as the one delta that carries all of it: role, content, and a refusal or
/// tool calls when it has them (tool calls numbered, as deltas number them).
fn chat_delta(message: Option<&Value>) -> Value {
    let mut delta = Map::new();
    delta.insert("role".to_owned(), Value::from("assistant"));
    let content = message
        .and_then(|m| m.get("content"))
        .cloned()
        .unwrap_or(Value::Null);
    delta.insert("content".to_owned(), content);
    if let Some(refusal) = message
        .and_then(|m| m.get("refusal"))
        .filter(|r| !r.is_null())
    {
        delta.insert("refusal".to_owned(), refusal.clone());
    }
    if let Some(calls) = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
    {
        let numbered = calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let mut call = call.as_object().cloned().unwrap_or_default();
                call.insert("index".to_owned(), Value::from(i));
                Value::Object(call)
            })
            .collect();
        delta.insert("tool_calls".to_owned(), Value::Array(numbered));
    }
    Value::Object(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(event: &str) -> Value {
        let json = event
            .strip_prefix("data: ")
            .and_then(|e| e.strip_suffix("\n\n"))
            .unwrap();
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_chat_answer_becomes_content_finish_usage_and_done() {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "small",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
        });
        let events = events(Api::Chat, &answer, true);
        assert_eq!(events.len(), 4);
        let first = data(&events[0]);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["id"], "chatcmpl-1");
        assert_eq!(first["model"], "small");
        assert_eq!(first["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["usage"], Value::Null);
        assert_eq!(data(&events[1])["choices"][0]["finish_reason"], "stop");
        let usage = data(&events[2]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3);
        assert_eq!(events[3], "data: [DONE]\n\n");
    }

    #[test]
    fn without_usage_asked_no_usage_is_sent() {
        let answer = json!({"id": "x", "choices": [{"index": 0, "text": "a", "finish_reason": "length"}],
                            "usage": {"total_tokens": 3}});
        let events = events(Api::Completions, &answer, false);
        assert_eq!(events.len(), 3);
        let first = data(&events[0]);
        assert_eq!(first["object"], "text_completion");
        assert_eq!(first["choices"][0]["text"], "a");
        assert!(first.get("usage").is_none());
        assert_eq!(data(&events[1])["choices"][0]["finish_reason"], "length");
        assert!(events.iter().all(|e| !e.contains("total_tokens")));
    }

    #[test]
    fn tool_calls_are_numbered_in_the_delta() {
        let delta = chat_delta(Some(&json!({"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]})));
        assert_eq!(delta["tool_calls"][0]["index"], 0);
        assert_eq!(delta["tool_calls"][0]["id"], "call_1");
        assert_eq!(delta["content"], Value::Null);
    }
}
