//! What a sentence-transformers model directory holds, read and checked before any weight is
//! touched.
//!
//! `modules.json` lists the pipeline: a `Transformer` (the encoder, its files in the module's
//! folder, usually the root), a `Pooling` (its `config.json` in the module's folder, usually
//! `1_Pooling`) and optionally `Normalize` (L2, no files). Any other module (`Dense`,
//! `LayerNorm`, ...) changes the vectors, so a model with one is refused rather than served
//! wrong. The encoder folder holds `config.json`, `tokenizer.json`, the safetensors weights and
//! optionally `sentence_bert_config.json` (`max_seq_length`, `do_lower_case`).

use std::path::{Path, PathBuf};

use candle_transformers::models::bert;
use serde::Deserialize;

use crate::{error::LoadError, model::pooling::Pooling};

const MODULES: &str = "modules.json";
const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const SENTENCE_BERT_CONFIG: &str = "sentence_bert_config.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A checked model directory: everything needed to build the model, nothing loaded yet.
#[derive(Debug, Clone)]
pub struct ModelLayout {
    pub dir: PathBuf,
    pub bert: bert::Config,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
    pub pooling: Pooling,
    /// The pipeline ends in a `Normalize` module: every vector has unit length.
    pub normalize: bool,
    /// Longest input in tokens (special tokens included); longer inputs are truncated.
    pub max_seq_length: usize,
    /// Inputs are lowercased before the tokenizer's own normalisation.
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize)]
struct Architecture {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

impl ModelLayout {
    /// Reads and checks `dir`. Every missing file is named in one error.
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let not_a_model = |reason: String| LoadError::NotAModel {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not_a_model("not a directory".to_owned()));
        }
        if !dir.join(MODULES).is_file() {
            let mut missing = vec![MODULES];
            missing.extend(
                [CONFIG, TOKENIZER]
                    .into_iter()
                    .filter(|f| !dir.join(f).is_file()),
            );
            return Err(not_a_model(format!(
                "not a sentence-transformers model directory: it lacks {}",
                missing.join(", ")
            )));
        }
        let modules: Vec<ModuleEntry> = read_json(&dir.join(MODULES))?;
        let mut transformer = None;
        let mut pooling_dir = None;
        let mut normalize = false;
        for (index, module) in modules.iter().enumerate() {
            let kind = module.kind.rsplit('.').next().unwrap_or(&module.kind);
            match (index, kind) {
                (0, "Transformer") => transformer = Some(dir.join(&module.path)),
                (1, "Pooling") => pooling_dir = Some(dir.join(&module.path)),
                (2, "Normalize") if index + 1 == modules.len() => normalize = true,
                _ => {
                    return Err(LoadError::UnsupportedPipeline {
                        path: dir.join(MODULES),
                        reason: format!(
                            "module {index} is `{}`; this service runs Transformer, Pooling and \
                             an optional final Normalize, in that order",
                            module.kind
                        ),
                    });
                }
            }
        }
        let (Some(encoder_dir), Some(pooling_dir)) = (transformer, pooling_dir) else {
            return Err(LoadError::UnsupportedPipeline {
                path: dir.join(MODULES),
                reason: "the pipeline needs a Transformer followed by a Pooling module".to_owned(),
            });
        };
        let pooling_config = pooling_dir.join(CONFIG);
        let mut missing: Vec<String> = [CONFIG, TOKENIZER]
            .into_iter()
            .map(|f| encoder_dir.join(f))
            .chain([pooling_config.clone()])
            .filter(|p| !p.is_file())
            .map(|p| relative(dir, &p))
            .collect();
        let weights = weight_files(&encoder_dir)?;
        if weights.is_empty() {
            missing.push(relative(dir, &encoder_dir.join(SINGLE_WEIGHTS)));
        }
        if !missing.is_empty() {
            return Err(not_a_model(format!("it lacks {}", missing.join(", "))));
        }

