//! Text completion responses and stream chunks (both `text_completion`).

use axum::response::sse::Event;
use serde::Serialize;

use super::logprobs::CompletionLogprobs;
use super::{ResponseMeta, UsageOut, chunk_usage};
use crate::generation::Collected;
use crate::llm::{Delta, Finished, Usage};
use crate::sse::{ChunkEncoder, json_event};

/// A whole text completion; also the shape of each stream chunk.
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a> {
    #[serde(flatten)]
    meta: &'a ResponseMeta,
    object: &'static str,
    choices: Vec<TextChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Debug, Serialize)]
struct TextChoice {
    text: String,
    index: u32,
    logprobs: Option<CompletionLogprobs>,
    finish_reason: Option<&'static str>,
}

const OBJECT: &str = "text_completion";

impl<'a> TextCompletion<'a> {
    pub(crate) fn new(meta: &'a ResponseMeta, collected: Collected, logprobs: bool) -> Self {
        let choices = collected
            .choices
            .into_iter()
            .zip(0..)
            .map(|(choice, index)| TextChoice {
                text: choice.text,
                index,
                logprobs: logprobs
                    .then(|| CompletionLogprobs::from_tokens(choice.logprobs, &mut 0)),
                finish_reason: choice.finish_reason.map(|r| r.as_openai()),
            })
            .collect();
        TextCompletion {
            meta,
            object: OBJECT,
            choices,
            usage: Some(Some(collected.usage.into())),
        }
    }
}

/// Encodes a text completion stream.
pub(crate) struct TextChunks {
    meta: ResponseMeta,
    include_usage: bool,
    logprobs: bool,
    /// Per choice, where the next token starts in its text (for `text_offset`).
    offsets: Vec<u32>,
}

impl TextChunks {
    pub(crate) fn new(meta: ResponseMeta, include_usage: bool, logprobs: bool) -> Self {
        Self {
            meta,
            include_usage,
            logprobs,
            offsets: Vec::new(),
        }
    }

    fn chunk(&self, choice: TextChoice) -> Event {
        json_event(&TextCompletion {
            meta: &self.meta,
            object: OBJECT,
            choices: vec![choice],
            usage: chunk_usage(self.include_usage),
        })
    }
}

impl ChunkEncoder for TextChunks {
    fn opening(&mut self, choices: u32) -> Vec<Event> {
        self.offsets = vec![0; choices as usize];
        Vec::new()
    }

    /// Text completions have no tools, so deltas carry no tool calls.
    fn delta(&mut self, delta: Delta) -> Vec<Event> {
        if delta.text.is_empty() && delta.logprobs.is_empty() {
            return Vec::new();
        }
        let logprobs = match self.offsets.get_mut(delta.index as usize) {
            Some(offset) if self.logprobs => {
                Some(CompletionLogprobs::from_tokens(delta.logprobs, offset))
            }
            _ => None,
        };
        vec![self.chunk(TextChoice {
            text: delta.text,
            index: delta.index,
            logprobs,
            finish_reason: None,
        })]
    }

    fn finished(&mut self, finished: &Finished) -> Event {
        self.chunk(TextChoice {
            text: String::new(),
            index: finished.index,
            logprobs: None,
            finish_reason: Some(finished.reason.as_openai()),
        })
    }

    fn usage(&mut self, usage: Usage) -> Event {
        json_event(&TextCompletion {
            meta: &self.meta,
            object: OBJECT,
            choices: Vec::new(),
            usage: Some(Some(usage.into())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::CollectedChoice;
    use crate::llm::{FinishReason, TokenLogprob};
    use crate::sse::event_json;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "cmpl-1".into(),
            created: 7,
            model: "m".into(),
            system_fingerprint: "fp",
        }
    }

    #[test]
    fn whole_completion_shape() {
        let collected = Collected {
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: 1,
                total_tokens: 3,
            },
            choices: vec![CollectedChoice {
                text: " upon".into(),
                logprobs: vec![TokenLogprob {
                    token: " upon".into(),
                    bytes: vec![],
                    logprob: -0.25,
                    top: vec![],
                }],
                tool_calls: vec![],
                finish_reason: Some(FinishReason::Length),
            }],
        };
        let meta = meta();
        let body = serde_json::to_value(TextCompletion::new(&meta, collected, true)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
                "system_fingerprint": "fp",
                "choices": [{"text": " upon", "index": 0, "finish_reason": "length",
                    "logprobs": {"tokens": [" upon"], "token_logprobs": [-0.25], "top_logprobs": [{}], "text_offset": [0]}}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
            })
        );
    }

    #[test]
    fn chunks_carry_text_and_finish_reason() {
        let mut enc = TextChunks::new(meta(), false, false);
        assert!(enc.opening(1).is_empty());
        let chunk = event_json(
            enc.delta(Delta {
                index: 0,
                text: "a".into(),
                tokens: 1,
                logprobs: vec![],
                ..Delta::default()
            })
            .remove(0),
        );
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(
            chunk["choices"][0],
            serde_json::json!({"text": "a", "index": 0, "logprobs": null, "finish_reason": null})
        );
        assert!(chunk.get("usage").is_none());
        let fin = event_json(enc.finished(&Finished {
            index: 0,
            reason: FinishReason::Stop,
            usage: None,
        }));
        assert_eq!(
            fin["choices"][0],
            serde_json::json!({"text": "", "index": 0, "logprobs": null, "finish_reason": "stop"})
        );
    }

    #[test]
    fn chunk_logprobs_continue_their_offsets() {
        let mut enc = TextChunks::new(meta(), true, true);
        enc.opening(1);
        let token = |t: &str| TokenLogprob {
            token: t.into(),
            bytes: vec![],
            logprob: -0.5,
            top: vec![],
        };
        let first = event_json(
            enc.delta(Delta {
                index: 0,
                text: "ab".into(),
                tokens: 1,
                logprobs: vec![token("ab")],
                ..Delta::default()
            })
            .remove(0),
        );
        let second = event_json(
            enc.delta(Delta {
                index: 0,
                text: "c".into(),
                tokens: 1,
                logprobs: vec![token("c")],
                ..Delta::default()
            })
            .remove(0),
        );
        assert_eq!(
            first["choices"][0]["logprobs"]["text_offset"],
            serde_json::json!([0])
        );
        assert_eq!(
            second["choices"][0]["logprobs"]["text_offset"],
            serde_json::json!([2])
        );
        assert_eq!(second["usage"], serde_json::Value::Null);
        let usage = event_json(enc.usage(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        }));
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 3);
    }
}
