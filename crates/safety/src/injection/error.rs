//! Why the classifier could not be loaded or could not score a text.

use std::path::PathBuf;

/// A classifier error. Load errors name the file at fault; the others are runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum InjectionError {
    #[error(
        "{path} is missing: a DeBERTa-v2/v3 classifier directory holds config.json, \
         model.safetensors (or model.safetensors.index.json and its shards) and tokenizer.json"
    )]
    MissingFile { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: cannot load the weights: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("invalid classifier option: {0}")]
    Option(String),
    #[error(transparent)]
    Device(#[from] passerelle_model_runtime::DeviceError),
    #[error("cannot start {threads} compute threads: {source}")]
    ThreadPool {
        threads: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    #[error("the classifier's warm-up pass failed: {0}")]
    WarmUp(String),
    /// Tokenizing a checked text failed.
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
    /// The forward pass failed: a bug or a broken checkpoint.
    #[error("the classifier failed: {0}")]
    Model(#[from] candle_core::Error),
    #[error("the classifier panicked: {0}")]
    Panic(String),
    #[error("the injection classifier's queue is full ({capacity} checks waiting); retry later")]
    QueueFull { capacity: usize },
    #[error("the injection classifier has stopped")]
    Stopped,
}
