//! Domain types for what the llm service reports; the generated types stop here.

use passerelle_proto::common;
use passerelle_proto::llm::{self, generate_response};

use super::BackendError;
pub use crate::backend::ModelEntry;

/// Token counts of a whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<common::Usage> for Usage {
    fn from(u: common::Usage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// The log probability of one generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely alternatives, most likely first.
    pub top: Vec<TopLogprob>,
}

/// An alternative token at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Text generated for one choice since its previous delta.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    pub index: u32,
    pub text: String,
    /// How many tokens this delta covers (text may be empty while tokens are held back).
    pub tokens: u32,
    pub logprobs: Vec<TokenLogprob>,
    /// Tool calls the service parsed out of the text, whole.
    pub tool_calls: Vec<ToolCallOut>,
}

/// A function call the model made, parsed out of its output by the service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCallOut {
    /// Position among the choice's calls.
    pub index: u32,
    /// `call_...`.
    pub id: String,
    pub name: String,
    /// The arguments as a serialised JSON object.
    pub arguments: String,
}

/// A choice ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub index: u32,
    pub reason: FinishReason,
    /// Usage of the whole request, on the last choice to finish.
    pub usage: Option<Usage>,
}

/// One event of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    Started { prompt_tokens: u32, model: String },
    Delta(Delta),
    Finished(Finished),
}

impl TryFrom<llm::GenerateResponse> for GenerationEvent {
    type Error = BackendError;

    fn try_from(response: llm::GenerateResponse) -> Result<Self, BackendError> {
        match response.event {
            Some(generate_response::Event::Started(s)) => Ok(GenerationEvent::Started {
                prompt_tokens: s.prompt_tokens,
                model: s.model,
            }),
            Some(generate_response::Event::Delta(d)) => Ok(GenerationEvent::Delta(Delta {
                index: d.index,
                tokens: u32::try_from(d.token_ids.len()).unwrap_or(u32::MAX),
                text: d.text,
                logprobs: d.logprobs.into_iter().map(TokenLogprob::from).collect(),
                tool_calls: d
                    .tool_calls
                    .into_iter()
                    .map(|c| ToolCallOut {
                        index: c.index,
                        id: c.id,
                        name: c.name,
                        arguments: c.arguments,
                    })
                    .collect(),
            })),
            Some(generate_response::Event::Finished(f)) => {
                let reason = match f.reason() {
                    llm::FinishReason::Stop => FinishReason::Stop,
                    llm::FinishReason::Length => FinishReason::Length,
                    llm::FinishReason::ContentFilter => FinishReason::ContentFilter,
                    llm::FinishReason::ToolCalls => FinishReason::ToolCalls,
                    llm::FinishReason::Unspecified => {
                        return Err(BackendError::protocol("a choice finished without a reason"));
                    }
                };
                Ok(GenerationEvent::Finished(Finished {
                    index: f.index,
                    reason,
                    usage: f.usage.map(Usage::from),
                }))
            }
            None => Err(BackendError::protocol("an event with no content")),
        }
    }
}

impl From<llm::TokenLogprob> for TokenLogprob {
    fn from(t: llm::TokenLogprob) -> Self {
        TokenLogprob {
            token: t.token,
            bytes: t.bytes,
            logprob: t.logprob,
            top: t
                .top_logprobs
                .into_iter()
                .map(|a| TopLogprob {
                    token: a.token,
                    bytes: a.bytes,
                    logprob: a.logprob,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(reason: llm::FinishReason) -> llm::GenerateResponse {
        llm::GenerateResponse {
            event: Some(generate_response::Event::Finished(llm::Finished {
                index: 1,
                reason: reason as i32,
                usage: Some(common::Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    total_tokens: 7,
                    cached_prompt_tokens: 0,
                }),
                matched_stop: String::new(),
            })),
        }
    }

    #[test]
    fn finish_reasons_map_to_openai_strings() {
        let cases = [
            (llm::FinishReason::Stop, "stop"),
            (llm::FinishReason::Length, "length"),
            (llm::FinishReason::ContentFilter, "content_filter"),
            (llm::FinishReason::ToolCalls, "tool_calls"),
        ];
        for (proto, openai) in cases {
            match GenerationEvent::try_from(finished(proto)).unwrap() {
                GenerationEvent::Finished(f) => {
                    assert_eq!(f.reason.as_openai(), openai);
                    assert_eq!(f.index, 1);
                    assert_eq!(f.usage.unwrap().total_tokens, 7);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(GenerationEvent::try_from(finished(llm::FinishReason::Unspecified)).is_err());
    }

    #[test]
    fn deltas_count_their_tokens() {
        let response = llm::GenerateResponse {
            event: Some(generate_response::Event::Delta(llm::TokenDelta {
                index: 0,
                text: "hi".into(),
                token_ids: vec![5, 6],
                logprobs: vec![],
                tool_calls: vec![],
            })),
        };
        match GenerationEvent::try_from(response).unwrap() {
            GenerationEvent::Delta(d) => assert_eq!((d.tokens, d.text.as_str()), (2, "hi")),
            other => panic!("{other:?}"),
        }
        assert!(GenerationEvent::try_from(llm::GenerateResponse { event: None }).is_err());
    }

    #[test]
    fn failed_models_are_not_listed() {
        let info = |state: common::ModelState| common::ModelInfo {
            id: "m".into(),
            state: state as i32,
            ..Default::default()
        };
        assert!(ModelEntry::listable(info(common::ModelState::Failed)).is_none());
        assert!(ModelEntry::listable(info(common::ModelState::Unloaded)).is_none());
        let ready = ModelEntry::listable(info(common::ModelState::Ready)).unwrap();
        assert_eq!(ready.owned_by, "passerelle");
    }
}
