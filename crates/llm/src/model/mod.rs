//! Model files on disk and the Qwen2 forward pass over them.
//!
//! [`ModelFiles`] resolves a local path; [`load`] reads it into a [`Qwen2`] (candle's
//! `quantized_qwen2` for GGUF, `qwen2` for safetensors) plus the [`ModelAssets`] that prompts
//! and stopping need: tokenizer, chat template, end-of-sequence ids and sampling defaults.

mod files;
mod gguf;
mod safetensors;

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_qwen2, qwen2};

pub use files::{ModelFiles, ModelFormat};

use crate::{error::LoadError, sampler::SamplingDefaults, tokenizer::TextTokenizer};

/// A Qwen2 decoder with its KV cache.
pub struct Qwen2 {
    weights: Weights,
    device: Device,
}

enum Weights {
    Gguf(Box<quantized_qwen2::ModelWeights>),
    Safetensors(Box<qwen2::ModelForCausalLM>),
}

impl std::fmt::Debug for Qwen2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.weights {
            Weights::Gguf(_) => ModelFormat::Gguf,
            Weights::Safetensors(_) => ModelFormat::Safetensors,
        };
        f.debug_struct("Qwen2")
            .field("format", &format)
            .finish_non_exhaustive()
    }
}

impl Qwen2 {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` (extending the KV cache) and returns
    /// the logits of the last position.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.weights {
            Weights::Gguf(model) => model.forward(&input, pos)?,
            Weights::Safetensors(model) => model.forward(&input, pos)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    }

    /// Forgets every cached position; the next forward starts a new sequence at 0.
    pub fn clear_kv_cache(&mut self) {
        match &mut self.weights {
            Weights::Gguf(model) => model.clear_kv_cache(),
            Weights::Safetensors(model) => model.clear_kv_cache(),
        }
    }
}

/// Everything besides the weights that serving a model needs.
#[derive(Debug)]
pub struct ModelAssets {
    pub format: ModelFormat,
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
    pub model: Qwen2,
    pub assets: ModelAssets,
}

/// Loads `files` onto `device`. Only the qwen2 architecture is accepted; anything else is
/// refused with the architecture that was found.
pub fn load(files: &ModelFiles, device: &Device) -> Result<LoadedModel, LoadError> {
    let (weights, assets) = match files {
        ModelFiles::Gguf { path } => {
            let (model, assets) = gguf::load(path, device)?;
            (Weights::Gguf(Box::new(model)), assets)
        }
        ModelFiles::Safetensors { .. } => {
            let (model, assets) = safetensors::load(files, device)?;
            (Weights::Safetensors(Box::new(model)), assets)
        }
    };
    Ok(LoadedModel {
        model: Qwen2 {
            weights,
            device: device.clone(),
        },
        assets,
    })
}
