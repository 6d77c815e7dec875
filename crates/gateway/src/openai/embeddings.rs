//! `POST /v1/embeddings`: request validation and the response shape.

use base64::Engine as _;
use passerelle_proto::embeddings::{EmbedRequest, EmbedResponse, TokenInput};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Most inputs one request may carry, as in OpenAI's API.
pub(crate) const MAX_INPUTS: usize = 2048;

/// An embeddings request. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    pub encoding_format: Option<EncodingFormat>,
    pub dimensions: Option<u32>,
    /// An end-user id; accepted for compatibility and deliberately not logged.
    pub user: Option<String>,
}

/// `input`: one text, several, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

/// How vectors are written in the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON arrays of numbers.
    #[default]
    Float,
    /// Little-endian `f32` bytes, base64-encoded: a third of the size.
    Base64,
}

/// A validated request: what the service receives and how to answer.
#[derive(Debug)]
pub(crate) struct EmbeddingPlan {
    pub(crate) request: EmbedRequest,
    pub(crate) encoding: EncodingFormat,
}

impl EmbeddingRequest {
    pub(crate) fn into_plan(self, request_id: &str) -> Result<EmbeddingPlan, ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not be empty.",
            ));
        }
        // Token ids are the embedding model's own (its tokenizer's output, special tokens
        // included); the service checks them against its vocabulary.
        let (inputs, token_inputs) = match self.input {
            EmbeddingInput::Text(text) => (vec![text], Vec::new()),
            EmbeddingInput::Texts(texts) => (texts, Vec::new()),
            EmbeddingInput::Tokens(ids) => (Vec::new(), vec![TokenInput { ids }]),
            EmbeddingInput::TokenBatches(batches) => (
                Vec::new(),
                batches.into_iter().map(|ids| TokenInput { ids }).collect(),
            ),
        };
        let count = inputs.len() + token_inputs.len();
        if count == 0 {
            return Err(ApiError::invalid_param(
                "input",
                "`input` must hold at least one text.",
            ));
        }
        if count > MAX_INPUTS {
            return Err(ApiError::invalid_param(
                "input",
                format!("`input` may hold at most {MAX_INPUTS} inputs, got {count}."),
            ));
        }
        if let Some(index) = inputs.iter().position(|text| text.is_empty()) {
            return Err(ApiError::invalid_param(
                format!("input[{index}]"),
                "Inputs must not be empty strings.",
            ));
        }
        if let Some(index) = token_inputs.iter().position(|t| t.ids.is_empty()) {
            return Err(ApiError::invalid_param(
                format!("input[{index}]"),
                "Token inputs must hold at least one token id.",
            ));
        }
        if self.dimensions == Some(0) {
            return Err(ApiError::invalid_param(
                "dimensions",
                "`dimensions` must be at least 1.",
            ));
        }
        Ok(EmbeddingPlan {
            request: EmbedRequest {
                model: self.model,
                inputs,
                token_inputs,
                normalize: true,
                dimensions: self.dimensions,
                request_id: request_id.to_owned(),
            },
            encoding: self.encoding_format.unwrap_or_default(),
        })
    }
}

/// `{"object": "list", "data": [...], "model", "usage"}`.
#[derive(Debug, Serialize)]
pub(crate) struct EmbeddingList {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

impl EmbeddingList {
    pub(crate) fn new(response: EmbedResponse, encoding: EncodingFormat) -> Self {
        let prompt_tokens = response.usage.map_or(0, |usage| usage.prompt_tokens);
        let data = response
            .embeddings
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingData {
                object: "embedding",
                index,
                embedding: match encoding {
                    EncodingFormat::Float => Vector::Float(embedding.values),
                    EncodingFormat::Base64 => Vector::Base64(base64_f32(&embedding.values)),
                },
            })
            .collect();
        Self {
            object: "list",
            data,
            model: response.model,
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }

    /// How many vectors the response holds.
    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }
}

fn base64_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use passerelle_proto::common::Usage;
    use passerelle_proto::embeddings::Embedding;

    use super::*;
    use crate::extract::parse_json;

    fn plan(body: serde_json::Value) -> Result<EmbeddingPlan, ApiError> {
        parse_json::<EmbeddingRequest>(body.to_string().as_bytes())?.into_plan("req-1")
    }

    fn param(body: serde_json::Value) -> String {
        match plan(body).unwrap_err() {
            ApiError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn one_text_or_many() {
        let one = plan(serde_json::json!({"model": "m", "input": "hello"})).unwrap();
        assert_eq!(one.request.inputs, vec!["hello"]);
        assert_eq!(one.encoding, EncodingFormat::Float);
        let many = plan(serde_json::json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 64})).unwrap();
        assert_eq!(many.request.inputs, vec!["a", "b"]);
        assert_eq!(many.request.dimensions, Some(64));
        assert_eq!(many.encoding, EncodingFormat::Base64);
    }

    #[test]
    fn token_ids_pass_as_token_inputs() {
        let one = plan(serde_json::json!({"model": "m", "input": [101, 7592, 102]})).unwrap();
        assert!(one.request.inputs.is_empty());
        assert_eq!(one.request.token_inputs[0].ids, vec![101, 7592, 102]);
        let many = plan(serde_json::json!({"model": "m", "input": [[101, 102], [101, 7592, 102]]}))
            .unwrap();
        assert_eq!(many.request.token_inputs.len(), 2);
    }

    #[test]
    fn bad_inputs_name_their_param() {
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": []})),
            "input"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": ["ok", ""]})),
            "input[1]"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": [[1, 2], []]})),
            "input[1]"
        );
        assert_eq!(
            param(serde_json::json!({"model": "", "input": "x"})),
            "model"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": "x", "dimensions": 0})),
            "dimensions"
        );
        let too_many: Vec<&str> = vec!["x"; MAX_INPUTS + 1];
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": too_many})),
            "input"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "input": "x", "encoding_format": "hex"})),
            "encoding_format"
        );
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let response = EmbedResponse {
            embeddings: vec![Embedding {
                values: vec![1.0, -0.5],
            }],
            usage: Some(Usage {
                prompt_tokens: 3,
                total_tokens: 3,
                ..Default::default()
            }),
            model: "m".into(),
        };
        let list =
            serde_json::to_value(EmbeddingList::new(response, EncodingFormat::Base64)).unwrap();
        let encoded = list["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(floats, vec![1.0, -0.5]);
        assert_eq!(list["usage"]["prompt_tokens"], 3);
        assert_eq!(list["data"][0]["object"], "embedding");
        assert_eq!(list["object"], "list");
    }
}
