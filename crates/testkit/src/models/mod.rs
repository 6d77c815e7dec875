//! Random-weight Qwen2 checkpoints in the formats real ones ship in.
//!
//! A [`Qwen2Checkpoint`] is a [`Qwen2Spec`], a [`Vocabulary`] and seeded weights. It writes
//! itself as a Hugging Face directory ([`Qwen2Checkpoint::write_safetensors`]) or as a single
//! llama.cpp GGUF file ([`Qwen2Checkpoint::write_gguf`]); the same seed gives the same weights in
//! both, so tests can check that the two loaders agree. [`TinyQwen2`] writes both into a
//! temporary directory for tests.

mod gguf;
mod hf_files;
mod hf_gguf;
mod spec;
mod vocab;
mod weights;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};

pub use hf_files::{
    QWEN2_5_CHAT_TEMPLATE, config_json, generation_config_json, tokenizer_config_json,
};
pub use hf_gguf::{convert_hf_to_gguf, convert_llama_to_gguf};
pub use spec::{Preset, Qwen2Spec, VocabFill, WeightDtype};
pub use vocab::{QWEN2_SPLIT_REGEX, TokenKind, Vocabulary, byte_to_char, qwen2_pre_tokenizer};
pub use weights::{NamedTensor, gguf_name, random_weights};

/// Why a model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl TestkitError {
    fn tokenizer(err: tokenizers::Error) -> Self {
        Self::Tokenizer(err)
    }
}

/// A random-weight Qwen2 model held in memory, ready to be written in any format.
#[derive(Debug, Clone)]
pub struct Qwen2Checkpoint {
    spec: Qwen2Spec,
    vocab: Vocabulary,
    tensors: Vec<NamedTensor>,
}

impl Qwen2Checkpoint {
    /// Learns the vocabulary and draws the weights from `seed`.
    pub fn new(spec: Qwen2Spec, seed: u64) -> Result<Self, TestkitError> {
        spec.validate()?;
        let vocab = Vocabulary::for_spec(&spec)?;
        let tensors = random_weights(&spec, vocab.len(), seed);
        Ok(Self {
            spec,
            vocab,
            tensors,
        })
    }

    pub fn spec(&self) -> &Qwen2Spec {
        &self.spec
    }

    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    /// Weights under their Hugging Face names.
    pub fn tensors(&self) -> &[NamedTensor] {
        &self.tensors
    }

    /// Writes a Hugging Face model directory: `config.json`, `generation_config.json`,
    /// `tokenizer.json`, `tokenizer_config.json` and `model.safetensors`.
    pub fn write_safetensors(
        &self,
        dir: &Path,
        dtype: WeightDtype,
    ) -> Result<PathBuf, TestkitError> {
        let candle_dtype = match dtype {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 => DType::F16,
            WeightDtype::Bf16 => DType::BF16,
            WeightDtype::Q8_0 | WeightDtype::Q4K | WeightDtype::Q4KM => {
                return Err(TestkitError::InvalidSpec(format!(
                    "safetensors checkpoints are f32, f16 or bf16, not {dtype}"
                )));
            }
        };
        fs::create_dir_all(dir)?;
        let write_json = |name: &str, value: serde_json::Value| -> Result<(), TestkitError> {
            let mut text = serde_json::to_string_pretty(&value)?;
            text.push('\n');
            fs::write(dir.join(name), text)?;
            Ok(())
        };
        write_json("config.json", config_json(&self.spec, &self.vocab, dtype))?;
        write_json(
            "generation_config.json",
            generation_config_json(&self.vocab),
        )?;
        write_json(
            "tokenizer_config.json",
            tokenizer_config_json(&self.spec, &self.vocab),
        )?;
        self.vocab
            .tokenizer()?
            .save(dir.join("tokenizer.json"), true)
            .map_err(TestkitError::tokenizer)?;

        let mut tensors = HashMap::with_capacity(self.tensors.len());
        for tensor in &self.tensors {
            let data = Tensor::from_slice(&tensor.data, tensor.shape.as_slice(), &Device::Cpu)?
                .to_dtype(candle_dtype)?;
            tensors.insert(tensor.name.clone(), data);
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        Ok(dir.to_path_buf())
    }

    /// Writes one GGUF file holding weights, tokenizer and chat template.
    pub fn write_gguf(&self, path: &Path, dtype: WeightDtype) -> Result<PathBuf, TestkitError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        gguf::write_gguf(path, &self.spec, &self.vocab, &self.tensors, dtype)?;
        Ok(path.to_path_buf())
    }
}

/// The tiny model written to a temporary directory in both formats with the same weights:
/// an F32 safetensors directory and an F32 GGUF file. Deleted on drop.
#[derive(Debug)]
pub struct TinyQwen2 {
    dir: tempfile::TempDir,
    checkpoint: Qwen2Checkpoint,
}

impl TinyQwen2 {
    /// The seed tests use unless they need another one.
    pub const DEFAULT_SEED: u64 = 0x5eed;

    /// Writes [`Qwen2Spec::tiny`] drawn from `seed`.
    pub fn write(seed: u64) -> Result<Self, TestkitError> {
        let checkpoint = Qwen2Checkpoint::new(Qwen2Spec::tiny(), seed)?;
        let dir = tempfile::Builder::new()
            .prefix("passerelle-tiny-qwen2-")
            .tempdir()?;
        checkpoint.write_safetensors(&dir.path().join("safetensors"), WeightDtype::F32)?;
        checkpoint.write_gguf(&dir.path().join("model-f32.gguf"), WeightDtype::F32)?;
        Ok(Self { dir, checkpoint })
    }

    /// The Hugging Face directory.
    pub fn safetensors_dir(&self) -> PathBuf {
        self.dir.path().join("safetensors")
    }

    /// The F32 GGUF file.
    pub fn gguf_path(&self) -> PathBuf {
        self.dir.path().join("model-f32.gguf")
    }

    /// Writes the same weights again as a GGUF of another type (for example Q8_0).
    pub fn write_gguf(&self, dtype: WeightDtype) -> Result<PathBuf, TestkitError> {
        self.checkpoint
            .write_gguf(&self.dir.path().join(format!("model-{dtype}.gguf")), dtype)
    }

    pub fn checkpoint(&self) -> &Qwen2Checkpoint {
        &self.checkpoint
    }
}
