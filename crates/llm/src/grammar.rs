//! Constrained decoding with llguidance: JSON output (`response_format`) and forced tool calls
//! compiled into grammars whose token masks are applied to the logits before each sampling step.
//!
//! The token trie is built once per model from the tokenizer's own token bytes
//! ([`GrammarCompiler::new`]); each request compiles its grammar on the caller's thread
//! ([`GrammarCompiler::compile`]) so that a schema the compiler cannot enforce is refused as a
//! bad request before it is queued, and the engine thread only steps a [`Constraint`].

use std::{collections::BTreeSet, fmt, sync::Arc};

use llguidance::{
    Matcher, ParserFactory,
    api::{ParserLimits, TopLevelGrammar},
    toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv},
};
use serde_json::{Value, json};

use crate::{error::LlmError, request::ToolSpec, tokenizer::TextTokenizer};

/// Compact JSON: no free whitespace, so that even a model with no idea of JSON (random
/// weights) cannot pad its output with blanks until it runs out of tokens.
fn compact() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"})
}

/// The output shape a request asks for, before compilation.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this schema.
    JsonSchema(Value),
    /// One call of `tool`, in the chat template's `<tool_call>` tags.
    ToolCall { tool: ToolSpec },
    /// One or more calls of any of the tools.
    AnyToolCalls { tools: Vec<ToolSpec> },
}

/// Compiles grammars for one model: the token trie and the llguidance factory over it.
#[derive(Clone)]
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
}

impl fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field(
                "vocab_size",
                &self.factory.tok_env().tok_trie().vocab_size(),
            )
            .finish()
    }
}

/// Why the token trie could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare constrained decoding: {0}")]
pub struct GrammarSetupError(String);

impl GrammarCompiler {
    /// Builds the token trie of a vocabulary `vocab_size` wide (the logits' width: ids beyond
    /// the tokenizer are never allowed) whose generation ends with any of `eos_token_ids`.
    pub fn new(
        tokenizer: &TextTokenizer,
        vocab_size: usize,
        eos_token_ids: &BTreeSet<u32>,
    ) -> Result<Self, GrammarSetupError> {
        let pieces = tokenizer.pieces();
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let known = (id as usize) < pieces.len();
                if !known || pieces.is_special(id) {
                    // Special tokens (and padding rows) carry a marker byte: no text spells them.
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    if known {
                        word.extend_from_slice(pieces.bytes(id));
                    } else {
                        word.extend_from_slice(format!("<[{id}]>").as_bytes());
                    }
                    word
                } else {
                    pieces.bytes(id).to_vec()
                }
            })
            .collect();
        let eos: Vec<TokenId> = eos_token_ids
            .iter()
            .copied()
            .filter(|id| (*id as usize) < vocab_size)
            .collect();
        let Some(&first_eos) = eos.first() else {
            return Err(GrammarSetupError(
                "the model has no end-of-sequence token".to_owned(),
            ));
        };
        let info = TokRxInfo::new(
            u32::try_from(vocab_size)
                .map_err(|_| GrammarSetupError("vocabulary too large".into()))?,
            first_eos,
        );
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(&eos);
        }
        let env: TokEnv = Arc::new(TrieEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| GrammarSetupError(e.to_string()))?;
        // Errors go back to the client; llguidance's own logging would print to stderr.
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Self {
            factory: Arc::new(factory),
        })
    }

    /// Compiles `spec` into a fresh constraint. A schema or tool definition the compiler
    /// cannot enforce is an `InvalidArgument` about `param`.
    pub fn compile(&self, spec: &GrammarSpec, param: &'static str) -> Result<Constraint, LlmError> {
        let grammar = grammar(spec, param)?;
        let parser = self.factory.create_parser(grammar).map_err(|e| {
            LlmError::invalid(
                param,
                format!("cannot enforce this {}: {e}", describe(spec)),
            )
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(err) = matcher.get_error() {
            return Err(LlmError::invalid(
                param,
                format!("cannot enforce this {}: {err}", describe(spec)),
            ));
        }
        Ok(Constraint { matcher })
    }
}

fn describe(spec: &GrammarSpec) -> &'static str {
    match spec {
        GrammarSpec::JsonObject => "response format",
        GrammarSpec::JsonSchema(_) => "JSON schema",
        GrammarSpec::ToolCall { .. } | GrammarSpec::AnyToolCalls { .. } => "tool definition",
    }
}

/// The llguidance grammar of a spec.
fn grammar(spec: &GrammarSpec, param: &'static str) -> Result<TopLevelGrammar, LlmError> {
    let with_options = |schema: &Value| -> Result<Value, LlmError> {
        let mut schema = schema.clone();
        let Some(object) = schema.as_object_mut() else {
            return Err(LlmError::invalid(
                param,
                "the JSON schema must be a JSON object",
            ));
        };
        object.insert("x-guidance".to_owned(), compact());
        Ok(schema)
    };
    Ok(match spec {
        GrammarSpec::JsonObject => {
            TopLevelGrammar::from_json_schema(with_options(&json!({"type": "object"}))?)
        }
        GrammarSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_options(schema)?),
        GrammarSpec::ToolCall { tool } => {
            let call = with_options(&call_schema(tool, param)?)?;
            TopLevelGrammar::from_lark(format!(
                "start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {call}\n"
            ))
        }
        GrammarSpec::AnyToolCalls { tools } => {
            let calls = tools
                .iter()
                .map(|tool| call_schema(tool, param))
                .collect::<Result<Vec<_>, _>>()?;
            let call = with_options(&json!({"anyOf": calls}))?;
            TopLevelGrammar::from_lark(format!(
                "start: block (\"\\n\" block)*\nblock: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {call}\n"
            ))
        }
    })
}

/// `{"name": <the tool's name>, "arguments": <its parameters>}`, the JSON inside the tags.
fn call_schema(tool: &ToolSpec, param: &'static str) -> Result<Value, LlmError> {
    let parameters = if tool.parameters_json.trim().is_empty() {
        json!({"type": "object"})
    } else {
        serde_json::from_str::<Value>(&tool.parameters_json).map_err(|e| {
            LlmError::invalid(
                param,
                format!("the parameters of tool `{}` are not JSON: {e}", tool.name),
            )
        })?
    };
    Ok(json!({
        "type": "object",
        "properties": {
            "name": {"const": tool.name},
            "arguments": parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    }))
}

/// One sequence's position in its grammar.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Sets the logits of every token the grammar forbids next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), LlmError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(grammar_failure)?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past `token`; true once the grammar is complete (only the end may follow).
    pub fn commit(&mut self, token: u32) -> Result<bool, LlmError> {
        if self.matcher.is_stopped() {
            return Ok(true);
        }
        self.matcher.consume_token(token).map_err(grammar_failure)?;
        Ok(self.matcher.is_stopped())
    }
}

fn grammar_failure(err: impl fmt::Display) -> LlmError {
    LlmError::Internal(format!("constrained decoding failed: {err}"))
}

/// The token trie plus the model's tokenizer, for the text llguidance needs tokenized.
struct TrieEnv {
    trie: TokTrie,
    tokenizer: TextTokenizer,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}
