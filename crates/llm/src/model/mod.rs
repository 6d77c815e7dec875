//! Model files on disk and the decoder forward pass over them.
//!
//! [`ModelFiles`] resolves a local path; [`load`] reads it into a [`CausalLm`] plus the
//! [`ModelAssets`] that prompts and stopping need: tokenizer, chat template, end-of-sequence ids
//! and sampling defaults. Every family (Llama, Qwen2, Qwen3, Phi-3) runs on one
//! [`decoder::Decoder`] for both formats; its weights are shared and each sequence has its own
//! [`KvCache`].

pub mod decoder;
mod files;
mod gguf;
mod hf_config;
mod safetensors;

use std::{collections::BTreeSet, sync::Arc};

use candle_core::{DType, Device};

pub use decoder::{BatchItem, Decoder, DecoderConfig, KvCache};
pub use files::{ModelFiles, ModelFormat};

use crate::{error::LoadError, sampler::SamplingDefaults, tokenizer::TextTokenizer};

/// A decoder with one KV cache: the single-sequence view the engine and Llama Guard use.
pub struct CausalLm {
    decoder: Arc<Decoder>,
    cache: KvCache,
}

/// The decoder architectures served, by their `config.json` `model_type` and GGUF
/// `general.architecture` (the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Qwen2,
    Qwen3,
    Llama,
    Phi3,
}

impl Architecture {
    /// Recognises a declared architecture name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "llama" => Some(Self::Llama),
            "phi3" => Some(Self::Phi3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Llama => "llama",
            Self::Phi3 => "phi3",
        }
    }
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalLm")
            .field("architecture", &self.decoder.config().architecture)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl CausalLm {
    /// Wraps shared decoder weights with an empty cache.
    pub fn new(decoder: Arc<Decoder>) -> Self {
        Self {
            decoder,
            cache: KvCache::new(),
        }
    }

    /// The shared weights, for running other sequences with caches of their own.
    pub fn decoder(&self) -> &Arc<Decoder> {
        &self.decoder
    }

    /// Runs `tokens` at positions `pos..pos + tokens.len()` (extending the KV cache) and returns
    /// the logits of the last position. `pos` must be the number of cached positions.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Vec<f32>> {
        if pos != self.cache.len() {
            candle_core::bail!(
                "forward at position {pos}, but the cache holds {} positions",
                self.cache.len()
            );
        }
        let logits = self.decoder.forward(tokens, &mut self.cache)?;
        logits.to_dtype(DType::F32)?.to_vec1()
    }

    /// The KV cache as it stands (tensors are shared, not copied).
    pub fn kv_snapshot(&self) -> KvCache {
        self.cache.clone()
    }

    /// Puts back a cache from [`CausalLm::kv_snapshot`]; the next forward continues after the
    /// positions it holds.
    pub fn restore_kv(&mut self, snapshot: &KvCache) {
        self.cache = snapshot.clone();
    }

    /// Forgets every cached position; the next forward starts a new sequence at 0.
    pub fn clear_kv_cache(&mut self) {
        self.cache.clear();
    }
}

/// Everything besides the weights that serving a model needs.
#[derive(Debug)]
pub struct ModelAssets {
    pub format: ModelFormat,
    pub architecture: Architecture,
    /// Longest sequence, prompt and completion together.
    pub context_length: usize,
    /// Width of the logits (embedding rows), at least the tokenizer's size.
    pub vocab_size: usize,
    pub tokenizer: TextTokenizer,
    /// Jinja source, when the model ships one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Tokens that end generation unless `ignore_eos`.
    pub eos_token_ids: BTreeSet<u32>,
    pub sampling_defaults: SamplingDefaults,
}

/// A loaded model: weights and assets.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: CausalLm,
    pub assets: ModelAssets,
}

/// Loads `files` onto `device`. Qwen2, Qwen3, Llama and Phi-3 are accepted; anything else is
/// refused with the architecture that was found.
pub fn load(files: &ModelFiles, device: &Device) -> Result<LoadedModel, LoadError> {
    let (decoder, assets) = match files {
        ModelFiles::Gguf { path } => gguf::load(path, device)?,
        ModelFiles::Safetensors { .. } => safetensors::load(files, device)?,
    };
    Ok(LoadedModel {
        model: CausalLm::new(Arc::new(decoder)),
        assets,
    })
}
