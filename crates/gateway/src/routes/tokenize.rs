//! `POST /tokenize` and `POST /detokenize`, in vLLM's shape: what a prompt costs in tokens, and
//! the text of token ids, for the llm service's models. The prompt is rendered exactly as a
//! generation would render it (chat template included), so `count` is what usage will report.

use axum::Json;
use axum::extract::State;
use passerelle_proto::llm::{ChatPrompt, Prompt, TokenIds, TokenizeRequest, prompt};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::RawJson;
use crate::extract::parse_json;
use crate::openai::chat::MessageIn;
use crate::routing::table::Target;
use crate::state::AppState;

/// Most token ids one `/detokenize` call takes.
const MAX_DETOKENIZE_IDS: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeIn {
    model: String,
    prompt: Option<String>,
    messages: Option<Vec<MessageIn>>,
    /// Chat only: end the rendering with the assistant's header, as a generation does.
    add_generation_prompt: Option<bool>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TokenizeOut {
    count: usize,
    /// The model's context length; 0 when the service does not say.
    max_model_len: u32,
    tokens: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeIn {
    model: String,
    tokens: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DetokenizeOut {
    prompt: String,
}

pub(crate) async fn tokenize(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<RawJson, ApiError>,
) -> Result<Json<TokenizeOut>, ApiError> {
    let RawJson(body) = body?;
    let input: TokenizeIn = parse_json(&body)?;
    let kind = match (input.prompt, input.messages) {
        (Some(text), None) => {
            if input.add_generation_prompt.is_some() {
                return Err(ApiError::invalid_param(
                    "add_generation_prompt",
                    "`add_generation_prompt` applies to `messages` only.",
                ));
            }
            prompt::Kind::Text(text)
        }
        (None, Some(messages)) if !messages.is_empty() => {
            let messages = messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| m.into_proto(i))
                .collect::<Result<Vec<_>, _>>()?;
            prompt::Kind::Chat(ChatPrompt {
                messages,
                add_generation_prompt: input.add_generation_prompt.unwrap_or(true),
                ..ChatPrompt::default()
            })
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must hold at least one message.",
            ));
        }
        _ => {
            return Err(ApiError::invalid_request(
                "Give exactly one of `prompt` (text) and `messages` (a conversation).",
            ));
        }
    };
    let model = local_model(&state, &principal, &input.model)?;
    let response = state
        .llm()
        .tokenize(TokenizeRequest {
            model: model.clone(),
            prompt: Some(Prompt { kind: Some(kind) }),
        })
        .await?;
    let max_model_len = state
        .catalog()
        .models()
        .await
        .ok()
        .and_then(|models| {
            models
                .iter()
                .find(|m| m.id == model)
                .map(|m| m.context_length)
        })
        .unwrap_or(0);
    Ok(Json(TokenizeOut {
        count: response.ids.len(),
        max_model_len,
        tokens: response.ids,
    }))
}

pub(crate) async fn detokenize(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<RawJson, ApiError>,
) -> Result<Json<DetokenizeOut>, ApiError> {
    let RawJson(body) = body?;
    let input: DetokenizeIn = parse_json(&body)?;
    if input.tokens.len() > MAX_DETOKENIZE_IDS {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("At most {MAX_DETOKENIZE_IDS} token ids per call."),
        ));
    }
    let model = local_model(&state, &principal, &input.model)?;
    let response = state
        .llm()
        .tokenize(TokenizeRequest {
            model,
            prompt: Some(Prompt {
                kind: Some(prompt::Kind::Tokens(TokenIds { ids: input.tokens })),
            }),
        })
        .await?;
    Ok(Json(DetokenizeOut {
        prompt: response.text,
    }))
}

/// The llm service's name for `requested` (alias resolved), which the key must be allowed.
/// Upstream models have no tokenizer here.
fn local_model(
    state: &AppState,
    principal: &Principal,
    requested: &str,
) -> Result<String, ApiError> {
    if requested.trim().is_empty() {
        return Err(ApiError::invalid_param(
            "model",
            "`model` must not be empty.",
        ));
    }
    let table = state.routes();
    let model = table.resolve(requested);
    principal.check_model(model)?;
    match table.target(model) {
        Target::Local if table.cascade(model).is_none() => Ok(model.to_owned()),
        _ => Err(ApiError::invalid_param(
            "model",
            format!(
                "{requested:?} is not served by this gateway's llm service, so it cannot be tokenized here."
            ),
        )),
    }
}
