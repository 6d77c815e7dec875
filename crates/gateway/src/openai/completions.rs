//! `POST /v1/completions` requests: their OpenAI shape, validation and conversion to a
//! `GenerateRequest` with a text or token prompt.

use std::collections::HashMap;

use passerelle_proto::llm::{GenerateRequest, LogprobsOptions, Prompt, TokenIds, prompt};
use serde::Deserialize;

use super::params::{Sampling, Stop, StreamOptions, stopping};
use super::{ResponseFormat, StreamPlan};
use crate::error::ApiError;

/// Most alternatives per position in the completions API, as in OpenAI's.
const MAX_LOGPROBS: u32 = 5;

/// A text completion request. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptIn,
    pub suffix: Option<String>,
    pub echo: Option<bool>,
    /// Completions-style: how many alternatives to return per token (0..=5).
    pub logprobs: Option<u32>,
    pub best_of: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub seed: Option<i64>,
    /// An end-user id; accepted for compatibility and deliberately not logged.
    pub user: Option<String>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    /// Structured output, as for chat (a vLLM extension of the legacy API).
    pub response_format: Option<ResponseFormat>,
}

/// `prompt`: text or token ids, alone or in a batch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

/// What the handler needs besides the request for the service.
#[derive(Debug)]
pub(crate) struct CompletionPlan {
    pub(crate) request: GenerateRequest,
    pub(crate) stream: Option<StreamPlan>,
    pub(crate) logprobs: bool,
}

impl CompletionRequest {
    /// Validates the request and builds what the service receives.
    pub(crate) fn into_plan(self, request_id: &str) -> Result<CompletionPlan, ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not be empty.",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "suffix",
                "`suffix` (fill-in-the-middle) is not supported.",
            ));
        }
        if let Some(best_of) = self.best_of
            && best_of != self.n.unwrap_or(1)
        {
            return Err(ApiError::invalid_param(
                "best_of",
                "`best_of` other than `n` is not supported.",
            ));
        }
        let stream = StreamPlan::new(self.stream, self.stream_options)?;
        let logprobs = match self.logprobs {
            Some(k) if k > MAX_LOGPROBS => {
                return Err(ApiError::invalid_param(
                    "logprobs",
                    format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}."),
                ));
            }
            Some(k) => LogprobsOptions {
                enabled: true,
                top_logprobs: k,
            },
            None => LogprobsOptions {
                enabled: false,
                top_logprobs: 0,
            },
        };
        let sampling = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias,
            seed: self.seed,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
        };
        let logprobs_enabled = logprobs.enabled;
        let request = GenerateRequest {
            model: self.model,
            prompt: Some(self.prompt.into_proto()?),
            sampling: Some(sampling.into_proto()?),
            stopping: Some(stopping(
                self.max_tokens.map(|n| (n, "max_tokens")),
                self.stop,
            )?),
            logprobs: Some(logprobs),
            response_format: self
                .response_format
                .map(ResponseFormat::into_proto)
                .transpose()?,
            request_id: request_id.to_owned(),
            echo: self.echo.unwrap_or(false),
        };
        Ok(CompletionPlan {
            request,
            stream,
            logprobs: logprobs_enabled,
        })
    }
}

impl PromptIn {
    /// One prompt per request for now: a batch of one is unwrapped, larger batches refused.
    fn into_proto(self) -> Result<Prompt, ApiError> {
        let kind = match self {
            PromptIn::Text(text) => prompt::Kind::Text(text),
            PromptIn::Tokens(ids) if !ids.is_empty() => prompt::Kind::Tokens(TokenIds { ids }),
            PromptIn::Texts(mut texts) if texts.len() == 1 => prompt::Kind::Text(texts.remove(0)),
            PromptIn::TokenBatches(mut batches) if batches.len() == 1 && !batches[0].is_empty() => {
                prompt::Kind::Tokens(TokenIds {
                    ids: batches.remove(0),
                })
            }
            PromptIn::Texts(texts) if texts.len() > 1 => return Err(batch_error()),
            PromptIn::TokenBatches(batches) if batches.len() > 1 => return Err(batch_error()),
            PromptIn::Tokens(_) | PromptIn::Texts(_) | PromptIn::TokenBatches(_) => {
                return Err(ApiError::invalid_param(
                    "prompt",
                    "`prompt` must not be empty.",
                ));
            }
        };
        Ok(Prompt { kind: Some(kind) })
    }
}

fn batch_error() -> ApiError {
    ApiError::invalid_param(
        "prompt",
        "Only one prompt per request is supported; send a string or a list of one.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    fn plan(body: serde_json::Value) -> Result<CompletionPlan, ApiError> {
        parse_json::<CompletionRequest>(body.to_string().as_bytes())?.into_plan("r")
    }

    fn param(body: serde_json::Value) -> String {
        match plan(body).unwrap_err() {
            ApiError::InvalidRequest { param: Some(p), .. } => p,
            other => panic!("{other:?}"),
        }
    }

    fn kind(p: &CompletionPlan) -> &prompt::Kind {
        p.request.prompt.as_ref().unwrap().kind.as_ref().unwrap()
    }

    #[test]
    fn prompt_shapes() {
        let text = plan(serde_json::json!({"model": "m", "prompt": "Once"})).unwrap();
        assert_eq!(kind(&text), &prompt::Kind::Text("Once".into()));
        let one = plan(serde_json::json!({"model": "m", "prompt": ["Once"]})).unwrap();
        assert_eq!(kind(&one), &prompt::Kind::Text("Once".into()));
        let ids = plan(serde_json::json!({"model": "m", "prompt": [1, 2, 3]})).unwrap();
        assert_eq!(
            kind(&ids),
            &prompt::Kind::Tokens(TokenIds { ids: vec![1, 2, 3] })
        );
        let batch = plan(serde_json::json!({"model": "m", "prompt": [[4, 5]]})).unwrap();
        assert_eq!(
            kind(&batch),
            &prompt::Kind::Tokens(TokenIds { ids: vec![4, 5] })
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": ["a", "b"]})),
            "prompt"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": [[1], [2]]})),
            "prompt"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": []})),
            "prompt"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": {"x": 1}})),
            "prompt"
        );
        assert_eq!(param(serde_json::json!({"model": "m"})), "prompt");
    }

    #[test]
    fn unsupported_and_out_of_range_params() {
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "suffix": "y"})),
            "suffix"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "best_of": 3})),
            "best_of"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "logprobs": 6})),
            "logprobs"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "n": 0})),
            "n"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "top_p": 2})),
            "top_p"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]})),
            "stop"
        );
    }

    #[test]
    fn options_reach_the_request() {
        let p = plan(
            serde_json::json!({"model": "m", "prompt": "x", "echo": true, "logprobs": 2,
            "max_tokens": 9, "seed": 4, "stream": true, "suffix": ""}),
        )
        .unwrap();
        assert!(p.request.echo);
        assert!(p.logprobs);
        assert_eq!(
            p.request.logprobs,
            Some(LogprobsOptions {
                enabled: true,
                top_logprobs: 2
            })
        );
        assert_eq!(p.request.stopping.as_ref().unwrap().max_tokens, Some(9));
        assert_eq!(p.request.sampling.as_ref().unwrap().seed, Some(4));
        assert_eq!(
            p.stream,
            Some(StreamPlan {
                include_usage: false
            })
        );
    }
}
