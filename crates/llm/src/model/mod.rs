//! Model files on disk and the decoder forward pass over them.
//!
//! [`ModelFiles`] resolves a local path; [`load`] reads it into a [`CausalLm`] plus the
//! [`ModelAssets`] that prompts and stopping need: tokenizer, chat template, end-of-sequence ids
//! and sampling defaults. Qwen2 runs on candle's `quantized_qwen2` (GGUF) and `qwen2`
//! (safetensors); Llama on [`llama::Llama`], one implementation for both formats.

mod files;
mod gguf;
pub mod llama;
mod safetensors;

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_qwen2, qwen2};

pub use files::{ModelFiles, ModelFormat};

use crate::{error::LoadError, sampler::SamplingDefaults, tokenizer::TextTokenizer};

/// A decoder-only language model with its KV cache.
pub struct CausalLm {
    weights: Weights,
    device: Device,
}

enum Weights {
    QwenGguf(Box<quantized_qwen2::ModelWeights>),
    QwenSafetensors(Box<qwen2::ModelForCausalLM>),
    Llama(Box<llama::Llama>),
}

/// The decoder architectures served, by their `config.json` `model_type` and GGUF
/// `general.architecture` (the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Qwen2,
    Llama,
}

impl Architecture {
    /// Recognises a declared architecture name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "llama" => Some(Self::Llama),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
        }
    }
}

impl std::fmt::Debug for CausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let architecture = match self.weights {
            Weights::QwenGguf(_) | Weights::QwenSafetensors(_) => Architecture::Qwen2,
            Weights::Llama(_) => Architecture::Llama,
        };
        f.debug_struct("CausalLm")
            .field("architecture", &architecture)
            .finish_non_exhaustive()
    }
}

impl CausalLm {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` (extending the KV cache) and returns
    /// the logits of the last position.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Vec<f32>> {
        let input = || Tensor::new(tokens, &self.device)?.unsqueeze(0);
        let logits = match &mut self.weights {
            Weights::QwenGguf(model) => model.forward(&input()?, pos)?,
            Weights::QwenSafetensors(model) => model.forward(&input()?, pos)?,
            Weights::Llama(model) => model.forward(tokens, pos)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    }

    /// The KV cache as it stands, for architectures whose cache this crate owns (Llama);
    /// `None` for the others.
    pub fn kv_snapshot(&self) -> Option<llama::KvSnapshot> {
        match &self.weights {
            Weights::Llama(model) => Some(model.kv_snapshot()),
            Weights::QwenGguf(_) | Weights::QwenSafetensors(_) => None,
        }
    }

    /// Puts back a cache from [`CausalLm::kv_snapshot`]; false (nothing changed) for
    /// architectures without one.
    pub fn restore_kv(&mut self, snapshot: &llama::KvSnapshot) -> bool {
        match &mut self.weights {
            Weights::Llama(model) => {
                model.restore_kv(snapshot);
                true
            }
            Weights::QwenGguf(_) | Weights::QwenSafetensors(_) => false,
        }
    }

    /// Forgets every cached position; the next forward starts a new sequence at 0.
    pub fn clear_kv_cache(&mut self) {
        match &mut self.weights {
            Weights::QwenGguf(model) => model.clear_kv_cache(),
            Weights::QwenSafetensors(model) => model.clear_kv_cache(),
            Weights::Llama(model) => model.clear_kv_cache(),
        }
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

/// Loads `files` onto `device`. Qwen2 and Llama are accepted; anything else is refused with
/// the architecture that was found.
pub fn load(files: &ModelFiles, device: &Device) -> Result<LoadedModel, LoadError> {
    let (weights, assets) = match files {
        ModelFiles::Gguf { path } => gguf::load(path, device)?,
        ModelFiles::Safetensors { .. } => safetensors::load(files, device)?,
    };
    Ok(LoadedModel {
        model: CausalLm {
            weights,
            device: device.clone(),
        },
        assets,
    })
}
