//! The semantic cache for models served by an upstream: the key read from the client's JSON,
//! and a hit replayed in the same shapes as for our own models. Only built when the cache is
//! configured; without it the body is never parsed beyond the few fields the relay reads.

use std::fmt::Write as _;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::dispatch::Api;
use crate::answer::Answer;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::openai::ResponseMeta;
use crate::openai::chat_response::{ChatChunks, ChatCompletion};
use crate::openai::completion_response::{TextChunks, TextCompletion};
use crate::semantic_cache::{CacheKey, SemanticCache};
use crate::sse;

/// Top-level fields that do not shape the answer's text: the prompt (the key's own part), the
/// model (the key's namespace has it), and how the answer is delivered.
const NOT_PARAMETERS: [&str; 5] = ["messages", "prompt", "model", "stream", "stream_options"];

/// The cache key of a request relayed to `model`, or `None` when its answer must not come
/// from the cache: log probabilities or tools asked for, a prompt of token ids or of several
/// prompts, content other than text (an image is not in the key), or a body the gateway cannot
/// read (the upstream will say what is wrong with it).
pub(crate) fn key(
    cache: &SemanticCache,
    principal: &Principal,
    api: Api,
    model: &str,
    raw: &[u8],
) -> Option<CacheKey> {
    let body = serde_json::from_slice::<Map<String, Value>>(raw).ok()?;
    let (prompt, parameters) = prompt_and_parameters(api, &body)?;
    Some(cache.key_of(principal, model, &parameters, prompt))
}

