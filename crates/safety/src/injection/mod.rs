//! The prompt-injection classifier layer: a DeBERTa-v2/v3 sequence classifier such as
//! protectai/deberta-v3-base-prompt-injection-v2 (labels `SAFE` / `INJECTION`) on candle.
//!
//! - [`files`]: what a model directory holds (config.json with `id2label`, model.safetensors,
//!   tokenizer.json), checked before any weight is read.
//! - [`model`]: [`InjectionClassifier`]: tokenize into windows of the model's length, run,
//!   softmax, the injection label's probability; the highest window's is the text's score.
//! - [`windows`]: which windows of a long text are scored.
//! - [`layer`]: [`InjectionLayer`], the classifier on its own thread as a [`crate::CheckLayer`]
//!   for input checks.

mod error;
mod files;
mod layer;
mod model;
pub mod windows;

use std::path::PathBuf;

use passerelle_model_runtime::DeviceChoice;

pub use error::InjectionError;
pub use layer::InjectionLayer;
pub use model::{ClassifierOptions, InjectionClassifier, TextScore};

/// The category a classifier verdict reports.
pub const CATEGORY: &str = "prompt_injection";

/// How the service runs the classifier layer.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectionConfig {
    /// The model directory.
    pub model: PathBuf,
    pub classifier: ClassifierOptions,
    pub device: DeviceChoice,
    /// Compute threads of the classifier's pool.
    pub threads: usize,
    /// Most checks waiting for the classifier; more are refused with `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
}

impl InjectionConfig {
    /// The model in `model` with the default options, on the CPU with as many threads as it
    /// has cores, and 64 checks queued at most.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            classifier: ClassifierOptions::default(),
            device: DeviceChoice::Cpu,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            queue_capacity: 64,
        }
    }
}
