//! The Llama Guard 3 layer: the model reads the conversation under the hazard categories and
//! answers `safe`, or `unsafe` and the violated categories on a second line.
//!
//! The model is a Llama decoder loaded by `passerelle-llm` (GGUF such as the Q4_K_M that
//! deployments use, or a Hugging Face directory). One check is one prefill: the probability of
//! `unsafe` is read from the logits of the first answer token, and only an unsafe answer is
//! decoded further for its categories. Llama Guard 3's template ends right after the assistant
//! header, so the model's first token is the blank line that separates header and content
//! (`\n\n`); it is appended to the prompt and prefilled with it, and the decision read at the
//! token after it, saving a decode step. Should the model still want whitespace, that is fed
//! back too.

pub mod prompt;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use candle_core::Device;
use passerelle_llm::{
    ModelFiles,
    model::{self, Architecture, CausalLm, KvCache},
    tokenizer::TextTokenizer,
};
use passerelle_model_runtime::DeviceChoice;
use tokio::sync::Mutex;

use crate::{
    error::SafetyError,
    layer::{CheckLayer, LayerInfo},
    verdict::{CheckInput, LayerKind, LayerOutcome, Violation},
};

pub use prompt::{
    Conversation, HazardCategory, Speaker, default_categories, render, render_prefix, taxonomy,
};

/// Tokens decoded after `unsafe` to read the categories (`\nS1,S10` and the end of turn).
const MAX_CATEGORY_TOKENS: usize = 16;
/// Whitespace tokens skipped before the decision token.
const MAX_LEADING_WHITESPACE: usize = 2;
/// Prompt prefixes kept (one per side and category list in use).
const MAX_PREFIXES: usize = 4;

/// The keys and values of a prompt prefix, computed once and started from by every check that
/// shares it.
struct CachedPrefix {
    assessed: Speaker,
    categories: Vec<HazardCategory>,
    ids: Vec<u32>,
    kv: KvCache,
}

/// How the service runs the Llama Guard layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaGuardConfig {
    /// A GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    pub options: GuardOptions,
    pub device: DeviceChoice,
}

impl LlamaGuardConfig {
    /// The model at `model` with the default options, on the CPU.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            options: GuardOptions::default(),
            device: DeviceChoice::Cpu,
        }
    }
}

/// How the model judges.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardOptions {
    /// The categories the model is asked about, in prompt order.
    pub categories: Vec<HazardCategory>,
    /// `None`: unsafe when `unsafe` is the model's most likely first word, as Meta's reference
    /// reads it. `Some(t)`: unsafe when its probability is at least `t`.
    pub threshold: Option<f32>,
    /// Longest prompt, in tokens; longer conversations lose their oldest turns, then the middle
    /// of the assessed one.
    pub max_prompt_tokens: usize,
}