/// The prompt text and the digest of the parameters, for a cacheable body.
fn prompt_and_parameters(api: Api, body: &Map<String, Value>) -> Option<(String, String)> {
    let asks = |field: &str| body.get(field).is_some_and(|v| !v.is_null() && *v != false);
    let offers = |field: &str| {
        body.get(field)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if asks("logprobs") || asks("top_logprobs") || offers("tools") || offers("functions") {
        return None;
    }
    let prompt = match api {
        Api::Chat => chat_prompt(body.get("messages")?.as_array()?)?,
        Api::Completions => match body.get("prompt")? {
            Value::String(text) => text.clone(),
            Value::Array(prompts) => match prompts.as_slice() {
                [Value::String(text)] => text.clone(),
                _ => return None,
            },
            _ => return None,
        },
    };
    let mut canonical = match api {
        Api::Chat => "relayed chat|".to_owned(),
        Api::Completions => "relayed text|".to_owned(),
    };
    let mut fields: Vec<(&String, &Value)> = body
        .iter()
        .filter(|(name, _)| !NOT_PARAMETERS.contains(&name.as_str()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in fields {
        let _ = write!(canonical, "{name:?}=");
        write_canonical(&mut canonical, value);
        canonical.push(';');
    }
    let digest = Sha256::digest(canonical.as_bytes());
    Some((prompt, hex::encode(&digest[..16])))
}

/// The conversation as our own models' keys have it: `role: content` a line, tool calls made
/// appended. `None` when a message has content other than text.
fn chat_prompt(messages: &[Value]) -> Option<String> {
    let mut text = String::new();
    for message in messages {
        text.push_str(message.get("role")?.as_str()?);
        text.push_str(": ");
        match message.get("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(content)) => text.push_str(content),
            Some(Value::Array(parts)) => {
                let mut first = true;
                for part in parts {
                    if part.get("type").and_then(Value::as_str) != Some("text") {
                        return None;
                    }
                    if !first {
                        text.push('\n');
                    }
                    first = false;
                    text.push_str(part.get("text")?.as_str()?);
                }
            }
            Some(_) => return None,
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let function = call.get("function");
            let field = |name: &str| {
                function
                    .and_then(|f| f.get(name))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            };
            let _ = write!(text, " [call {} {}]", field("name"), field("arguments"));
        }
        text.push('\n');
    }
    Some(text)
}

/// `value` with its object keys in order and its numbers as floats, so that bodies that mean
/// the same (`0` and `0.0`, keys in another order) share their answers.
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (name, value) in entries {
                let _ = write!(out, "{name:?}:");
                write_canonical(out, value);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for item in items {
                write_canonical(out, item);
                out.push(',');
            }
            out.push(']');
        }
        Value::Number(number) => match number.as_f64() {
            Some(float) => {
                let _ = write!(out, "{float:?}");
            }
            None => out.push_str(&number.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// A cached answer sent back as our own models' answers are: JSON, or an SSE stream when
/// `stream` is set, `Some(include_usage)`.
pub(crate) async fn replay(
    answer: Answer,
    api: Api,
    id: String,
    stream: Option<bool>,
) -> Result<Response, ApiError> {
    let headers = answer.cache_headers();
    let meta = ResponseMeta::new(id, answer.model());
    let response = match (api, stream) {
        (Api::Chat, Some(include_usage)) => sse::stream(
            answer,
            ChatChunks::new(meta, include_usage, false),
            include_usage,
        ),
        (Api::Completions, Some(include_usage)) => sse::stream(
            answer,
            TextChunks::new(meta, include_usage, false),
            include_usage,
        ),
        (Api::Chat, None) => {
            Json(ChatCompletion::new(meta, answer.collect().await?, false)).into_response()
        }
        (Api::Completions, None) => {
            Json(TextCompletion::new(&meta, answer.collect().await?, false)).into_response()
        }
    };
    Ok((headers, response).into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parts(api: Api, body: &Value) -> Option<(String, String)> {
        prompt_and_parameters(api, body.as_object().unwrap())
    }

    #[test]
    fn the_digest_ignores_the_prompt_delivery_and_key_order_but_not_the_parameters() {
        let a = parts(
            Api::Chat,
            &json!({"model": "m", "temperature": 0, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        let b = parts(
            Api::Chat,
            &json!({"max_tokens": 8, "temperature": 0.0, "stream": true,
                    "stream_options": {"include_usage": true}, "model": "other",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "yo"}]}]}),
        )
        .unwrap();
        assert_eq!(a.1, b.1);
        assert_eq!(a.0, "user: hi\n");
        assert_eq!(b.0, "user: yo\n");
        let warmer = parts(
            Api::Chat,
            &json!({"model": "m", "temperature": 0.5, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert_ne!(a.1, warmer.1);
        let text = parts(
            Api::Completions,
            &json!({"model": "m", "temperature": 0, "max_tokens": 8, "prompt": ["hi"]}),
        )
        .unwrap();
        assert_eq!(text.0, "hi");
        assert_ne!(text.1, a.1, "chat and text completions never share answers");
    }

    #[test]
    fn answers_a_replay_cannot_give_are_not_cached() {
        let chat = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            parts(Api::Chat, &body)
        };
        assert!(chat(json!({})).is_some());
        assert!(chat(json!({"logprobs": false, "tools": []})).is_some());
        assert!(chat(json!({"logprobs": true})).is_none());
        assert!(chat(json!({"tools": [{"type": "function"}]})).is_none());
        assert!(
            chat(json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:"}}
            ]}]}))
            .is_none(),
            "an image is not in the key"
        );
        for prompt in [json!([1, 2, 3]), json!(["a", "b"]), json!(null)] {
            assert!(
                parts(Api::Completions, &json!({"model": "m", "prompt": prompt})).is_none(),
                "{prompt}"
            );
        }
        assert!(
            parts(
                Api::Completions,
                &json!({"model": "m", "prompt": "x", "logprobs": 2})
            )
            .is_none()
        );
    }

    #[test]
    fn tool_calls_made_are_part_of_the_prompt() {
        let (prompt, _) = parts(
            Api::Chat,
            &json!({"model": "m", "messages": [
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "content": "sunny"}
            ]}),
        )
        .unwrap();
        assert_eq!(
            prompt,
            "assistant:  [call weather {\"city\":\"Paris\"}]\ntool: sunny\n"
        );
    }
}
