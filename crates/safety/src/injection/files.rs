//! What a classifier directory holds, read and checked before any weight is touched: the
//! DeBERTa config (with the defaults transformers fills in for keys a checkpoint leaves out),
//! the labels, the weight files and the tokenizer.

use std::path::{Path, PathBuf};

use candle_transformers::models::debertav2::Config;
use serde_json::{Value, json};

use super::error::InjectionError;

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// A checked classifier directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: Config,
    pub config_path: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
    /// Label names by class index.
    pub labels: Vec<String>,
    /// Longest input in tokens, special tokens included: the model's position range, or the
    /// tokenizer's `model_max_length` when that is smaller.
    pub max_length: usize,
}

impl ModelFiles {
    pub fn read(dir: &Path) -> Result<Self, InjectionError> {
        let config_path = dir.join(CONFIG);
        let value: Value = read_json(&config_path)?;
        let config = parse_config(value, &config_path)?;
        let labels = labels(&config, &config_path)?;
        let tokenizer = existing(dir.join(TOKENIZER))?;
        let weights = weights(dir)?;
        let mut max_length = config.max_position_embeddings;
        let tokenizer_config = dir.join(TOKENIZER_CONFIG);
        if tokenizer_config.is_file() {
            let value: Value = read_json(&tokenizer_config)?;
            // Tokenizers without a limit say so with a huge sentinel (1e30); only a real,
            // smaller limit counts.
            if let Some(limit) = value["model_max_length"].as_u64()
                && let Ok(limit) = usize::try_from(limit)
                && limit > 0
            {
                max_length = max_length.min(limit);
            }
        }
        Ok(Self {
            config,
            config_path,
            tokenizer,
            weights,
            labels,
            max_length,
        })
    }
}

fn existing(path: PathBuf) -> Result<PathBuf, InjectionError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(InjectionError::MissingFile { path })
    }
}

fn read_json(path: &Path) -> Result<Value, InjectionError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            InjectionError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            InjectionError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|err| InjectionError::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {err}"),
    })
}

/// `config.json` as candle's `Config`, with transformers' `DebertaV2Config` defaults for the
/// keys a checkpoint may leave out, after checking it is a DeBERTa-v2/v3 sequence classifier
/// that candle can run.
fn parse_config(mut value: Value, path: &Path) -> Result<Config, InjectionError> {
    let error = |reason: String| InjectionError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let Some(object) = value.as_object_mut() else {
        return Err(error("not a JSON object".to_owned()));
    };
    match object.get("model_type").and_then(Value::as_str) {
        Some("deberta-v2") => {}
        other => {
            return Err(error(format!(
                "model_type is {}, expected \"deberta-v2\" (DeBERTa-v2 and v3 checkpoints)",
                other.map_or_else(|| "missing".to_owned(), |t| format!("\"{t}\""))
            )));
        }
    }
    if object
        .get("conv_kernel_size")
        .and_then(Value::as_u64)
        .is_some_and(|size| size > 0)
    {
        return Err(error(
            "conv_kernel_size > 0 (the DeBERTa-v2 convolution layer) is not supported; \
             DeBERTa-v3 checkpoints have none"
                .to_owned(),
        ));
    }
    let hidden_size = object.get("hidden_size").cloned().unwrap_or(Value::Null);
    let defaults = [
        ("hidden_dropout_prob", json!(0.1)),
        ("attention_probs_dropout_prob", json!(0.1)),
        ("max_position_embeddings", json!(512)),
        ("type_vocab_size", json!(0)),
        ("initializer_range", json!(0.02)),
        ("layer_norm_eps", json!(1e-7)),
        ("relative_attention", json!(false)),
        ("max_relative_positions", json!(-1)),
        ("pad_token_id", json!(0)),
        ("position_biased_input", json!(true)),
        ("pos_att_type", json!([])),
        ("pooler_dropout", json!(0.0)),
        ("pooler_hidden_act", json!("gelu")),
        ("pooler_hidden_size", hidden_size),
    ];
    for (key, default) in defaults {
        let entry = object.entry(key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = default;
        }
    }
    serde_json::from_value(value).map_err(|err| error(format!("not a DeBERTa-v2 config: {err}")))
}

