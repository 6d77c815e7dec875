//! Which files make up a model on local disk.

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
};

use crate::error::LoadError;

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The on-disk format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

impl ModelFormat {
    /// The name used in `ModelInfo.format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
        }
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model resolved to local files: one GGUF file holding everything, or a Hugging Face
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    Gguf {
        path: PathBuf,
    },
    Safetensors {
        dir: PathBuf,
        config: PathBuf,
        tokenizer: PathBuf,
        tokenizer_config: PathBuf,
        generation_config: Option<PathBuf>,
        /// One file, or the shards named by `model.safetensors.index.json`.
        weights: Vec<PathBuf>,
    },
}

impl ModelFiles {
    /// Resolves `path`: a `.gguf` file, or a directory with `config.json`, `tokenizer.json`,
    /// `tokenizer_config.json` and safetensors weights (single or sharded).
    pub fn resolve(path: &Path) -> Result<Self, LoadError> {
        let not_a_model = |reason: String| LoadError::NotAModel {
            path: path.to_path_buf(),
            reason,
        };
        if path.is_file() {
            if path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
            {
                return Ok(Self::Gguf {
                    path: path.to_path_buf(),
                });
            }
            return Err(not_a_model(
                "a model file must be a .gguf; safetensors models are loaded from their directory"
                    .to_owned(),
            ));
        }
        if !path.is_dir() {
            return Err(not_a_model("no such file or directory".to_owned()));
        }
        let required = |name: &str| {
            let file = path.join(name);
            if file.is_file() {
                Ok(file)
            } else {
                Err(not_a_model(format!("{name} is missing")))
            }
        };
        let config = required(CONFIG)?;
        let tokenizer = required(TOKENIZER)?;
        let tokenizer_config = required(TOKENIZER_CONFIG)?;
        let generation_config = Some(path.join(GENERATION_CONFIG)).filter(|p| p.is_file());
        let weights = weight_files(path)?;
        Ok(Self::Safetensors {
            dir: path.to_path_buf(),
            config,
            tokenizer,
            tokenizer_config,
            generation_config,
            weights,
        })
    }

    pub fn format(&self) -> ModelFormat {
        match self {
            Self::Gguf { .. } => ModelFormat::Gguf,
            Self::Safetensors { .. } => ModelFormat::Safetensors,
        }
    }
}

/// The safetensors files of a directory: the shards of the index when there is one.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index = dir.join(SHARD_INDEX);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io {
            path: index.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| LoadError::Json {
                path: index.clone(),
                source,
            })?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(LoadError::NotAModel {
                path: index,
                reason: "has no `weight_map` object".to_owned(),
            });
        };
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let files: Vec<PathBuf> = shards.into_iter().map(|name| dir.join(name)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(LoadError::NotAModel {
                path: dir.to_path_buf(),
                reason: format!(
                    "shard {} named by {SHARD_INDEX} is missing",
                    missing.display()
                ),
            });
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(LoadError::NotAModel {
        path: dir.to_path_buf(),
        reason: format!("neither {SINGLE_WEIGHTS} nor {SHARD_INDEX} is present"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn a_directory_needs_its_configs_and_weights() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelFiles::resolve(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.json is missing"), "{err}");
        for name in [CONFIG, TOKENIZER, TOKENIZER_CONFIG] {
            touch(dir.path(), name, "{}");
        }
        let err = ModelFiles::resolve(dir.path()).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        touch(dir.path(), SINGLE_WEIGHTS, "");
        let files = ModelFiles::resolve(dir.path()).unwrap();
        assert_eq!(files.format(), ModelFormat::Safetensors);
    }

    #[test]
    fn sharded_weights_come_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            CONFIG,
            TOKENIZER,
            TOKENIZER_CONFIG,
            "a.safetensors",
            "b.safetensors",
        ] {
            touch(dir.path(), name, "{}");
        }
        touch(
            dir.path(),
            SHARD_INDEX,
            r#"{"weight_map": {"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}"#,
        );
        let ModelFiles::Safetensors { weights, .. } = ModelFiles::resolve(dir.path()).unwrap()
        else {
            panic!("expected safetensors");
        };
        assert_eq!(
            weights,
            vec![
                dir.path().join("a.safetensors"),
                dir.path().join("b.safetensors")
            ]
        );
    }

    #[test]
    fn only_gguf_files_load_alone() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "m.gguf", "");
        touch(dir.path(), "m.bin", "");
        assert_eq!(
            ModelFiles::resolve(&dir.path().join("m.gguf"))
                .unwrap()
                .format(),
            ModelFormat::Gguf
        );
        assert!(ModelFiles::resolve(&dir.path().join("m.bin")).is_err());
        assert!(ModelFiles::resolve(&dir.path().join("absent")).is_err());
    }
}
