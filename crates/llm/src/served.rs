//! What request handlers share with the engine once a model is loaded: its tokenizer, chat
//! template and limits, all immutable, so prompts are rendered and checked on the caller's
//! thread and a Tokenize call never waits behind a generation.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::{
    error::{LlmError, LoadError},
    grammar::GrammarCompiler,
    model::{ModelAssets, ModelFormat},
    request::{Prompt, ToolChoice},
    sampler::SamplingDefaults,
    template::{ChatTemplate, TemplateError},
    tokenizer::TextTokenizer,
};

/// A loaded model as seen from outside the engine thread.
#[derive(Debug)]
pub struct ServedModel {
    pub id: String,
    pub format: ModelFormat,
    pub context_length: usize,
    /// Width of the logits; token ids at or beyond it are invalid.
    pub vocab_size: usize,
    /// When loading finished, seconds since the Unix epoch.
    pub created_unix: i64,
    pub tokenizer: TextTokenizer,
    pub template: Option<ChatTemplate>,
    pub eos_token_ids: BTreeSet<u32>,
    pub sampling_defaults: SamplingDefaults,
    /// Compiles the grammars of constrained requests over this model's tokens.
    pub grammar: GrammarCompiler,
}

/// A prompt as text and token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPrompt {
    /// The text that was tokenized (after the chat template).
    pub text: String,
    pub ids: Vec<u32>,
}

impl ServedModel {
    /// Compiles the chat template and records the model's limits.
    pub fn new(id: String, assets: ModelAssets, created_unix: i64) -> Result<Self, LoadError> {
        let template = assets
            .chat_template
            .map(|source| ChatTemplate::new(source, assets.bos_token, assets.eos_token))
            .transpose()
            .map_err(LoadError::Template)?;
        let vocab_size = assets.vocab_size.max(assets.tokenizer.pieces().len());
        let grammar = GrammarCompiler::new(&assets.tokenizer, vocab_size, &assets.eos_token_ids)?;
        Ok(Self {
            id,
            format: assets.format,
            context_length: assets.context_length,
            vocab_size,
            created_unix,
            tokenizer: assets.tokenizer,
            template,
            eos_token_ids: assets.eos_token_ids,
            sampling_defaults: assets.sampling_defaults,
            grammar,
        })
    }

    /// Renders (chat) and tokenizes `prompt` exactly as generation will see it.
    pub fn render(&self, prompt: &Prompt) -> Result<RenderedPrompt, LlmError> {
        match prompt {
            Prompt::Text(text) => {
                let ids = self.encode(text, true, "prompt")?;
                Ok(RenderedPrompt {
                    text: text.clone(),
                    ids,
                })
            }
            Prompt::Chat(chat) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    LlmError::invalid(
                        "messages",
                        format!(
                            "model `{}` has no chat template; send a text prompt (completions API) instead",
                            self.id
                        ),
                    )
                })?;
                // `tool_choice: none`: the model is not told about the tools at all.
                let without_tools;
                let chat = if chat.tool_choice == ToolChoice::None && !chat.tools.is_empty() {
                    without_tools = crate::request::ChatPrompt {
                        tools: Vec::new(),
                        ..chat.clone()
                    };
                    &without_tools
                } else {
                    chat
                };
                if !chat.tools.is_empty() && !template.supports_tools() {
                    return Err(LlmError::invalid(
                        "tools",
                        format!(
                            "the chat template of model `{}` does not support tools",
                            self.id
                        ),
                    ));
                }
                // Message text is data, never template structure: no special tokens from it.
                let neutralized: Vec<_> = chat
                    .messages
                    .iter()
                    .map(|message| self.tokenizer.neutralize(&message.content))
                    .collect();
                let copy;
                let chat = if neutralized.iter().any(|text| matches!(text, Cow::Owned(_))) {
                    let mut edited = chat.clone();
                    for (message, text) in edited.messages.iter_mut().zip(neutralized) {
                        if let Cow::Owned(text) = text {
                            message.content = text;
                        }
                    }
                    copy = edited;
                    &copy
                } else {
                    chat
                };
                let text = template.render(chat).map_err(|err| match err {
                    TemplateError::ToolParameters { .. } => {
                        LlmError::invalid("tools", err.to_string())
                    }
                    TemplateError::Render(_) => LlmError::invalid("messages", err.to_string()),
                })?;
                // The template already placed every special token it wants.
                let ids = self.encode(&text, false, "messages")?;
                Ok(RenderedPrompt { text, ids })
            }
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|id| **id as usize >= self.vocab_size) {
                    return Err(LlmError::invalid(
                        "prompt",
                        format!(
                            "token id {bad} is outside the vocabulary of {} tokens",
                            self.vocab_size
                        ),
                    ));
                }
                let text = self.tokenizer.decode(ids, false).map_err(|e| {
                    LlmError::invalid("prompt", format!("cannot decode the token ids: {e}"))
                })?;
                Ok(RenderedPrompt {
                    text,
                    ids: ids.clone(),
                })
            }
        }
    }

    fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
        param: &'static str,
    ) -> Result<Vec<u32>, LlmError> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| LlmError::invalid(param, format!("cannot tokenize the prompt: {e}")))
    }
}
