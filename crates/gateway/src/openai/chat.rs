//! `POST /v1/chat/completions` requests: their OpenAI shape, validation and conversion to a
//! `GenerateRequest` with a chat prompt.

use std::collections::HashMap;

use passerelle_proto::common::{ChatMessage, ToolCall};
use passerelle_proto::llm::{
    ChatPrompt, GenerateRequest, LogprobsOptions, Prompt, Tool, ToolChoice, prompt,
};
use serde::Deserialize;

use super::params::{Sampling, Stop, StreamOptions, stopping};
use super::{ResponseFormat, StreamPlan};
use crate::error::ApiError;
use crate::retrieval::{self, RetrievalPlan};

/// Most alternatives per position, as in OpenAI's API.
const MAX_TOP_LOGPROBS: u32 = 20;

/// A chat completion request. Unknown fields are ignored, as many OpenAI clients send extras.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<MessageIn>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub seed: Option<i64>,
    /// An end-user id; accepted for compatibility and deliberately not logged.
    pub user: Option<String>,
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<ToolIn>>,
    pub tool_choice: Option<serde_json::Value>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    /// Answer from the caller's documents (a Passerelle extension; see `crate::retrieval`).
    pub retrieval: Option<RetrievalIn>,
}

/// `retrieval`: put the caller's document chunks closest to the last user message in the
/// prompt, and cite them in the response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalIn {
    /// Chunks to put in the prompt, 1 to 20; 4 when absent.
    pub top_k: Option<u32>,
    /// Cosine similarity a chunk needs, -1 to 1; none when absent.
    pub min_score: Option<f32>,
    /// Search only these documents.
    pub document_ids: Option<Vec<String>>,
}

impl RetrievalIn {
    fn into_plan(self) -> Result<RetrievalPlan, ApiError> {
        let top_k = match self.top_k {
            None => retrieval::DEFAULT_TOP_K,
            Some(k) if (1..=retrieval::MAX_TOP_K).contains(&k) => k,
            Some(k) => {
                return Err(ApiError::invalid_param(
                    "retrieval.top_k",
                    format!(
                        "`retrieval.top_k` must be between 1 and {}, got {k}.",
                        retrieval::MAX_TOP_K
                    ),
                ));
            }
        };
        let min_score = super::documents::check_min_score("retrieval.min_score", self.min_score)?;
        Ok(RetrievalPlan {
            top_k,
            min_score,
            document_ids: self.document_ids.unwrap_or_default(),
        })
    }
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    /// Required except on assistant messages that carry tool calls.
    #[serde(default)]
    pub content: Option<Content>,
    pub name: Option<String>,
    pub tool_call_id: Option<String>,
    pub tool_calls: Option<Vec<ToolCallIn>>,
}