impl Default for GuardOptions {
    fn default() -> Self {
        Self {
            categories: default_categories(),
            threshold: None,
            max_prompt_tokens: 4096,
        }
    }
}

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LlamaGuardError {
    #[error(transparent)]
    Load(#[from] passerelle_llm::LoadError),
    #[error(transparent)]
    Device(#[from] passerelle_model_runtime::DeviceError),
    #[error("a Llama Guard model is a Llama; this one is {0}")]
    NotLlama(&'static str),
    #[error("the model's vocabulary has no `{0}` token, so it is not a Llama Guard model")]
    MissingToken(&'static str),
    #[error("model inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// The model's answer to one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// Probability of `unsafe` as the first word of the answer.
    pub unsafe_probability: f32,
    pub unsafe_: bool,
    /// Category codes the model named, in its order, those not configured left out.
    pub categories: Vec<String>,
}

/// A loaded Llama Guard model: weights, tokenizer and the ids it answers with.
pub struct LlamaGuard {
    model: CausalLm,
    tokenizer: TextTokenizer,
    safe_id: u32,
    unsafe_id: u32,
    /// `\n\n` when the vocabulary has it as one token: the header's blank line.
    blank_line: Option<u32>,
    end_ids: Vec<u32>,
    context_length: usize,
    format: String,
    source: String,
    prefixes: Vec<CachedPrefix>,
}

impl std::fmt::Debug for LlamaGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaGuard")
            .field("source", &self.source)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl LlamaGuard {
    /// Loads a GGUF file or a Hugging Face directory onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, LlamaGuardError> {
        let files = ModelFiles::resolve(path)?;
        let loaded = model::load(&files, device)?;
        if loaded.assets.architecture != Architecture::Llama {
            return Err(LlamaGuardError::NotLlama(
                loaded.assets.architecture.as_str(),
            ));
        }
        let tokenizer = loaded.assets.tokenizer;
        let single = |word: &'static str| -> Result<u32, LlamaGuardError> {
            match tokenizer.encode(word, false) {
                Ok(ids) if ids.len() == 1 => Ok(ids[0]),
                _ => Err(LlamaGuardError::MissingToken(word)),
            }
        };
        let safe_id = single("safe")?;
        let unsafe_id = single("unsafe")?;
        let blank_line = match tokenizer.encode("\n\n", false) {
            Ok(ids) if ids.len() == 1 => Some(ids[0]),
            _ => None,
        };
        let mut end_ids: Vec<u32> = loaded.assets.eos_token_ids.iter().copied().collect();
        end_ids.extend(tokenizer.token_id("<|eot_id|>"));
        Ok(Self {
            model: loaded.model,
            tokenizer,
            safe_id,
            unsafe_id,
            blank_line,
            end_ids,
            context_length: loaded.assets.context_length,
            format: loaded.assets.format.as_str().to_owned(),
            source: path.display().to_string(),
            prefixes: Vec::new(),
        })
    }

    /// The ids of `text` as the model reads it (special-token text included, no BOS added:
    /// the prompt spells `<|begin_of_text|>` itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlamaGuardError> {
        self.tokenizer
            .encode(text, false)
            .map_err(|e| LlamaGuardError::Tokenizer(e.to_string()))
    }

    /// The prompt ids for `conversation`, shortened to `max_tokens`.
    fn prompt_ids(
        &self,
        mut conversation: Conversation,
        categories: &[HazardCategory],
        max_tokens: usize,
    ) -> Result<Vec<u32>, LlamaGuardError> {
        let budget = max_tokens.min(self.context_length.saturating_sub(MAX_CATEGORY_TOKENS + 4));
        loop {
            let ids = self.encode(&render(&conversation, categories))?;
            if ids.len() <= budget {
                return Ok(ids);
            }
            if conversation.drop_oldest_exchange() {
                continue;
            }
            let last_chars = conversation.turns().last().map_or(0, |t| t.chars().count());
            let over = ids.len() - budget;
            // Cut by the share of tokens over, plus a margin, until it fits.
            let keep = last_chars.saturating_sub(last_chars * over / ids.len().max(1) + 16);
            if keep == 0 || keep >= last_chars {
                return Err(LlamaGuardError::Tokenizer(format!(
                    "the categories alone take more than {budget} tokens"
                )));
            }
            conversation.shorten_last_turn(keep);
        }
    }

    /// Runs the model on `conversation` and reads its answer.
    pub fn assess(
        &mut self,
        conversation: Conversation,
        config: &GuardOptions,
        categories: &[HazardCategory],
    ) -> Result<Assessment, LlamaGuardError> {
        let assessed = conversation.assessed();
        let mut ids = self.prompt_ids(conversation, categories, config.max_prompt_tokens)?;
        ids.extend(self.blank_line);
        let mut logits = self.prefill(&ids, assessed, categories)?;
        let mut pos = ids.len();
        for _ in 0..MAX_LEADING_WHITESPACE {
            let top = argmax(&logits);
            if top == self.safe_id || top == self.unsafe_id || !self.is_whitespace(top) {
                break;
            }
            logits = self.model.forward(&[top], pos)?;
            pos += 1;
        }
        let unsafe_probability = probability(&logits, self.unsafe_id);
        let unsafe_ = match config.threshold {
            Some(threshold) => unsafe_probability >= threshold,
            None => argmax(&logits) == self.unsafe_id,
        };
        let mut assessment = Assessment {
            unsafe_probability,
            unsafe_,
            categories: Vec::new(),
        };
        if unsafe_ {
            let answer = self.decode_after(self.unsafe_id, pos)?;
            assessment.categories = parse_categories(&answer, categories);
        }
        Ok(assessment)
    }

    /// Runs the prompt `ids` and returns the last position's logits, starting from the cached
    /// prefix of its side and categories when the ids begin with it.
    fn prefill(
        &mut self,
        ids: &[u32],
        assessed: Speaker,
        categories: &[HazardCategory],
    ) -> Result<Vec<f32>, LlamaGuardError> {
        let index = match self
            .prefixes
            .iter()
            .position(|p| p.assessed == assessed && p.categories == categories)
        {
            Some(index) => index,
            None => self.cache_prefix(assessed, categories)?,
        };
        let prefix = &self.prefixes[index];
        if ids.len() > prefix.ids.len() && ids.starts_with(&prefix.ids) {
            let start = prefix.ids.len();
            self.model.restore_kv(&prefix.kv);
            return Ok(self.model.forward(&ids[start..], start)?);
        }
        self.model.clear_kv_cache();
        Ok(self.model.forward(ids, 0)?)
    }

    /// Computes and keeps the prefix of `assessed` under `categories`, returning its index.
    fn cache_prefix(
        &mut self,
        assessed: Speaker,
        categories: &[HazardCategory],
    ) -> Result<usize, LlamaGuardError> {
        let ids = self.encode(&render_prefix(assessed, categories))?;
        self.model.clear_kv_cache();
        self.model.forward(&ids, 0)?;
        let kv = self.model.kv_snapshot();
        if self.prefixes.len() == MAX_PREFIXES {
            self.prefixes.remove(0);
        }
        self.prefixes.push(CachedPrefix {
            assessed,
            categories: categories.to_vec(),
            ids,
            kv,
        });
        Ok(self.prefixes.len() - 1)
    }

    /// Greedy tokens after feeding `first` at `pos`, until the end of the turn.
    fn decode_after(&mut self, first: u32, mut pos: usize) -> Result<String, LlamaGuardError> {
        let mut generated = Vec::new();
        let mut next = first;
        for _ in 0..MAX_CATEGORY_TOKENS {
            let logits = self.model.forward(&[next], pos)?;
            pos += 1;
            next = argmax(&logits);
            if self.end_ids.contains(&next) {
                break;
            }
            generated.push(next);
        }
        self.tokenizer
            .decode(&generated, true)
            .map_err(|e| LlamaGuardError::Tokenizer(e.to_string()))
    }

    fn is_whitespace(&self, id: u32) -> bool {
        self.tokenizer
            .decode(&[id], false)
            .is_ok_and(|text| !text.is_empty() && text.chars().all(char::is_whitespace))
    }

    /// Runs `ids` from position 0 and returns the last position's logits (for tests and
    /// benchmarks of the bare model).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, LlamaGuardError> {
        self.model.clear_kv_cache();
        Ok(self.model.forward(ids, 0)?)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Softmax probability of `id`, computed stably.
fn probability(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|l| f64::from((l - max).exp())).sum();
    logits
        .get(id as usize)
        .map_or(0.0, |l| (f64::from((l - max).exp()) / total) as f32)
}

/// The category codes on the answer's second line (`S1,S10`), those asked about only.
fn parse_categories(answer: &str, asked: &[HazardCategory]) -> Vec<String> {
    let mut codes = Vec::new();
    for code in answer
        .split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        if asked.iter().any(|c| c.code == code) && !codes.iter().any(|c| c == code) {
            codes.push(code.to_owned());
        }
    }
    codes
}

