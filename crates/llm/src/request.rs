//! A generation request and the events that answer it, as plain Rust types: the engine's API.
//! The gRPC service converts to and from the generated proto types at its edge.

use std::collections::BTreeMap;

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized as is (completions API).
    Text(String),
    /// A conversation rendered with the model's chat template.
    Chat(ChatPrompt),
    /// Pre-tokenized input.
    Tokens(Vec<u32>),
}

/// A conversation to render with the chat template.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatPrompt {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    /// Whether and which of `tools` the model must call.
    pub tool_choice: ToolChoice,
    /// Open an assistant turn after the last message.
    pub add_generation_prompt: bool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatMessage {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    pub content: String,
    pub name: Option<String>,
    /// For role "tool": the call this message answers.
    pub tool_call_id: Option<String>,
    /// For role "assistant": the calls the model made.
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    /// A message with just a role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// A function call the model made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Arguments as a serialised JSON object.
    pub arguments_json: String,
}

/// Whether the model must call a tool (OpenAI `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model decides; calls in its output are parsed out.
    #[default]
    Auto,
    /// Tools are neither offered to the model nor parsed out of its output.
    None,
    /// The output is one or more tool calls (enforced with a grammar).
    Required,
    /// The output is one call of this function (enforced with a grammar).
    Function(String),
}

/// A tool call parsed out of the generated text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolCallDelta {
    /// Position of the call among the choice's calls.
    pub index: u32,
    pub call: ToolCall,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments, serialised.
    pub parameters_json: String,
}

/// Sampling controls; `None` takes the model's default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: BTreeMap<u32, f32>,
    pub seed: Option<u64>,
    /// Completions to generate; 0 and 1 both mean one.
    pub n: u32,
}

/// When to stop.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoppingParams {
    /// Most tokens to generate; `None` means up to the context length.
    pub max_tokens: Option<u32>,
    /// Strings that end the generation; never part of the output.
    pub stop: Vec<String>,
    /// Token ids that end the generation, besides the model's end-of-sequence tokens.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// Output constraints.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema_json: String,
        strict: bool,
    },
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The served model's id.
    pub model: String,
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    pub stopping: StoppingParams,
    /// `Some(n)`: return each token's logprob and its `n` most likely alternatives (0..=20).
    pub logprobs: Option<u32>,
    pub response_format: ResponseFormat,
    /// Correlation id from the gateway, for logs and traces.
    pub request_id: String,
    /// Start the output with the prompt text.
    pub echo: bool,
}

impl GenerationRequest {
    /// A request for `model` with default settings.
    pub fn new(model: impl Into<String>, prompt: Prompt) -> Self {
        Self {
            model: model.into(),
            prompt,
            sampling: SamplingParams::default(),
            stopping: StoppingParams::default(),
            logprobs: None,
            response_format: ResponseFormat::Text,
            request_id: String::new(),
            echo: false,
        }
    }
}

/// One event of a generation stream: `Started`, then for each choice in turn its `Delta`s and
/// its `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    Started { prompt_tokens: u32 },
    Delta(TokenDelta),
    Finished(Finished),
}

/// Text generated since the previous delta.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenDelta {
    /// Which of the `n` choices this belongs to.
    pub index: u32,
    /// Complete UTF-8; may be empty while text is held back.
    pub text: String,
    pub token_ids: Vec<u32>,
    /// One per token id, when logprobs were requested.
    pub logprobs: Vec<TokenLogprob>,
    /// Tool calls completed by this delta (chat requests with tools); their text is not in
    /// `text`.
    pub tool_calls: Vec<ToolCallDelta>,
}

/// The log probability of one generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    /// The token as text (lossy when it holds part of a character).
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely alternatives, most likely first.
    pub top: Vec<TopLogprob>,
}

/// An alternative token at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token_id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop string or a stop token.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The model stopped after calling tools.
    ToolCalls,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Every sampled token, the one that stopped generation included.
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total_tokens(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The last event of a choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Which of the `n` choices ended.
    pub index: u32,
    pub reason: FinishReason,
    /// Usage of the request so far: prompt tokens once, completion tokens of every choice
    /// finished up to this one. On the last choice, the whole request's.
    pub usage: Usage,
    /// The stop string, or the stop token's text, that ended generation.
    pub matched_stop: Option<String>,
}