/// Message content: a string or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A content part. Only `text` parts are supported; the others are named in the error.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A call the assistant made, echoed back in the conversation.
#[derive(Debug, Deserialize)]
pub struct ToolCallIn {
    pub id: String,
    pub function: FunctionCallIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionCallIn {
    pub name: String,
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Deserialize)]
pub struct ToolIn {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionIn {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<serde_json::Value>,
}

/// What the handler needs besides the request for the service.
#[derive(Debug)]
pub(crate) struct ChatPlan {
    pub(crate) request: GenerateRequest,
    pub(crate) stream: Option<StreamPlan>,
    pub(crate) logprobs: bool,
    /// Sources to retrieve into the prompt first.
    pub(crate) retrieval: Option<RetrievalPlan>,
}

impl ChatCompletionRequest {
    /// Validates the request and builds what the service receives.
    pub(crate) fn into_plan(self, request_id: &str) -> Result<ChatPlan, ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid_param(
                "model",
                "`model` must not be empty.",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must hold at least one message.",
            ));
        }
        let stream = StreamPlan::new(self.stream, self.stream_options)?;
        let retrieval = self.retrieval.map(RetrievalIn::into_plan).transpose()?;
        let logprobs = self.logprobs.unwrap_or(false);
        let top_logprobs = match self.top_logprobs {
            Some(k) if k > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
                ));
            }
            Some(k) if k > 0 && !logprobs => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs` to be true.",
                ));
            }
            k => k.unwrap_or(0),
        };
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => Some((n, "max_completion_tokens")),
            (None, Some(n)) => Some((n, "max_tokens")),
            (None, None) => None,
        };
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_proto(i))
            .collect::<Result<Vec<_>, _>>()?;
        let offered = tools(self.tools, self.tool_choice.as_ref())?;
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
        let request = GenerateRequest {
            model: self.model,
            prompt: Some(Prompt {
                kind: Some(prompt::Kind::Chat(ChatPrompt {
                    messages,
                    tools: offered.tools,
                    add_generation_prompt: true,
                    tool_choice: offered.choice as i32,
                    tool_choice_function: offered.function,
                })),
            }),
            sampling: Some(sampling.into_proto()?),
            stopping: Some(stopping(max_tokens, self.stop)?),
            logprobs: Some(LogprobsOptions {
                enabled: logprobs,
                top_logprobs,
            }),
            response_format: self
                .response_format
                .map(ResponseFormat::into_proto)
                .transpose()?,
            request_id: request_id.to_owned(),
            echo: false,
        };
        Ok(ChatPlan {
            request,
            stream,
            logprobs,
            retrieval,
        })
    }
}

impl MessageIn {
    pub(crate) fn into_proto(self, i: usize) -> Result<ChatMessage, ApiError> {
        let role = match self.role.as_str() {
            "system" | "user" | "assistant" | "tool" => self.role,
            // OpenAI's newer name for system instructions; chat templates know only "system".
            "developer" => "system".to_owned(),
            other => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "Unsupported role {other:?}; expected system, developer, user, assistant or tool."
                    ),
                ));
            }
        };
        let tool_calls: Vec<ToolCall> = self
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments_json: c.function.arguments,
            })
            .collect();
        let content = match self.content {
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => text_of_parts(parts, i)?,
            None if role == "assistant" && !tool_calls.is_empty() => String::new(),
            None => {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].content"),
                    "`content` is required (it may be omitted only on assistant messages with tool calls).",
                ));
            }
        };
        if role == "tool" && self.tool_call_id.is_none() {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].tool_call_id"),
                "Tool messages need the `tool_call_id` of the call they answer.",
            ));
        }
        Ok(ChatMessage {
            role,
            content,
            name: self.name.unwrap_or_default(),
            tool_call_id: self.tool_call_id.unwrap_or_default(),
            tool_calls,
        })
    }
}

/// Joins text parts with newlines, as vLLM does for text-only templates.
fn text_of_parts(parts: Vec<ContentPart>, i: usize) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        if part.kind != "text" {
            return Err(ApiError::invalid_param(
                format!("messages[{i}].content[{j}].type"),
                format!(
                    "Content parts of type {:?} are not supported; only \"text\" is.",
                    part.kind
                ),
            ));
        }
        let text = part.text.ok_or_else(|| {
            ApiError::invalid_param(
                format!("messages[{i}].content[{j}].text"),
                "Text parts need a `text` field.",
            )
        })?;
        texts.push(text);
    }
    Ok(texts.join("\n"))
}

/// The tools offered to the model and whether it must call one.
#[derive(Debug)]
struct OfferedTools {
    tools: Vec<Tool>,
    choice: ToolChoice,
    /// The function a named `tool_choice` forces.
    function: String,
}

/// The tools the template sees and the `tool_choice`: `auto` (the model decides), `none` (tools
/// are not offered), `required` (a call of any tool) or `{"type": "function", "function":
/// {"name": ...}}` (a call of that one); the last two are enforced by the service's grammar.
fn tools(
    tools: Option<Vec<ToolIn>>,
    choice: Option<&serde_json::Value>,
) -> Result<OfferedTools, ApiError> {
    let tools = tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.kind != "function" {
                return Err(ApiError::invalid_param(
                    format!("tools[{i}].type"),
                    format!(
                        "Tools of type {:?} are not supported; only \"function\" is.",
                        tool.kind
                    ),
                ));
            }
            Ok(Tool {
                name: tool.function.name,
                description: tool.function.description.unwrap_or_default(),
                parameters_json: tool
                    .function
                    .parameters
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bad_choice = || {
        ApiError::invalid_param(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or \
             {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        )
    };
    let (choice, function) = match choice {
        None => (ToolChoice::Auto, String::new()),
        Some(serde_json::Value::String(s)) => match s.as_str() {
            "auto" => (ToolChoice::Auto, String::new()),
            "none" => {
                return Ok(OfferedTools {
                    tools: Vec::new(),
                    choice: ToolChoice::None,
                    function: String::new(),
                });
            }
            "required" => (ToolChoice::Required, String::new()),
            _ => return Err(bad_choice()),
        },
        Some(serde_json::Value::Object(object)) => {
            let name = (object.get("type").and_then(|t| t.as_str()) == Some("function"))
                .then(|| object.get("function")?.get("name")?.as_str())
                .flatten()
                .ok_or_else(bad_choice)?;
            (ToolChoice::Function, name.to_owned())
        }
        Some(_) => return Err(bad_choice()),
    };
    if choice != ToolChoice::Auto && tools.is_empty() {
        return Err(ApiError::invalid_param(
            "tool_choice",
            "`tool_choice` \"required\" or a named function needs `tools`.",
        ));
    }
    if choice == ToolChoice::Function && !tools.iter().any(|t| t.name == function) {
        return Err(ApiError::invalid_param(
            "tool_choice",
            format!("`tool_choice` names function {function:?}, which is not in `tools`."),
        ));
    }
    Ok(OfferedTools {
        tools,
        choice,
        function,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_json;

    fn plan(body: serde_json::Value) -> Result<ChatPlan, ApiError> {
        parse_json::<ChatCompletionRequest>(body.to_string().as_bytes())?.into_plan("req-1")
    }

    fn param(body: serde_json::Value) -> String {
        match plan(body).unwrap_err() {
            ApiError::InvalidRequest { param: Some(p), .. } => p,
            other => panic!("{other:?}"),
        }
    }

    fn chat(plan: &ChatPlan) -> &ChatPrompt {
        match plan.request.prompt.as_ref().unwrap().kind.as_ref().unwrap() {
            prompt::Kind::Chat(chat) => chat,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_minimal_request_becomes_a_chat_prompt() {
        let p = plan(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert_eq!(p.request.model, "m");
        assert_eq!(p.request.request_id, "req-1");
        assert!(p.stream.is_none());
        let chat = chat(&p);
        assert!(chat.add_generation_prompt);
        assert_eq!(
            (
                chat.messages[0].role.as_str(),
                chat.messages[0].content.as_str()
            ),
            ("user", "hi")
        );
    }

    #[test]
    fn text_parts_are_joined_and_other_parts_named() {
        let p = plan(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
        )
        .unwrap();
        assert_eq!(chat(&p).messages[0].content, "a\nb");
        let image = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert_eq!(param(image), "messages[1].content[1].type");
    }

    #[test]
    fn roles_are_checked_and_developer_is_system() {
        let p = plan(
            serde_json::json!({"model": "m", "messages": [{"role": "developer", "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(chat(&p).messages[0].role, "system");
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]})
            ),
            "messages[0].role"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "messages": [{"role": "user"}]})),
            "messages[0].content"
        );
        assert_eq!(
            param(serde_json::json!({"model": "m", "messages": []})),
            "messages"
        );
        assert_eq!(
            param(
                serde_json::json!({"model": " ", "messages": [{"role": "user", "content": "x"}]})
            ),
            "model"
        );
    }

    #[test]
    fn assistant_tool_calls_round_trip() {
        let p = plan(serde_json::json!({"model": "m", "messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]}))
        .unwrap();
        let m = &chat(&p).messages;
        assert_eq!(m[0].tool_calls[0].name, "f");
        assert_eq!(m[1].tool_call_id, "c1");
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "tool", "content": "42"}]})
            ),
            "messages[0].tool_call_id"
        );
    }

    #[test]
    fn logprobs_options() {
        let base = |extra: serde_json::Value| {
            let mut body =
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let p = plan(base(
            serde_json::json!({"logprobs": true, "top_logprobs": 5}),
        ))
        .unwrap();
        assert_eq!(
            p.request.logprobs,
            Some(LogprobsOptions {
                enabled: true,
                top_logprobs: 5
            })
        );
        assert!(p.logprobs);
        assert_eq!(
            param(base(serde_json::json!({"top_logprobs": 2}))),
            "top_logprobs"
        );
        assert_eq!(
            param(base(
                serde_json::json!({"logprobs": true, "top_logprobs": 21})
            )),
            "top_logprobs"
        );
        assert_eq!(
            param(base(serde_json::json!({"max_tokens": 0}))),
            "max_tokens"
        );
        assert_eq!(
            param(base(
                serde_json::json!({"max_completion_tokens": 0, "max_tokens": 5})
            )),
            "max_completion_tokens"
        );
        assert_eq!(
            param(base(serde_json::json!({"temperature": 3}))),
            "temperature"
        );
        assert_eq!(
            param(base(
                serde_json::json!({"stream_options": {"include_usage": true}})
            )),
            "stream_options"
        );
        assert_eq!(
            param(base(serde_json::json!({"tool_choice": "required"}))),
            "tool_choice"
        );
        assert_eq!(
            param(base(serde_json::json!({"tool_choice": "sometimes",
                "tools": [{"type": "function", "function": {"name": "f"}}]}))),
            "tool_choice"
        );
        assert_eq!(
            param(base(
                serde_json::json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]})
            )),
            "tools[0].type"
        );
        let p = plan(base(serde_json::json!({"max_completion_tokens": 7, "stop": "x", "stream": true,
            "stream_options": {"include_usage": true}, "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})))
        .unwrap();
        assert_eq!(p.request.stopping.as_ref().unwrap().max_tokens, Some(7));
        assert!(p.stream.unwrap().include_usage);
        assert!(p.request.response_format.is_some());
        assert_eq!(chat(&p).tools[0].parameters_json, r#"{"type":"object"}"#);
    }

    #[test]
    fn retrieval_options_are_checked() {
        let with = |retrieval: serde_json::Value| {
            plan(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "retrieval": retrieval}),
            )
        };
        assert_eq!(
            with(serde_json::json!({})).unwrap().retrieval,
            Some(RetrievalPlan {
                top_k: 4,
                min_score: None,
                document_ids: vec![]
            })
        );
        let p = with(serde_json::json!({"top_k": 20, "min_score": 0.3, "document_ids": ["doc_1"]}))
            .unwrap();
        assert_eq!(p.retrieval.unwrap().document_ids, vec!["doc_1"]);
        for bad in [
            serde_json::json!({"top_k": 0}),
            serde_json::json!({"top_k": 21}),
        ] {
            match with(bad).unwrap_err() {
                ApiError::InvalidRequest { param, .. } => {
                    assert_eq!(param.as_deref(), Some("retrieval.top_k"))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "retrieval": {"min_score": -2}})
            ),
            "retrieval.min_score"
        );
        assert_eq!(
            param(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "retrieval": {"topk": 3}})
            ),
            "retrieval.topk"
        );
        let none =
            plan(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
                .unwrap();
        assert!(none.retrieval.is_none());
    }

    #[test]
    fn tool_choice_required_and_named_are_passed_on() {
        let with = |choice: serde_json::Value| {
            plan(
                serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tool_choice": choice,
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
            )
        };
        let p = with(serde_json::json!("required")).unwrap();
        assert_eq!(chat(&p).tool_choice(), ToolChoice::Required);
        let p = with(serde_json::json!({"type": "function", "function": {"name": "f"}})).unwrap();
        assert_eq!(chat(&p).tool_choice(), ToolChoice::Function);
        assert_eq!(chat(&p).tool_choice_function, "f");
        assert_eq!(chat(&p).tools.len(), 1);
        for bad in [
            serde_json::json!({"type": "function", "function": {"name": "g"}}),
            serde_json::json!({"type": "function"}),
            serde_json::json!(3),
        ] {
            match with(bad).unwrap_err() {
                ApiError::InvalidRequest { param, .. } => {
                    assert_eq!(param.as_deref(), Some("tool_choice"))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tool_choice_none_offers_no_tools() {
        let p = plan(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f"}}]}))
        .unwrap();
        assert!(chat(&p).tools.is_empty());
    }
}
