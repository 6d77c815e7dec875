//! Chat completion responses (`chat.completion`) and stream chunks (`chat.completion.chunk`).

use axum::response::sse::Event;
use serde::Serialize;

use super::logprobs::ChatLogprobs;
use super::{ResponseMeta, UsageOut, chunk_usage};
use crate::generation::Collected;
use crate::llm::{Delta, Finished, ToolCallOut, Usage};
use crate::retrieval::Citation;
use crate::sse::{ChunkEncoder, json_event};

/// A whole chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    #[serde(flatten)]
    meta: ResponseMeta,
    object: &'static str,
    choices: Vec<ChatChoice>,
    usage: UsageOut,
    /// The sources put in the prompt, when the request asked for `retrieval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    citations: Option<Vec<Citation>>,
}

#[derive(Debug, Serialize)]
struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    /// `null` when the model only called tools.
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallJson>,
}

/// A tool call in a message: `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Serialize)]
struct ToolCallJson {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionJson,
}

#[derive(Debug, Serialize)]
struct FunctionJson {
    name: String,
    arguments: String,
}

impl From<ToolCallOut> for ToolCallJson {
    fn from(call: ToolCallOut) -> Self {
        ToolCallJson {
            id: call.id,
            kind: "function",
            function: FunctionJson {
                name: call.name,
                arguments: call.arguments,
            },
        }
    }
}

/// A piece of a streamed tool call, as OpenAI streams them: the id and name first, then the
/// arguments.
#[derive(Debug, Serialize)]
struct ToolCallChunk {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionChunk,
}

#[derive(Debug, Serialize)]
struct FunctionChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    arguments: String,
}

impl ChatCompletion {
    pub(crate) fn new(meta: ResponseMeta, collected: Collected, logprobs: bool) -> Self {
        let choices = collected
            .choices
            .into_iter()
            .zip(0..)
            .map(|(choice, index)| ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: (!choice.text.is_empty() || choice.tool_calls.is_empty())
                        .then_some(choice.text),
                    tool_calls: choice.tool_calls.into_iter().map(Into::into).collect(),
                },
                logprobs: logprobs.then(|| ChatLogprobs::from_tokens(choice.logprobs)),
                finish_reason: choice.finish_reason.map(|r| r.as_openai()),
            })
            .collect();
        ChatCompletion {
            meta,
            object: "chat.completion",
            choices,
            usage: collected.usage.into(),
            citations: None,
        }
    }

    /// Lists the sources retrieved into the prompt.
    pub(crate) fn with_citations(mut self, citations: Option<Vec<Citation>>) -> Self {
        self.citations = citations;
        self
    }
}

/// One `chat.completion.chunk`.
#[derive(Debug, Serialize)]
struct ChatChunk<'a> {
    #[serde(flatten)]
    meta: &'a ResponseMeta,
    object: &'static str,
    choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
    /// On the first chunk only, when the request asked for `retrieval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    citations: Option<Vec<Citation>>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice {
    index: u32,
    delta: ChunkDelta,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
struct ChunkDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallChunk>>,
}

/// Encodes a chat stream.
pub(crate) struct ChatChunks {
    meta: ResponseMeta,
    include_usage: bool,
    logprobs: bool,
    /// Sent once, on the first chunk.
    citations: Option<Vec<Citation>>,
}

impl ChatChunks {
    pub(crate) fn new(meta: ResponseMeta, include_usage: bool, logprobs: bool) -> Self {
        Self {
            meta,
            include_usage,
            logprobs,
            citations: None,
        }
    }

    /// Lists the sources retrieved into the prompt on the first chunk.
    pub(crate) fn with_citations(mut self, citations: Option<Vec<Citation>>) -> Self {
        self.citations = citations;
        self
    }

    fn chunk(&mut self, choices: Vec<ChunkChoice>) -> Event {
        json_event(&ChatChunk {
            meta: &self.meta,
            object: "chat.completion.chunk",
            choices,
            usage: chunk_usage(self.include_usage),
            citations: self.citations.take(),
        })
    }
}

impl ChunkEncoder for ChatChunks {
    fn opening(&mut self, choices: u32) -> Vec<Event> {
        (0..choices)
            .map(|index| {
                self.chunk(vec![ChunkChoice {
                    index,
                    delta: ChunkDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                }])
            })
            .collect()
    }

    fn delta(&mut self, delta: Delta) -> Vec<Event> {
        let mut events = Vec::new();
        if !delta.text.is_empty() || !delta.logprobs.is_empty() {
            let logprobs = (self.logprobs && !delta.logprobs.is_empty())
                .then(|| ChatLogprobs::from_tokens(delta.logprobs));
            events.push(self.chunk(vec![ChunkChoice {
                index: delta.index,
                delta: ChunkDelta {
                    content: Some(delta.text),
                    ..ChunkDelta::default()
                },
                logprobs,
                finish_reason: None,
            }]));
        }
        for call in delta.tool_calls {
            let pieces = [
                ToolCallChunk {
                    index: call.index,
                    id: Some(call.id),
                    kind: Some("function"),
                    function: FunctionChunk {
                        name: Some(call.name),
                        arguments: String::new(),
                    },
                },
                ToolCallChunk {
                    index: call.index,
                    id: None,
                    kind: None,
                    function: FunctionChunk {
                        name: None,
                        arguments: call.arguments,
                    },
                },
            ];
            for piece in pieces {
                events.push(self.chunk(vec![ChunkChoice {
                    index: delta.index,
                    delta: ChunkDelta {
                        tool_calls: Some(vec![piece]),
                        ..ChunkDelta::default()
                    },
                    logprobs: None,
                    finish_reason: None,
                }]));
            }
        }
        events
    }