/// The Llama Guard layer over a loaded model. Checks run one at a time on a blocking thread
/// (the model holds one KV cache).
#[derive(Debug, Clone)]
pub struct LlamaGuardLayer {
    guard: Arc<Mutex<LlamaGuard>>,
    config: Arc<GuardOptions>,
    info: LayerInfo,
}

impl LlamaGuardLayer {
    /// Loads the model `config` names (blocking: seconds for a 1B model).
    pub fn load(config: &LlamaGuardConfig) -> Result<Self, LlamaGuardError> {
        let device = config.device.open()?;
        let guard = LlamaGuard::load(&config.model, &device)?;
        tracing::info!(source = %guard.source, format = %guard.format, "Llama Guard loaded");
        Ok(Self::new(guard, config.options.clone()))
    }

    pub fn new(guard: LlamaGuard, config: GuardOptions) -> Self {
        let info = LayerInfo {
            id: LayerKind::LlamaGuard.label().to_owned(),
            format: guard.format.clone(),
            source: guard.source.clone(),
        };
        Self {
            guard: Arc::new(Mutex::new(guard)),
            config: Arc::new(config),
            info,
        }
    }

    /// The configured categories this request enforces: all of them when it names none, else
    /// those it names by code.
    fn categories_for(&self, input: &CheckInput) -> Vec<HazardCategory> {
        self.config
            .categories
            .iter()
            .filter(|c| input.enforces(&c.code))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl CheckLayer for LlamaGuardLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::LlamaGuard
    }

