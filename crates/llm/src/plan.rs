//! Admission: checking a request against the model and turning it into a [`GenerationPlan`]
//! the engine can run without further decisions. Every refusal names the parameter at fault
//! and becomes a 400 at the gateway.

use std::collections::BTreeSet;

use crate::{
    error::LlmError,
    grammar::{Constraint, GrammarSpec},
    request::{GenerationRequest, Prompt, ResponseFormat, ToolChoice},
    sampler::SamplerConfig,
    served::{RenderedPrompt, ServedModel},
};

/// Most alternatives per position OpenAI allows for `top_logprobs`.
const MAX_TOP_LOGPROBS: u32 = 20;
/// Most choices one request may ask for (the gateway's limit too).
const MAX_CHOICES: u32 = 16;

/// A validated request, ready for the engine.
#[derive(Debug, Clone)]
pub struct GenerationPlan {
    pub request_id: String,
    pub prompt: RenderedPrompt,
    pub sampler: SamplerConfig,
    /// At least one; prompt plus completion fit the context.
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// End-of-sequence ids (empty with `ignore_eos`).
    pub eos_token_ids: BTreeSet<u32>,
    /// The request's own stop token ids; their text is reported as the matched stop.
    pub stop_token_ids: BTreeSet<u32>,
    pub echo: bool,
    /// Choices to generate, at least one.
    pub choices: u32,
    /// The grammar every choice's output must follow, at its start.
    pub constraint: Option<Constraint>,
    /// Parse `<tool_call>` blocks out of the output into tool calls.
    pub parse_tool_calls: bool,
}

/// Validates `request` for `model` and renders its prompt.
pub fn plan(model: &ServedModel, request: &GenerationRequest) -> Result<GenerationPlan, LlmError> {
    let choices = choices(request.sampling.n)?;
    let sampler = sampler_config(model, request)?;
    for &id in &request.stopping.stop_token_ids {
        check_token("stop_token_ids", id, model.vocab_size)?;
    }
    let prompt_param = match request.prompt {
        Prompt::Chat(_) => "messages",
        Prompt::Text(_) | Prompt::Tokens(_) => "prompt",
    };
    let prompt = model.render(&request.prompt)?;
    let max_tokens = max_tokens(
        model.context_length,
        prompt.ids.len(),
        request.stopping.max_tokens,
        prompt_param,
    )?;
    Ok(GenerationPlan {
        request_id: request.request_id.clone(),
        prompt,
        sampler,
        max_tokens,
        stop: request.stopping.stop.clone(),
        eos_token_ids: if request.stopping.ignore_eos {
            BTreeSet::new()
        } else {
            model.eos_token_ids.clone()
        },
        stop_token_ids: request.stopping.stop_token_ids.iter().copied().collect(),
        echo: request.echo,
        choices,
        constraint: constraint(model, request)?,
        parse_tool_calls: parses_tool_calls(request),
    })
}

/// `n`: 0 and 1 both mean one choice.
fn choices(n: u32) -> Result<u32, LlmError> {
    if n > MAX_CHOICES {
        return Err(LlmError::invalid(
            "n",
            format!("n must be at most {MAX_CHOICES}, got {n}"),
        ));
    }
    Ok(n.max(1))
}

/// Chat requests offering tools get the calls in their output parsed out.
fn parses_tool_calls(request: &GenerationRequest) -> bool {
    match &request.prompt {
        Prompt::Chat(chat) => !chat.tools.is_empty() && chat.tool_choice != ToolChoice::None,
        Prompt::Text(_) | Prompt::Tokens(_) => false,
    }
}