    fn finished(&mut self, finished: &Finished) -> Event {
        self.chunk(vec![ChunkChoice {
            index: finished.index,
            delta: ChunkDelta::default(),
            logprobs: None,
            finish_reason: Some(finished.reason.as_openai()),
        }])
    }

    fn usage(&mut self, usage: Usage) -> Event {
        json_event(&ChatChunk {
            meta: &self.meta,
            object: "chat.completion.chunk",
            choices: Vec::new(),
            usage: Some(Some(usage.into())),
            citations: self.citations.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::CollectedChoice;
    use crate::llm::FinishReason;
    use crate::sse::event_json;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            system_fingerprint: "fp",
        }
    }

    #[test]
    fn whole_completion_shape() {
        let collected = Collected {
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                total_tokens: 5,
            },
            choices: vec![CollectedChoice {
                text: "Hi!".into(),
                logprobs: vec![],
                tool_calls: vec![],
                finish_reason: Some(FinishReason::Stop),
            }],
        };
        let body = serde_json::to_value(ChatCompletion::new(meta(), collected, false)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                "system_fingerprint": "fp",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            })
        );
    }

    #[test]
    fn stream_chunks_without_usage() {
        let mut enc = ChatChunks::new(meta(), false, false);
        let opening = enc.opening(1);
        assert_eq!(opening.len(), 1);
        let first = event_json(opening.into_iter().next().unwrap());
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            serde_json::json!({"role": "assistant", "content": ""})
        );
        assert_eq!(
            first["choices"][0]["finish_reason"],
            serde_json::Value::Null
        );
        assert!(first.get("usage").is_none());

        let delta = Delta {
            index: 0,
            text: "Hi".into(),
            tokens: 1,
            ..Delta::default()
        };
        let chunk = event_json(enc.delta(delta).remove(0));
        assert_eq!(
            chunk["choices"][0]["delta"],
            serde_json::json!({"content": "Hi"})
        );
        assert!(
            enc.delta(Delta {
                index: 0,
                tokens: 1,
                ..Delta::default()
            })
            .is_empty()
        );

        let fin = event_json(enc.finished(&Finished {
            index: 0,
            reason: FinishReason::Length,
            usage: None,
        }));
        assert_eq!(fin["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
    }

    fn call() -> ToolCallOut {
        ToolCallOut {
            index: 0,
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }
    }

    #[test]
    fn tool_calls_leave_content_null_in_a_whole_completion() {
        let collected = Collected {
            usage: Usage::default(),
            choices: vec![CollectedChoice {
                tool_calls: vec![call()],
                finish_reason: Some(FinishReason::ToolCalls),
                ..CollectedChoice::default()
            }],
        };
        let body = serde_json::to_value(ChatCompletion::new(meta(), collected, false)).unwrap();
        assert_eq!(
            body["choices"][0]["message"],
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn streamed_tool_calls_send_id_and_name_then_arguments() {
        let mut enc = ChatChunks::new(meta(), false, false);
        let events = enc.delta(Delta {
            index: 1,
            text: "Sure.".into(),
            tokens: 3,
            tool_calls: vec![call()],
            ..Delta::default()
        });
        let chunks: Vec<_> = events.into_iter().map(event_json).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            serde_json::json!({"content": "Sure."})
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"],
            serde_json::json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            chunks[2]["choices"][0]["delta"],
            serde_json::json!({"tool_calls": [{"index": 0,
                "function": {"arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert!(chunks.iter().all(|c| c["choices"][0]["index"] == 1));
    }

    fn citation() -> Citation {
        Citation {
            index: 1,
            document_id: "doc_1".into(),
            title: "Cats".into(),
            chunk_index: 0,
            score: 0.5,
            text: "Cats purr.".into(),
        }
    }

    #[test]
    fn citations_are_listed_once_when_asked_for() {
        let collected = || Collected {
            usage: Usage::default(),
            choices: vec![],
        };
        let plain = serde_json::to_value(ChatCompletion::new(meta(), collected(), false)).unwrap();
        assert!(plain.get("citations").is_none());
        let cited =
            ChatCompletion::new(meta(), collected(), false).with_citations(Some(vec![citation()]));
        let body = serde_json::to_value(cited).unwrap();
        assert_eq!(
            body["citations"],
            serde_json::json!([{"index": 1, "document_id": "doc_1", "title": "Cats",
                "chunk_index": 0, "score": 0.5, "text": "Cats purr."}])
        );
        let none = ChatCompletion::new(meta(), collected(), false).with_citations(Some(vec![]));
        assert_eq!(
            serde_json::to_value(none).unwrap()["citations"],
            serde_json::json!([])
        );

        let mut enc = ChatChunks::new(meta(), false, false).with_citations(Some(vec![citation()]));
        let mut opening = enc.opening(2).into_iter();
        let first = event_json(opening.next().unwrap());
        assert_eq!(first["citations"][0]["document_id"], "doc_1");
        let second = event_json(opening.next().unwrap());
        assert!(second.get("citations").is_none());
    }

    #[test]
    fn stream_chunks_with_usage() {
        let mut enc = ChatChunks::new(meta(), true, false);
        let first = event_json(enc.opening(1).into_iter().next().unwrap());
        assert_eq!(first["usage"], serde_json::Value::Null);
        assert!(first.as_object().unwrap().contains_key("usage"));
        let last = event_json(enc.usage(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        }));
        assert_eq!(last["choices"], serde_json::json!([]));
        assert_eq!(
            last["usage"],
            serde_json::json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        );
    }
}
