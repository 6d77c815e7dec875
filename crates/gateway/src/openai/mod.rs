//! The OpenAI API's shapes: requests ([`chat`], [`completions`]) with their validation and
//! conversion to the llm contract, and responses and stream chunks ([`chat_response`],
//! [`completion_response`]).

pub mod chat;
pub mod chat_response;
pub mod completion_response;
pub mod completions;
pub mod documents;
pub mod embeddings;
mod logprobs;
pub mod params;

use std::time::{SystemTime, UNIX_EPOCH};

use passerelle_proto::llm::{self, response_format};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::llm::Usage;
use params::StreamOptions;

/// Identifies this gateway build in `system_fingerprint`.
const SYSTEM_FINGERPRINT: &str = concat!("passerelle-", env!("CARGO_PKG_VERSION"));

/// `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize)]
pub struct JsonSchema {
    pub name: String,
    pub schema: Option<serde_json::Value>,
    pub strict: Option<bool>,
}

impl ResponseFormat {
    pub(crate) fn into_proto(self) -> Result<llm::ResponseFormat, ApiError> {
        let kind = match self {
            ResponseFormat::Text => response_format::Kind::Text(llm::TextFormat {}),
            ResponseFormat::JsonObject => {
                response_format::Kind::JsonObject(llm::JsonObjectFormat {})
            }
            ResponseFormat::JsonSchema { json_schema } => {
                let schema = json_schema.schema.ok_or_else(|| {
                    ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "A JSON schema is required.",
                    )
                })?;
                response_format::Kind::JsonSchema(llm::JsonSchemaFormat {
                    name: json_schema.name,
                    schema_json: schema.to_string(),
                    strict: json_schema.strict.unwrap_or(false),
                })
            }
        };
        Ok(llm::ResponseFormat { kind: Some(kind) })
    }
}

/// How a streaming request wants its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamPlan {
    pub(crate) include_usage: bool,
}

impl StreamPlan {
    /// `Some` when the client asked for a stream. `stream_options` without `stream` is an
    /// error, as in OpenAI's API.
    pub(crate) fn new(
        stream: Option<bool>,
        options: Option<StreamOptions>,
    ) -> Result<Option<Self>, ApiError> {
        match (stream.unwrap_or(false), options) {
            (true, options) => Ok(Some(StreamPlan {
                include_usage: options.is_some_and(|o| o.include_usage),
            })),
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::invalid_param(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true.",
            )),
        }
    }
}

/// The fields every response and chunk of one request repeats.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ResponseMeta {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) system_fingerprint: &'static str,
}

/// A new response id; `prefix` is OpenAI's id prefix for the API (`chatcmpl`, `cmpl`).
pub(crate) fn response_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

impl ResponseMeta {
    /// `id` comes from [`response_id`].
    pub(crate) fn new(id: String, model: &str) -> Self {
        Self {
            id,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_owned(),
            system_fingerprint: SYSTEM_FINGERPRINT,
        }
    }
}

/// `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageOut {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

/// How `usage` appears on stream chunks: absent unless the client asked for usage, then
/// `null` on every chunk but the last.
pub(crate) fn chunk_usage(include_usage: bool) -> Option<Option<UsageOut>> {
    include_usage.then_some(None)
}