        let config_path = encoder_dir.join(CONFIG);
        let architecture: Architecture = read_json(&config_path)?;
        let is_bert = match architecture.model_type.as_deref() {
            Some(model_type) => model_type == "bert",
            None => architecture
                .architectures
                .iter()
                .any(|a| a.starts_with("Bert")),
        };
        if !is_bert {
            return Err(LoadError::UnsupportedArchitecture {
                path: config_path,
                found: architecture
                    .model_type
                    .or_else(|| architecture.architectures.first().cloned())
                    .unwrap_or_else(|| "unknown".to_owned()),
            });
        }
        let bert: bert::Config = read_json(&config_path)?;
        let pooling = Pooling::from_config_json(&read_text(&pooling_config)?).map_err(|err| {
            LoadError::Pooling {
                path: pooling_config.clone(),
                reason: err.to_string(),
            }
        })?;
        let sentence: SentenceBertConfig =
            optional_json(&encoder_dir.join(SENTENCE_BERT_CONFIG))?.unwrap_or_default();
        let max_seq_length = match sentence.max_seq_length {
            Some(length) => length,
            // Without sentence_bert_config.json sentence-transformers falls back to the
            // tokenizer's model_max_length, capped by the position table below.
            None => optional_json::<TokenizerConfig>(&encoder_dir.join(TOKENIZER_CONFIG))?
                .and_then(|c| c.model_max_length)
                .filter(|length| length.is_finite() && *length >= 1.0)
                .map_or(bert.max_position_embeddings, |length| length as usize),
        }
        // Longer inputs would index past the position table.
        .min(bert.max_position_embeddings);
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer: encoder_dir.join(TOKENIZER),
            weights,
            pooling,
            normalize,
            max_seq_length,
            lowercase: sentence.do_lower_case,
            bert,
        })
    }

    /// Length of the vectors the model produces.
    pub fn dimension(&self) -> usize {
        self.pooling.output_dimension(self.bert.hidden_size)
    }
}

/// `model.safetensors`, or the shards its index names; empty when there is neither.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join(SINGLE_WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let Some(index) = optional_json::<ShardIndex>(&dir.join(SHARD_INDEX))? else {
        return Ok(Vec::new());
    };
    let mut shards: Vec<&String> = index.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards.into_iter().map(|shard| dir.join(shard)).collect())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn optional_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, LoadError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pooling::PoolingMode;

    const BERT_CONFIG: &str = r#"{"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0}"#;
    const MODULES_JSON: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    /// A directory with every file present; the weights file is empty since nothing loads it.
    fn complete() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("1_Pooling")).unwrap();
        std::fs::write(root.join(MODULES), MODULES_JSON).unwrap();
        std::fs::write(root.join(CONFIG), BERT_CONFIG).unwrap();
        std::fs::write(root.join(TOKENIZER), "{}").unwrap();
        std::fs::write(root.join(SINGLE_WEIGHTS), "").unwrap();
        std::fs::write(
            root.join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": true}"#,
        )
        .unwrap();
        std::fs::write(
            root.join(SENTENCE_BERT_CONFIG),
            r#"{"max_seq_length": 512, "do_lower_case": true}"#,
        )
        .unwrap();
        dir
    }

    #[test]
    fn reads_the_pipeline() {
        let dir = complete();
        let layout = ModelLayout::read(dir.path()).unwrap();
        assert_eq!(layout.pooling.modes(), &[PoolingMode::Cls]);
        assert!(layout.normalize);
        assert!(layout.lowercase);
        // Capped by the position table.
        assert_eq!(layout.max_seq_length, 64);
        assert_eq!(layout.dimension(), 8);
    }

    #[test]
    fn names_every_missing_file() {
        let dir = complete();
        std::fs::remove_file(dir.path().join(TOKENIZER)).unwrap();
        std::fs::remove_file(dir.path().join(SINGLE_WEIGHTS)).unwrap();
        std::fs::remove_file(dir.path().join("1_Pooling/config.json")).unwrap();
        let err = ModelLayout::read(dir.path()).unwrap_err().to_string();
        for name in [TOKENIZER, SINGLE_WEIGHTS, "1_Pooling/config.json"] {
            assert!(err.contains(name), "{err}");
        }
        let empty = tempfile::tempdir().unwrap();
        let err = ModelLayout::read(empty.path()).unwrap_err().to_string();
        assert!(
            err.contains("not a sentence-transformers model directory"),
            "{err}"
        );
        assert!(err.contains(MODULES) && err.contains(CONFIG), "{err}");
    }

    #[test]
    fn refuses_what_it_would_compute_wrong() {
        let dir = complete();
        let with_dense = MODULES_JSON.replace(
            "sentence_transformers.models.Normalize",
            "sentence_transformers.models.Dense",
        );
        std::fs::write(dir.path().join(MODULES), with_dense).unwrap();
        let err = ModelLayout::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("sentence_transformers.models.Dense"), "{err}");

        let dir = complete();
        std::fs::write(
            dir.path().join(CONFIG),
            BERT_CONFIG.replace("\"bert\"", "\"xlm-roberta\""),
        )
        .unwrap();
        let err = ModelLayout::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("xlm-roberta"), "{err}");
    }
}
