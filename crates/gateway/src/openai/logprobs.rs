//! Log probabilities in the two OpenAI shapes: chat's `{"content": [...]}` and the completions
//! API's parallel arrays.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::llm::TokenLogprob;

/// Chat `logprobs`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub(crate) fn from_tokens(tokens: Vec<TokenLogprob>) -> Self {
        let content = tokens
            .into_iter()
            .map(|t| ChatTokenLogprob {
                token: t.token,
                logprob: t.logprob,
                bytes: t.bytes,
                top_logprobs: t
                    .top
                    .into_iter()
                    .map(|a| ChatTopLogprob {
                        token: a.token,
                        logprob: a.logprob,
                        bytes: a.bytes,
                    })
                    .collect(),
            })
            .collect();
        ChatLogprobs { content }
    }
}

/// Completions `logprobs`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<u32>,
}

impl CompletionLogprobs {
    /// `offset` is where these tokens start in the choice's text, and is advanced past them, so
    /// stream chunks continue the count.
    pub(crate) fn from_tokens(tokens: Vec<TokenLogprob>, offset: &mut u32) -> Self {
        let mut out = CompletionLogprobs::default();
        for t in tokens {
            out.text_offset.push(*offset);
            *offset =
                offset.saturating_add(u32::try_from(t.token.chars().count()).unwrap_or(u32::MAX));
            out.top_logprobs
                .push(t.top.into_iter().map(|a| (a.token, a.logprob)).collect());
            out.token_logprobs.push(t.logprob);
            out.tokens.push(t.token);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::TopLogprob;

    fn token(text: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            token: text.into(),
            bytes: text.as_bytes().to_vec(),
            logprob,
            top: vec![TopLogprob {
                token: text.into(),
                bytes: text.as_bytes().to_vec(),
                logprob,
            }],
        }
    }

    #[test]
    fn chat_shape() {
        let lp = ChatLogprobs::from_tokens(vec![token("Hi", -0.5)]);
        assert_eq!(
            serde_json::to_value(&lp).unwrap(),
            serde_json::json!({"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]})
        );
    }

    #[test]
    fn completion_offsets_continue_across_chunks() {
        let mut offset = 0;
        let first = CompletionLogprobs::from_tokens(
            vec![token("Hé", -1.0), token("llo", -2.0)],
            &mut offset,
        );
        assert_eq!(first.text_offset, vec![0, 2]);
        let second = CompletionLogprobs::from_tokens(vec![token("!", -0.25)], &mut offset);
        assert_eq!(second.text_offset, vec![5]);
        assert_eq!(
            serde_json::to_value(&second).unwrap(),
            serde_json::json!({"tokens": ["!"], "token_logprobs": [-0.25], "top_logprobs": [{"!": -0.25}], "text_offset": [5]})
        );
    }
}
