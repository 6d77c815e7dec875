//! Loading a Hugging Face Qwen2, Qwen3, Llama or Phi-3 directory: `config.json`, memory-mapped safetensors weights
//! (converted to F32 for the CPU), `tokenizer.json`, `tokenizer_config.json` and the optional
//! `generation_config.json`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::{
    error::LoadError,
    model::{
        Architecture, ModelAssets, ModelFiles, ModelFormat, decoder::Decoder, hf_config::HfConfig,
    },
    sampler::SamplingDefaults,
    tokenizer::TextTokenizer,
};

/// A template saved beside the tokenizer, where newer `transformers` versions write it.
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The sizes every architecture's `config.json` has.
#[derive(Debug, Deserialize)]
struct ContextAndVocab {
    max_position_embeddings: usize,
    vocab_size: usize,
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenField {
    Text(String),
    Object { content: String },
}

impl TokenField {
    fn into_text(self) -> String {
        match self {
            Self::Text(text) | Self::Object { content: text } => text,
        }
    }
}

/// `chat_template`: one template, or named ones of which `default` is used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TemplateField {
    Single(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    chat_template: Option<TemplateField>,
    bos_token: Option<TokenField>,
    eos_token: Option<TokenField>,
}

/// An id or a list of ids (`eos_token_id` takes both forms).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    eos_token_id: Option<Ids>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

impl GenerationConfig {
    /// vLLM's reading of `generation_config.json`: its sampling values become the defaults of
    /// requests that leave them unset.
    fn sampling_defaults(&self) -> SamplingDefaults {
        let openai = SamplingDefaults::default();
        SamplingDefaults {
            temperature: self.temperature.unwrap_or(openai.temperature),
            top_p: self.top_p.unwrap_or(openai.top_p),
            top_k: self.top_k.unwrap_or(openai.top_k),
            min_p: self.min_p.unwrap_or(openai.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(openai.repetition_penalty),
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The architecture `config.json` declares; anything not served is refused by name.
fn check_architecture(path: &Path) -> Result<Architecture, LoadError> {
    let json: serde_json::Value = read_json(path)?;
    let model_type = json.get("model_type").and_then(|v| v.as_str());
    if let Some(arch) = model_type.and_then(Architecture::from_name) {
        return Ok(arch);
    }
    let architectures = json
        .get("architectures")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|a| !a.is_empty());
    let found = match (model_type, architectures) {
        (Some(t), Some(a)) => format!("{t} ({a})"),
        (Some(t), None) => t.to_owned(),
        (None, Some(a)) => a,
        (None, None) => "none declared".to_owned(),
    };
    Err(LoadError::UnsupportedArchitecture {
        path: path.to_path_buf(),
        found,
    })
}

pub(super) fn load(
    files: &ModelFiles,
    device: &Device,
) -> Result<(Decoder, ModelAssets), LoadError> {
    let ModelFiles::Safetensors {
        dir,
        config,
        tokenizer,
        tokenizer_config,
        generation_config,
        weights,
    } = files
    else {
        unreachable!("safetensors::load is only called for safetensors files");
    };
    let config_path = config;
    let architecture = check_architecture(config_path)?;
    let (context_length, vocab_size) = {
        let sizes: ContextAndVocab = read_json(config_path)?;
        (sizes.max_position_embeddings, sizes.vocab_size)
    };

    let tokenizer = TextTokenizer::from_file(tokenizer)?;
    let tokenizer_config: TokenizerConfig = read_json(tokenizer_config)?;
    let generation: GenerationConfig = match generation_config {
        Some(path) => read_json(path)?,
        None => GenerationConfig::default(),
    };
    let chat_template = chat_template(dir, tokenizer_config.chat_template)?;
    let bos_token = tokenizer_config.bos_token.map(TokenField::into_text);
    let eos_token = tokenizer_config.eos_token.map(TokenField::into_text);
    let mut eos_token_ids: BTreeSet<u32> = eos_token
        .as_deref()
        .and_then(|text| tokenizer.token_id(text))
        .into_iter()
        .collect();
    match &generation.eos_token_id {
        Some(Ids::One(id)) => {
            eos_token_ids.insert(*id);
        }
        Some(Ids::Many(ids)) => eos_token_ids.extend(ids),
        None => {}
    }

    let weights: Vec<PathBuf> = weights.clone();
    let vb = passerelle_model_runtime::weights::mmap_safetensors(&weights, DType::F32, device)?;
    let hf_config: HfConfig = read_json(config_path)?;
    let config = hf_config
        .into_decoder(architecture)
        .map_err(|reason| LoadError::NotAModel {
            path: config_path.clone(),
            reason,
        })?;
    let model = Decoder::from_safetensors(config, vb, device)?;
    let assets = ModelAssets {
        format: ModelFormat::Safetensors,
        architecture,
        context_length,
        vocab_size,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        eos_token_ids,
        sampling_defaults: generation.sampling_defaults(),
    };
    Ok((model, assets))
}

/// The template from `tokenizer_config.json`, else from `chat_template.jinja`.
fn chat_template(dir: &Path, field: Option<TemplateField>) -> Result<Option<String>, LoadError> {
    match field {
        Some(TemplateField::Single(source)) => return Ok(Some(source)),
        Some(TemplateField::Named(named)) => {
            return Ok(named
                .into_iter()
                .find(|t| t.name == "default")
                .map(|t| t.template));
        }
        None => {}
    }
    let file = dir.join(CHAT_TEMPLATE_FILE);
    if !file.is_file() {
        return Ok(None);
    }
    std::fs::read_to_string(&file)
        .map(Some)
        .map_err(|source| LoadError::Io { path: file, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_architectures_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"model_type": "mistral", "architectures": ["MistralForCausalLM"]}"#,
        )
        .unwrap();
        let err = check_architecture(&path).unwrap_err();
        assert!(
            err.to_string().contains("mistral (MistralForCausalLM)"),
            "{err}"
        );
        std::fs::write(&path, r#"{"model_type": "qwen2"}"#).unwrap();
        assert_eq!(check_architecture(&path).unwrap(), Architecture::Qwen2);
    }

    #[test]
    fn generation_config_sets_sampling_defaults_and_eos_lists() {
        let config: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [5, 6], "temperature": 0.7, "top_k": 20}"#)
                .unwrap();
        let defaults = config.sampling_defaults();
        assert_eq!(defaults.temperature, 0.7);
        assert_eq!(defaults.top_k, 20);
        assert_eq!(defaults.top_p, 1.0);
        assert!(matches!(config.eos_token_id, Some(Ids::Many(ref ids)) if ids == &[5, 6]));
    }
}