/// `id2label` as a list indexed by class, which must cover 0..n without gaps.
fn labels(config: &Config, path: &Path) -> Result<Vec<String>, InjectionError> {
    let error = |reason: &str| InjectionError::Config {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let id2label = config
        .id2label
        .as_ref()
        .ok_or_else(|| error("no id2label: a sequence classifier names its labels"))?;
    if id2label.len() < 2 {
        return Err(error("id2label must name at least two labels"));
    }
    (0..id2label.len())
        .map(|index| {
            u32::try_from(index)
                .ok()
                .and_then(|index| id2label.get(&index))
                .cloned()
                .ok_or_else(|| error("id2label must number its labels 0, 1, ... without gaps"))
        })
        .collect()
}

/// The index of the label named `name`: an exact match (ignoring case) first, else the one
/// label containing it.
pub fn find_label(labels: &[String], name: &str, path: &Path) -> Result<usize, InjectionError> {
    let name = name.to_lowercase();
    if let Some(index) = labels.iter().position(|l| l.to_lowercase() == name) {
        return Ok(index);
    }
    let containing: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].to_lowercase().contains(&name))
        .collect();
    match containing.as_slice() {
        [index] => Ok(*index),
        found => Err(InjectionError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "{} of the labels {labels:?} contain \"{name}\"; name the injection label \
                 exactly",
                if found.is_empty() { "none" } else { "several" }
            ),
        }),
    }
}

/// The safetensors files: `model.safetensors`, else the shards an index lists.
fn weights(dir: &Path) -> Result<Vec<PathBuf>, InjectionError> {
    let single = dir.join(SINGLE_WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(SHARD_INDEX);
    if !index_path.is_file() {
        return Err(InjectionError::MissingFile { path: single });
    }
    let index = read_json(&index_path)?;
    let Some(map) = index["weight_map"].as_object() else {
        return Err(InjectionError::Config {
            path: index_path,
            reason: "no weight_map".to_owned(),
        });
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for file in map.values().filter_map(Value::as_str) {
        let path = existing(dir.join(file))?;
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_injection_label_is_found_by_name() {
        let path = Path::new("config.json");
        let two = labels(&["SAFE", "INJECTION"]);
        assert_eq!(find_label(&two, "injection", path).unwrap(), 1);
        let prefixed = labels(&["LABEL_SAFE", "LABEL_INJECTION"]);
        assert_eq!(find_label(&prefixed, "INJECTION", path).unwrap(), 1);
        let exact_wins = labels(&["INJECTION", "INDIRECT_INJECTION"]);
        assert_eq!(find_label(&exact_wins, "INJECTION", path).unwrap(), 0);
        let err = find_label(&labels(&["BENIGN", "JAILBREAK"]), "INJECTION", path).unwrap_err();
        assert!(err.to_string().contains("none of the labels"), "{err}");
        let ambiguous = labels(&["DIRECT_INJECTION", "INDIRECT_INJECTION"]);
        assert!(find_label(&ambiguous, "INJECTION", path).is_err());
    }

    #[test]
    fn configs_of_other_models_are_refused_by_name() {
        let path = Path::new("config.json");
        let err = parse_config(json!({"model_type": "bert"}), path).unwrap_err();
        assert!(err.to_string().contains("\"bert\""), "{err}");
        let err = parse_config(
            json!({"model_type": "deberta-v2", "conv_kernel_size": 3}),
            path,
        )
        .unwrap_err();
        assert!(err.to_string().contains("conv_kernel_size"), "{err}");
    }

    #[test]
    fn missing_keys_take_transformers_defaults() {
        let config = parse_config(
            json!({
                "model_type": "deberta-v2", "vocab_size": 10, "hidden_size": 8,
                "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
                "hidden_act": "gelu", "id2label": {"0": "SAFE", "1": "INJECTION"}
            }),
            Path::new("config.json"),
        )
        .unwrap();
        assert_eq!(config.pooler_hidden_size, Some(8));
        assert_eq!(config.max_position_embeddings, 512);
        assert!(config.position_biased_input);
        let names = super::labels(&config, Path::new("config.json")).unwrap();
        assert_eq!(names, ["SAFE", "INJECTION"]);
    }
}