/// What the output must look like, as a grammar: from `response_format`, or from a
/// `tool_choice` that forces a call.
fn grammar_spec(
    request: &GenerationRequest,
) -> Result<Option<(GrammarSpec, &'static str)>, LlmError> {
    let forced_call = match &request.prompt {
        Prompt::Chat(chat) => match &chat.tool_choice {
            ToolChoice::Auto | ToolChoice::None => None,
            ToolChoice::Required if chat.tools.is_empty() => {
                return Err(LlmError::invalid(
                    "tool_choice",
                    "tool_choice `required` needs at least one tool in `tools`",
                ));
            }
            ToolChoice::Required => Some(GrammarSpec::AnyToolCalls {
                tools: chat.tools.clone(),
            }),
            ToolChoice::Function(name) => {
                let tool = chat.tools.iter().find(|t| &t.name == name).ok_or_else(|| {
                    LlmError::invalid(
                        "tool_choice",
                        format!("tool_choice names function `{name}`, which is not in `tools`"),
                    )
                })?;
                Some(GrammarSpec::ToolCall { tool: tool.clone() })
            }
        },
        Prompt::Text(_) | Prompt::Tokens(_) => None,
    };
    let format = match &request.response_format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(GrammarSpec::JsonObject),
        ResponseFormat::JsonSchema { schema_json, .. } => {
            let schema = serde_json::from_str(schema_json).map_err(|e| {
                LlmError::invalid(
                    "response_format",
                    format!("the JSON schema is not valid JSON: {e}"),
                )
            })?;
            Some(GrammarSpec::JsonSchema(schema))
        }
    };
    match (forced_call, format) {
        (Some(_), Some(_)) => Err(LlmError::invalid(
            "response_format",
            "a JSON response_format cannot be combined with a tool_choice that forces a tool call",
        )),
        (Some(call), None) => Ok(Some((call, "tool_choice"))),
        (None, Some(format)) => Ok(Some((format, "response_format"))),
        (None, None) => Ok(None),
    }
}

fn constraint(
    model: &ServedModel,
    request: &GenerationRequest,
) -> Result<Option<Constraint>, LlmError> {
    grammar_spec(request)?
        .map(|(spec, param)| model.grammar.compile(&spec, param))
        .transpose()
}

