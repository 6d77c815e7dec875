//! Helpers shared by the integration tests: finding the all-MiniLM-L6-v2 weights, engines over
//! them, the parity fixture, and model directories assembled from the real files.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::Path;

use passerelle_embeddings::{EmbeddingEngine, EmbeddingHandle, EmbeddingsError, EngineConfig};
use prometheus::Registry;
use serde::Deserialize;

pub const MODEL_ID: &str = "all-MiniLM-L6-v2";

/// The all-MiniLM-L6-v2 weights (see `passerelle_testkit::minilm`).
pub fn minilm_dir() -> &'static Path {
    passerelle_testkit::minilm::minilm_dir()
}

pub fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        model_path: dir.to_path_buf(),
        model_id: MODEL_ID.to_owned(),
        device: passerelle_embeddings::DeviceChoice::Cpu,
        threads: Some(2),
        queue_capacity: 16,
        max_batch: 32,
        matryoshka: false,
    }
}

pub async fn try_engine(config: EngineConfig) -> Result<EmbeddingHandle, EmbeddingsError> {
    EmbeddingEngine::load(config, &Registry::new()).await
}

pub async fn engine(config: EngineConfig) -> EmbeddingHandle {
    try_engine(config).await.expect("all-MiniLM-L6-v2 loads")
}

/// `tests/fixtures/minilm_parity.json`, made by `make_minilm_parity.py`.
#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub weights_sha256: String,
    pub max_seq_length: usize,
    pub dimension: usize,
    pub cases: Vec<Case>,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub text: String,
    pub tokens: usize,
    pub embedding: Vec<f32>,
}

/// The same encoder under another sentence-transformers pipeline.
#[derive(Debug, Deserialize)]
pub struct Variant {
    pub name: String,
    pub pooling_mode: Vec<String>,
    pub normalize: bool,
    pub cases: Vec<Case>,
}

pub fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_parity.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn texts(cases: &[Case]) -> Vec<String> {
    cases.iter().map(|case| case.text.clone()).collect()
}

/// Largest absolute difference between two vectors of the same length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A model directory that links to MiniLM's files, with its own `modules.json` and pooling
/// config so other pipelines can be tried on the real encoder. `skip` names files left out.
pub struct LinkedModel {
    pub dir: tempfile::TempDir,
}

impl LinkedModel {
    pub fn new(pooling_mode: &[&str], normalize: bool, skip: &[&str]) -> Self {
        let source = minilm_dir();
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "sentence_bert_config.json",
            "model.safetensors",
        ] {
            if !skip.contains(&file) {
                std::os::unix::fs::symlink(source.join(file), dir.path().join(file)).unwrap();
            }
        }
        let mut modules = vec![
            serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if normalize {
            modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        }
        if !skip.contains(&"modules.json") {
            std::fs::write(
                dir.path().join("modules.json"),
                serde_json::to_string(&modules).unwrap(),
            )
            .unwrap();
        }
        if !skip.contains(&"1_Pooling/config.json") {
            std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
            std::fs::write(
                dir.path().join("1_Pooling/config.json"),
                serde_json::json!({"embedding_dimension": 384, "pooling_mode": pooling_mode})
                    .to_string(),
            )
            .unwrap();
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