    fn info(&self) -> LayerInfo {
        self.info.clone()
    }

    async fn check(&self, input: &CheckInput) -> Result<LayerOutcome, SafetyError> {
        let categories = self.categories_for(input);
        let Some(conversation) = Conversation::from_check(input) else {
            return Ok(LayerOutcome::Pass);
        };
        if categories.is_empty() {
            return Ok(LayerOutcome::Pass);
        }
        let mut guard = Arc::clone(&self.guard).lock_owned().await;
        let config = Arc::clone(&self.config);
        let asked = categories.clone();
        let assessment =
            tokio::task::spawn_blocking(move || guard.assess(conversation, &config, &asked))
                .await
                .map_err(|e| SafetyError::Model(format!("the Llama Guard task failed: {e}")))?
                .map_err(|e| SafetyError::Model(e.to_string()))?;
        if !assessment.unsafe_ {
            return Ok(LayerOutcome::Pass);
        }
        let message_index = input.checked().last().unwrap_or(0);
        let named = assessment
            .categories
            .first()
            .and_then(|code| categories.iter().find(|c| &c.code == code));
        let (category, category_name) = match named {
            Some(c) => (c.code.clone(), c.name().to_owned()),
            // The model said unsafe without a category it was asked about.
            None => ("unsafe".to_owned(), "Unsafe content".to_owned()),
        };
        Ok(LayerOutcome::Block(Violation {
            category,
            category_name,
            rule_id: None,
            score: assessment.unsafe_probability,
            message_index,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_read_from_the_second_line_and_filtered() {
        let asked = default_categories();
        assert_eq!(parse_categories("\nS1,S10", &asked), ["S1", "S10"]);
        assert_eq!(parse_categories(" S14, S2 ,S2", &asked), ["S2"]);
        assert!(parse_categories("", &asked).is_empty());
    }

    #[test]
    fn a_cached_prefix_gives_the_logits_of_a_full_prefill() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama-guard");
        let mut guard = LlamaGuard::load(&dir, &Device::Cpu).unwrap();
        let categories = default_categories();
        for turns in [
            vec!["How are bridges built?"],
            vec!["Hi", "Hello, how can I help?"],
        ] {
            let conversation =
                Conversation::alternating(turns.into_iter().map(String::from).collect()).unwrap();
            let ids = guard.encode(&render(&conversation, &categories)).unwrap();
            let full = guard.logits(&ids).unwrap();
            for _ in 0..2 {
                let cached = guard
                    .prefill(&ids, conversation.assessed(), &categories)
                    .unwrap();
                let worst = full
                    .iter()
                    .zip(&cached)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "{worst}");
            }
        }
        assert_eq!(guard.prefixes.len(), 2, "one prefix per side");
    }

    #[test]
    fn probability_is_a_stable_softmax() {
        let p = probability(&[1000.0, 1000.0], 1);
        assert!((p - 0.5).abs() < 1e-6);
        assert_eq!(probability(&[0.0], 7), 0.0);
        assert_eq!(argmax(&[0.1, 0.3, 0.2]), 1);
    }
}