fn check_range(
    param: &'static str,
    value: f32,
    range: std::ops::RangeInclusive<f32>,
) -> Result<f32, LlmError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(LlmError::invalid(
            param,
            format!(
                "{param} must be between {} and {}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn check_token(param: &'static str, id: u32, vocab_size: usize) -> Result<(), LlmError> {
    if (id as usize) < vocab_size {
        Ok(())
    } else {
        Err(LlmError::invalid(
            param,
            format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
        ))
    }
}

fn sampler_config(
    model: &ServedModel,
    request: &GenerationRequest,
) -> Result<SamplerConfig, LlmError> {
    let sampling = &request.sampling;
    let defaults = model.sampling_defaults;
    let temperature = check_range(
        "temperature",
        sampling.temperature.unwrap_or(defaults.temperature),
        0.0..=2.0,
    )?;
    let top_p = sampling.top_p.unwrap_or(defaults.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(LlmError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let min_p = check_range("min_p", sampling.min_p.unwrap_or(defaults.min_p), 0.0..=1.0)?;
    let presence_penalty = check_range("presence_penalty", sampling.presence_penalty, -2.0..=2.0)?;
    let frequency_penalty =
        check_range("frequency_penalty", sampling.frequency_penalty, -2.0..=2.0)?;
    let repetition_penalty = sampling
        .repetition_penalty
        .unwrap_or(defaults.repetition_penalty);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        return Err(LlmError::invalid(
            "repetition_penalty",
            format!("repetition_penalty must be positive, got {repetition_penalty}"),
        ));
    }
    let mut logit_bias = Vec::with_capacity(sampling.logit_bias.len());
    for (&id, &bias) in &sampling.logit_bias {
        check_token("logit_bias", id, model.vocab_size)?;
        logit_bias.push((id, check_range("logit_bias", bias, -100.0..=100.0)?));
    }
    let logprobs = match request.logprobs {
        Some(n) if n > MAX_TOP_LOGPROBS => {
            return Err(LlmError::invalid(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        other => other.map(|n| n as usize),
    };
    Ok(SamplerConfig {
        temperature,
        top_k: sampling.top_k.unwrap_or(defaults.top_k) as usize,
        top_p,
        min_p,
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
        logit_bias,
        seed: sampling.seed,
        logprobs,
    })
}

/// The completion budget: as asked, or what the context leaves; refused when it cannot fit.
fn max_tokens(
    context_length: usize,
    prompt_tokens: usize,
    requested: Option<u32>,
    prompt_param: &'static str,
) -> Result<usize, LlmError> {
    if prompt_tokens == 0 {
        return Err(LlmError::invalid(prompt_param, "the prompt is empty"));
    }
    if prompt_tokens >= context_length {
        return Err(LlmError::invalid(
            prompt_param,
            format!(
                "this model's maximum context length is {context_length} tokens, \
                 but the prompt has {prompt_tokens} tokens; shorten the prompt"
            ),
        ));
    }
    match requested {
        None => Ok(context_length - prompt_tokens),
        Some(0) => Err(LlmError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        )),
        Some(n) if prompt_tokens + n as usize > context_length => Err(LlmError::invalid(
            "max_tokens",
            format!(
                "this model's maximum context length is {context_length} tokens, but {} tokens were \
                 requested ({prompt_tokens} in the prompt, {n} for the completion); reduce the prompt \
                 or max_tokens",
                prompt_tokens + n as usize
            ),
        )),
        Some(n) => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(err: LlmError) -> &'static str {
        match err {
            LlmError::InvalidArgument { param, .. } => param,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn the_budget_fits_the_context_or_is_refused() {
        assert_eq!(max_tokens(100, 10, None, "prompt").unwrap(), 90);
        assert_eq!(max_tokens(100, 10, Some(90), "prompt").unwrap(), 90);
        let err = max_tokens(100, 10, Some(91), "prompt").unwrap_err();
        assert!(
            err.to_string().contains("101 tokens were requested"),
            "{err}"
        );
        assert_eq!(param_of(err), "max_tokens");
        assert_eq!(
            param_of(max_tokens(100, 10, Some(0), "prompt").unwrap_err()),
            "max_tokens"
        );
        assert_eq!(
            param_of(max_tokens(100, 0, None, "messages").unwrap_err()),
            "messages"
        );
        assert_eq!(
            param_of(max_tokens(100, 100, None, "prompt").unwrap_err()),
            "prompt"
        );
    }

    #[test]
    fn n_zero_and_one_are_one_choice_and_too_many_are_refused() {
        assert_eq!(choices(0).unwrap(), 1);
        assert_eq!(choices(1).unwrap(), 1);
        assert_eq!(choices(MAX_CHOICES).unwrap(), MAX_CHOICES);
        assert_eq!(param_of(choices(MAX_CHOICES + 1).unwrap_err()), "n");
    }

    fn chat_with_tools(choice: ToolChoice) -> GenerationRequest {
        let chat = crate::request::ChatPrompt {
            messages: vec![crate::request::ChatMessage::new("user", "hi")],
            tools: vec![crate::request::ToolSpec {
                name: "f".into(),
                description: String::new(),
                parameters_json: r#"{"type": "object"}"#.into(),
            }],
            tool_choice: choice,
            add_generation_prompt: true,
        };
        GenerationRequest::new("m", Prompt::Chat(chat))
    }

    #[test]
    fn forced_tool_calls_and_json_formats_become_grammars() {
        let named = grammar_spec(&chat_with_tools(ToolChoice::Function("f".into()))).unwrap();
        assert!(matches!(
            named,
            Some((GrammarSpec::ToolCall { .. }, "tool_choice"))
        ));
        let unknown = grammar_spec(&chat_with_tools(ToolChoice::Function("g".into())));
        assert_eq!(param_of(unknown.unwrap_err()), "tool_choice");
        assert!(
            grammar_spec(&chat_with_tools(ToolChoice::Auto))
                .unwrap()
                .is_none()
        );
        assert!(parses_tool_calls(&chat_with_tools(ToolChoice::Auto)));
        assert!(!parses_tool_calls(&chat_with_tools(ToolChoice::None)));

        let mut both = chat_with_tools(ToolChoice::Required);
        both.response_format = ResponseFormat::JsonObject;
        assert_eq!(
            param_of(grammar_spec(&both).unwrap_err()),
            "response_format"
        );

        let mut bad_schema = GenerationRequest::new("m", Prompt::Text("x".into()));
        bad_schema.response_format = ResponseFormat::JsonSchema {
            name: "s".into(),
            schema_json: "{not json".into(),
            strict: true,
        };
        assert_eq!(
            param_of(grammar_spec(&bad_schema).unwrap_err()),
            "response_format"
        );
    }

    #[test]
    fn ranges_reject_out_of_bounds_and_nan() {
        assert!(check_range("temperature", 2.5, 0.0..=2.0).is_err());
        assert!(check_range("temperature", f32::NAN, 0.0..=2.0).is_err());
        assert_eq!(check_range("temperature", 0.0, 0.0..=2.0).unwrap(), 0.0);
        assert!(check_token("logit_bias", 10, 10).is_err());
        check_token("logit_bias", 9, 10).unwrap();
    }
}
