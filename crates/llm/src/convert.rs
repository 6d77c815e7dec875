//! Between the generated proto types and the engine's own: the only place that knows both.

use passerelle_proto::{common, llm};

use crate::{
    error::LlmError,
    request::{
        ChatMessage, ChatPrompt, FinishReason, GenerationEvent, GenerationRequest, Prompt,
        ResponseFormat, SamplingParams, StoppingParams, TokenLogprob, ToolCall, ToolCallDelta,
        ToolChoice, ToolSpec,
    },
};

/// A proto prompt as an engine prompt; a missing prompt is the caller's error.
pub fn prompt(prompt: Option<llm::Prompt>) -> Result<Prompt, LlmError> {
    use llm::prompt::Kind;
    match prompt.and_then(|p| p.kind) {
        Some(Kind::Text(text)) => Ok(Prompt::Text(text)),
        Some(Kind::Chat(chat)) => Ok(Prompt::Chat(ChatPrompt {
            tool_choice: tool_choice(chat.tool_choice(), chat.tool_choice_function)?,
            messages: chat.messages.into_iter().map(message).collect(),
            tools: chat
                .tools
                .into_iter()
                .map(|t| ToolSpec {
                    name: t.name,
                    description: t.description,
                    parameters_json: t.parameters_json,
                })
                .collect(),
            add_generation_prompt: chat.add_generation_prompt,
        })),
        Some(Kind::Tokens(tokens)) => Ok(Prompt::Tokens(tokens.ids)),
        None => Err(LlmError::invalid("prompt", "the request has no prompt")),
    }
}

fn tool_choice(mode: llm::ToolChoice, function: String) -> Result<ToolChoice, LlmError> {
    Ok(match mode {
        llm::ToolChoice::Auto => ToolChoice::Auto,
        llm::ToolChoice::None => ToolChoice::None,
        llm::ToolChoice::Required => ToolChoice::Required,
        llm::ToolChoice::Function if function.is_empty() => {
            return Err(LlmError::invalid(
                "tool_choice",
                "tool_choice `function` needs the function's name",
            ));
        }
        llm::ToolChoice::Function => ToolChoice::Function(function),
    })
}

fn message(m: common::ChatMessage) -> ChatMessage {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    ChatMessage {
        role: m.role,
        content: m.content,
        name: non_empty(m.name),
        tool_call_id: non_empty(m.tool_call_id),
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments_json: c.arguments_json,
            })
            .collect(),
    }
}

/// A proto `GenerateRequest` as an engine request.
pub fn generate_request(request: llm::GenerateRequest) -> Result<GenerationRequest, LlmError> {
    let sampling = request.sampling.unwrap_or_default();
    let stopping = request.stopping.unwrap_or_default();
    let response_format = match request.response_format.and_then(|f| f.kind) {
        None | Some(llm::response_format::Kind::Text(_)) => ResponseFormat::Text,
        Some(llm::response_format::Kind::JsonObject(_)) => ResponseFormat::JsonObject,
        Some(llm::response_format::Kind::JsonSchema(s)) => ResponseFormat::JsonSchema {
            name: s.name,
            schema_json: s.schema_json,
            strict: s.strict,
        },
    };
    Ok(GenerationRequest {
        model: request.model,
        prompt: prompt(request.prompt)?,
        sampling: SamplingParams {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            min_p: sampling.min_p,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            repetition_penalty: sampling.repetition_penalty,
            logit_bias: sampling.logit_bias.into_iter().collect(),
            seed: sampling.seed,
            n: sampling.n,
        },
        stopping: StoppingParams {
            max_tokens: stopping.max_tokens,
            stop: stopping.stop,
            stop_token_ids: stopping.stop_token_ids,
            ignore_eos: stopping.ignore_eos,
        },
        logprobs: request
            .logprobs
            .filter(|l| l.enabled)
            .map(|l| l.top_logprobs),
        response_format,
        request_id: request.request_id,
        echo: request.echo,
    })
}

/// An engine event as a proto stream message.
pub fn event(event: GenerationEvent, model: &str) -> llm::GenerateResponse {
    use llm::generate_response::Event;
    let event = match event {
        GenerationEvent::Started { prompt_tokens } => Event::Started(llm::Started {
            prompt_tokens,
            model: model.to_owned(),
        }),
        GenerationEvent::Delta(delta) => Event::Delta(llm::TokenDelta {
            index: delta.index,
            text: delta.text,
            token_ids: delta.token_ids,
            logprobs: delta.logprobs.into_iter().map(logprob).collect(),
            tool_calls: delta.tool_calls.into_iter().map(tool_call).collect(),
        }),
        GenerationEvent::Finished(finished) => Event::Finished(llm::Finished {
            index: finished.index,
            reason: match finished.reason {
                FinishReason::Stop => llm::FinishReason::Stop,
                FinishReason::Length => llm::FinishReason::Length,
                FinishReason::ToolCalls => llm::FinishReason::ToolCalls,
            } as i32,
            usage: Some(common::Usage {
                prompt_tokens: finished.usage.prompt_tokens,
                completion_tokens: finished.usage.completion_tokens,
                total_tokens: finished.usage.total_tokens(),
                cached_prompt_tokens: 0,
            }),
            matched_stop: finished.matched_stop.unwrap_or_default(),
        }),
    };
    llm::GenerateResponse { event: Some(event) }
}

fn tool_call(delta: ToolCallDelta) -> llm::ToolCallDelta {
    llm::ToolCallDelta {
        index: delta.index,
        id: delta.call.id,
        name: delta.call.name,
        arguments: delta.call.arguments_json,
    }
}

fn logprob(lp: TokenLogprob) -> llm::TokenLogprob {
    llm::TokenLogprob {
        token: lp.token,
        bytes: lp.bytes,
        logprob: lp.logprob,
        top_logprobs: lp
            .top
            .into_iter()
            .map(|t| llm::TopLogprob {
                token: t.token,
                bytes: t.bytes,
                logprob: t.logprob,
                token_id: t.token_id,
            })
            .collect(),
        token_id: lp.token_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_prompt_is_invalid() {
        let err = generate_request(llm::GenerateRequest::default()).unwrap_err();
        assert!(matches!(
            err,
            LlmError::InvalidArgument {
                param: "prompt",
                ..
            }
        ));
    }

    #[test]
    fn logprobs_are_requested_only_when_enabled() {
        let mut request = llm::GenerateRequest {
            prompt: Some(llm::Prompt {
                kind: Some(llm::prompt::Kind::Text("hi".into())),
            }),
            logprobs: Some(llm::LogprobsOptions {
                enabled: false,
                top_logprobs: 3,
            }),
            ..Default::default()
        };
        assert_eq!(generate_request(request.clone()).unwrap().logprobs, None);
        request.logprobs = Some(llm::LogprobsOptions {
            enabled: true,
            top_logprobs: 3,
        });
        assert_eq!(generate_request(request).unwrap().logprobs, Some(3));
    }
}
